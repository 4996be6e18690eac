"""Presets against the real torchvision models: unit counts and layer names (DESIGN §4)."""
import math

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.video import r3d_18

from tdann_fast import FeatureTaps, presets


def _unit_counts(model, x, names):
    model.eval()
    with torch.no_grad(), FeatureTaps(model, names) as taps:
        model(x)
    return {n: tuple(f.shape) for n, f in taps.features.items()}


def test_r3d18_mt_matches_torchvision_at_16x112x112():
    sheets = presets.r3d18_mt(num_neighbourhoods=200)
    shapes = _unit_counts(r3d_18(weights=None), torch.randn(1, 3, 16, 112, 112), list(sheets))
    expected_units = {"layer1": 200_704, "layer2": 100_352, "layer3": 50_176, "layer4": 25_088}
    for name, sheet in sheets.items():
        b, c, t, h, w = shapes[name]
        assert sheet.num_units == c * h * w == expected_units[name[:6]]
        assert sheet.shape == (c, h, w)
    table = {"layer1.0": (5.7, 0.047), "layer2.1": (1180, 2.7), "layer3.0": (940, 4.2), "layer3.1": (50, 2.1),
             "layer4.0": (56, 2.7)}
    for name, (area, width) in table.items():
        assert sheets[name].side_mm == pytest.approx(math.sqrt(area))
        assert sheets[name].neighbourhood_width_mm == pytest.approx(width)
    assert presets.MT_LAYER == "layer3.1" and presets.MT_LAYER in sheets


def test_r3d18_mt_at_small_clips_matches_model():
    sheets = presets.r3d18_mt(input_size=64, num_neighbourhoods=100)
    shapes = _unit_counts(r3d_18(weights=None), torch.randn(1, 3, 8, 64, 64), list(sheets))
    for name, sheet in sheets.items():
        _, c, _, h, w = shapes[name]
        assert sheet.shape == (c, h, w)
    # layer1 would hold ~25 units per window at the table's width: widened to hold ~50
    assert sheets["layer1.0"].neighbourhood_width_mm > 0.047
    assert sheets["layer3.1"].neighbourhood_width_mm == pytest.approx(2.1)


@pytest.mark.parametrize("sizes", ["analysis", "trained"])
def test_resnet18_tdann_matches_torchvision_at_224(sizes):
    sheets = presets.resnet18_tdann(sizes=sizes, num_neighbourhoods=100)
    shapes = _unit_counts(resnet18(weights=None), torch.randn(1, 3, 224, 224), list(sheets))
    for name, sheet in sheets.items():
        _, c, h, w = shapes[name]
        assert sheet.num_units == c * h * w and sheet.shape == (c, h, w)
    side = {"analysis": 36.75, "trained": 24.5}[sizes]
    assert sheets["layer2.0"].side_mm == pytest.approx(side)
    assert sheets["layer2.0"].neighbourhood_width_mm == pytest.approx(1.626 * side / 36.75)


def test_preset_errors():
    with pytest.raises(ValueError, match="input_size"):
        presets.r3d18_mt(input_size=3)
    with pytest.raises(ValueError, match="sizes"):
        presets.resnet18_tdann(sizes="huge")
    with pytest.raises(KeyError, match="unknown groups"):
        presets.resnet18_tdann(sizes={"layer9": 3.0})


@pytest.mark.slow
def test_full_default_r3d18_mt_preset():
    sheets = presets.r3d18_mt()
    assert all(s.num_neighbourhoods > 15_000 for s in sheets.values())
    assert sheets["layer3.1"].neighbourhood_size == 500
