"""CorticalSheet: retinotopic positions, neighbourhoods (DESIGN §3-4), persistence and errors."""
import os
import pathlib
import re
import stat

import numpy as np
import pytest
import torch

from tdann_fast import CorticalSheet
from tdann_fast.errors import DamagedFileError
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


# ------------------------------------------------------------------------------------- positions inside the sheet

def _square_positions(rng, n=60, side=4.0):
    return torch.tensor(rng.uniform(0.0, side, size=(n, 2)), dtype=torch.float32)


def test_positions_outside_the_sheet_are_refused(rng):
    pos = _square_positions(rng)
    pos[7] = torch.tensor([4.5, 1.0])
    pos[20] = torch.tensor([1.0, -0.25])
    nb = torch.arange(10)[None]
    expected = (r"positions: 2 of 60 units lie outside the sheet \[0, 4\] x \[0, 4\] mm \(side_mm=4\), "
                r"e\.g\. unit 7 at \(4\.5, 1\)")
    with pytest.raises(ValueError, match=expected):
        CorticalSheet(pos, 4.0, 1.0, nb)
    with pytest.raises(ValueError, match=expected):
        CorticalSheet(pos, 4.0, 1.0)  # neighbourhoods computed: the sheet is checked first
    with pytest.raises(ValueError, match=expected):
        sample_neighbourhoods(pos, 4.0, 1.0, num_neighbourhoods=50, min_units=2)
    good = CorticalSheet(_square_positions(rng), 4.0, 1.0, nb)
    with pytest.raises(ValueError, match=expected):
        good.with_positions(pos, num_neighbourhoods=50, min_units=2)
    state = good.state()
    state["positions"] = pos
    with pytest.raises(ValueError, match=expected):
        CorticalSheet.from_state(state)


def test_only_rounding_is_forgiven_and_clipped_onto_the_edge(rng):
    side = 3.0
    pos = _square_positions(rng, side=side).double()
    pos[0, 0] = side * (1 + 5e-7)
    pos[1, 1] = -side * 5e-7
    sheet = CorticalSheet(pos, side, 1.0, torch.arange(5)[None])
    assert float(sheet.positions.min()) >= 0.0 and float(sheet.positions.double().max()) <= side
    assert sheet.positions[0, 0].item() == pytest.approx(side) and sheet.positions[1, 1].item() == 0.0
    pos[0, 0] = side * (1 + 3e-6)
    with pytest.raises(ValueError, match=r"positions: 1 of 60 units lie outside the sheet .* e\.g\. unit 0 at"):
        CorticalSheet(pos, side, 1.0, torch.arange(5)[None])


@pytest.mark.parametrize("side", [0.1, 5.7 ** 0.5, 940.0 ** 0.5, 56.0 ** 0.5, 1.0 / 3.0, 2.7])
def test_retinotopic_positions_never_leave_the_sheet(side):
    """Sides that float32 rounds up: the float64 rescale to [0, side] must not land outside after the cast."""
    assert float(np.float32(side)) > side  # the awkward case
    for seed in range(3):
        pos = retinotopic_positions(8, 5, 4, side, jitter=0.3, seed=seed).double()
        assert float(pos.min()) >= 0.0 and float(pos.max()) <= side, (seed, float(pos.max()) - side)
    sheet = CorticalSheet.retinotopic(8, 5, 4, side, side / 2, num_neighbourhoods=50, min_units=5)
    assert float(sheet.positions.double().max()) <= side


def test_state_returns_copies():
    sheet = _sheet()
    before = sheet.clone()
    state = sheet.state()
    state["positions"][0] = torch.tensor([-50.0, 99.0])
    state["neighbourhoods"][0, 0] = -1
    assert torch.equal(sheet.positions, before.positions)
    assert torch.equal(sheet.neighbourhoods, before.neighbourhoods)


# ------------------------------------------------------------------------------------------------- sheet files

def test_saved_sheet_file_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "sheet.pt"
        _sheet().save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~0o022
    finally:
        os.umask(old)
    assert CorticalSheet.load(path).num_units == _sheet().num_units


def _damaged(path):
    return pytest.raises(DamagedFileError, match=re.escape(str(path)))


def test_load_empty_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    _sheet().save(good)
    data = good.read_bytes()
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with _damaged(empty):
        CorticalSheet.load(empty)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with _damaged(truncated):
        CorticalSheet.load(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("positions: 1, 2, 3\n")
    with _damaged(text):
        CorticalSheet.load(text)


def test_load_torch_files_of_another_kind(tmp_path):
    for i, obj in enumerate([{"model": torch.zeros(3)}, torch.zeros(4, 2), [1, 2, 3]]):
        path = tmp_path / f"other{i}.pt"
        torch.save(obj, path)
        with pytest.raises(DamagedFileError, match=re.escape(str(path)) + ".*not a saved CorticalSheet"):
            CorticalSheet.load(path)
    incomplete = {k: v for k, v in _sheet().state().items() if k != "neighbourhoods"}
    path = tmp_path / "incomplete.pt"
    torch.save(incomplete, path)
    with pytest.raises(DamagedFileError, match=re.escape(str(path)) + ".*missing fields \\['neighbourhoods'\\]"):
        CorticalSheet.load(path)


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_load_never_runs_code_from_a_crafted_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.pt"
    state = _sheet().state()
    state["shape"] = _Payload(marker)
    torch.save(state, path)
    with _damaged(path):
        CorticalSheet.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is really dangerous: an unsafe load runs the payload
    assert marker.exists()
