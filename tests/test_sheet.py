"""CorticalSheet: retinotopic positions, neighbourhoods (DESIGN §3-4), persistence and errors."""
import numpy as np
import pytest
import torch

from tdann_fast import CorticalSheet
from tdann_fast.sheet import retinotopic_positions, sample_neighbourhoods


def _sheet(seed=0, **kw):
    args = dict(num_neighbourhoods=400, min_units=10)
    args.update(kw)
    return CorticalSheet.retinotopic(16, 6, 8, 4.0, 1.0, seed=seed, **args)


def test_positions_inside_sheet_and_in_chw_order():
    sheet = _sheet()
    pos = sheet.positions
    assert pos.shape == (16 * 6 * 8, 2) and pos.dtype == torch.float32
    assert float(pos.min()) >= 0.0 and float(pos.max()) <= 4.0 + 1e-6
    grid = pos.reshape(16, 6, 8, 2)
    # columns map to x, rows to y: the channel-mean position increases along each axis
    mean_xy = grid.mean(0)
    assert bool((mean_xy[:, 1:, 0] > mean_xy[:, :-1, 0]).all())
    assert bool((mean_xy[1:, :, 1] > mean_xy[:-1, :, 1]).all())


def test_channels_cluster_near_their_anchor():
    c, h, w, side = 32, 5, 5, 10.0
    pos = retinotopic_positions(c, h, w, side, overlap=1.0, jitter=0.05, seed=3).reshape(c, h, w, 2)
    spacing = side / w
    anchors = pos.mean(0)  # (h, w, 2)
    spread = (pos - anchors).norm(dim=-1)
    assert float(spread.max()) < 1.0 * spacing
    # a unit is nearer its own anchor than any other anchor, for the vast majority of units
    d_all = (pos.reshape(-1, 1, 2) - anchors.reshape(1, -1, 2)).norm(dim=-1)
    own = torch.arange(h * w).repeat(c)
    assert float((d_all.argmin(1) == own).float().mean()) > 0.9


def test_overlap_widens_the_scatter():
    tight = retinotopic_positions(32, 4, 4, 8.0, overlap=0.5, jitter=0.0, seed=1).reshape(32, 16, 2)
    wide = retinotopic_positions(32, 4, 4, 8.0, overlap=2.0, jitter=0.0, seed=1).reshape(32, 16, 2)
    assert float(wide.std(0).mean()) > 2.0 * float(tight.std(0).mean())


def test_neighbourhood_shape_and_membership():
    sheet = _sheet(num_neighbourhoods=300, max_units=60, min_units=10, percentile=5.0)
    nb = sheet.neighbourhoods
    k, m = nb.shape
    assert nb.dtype == torch.int64 and 0 < k <= 300 and 10 <= m <= 60
    pos = sheet.positions.numpy()
    for row in nb.numpy()[:50]:
        assert len(set(row.tolist())) == m  # without replacement
        assert np.all(np.diff(row) > 0)
        span = pos[row].max(0) - pos[row].min(0)
        assert np.all(span <= sheet.neighbourhood_width_mm + 1e-6)  # all inside one window


def test_neighbourhood_counts_follow_percentile_rule():
    """Brute force: recompute window counts with the same centres and check threshold and K."""
    pos = retinotopic_positions(8, 10, 10, 5.0, seed=2).numpy().astype(np.float64)
    side, width, n_windows, pct = 5.0, 1.2, 500, 5.0
    nb = sample_neighbourhoods(pos, side, width, n_windows, max_units=10_000, min_units=5, percentile=pct, seed=7)
    rng = np.random.default_rng(7)
    centres = rng.uniform(width / 2, side - width / 2, size=(n_windows, 2))
    inside = (np.abs(pos[None, :, 0] - centres[:, None, 0]) <= width / 2) & (
        np.abs(pos[None, :, 1] - centres[:, None, 1]) <= width / 2
    )
    counts = inside.sum(1)
    threshold = max(int(np.floor(np.percentile(counts, pct))), 5)
    assert nb.shape == (int((counts >= threshold).sum()), threshold)
    kept = np.flatnonzero(counts >= threshold)
    for r, w in zip(nb.numpy()[:40], kept[:40]):
        assert set(r.tolist()) <= set(np.flatnonzero(inside[w]).tolist())


