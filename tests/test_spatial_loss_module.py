"""SpatialLoss: weighted multi-layer sum, buffers, sampling, freezing, state and errors."""
import numpy as np
import pytest
import torch

from tdann_fast import CorticalSheet, SpatialLoss, spatial_correlation_loss
from tdann_fast.loss.module import draw_rows

from _np_reference import layer_loss as np_layer_loss


def _sheets():
    return {
        "a.0": CorticalSheet.retinotopic(6, 4, 4, 3.0, 1.2, num_neighbourhoods=100, min_units=8, seed=1),
        "b": CorticalSheet.retinotopic(10, 3, 3, 2.0, 0.9, num_neighbourhoods=100, min_units=8, seed=2),
    }


def _features(rng, b=5):
    return {"a.0": torch.tensor(rng.normal(size=(b, 6, 3, 4, 4))), "b": torch.tensor(rng.normal(size=(b, 10, 3, 3)))}


def test_weighted_sum_of_layers_matches_reference(rng):
    sheets = _sheets()
    loss = SpatialLoss(sheets, alpha={"a.0": 0.25, "b": 2.0}, neighbourhoods_per_step=3, seed=4)
    feats = _features(rng)
    total = loss(feats)
    # replay the sampler (a pure function of seed, layer, step) to know which rows were drawn
    expected = 0.0
    for layer, (name, w) in enumerate((("a.0", 0.25), ("b", 2.0))):
        table = sheets[name].neighbourhoods
        rows = table[draw_rows(4, layer, torch.tensor(0), 3, table.shape[0])]
        value = np_layer_loss(feats[name].numpy(), sheets[name].positions.double().numpy(), rows.numpy())
        assert loss.last_layer_losses[name].item() == pytest.approx(value, abs=1e-10)
        expected += w * value
    assert total.item() == pytest.approx(expected, abs=1e-10)


def test_state_dict_not_buffers_and_resume_sampling(rng):
    loss = SpatialLoss(_sheets(), alpha=0.5, seed=11)
    keys = set(loss.state_dict())
    assert {"sheets.a__0.positions", "sheets.a__0.neighbourhoods", "sheets.b.positions", "alpha",
            "sampler_step"} <= keys
    assert dict(loss.named_buffers()) == {}  # replicated state: DDP broadcasts buffers, and none of these
    assert list(loss.parameters()) == []
    feats = _features(rng)
    loss(feats)
    state = loss.state_dict()
    nxt = loss(feats)
    fresh = SpatialLoss(_sheets(), alpha=0.5, seed=999)
    fresh.load_state_dict(state)
    assert fresh(feats).item() == pytest.approx(nxt.item())  # sampler resumes where it was saved


def test_to_moves_state_and_keeps_dtypes():
    loss = SpatialLoss(_sheets()).to(torch.float64)
    assert loss.positions("b").dtype == torch.float32  # .to(dtype) keeps the sheet's precision
    assert loss.neighbourhoods("b").dtype == torch.int64
    moved = loss.to("meta")
    assert moved.positions("b").device.type == "meta" and moved.alpha.device.type == "meta"
    assert moved.sampler_step.device.type == "meta"


def test_sampler_rows_are_uniform_and_differ_between_steps_and_layers():
    rows = torch.stack([draw_rows(7, 0, torch.tensor(s), 4, 10) for s in range(3000)])
    counts = torch.bincount(rows.reshape(-1), minlength=10).double()
    assert rows.min() >= 0 and rows.max() < 10
    # 12000 draws over 10 rows: each count 1200 +- 35 (sd); 6 sd
    assert (counts - 1200).abs().max() < 210
    assert not torch.equal(draw_rows(7, 0, torch.tensor(5), 4, 1000), draw_rows(7, 1, torch.tensor(5), 4, 1000))
    assert not torch.equal(draw_rows(7, 0, torch.tensor(5), 4, 1000), draw_rows(8, 0, torch.tensor(5), 4, 1000))
    big = torch.tensor(2**40 + 5)  # steps beyond 2^32 stay in range
    assert 0 <= int(draw_rows(2**63, 3, big, 1, 17)) < 17


def test_freeze_and_set_sheet():
    sheets = _sheets()
    loss = SpatialLoss(sheets)
    new = sheets["b"].with_positions(sheets["b"].positions.flip(0), num_neighbourhoods=50, min_units=8)
    loss.set_sheet("b", new)
    assert torch.equal(loss.positions("b"), new.positions)
    assert loss.neighbourhoods("b").shape == new.neighbourhoods.shape
    loss.freeze()
    assert loss.frozen
    with pytest.raises(RuntimeError, match="frozen"):
        loss.set_sheet("b", sheets["b"])
    state = loss.state_dict()
    other = SpatialLoss(_sheets())
    other.load_state_dict(state)  # a neighbourhood table of another size is adopted
    assert other.frozen and torch.equal(other.positions("b"), new.positions)


