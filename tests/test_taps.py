"""FeatureTaps: hooks by layer name, wrappers, errors."""
import pytest
import torch
from torch import nn

from tdann_fast import FeatureTaps


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 5, 3), nn.ReLU()))


def test_captures_named_outputs_with_grad():
    net = _net()
    x = torch.randn(2, 3, 6, 6)
    with FeatureTaps(net, ["0", "2.0"]) as taps:
        out = net(x)
        assert set(taps.features) == {"0", "2.0"}
        assert taps.features["2.0"].shape == (2, 5, 4, 4)
        assert taps.features["0"].requires_grad
        taps.features["0"].sum().backward()
    assert not taps.active
    taps.clear()
    net(x)
    assert taps.features == {}  # hooks removed
    assert out.shape == (2, 5, 4, 4)


def test_detach_and_remove():
    net = _net()
    taps = FeatureTaps(net, "2", detach=True)
    net(torch.randn(1, 3, 5, 5))
    assert not taps.features["2"].requires_grad
    taps.remove()
    assert not taps.active


def test_wrapped_models_and_prefixed_names():
    net = _net()
    wrapper = nn.Module()
    wrapper.module = net  # what DistributedDataParallel looks like
    with FeatureTaps(wrapper, ["module.2.0", "0"]) as taps:
        net(torch.randn(1, 3, 5, 5))
    assert set(taps.features) == {"module.2.0", "0"}


def test_unknown_layer_lists_close_names():
    from torchvision.models.video import r3d_18

    with pytest.raises(KeyError, match=r"unknown layer name 'layer3\.2'.*layer3\.1"):
        FeatureTaps(r3d_18(weights=None), ["layer3.2"])
    with pytest.raises(ValueError, match="duplicates"):
        FeatureTaps(_net(), ["0", "0"])
    with pytest.raises(ValueError, match="at least one"):
        FeatureTaps(_net(), [])