def test_same_seed_same_sheet_other_seed_differs():
    a, b, c = _sheet(seed=5), _sheet(seed=5), _sheet(seed=6)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.neighbourhoods, b.neighbourhoods)
    assert not torch.equal(a.positions, c.positions)


def test_save_load_roundtrip(tmp_path):
    sheet = _sheet()
    path = tmp_path / "sub" / "sheet.pt"
    sheet.save(path)
    loaded = CorticalSheet.load(path)
    assert torch.equal(loaded.positions, sheet.positions)
    assert torch.equal(loaded.neighbourhoods, sheet.neighbourhoods)
    assert loaded.side_mm == sheet.side_mm and loaded.neighbourhood_width_mm == sheet.neighbourhood_width_mm
    assert loaded.shape == sheet.shape
    assert [p.name for p in path.parent.iterdir()] == ["sheet.pt"]  # no temp file left behind


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": "something else"}, path)
    with pytest.raises(ValueError, match="not a saved CorticalSheet"):
        CorticalSheet.load(path)
    state = _sheet().state()
    state["version"] = 99
    torch.save(state, path)
    with pytest.raises(ValueError, match="version"):
        CorticalSheet.load(path)


def test_with_positions_recomputes_neighbourhoods():
    sheet = _sheet()
    perm = torch.randperm(sheet.num_units)
    moved = sheet.with_positions(sheet.positions[perm], num_neighbourhoods=200, min_units=10)
    assert torch.equal(moved.positions, sheet.positions[perm])
    assert moved.neighbourhoods.shape[0] <= 200
    pos = moved.positions.numpy()
    row = moved.neighbourhoods[0].numpy()
    assert np.all(pos[row].max(0) - pos[row].min(0) <= moved.neighbourhood_width_mm + 1e-6)
    with pytest.raises(ValueError, match="positions has 3 rows"):
        sheet.with_positions(torch.rand(3, 2))


def test_to_and_clone():
    sheet = _sheet()
    moved = sheet.to("cpu")
    assert moved.positions.device.type == "cpu"
    copy = sheet.clone()
    copy.positions[0, 0] = -5
    assert sheet.positions[0, 0] >= 0


class TestErrors:
    def test_width_larger_than_sheet(self):
        with pytest.raises(ValueError, match="neighbourhood_width_mm"):
            CorticalSheet.retinotopic(4, 3, 3, 2.0, 3.0)

    def test_bad_sizes(self):
        with pytest.raises(ValueError, match="channels"):
            CorticalSheet.retinotopic(0, 3, 3, 2.0, 1.0)
        with pytest.raises(ValueError, match="side_mm"):
            CorticalSheet.retinotopic(4, 3, 3, -2.0, 1.0)
        with pytest.raises(ValueError, match="jitter"):
            CorticalSheet.retinotopic(4, 3, 3, 2.0, 1.0, jitter=-1)

    def test_too_few_units_per_window(self):
        with pytest.raises(ValueError, match="min_units"):
            CorticalSheet.retinotopic(2, 3, 3, 10.0, 0.5, num_neighbourhoods=50)

    def test_positions_and_neighbourhoods(self):
        with pytest.raises(ValueError, match=r"positions must have shape \(N, 2\)"):
            CorticalSheet(torch.rand(10, 3), 1.0, 0.5, torch.zeros(1, 2, dtype=torch.long))
        with pytest.raises(ValueError, match="non-finite"):
            CorticalSheet(torch.full((10, 2), float("nan")), 1.0, 0.5, torch.zeros(1, 2, dtype=torch.long))
        with pytest.raises(ValueError, match="indices"):
            CorticalSheet(torch.rand(10, 2), 1.0, 0.5, torch.tensor([[0, 10]]))
        with pytest.raises(ValueError, match="shape"):
            CorticalSheet(torch.rand(10, 2), 1.0, 0.5, torch.tensor([[0, 1]]), shape=(3, 2, 2))