def test_no_collective_without_process_group(rng):
    loss = SpatialLoss(_sheets(), gather_distributed=True)
    assert torch.isfinite(loss(_features(rng)))


def test_matches_functional_form(rng):
    sheets = _sheets()
    loss = SpatialLoss({"b": sheets["b"]}, seed=3, time_reduction="dual")
    feats = {"b": torch.tensor(rng.normal(size=(6, 10, 3, 3)))}
    rows = loss.sample_neighbourhoods("b")  # the rows of the coming step
    value = loss(feats)
    assert value.item() == pytest.approx(
        spatial_correlation_loss(feats["b"], sheets["b"].positions.double(), rows, time_reduction="dual").item()
    )


class TestErrors:
    def test_construction(self):
        with pytest.raises(ValueError, match="non-empty"):
            SpatialLoss({})
        with pytest.raises(TypeError, match="CorticalSheet"):
            SpatialLoss({"a": torch.zeros(3)})
        with pytest.raises(KeyError, match="no weight for layers"):
            SpatialLoss(_sheets(), alpha={"a.0": 1.0})
        with pytest.raises(KeyError, match="unknown layers"):
            SpatialLoss(_sheets(), alpha={"a.0": 1.0, "b": 1.0, "c": 1.0})
        with pytest.raises(ValueError, match="alpha for layer"):
            SpatialLoss(_sheets(), alpha=-1.0)
        with pytest.raises(ValueError, match="neighbourhoods_per_step"):
            SpatialLoss(_sheets(), neighbourhoods_per_step=0)
        with pytest.raises(ValueError, match="variant"):
            SpatialLoss(_sheets(), variant="x")

    def test_forward(self, rng):
        loss = SpatialLoss(_sheets())
        feats = _features(rng)
        with pytest.raises(KeyError, match=r"missing \['b'\]"):
            loss({"a.0": feats["a.0"]})
        with pytest.raises(KeyError, match=r"unknown \['c'\]"):
            loss({**feats, "c": feats["b"]})
        with pytest.raises(ValueError, match="has 60 units"):
            loss({**feats, "b": torch.randn(5, 60)})
        with pytest.raises(ValueError, match="at least 3 samples"):
            loss({"a.0": feats["a.0"][:2], "b": feats["b"][:2]})
        bad = feats["b"].clone()
        bad[:] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            loss({**feats, "b": bad})
        with pytest.raises(KeyError, match="unknown layer name"):
            loss.positions("zzz")


def test_layer_names_with_the_same_buffer_key_are_refused():
    """'.' is stored as '__' in the buffer keys: 'x.y' and 'x__y' would share one slot (one silently lost)."""
    sheets = _sheets()
    with pytest.raises(ValueError, match=r"layer names 'a\.0' and 'a__0' both map to the buffer key 'a__0'"):
        SpatialLoss({"a.0": sheets["a.0"], "a__0": sheets["b"]})
    with pytest.raises(ValueError, match=r"layer names 'x__y' and 'x\.y' both map"):
        SpatialLoss({"x__y": sheets["b"], "x.y": sheets["b"]})
    loss = SpatialLoss({"a.0": sheets["a.0"], "a_0": sheets["b"]})  # distinct keys still work
    assert set(loss.state_dict()) >= {"sheets.a__0.positions", "sheets.a_0.positions"}


def test_positions_outside_the_sheet_are_refused():
    sheets = _sheets()
    loss = SpatialLoss(sheets)
    n = sheets["b"].num_units
    outside = sheets["b"].positions.clone()
    outside[3] = torch.tensor([2.5, 0.5])  # side_mm = 2
    with pytest.raises(ValueError, match=r"positions: 1 of 90 units lie outside the sheet \[0, 2\] x \[0, 2\] mm "
                                         r".*unit 3 at \(2\.5, 0\.5\)"):
        loss.set_positions("b", outside, num_neighbourhoods=50, min_units=8)
    edited = sheets["b"].clone()
    edited.positions[3] = torch.tensor([2.5, 0.5])  # a sheet edited after it was built
    with pytest.raises(ValueError, match=r"sheet\.positions: 1 of 90 units lie outside .* unit 3 at \(2\.5, 0\.5\)"):
        loss.set_sheet("b", edited)
    with pytest.raises(ValueError, match=r"sheets\['b'\]\.positions: 1 of 90 units lie outside"):
        SpatialLoss({"a.0": sheets["a.0"], "b": edited})
    assert n == 90 and torch.equal(loss.positions("b"), sheets["b"].positions)  # nothing was changed
    state = loss.state_dict()
    state["sheets.b.positions"] = outside
    with pytest.raises(RuntimeError, match=r"sheets\.b\.positions: 1 of 90 units lie outside"):
        SpatialLoss(_sheets()).load_state_dict(state)
