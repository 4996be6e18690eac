"""Position swap optimisation: the NumPy reference, the public API and its argument checks."""
import numpy as np
import pytest
import torch

from tdann_fast.swap import SwapStats, available_backends, optimize_positions, optimize_sheet_positions
from tdann_fast.swap import reference, rng as srng, windows


def _window(rng, m, stimuli=40, dead=0, side=3.0):
    resp = rng.normal(size=(stimuli, m))
    resp[:, :dead] = 2.5  # zero-variance units
    z = reference.standardize(resp)
    c = reference.window_correlation(z, np.arange(m))
    pos = rng.uniform(0.0, side, size=(m, 2))
    return c, pos


def test_standardize_dead_units_give_zero_correlations(rng):
    resp = rng.normal(size=(30, 8))
    resp[:, 3] = 7.0
    c = reference.window_correlation(reference.standardize(resp), np.arange(8))
    assert np.all(c[3] == 0) and np.all(c[:, 3] == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nan_to_num(np.corrcoef(resp.T))
    np.testing.assert_allclose(c, expected, atol=1e-6)


def test_gain_sign_matches_full_objectives(rng):
    """gain > 0 ⟺ the two-row TDANN objective and the whole-window objective both decrease."""
    c, pos = _window(rng, 40, dead=3)
    checked = 0
    for _ in range(300):
        a, b = rng.choice(40, size=2, replace=False)
        gain = reference.swap_gain(c, pos, a, b)
        swapped = pos.copy()
        swapped[[a, b]] = swapped[[b, a]]
        d_rows = reference.rows_objective(c, pos, a, b) - reference.rows_objective(c, swapped, a, b)
        d_exact = reference.window_objective(c, pos, "exact") - reference.window_objective(c, swapped, "exact")
        d_all = reference.window_objective(c, pos, "tdann") - reference.window_objective(c, swapped, "tdann")
        if abs(gain) > 1e-9:
            assert np.sign(d_rows) == np.sign(d_exact) == np.sign(d_all) == np.sign(gain)
            checked += 1
    assert checked > 250


@pytest.mark.parametrize("objective", ["tdann", "exact"])
def test_incremental_objective_equals_full_recomputation(rng, objective):
    c, pos = _window(rng, 60, dead=4)
    perm, accepted, before, after = reference.optimize_window(c, pos, 7, 3, 3000, objective)
    assert accepted > 0
    assert before == pytest.approx(reference.window_objective(c, pos, objective), abs=1e-12)
    assert after == pytest.approx(reference.window_objective(c, pos[perm], objective), abs=1e-10)
    assert after < before
    assert sorted(perm.tolist()) == list(range(60))


def test_trial_pairs_distinct_and_windows_differ():
    a, b = srng.trial_pairs(3, 0, 5000, 7)
    assert np.all(a != b) and a.min() >= 0 and b.min() >= 0 and max(a.max(), b.max()) <= 6
    assert set(zip(a.tolist(), b.tolist())) == {(i, j) for i in range(7) for j in range(7) if i != j}
    a2, b2 = srng.trial_pairs(3, 1, 5000, 7)  # another window: another sequence (no constant re-seeding)
    assert not (np.array_equal(a, a2) and np.array_equal(b, b2))


def test_windows_inside_extent_and_rounds_disjoint(rng):
    extent = (1.0, -2.0, 9.0, 4.0)
    rects = windows.window_rects(int(rng.integers(2**63)), 500, 1.5, extent)
    assert np.all(rects[:, 0] >= 1.0) and np.all(rects[:, 2] <= 9.0 + 1e-12)
    assert np.all(rects[:, 1] >= -2.0) and np.all(rects[:, 3] <= 4.0 + 1e-12)
    rounds = windows.schedule_rounds(rects, round_size=8)
    assert sorted(np.concatenate(rounds).tolist()) == list(range(500))
    for ids in rounds:
        assert 1 <= len(ids) <= 8
        for i in range(len(ids)):
            for j in range(i):
                p, q = rects[ids[i]], rects[ids[j]]
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]


def _problem(rng, n=300, stimuli=30, side=10.0):
    pos = rng.uniform(0.0, side, size=(n, 2)).astype(np.float32)
    # responses with spatial structure so swaps have something to find
    anchors = rng.uniform(0.0, side, size=(n, 2))
    resp = np.sin(anchors[:, 0] / 2.0)[None, :] * rng.normal(size=(stimuli, 1)) + 0.3 * rng.normal(size=(stimuli, n))
    resp[:, :5] = 0.0  # dead units
    return resp, pos


@pytest.mark.parametrize("objective", ["tdann", "exact"])
def test_reference_optimisation_improves_and_permutes(rng, objective):
    resp, pos = _problem(rng)
    new, stats = optimize_positions(resp, pos, 4.0, 6000, steps_per_neighbourhood=300, objective=objective,
                                    backend="reference", progress=False)
    assert isinstance(new, np.ndarray) and new.dtype == pos.dtype and new.shape == pos.shape
    assert sorted(map(tuple, new.tolist())) == sorted(map(tuple, pos.tolist()))
    assert isinstance(stats, SwapStats) and stats.num_windows == 20 and stats.total_trials <= 6000
    ok = ~stats.skipped
    assert np.all(stats.objective_after[ok] <= stats.objective_before[ok] + 1e-12)
    assert stats.total_accepted > 0 and stats.backend == "reference"
    assert "windows" in stats.summary()


def test_reference_deterministic_and_tensor_in_tensor_out(rng):
    resp, pos = _problem(rng, n=200)
    kw = dict(steps_per_neighbourhood=200, backend="reference", progress=False, seed=12345)
    p1, s1 = optimize_positions(resp, pos, 4.0, 2000, **kw)
    p2, s2 = optimize_positions(torch.from_numpy(resp), torch.from_numpy(pos), 4.0, 2000, **kw)
    assert isinstance(p2, torch.Tensor) and p2.dtype == torch.float32
    np.testing.assert_array_equal(p1, p2.numpy())
    np.testing.assert_array_equal(s1.accepted, s2.accepted)
    p_half, _ = optimize_positions(torch.from_numpy(resp).bfloat16(), pos, 4.0, 200, **kw)  # low-precision input
    assert p_half.shape == pos.shape
    p3, _ = optimize_positions(resp, pos, 4.0, 2000, **{**kw, "seed": 54321})
    assert not np.array_equal(p1, p3)


def test_large_windows_are_subsampled(rng):
    """A window holding >= 500 units works (a reference-code defect): subsampled to max_units."""
    n = 700
    pos = rng.uniform(0, 1.0, size=(n, 2))
    pos[:2] = [[0.0, 0.0], [1.0, 1.0]]  # the sheet spans 1 mm whatever the draw (a 0.99 mm window must fit)
    resp = rng.normal(size=(10, n))
    _, stats = optimize_positions(resp, pos, 0.99, 20, steps_per_neighbourhood=10, backend="reference",
                                  progress=False)
    assert np.all(stats.units == 500)


def test_sparse_windows_are_skipped(rng):
    pos = np.concatenate([rng.uniform(0, 0.1, size=(20, 2)), [[10.0, 10.0]]])
    resp = rng.normal(size=(5, 21))
    _, stats = optimize_positions(resp, pos, 1.0, 100, steps_per_neighbourhood=10, backend="reference",
                                  progress=False)
    assert np.all(stats.units[stats.skipped] < 5) and np.all(stats.trials[stats.skipped] == 0)


def test_errors(rng):
    resp, pos = _problem(rng, n=50)
    ok = dict(progress=False, backend="reference")
    with pytest.raises(ValueError, match="positions"):
        optimize_positions(resp, pos[:, :1], 1.0, 10, **ok)
    with pytest.raises(ValueError, match="units"):
        optimize_positions(resp[:, :40], pos, 1.0, 10, **ok)
    with pytest.raises(ValueError, match="stimuli"):
        optimize_positions(resp[:2], pos, 1.0, 10, **ok)
    bad = resp.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        optimize_positions(bad, pos, 1.0, 10, **ok)
    with pytest.raises(ValueError, match="larger than the sheet"):
        optimize_positions(resp, pos, 50.0, 10, **ok)
    with pytest.raises(ValueError, match="at least 5 units"):
        optimize_positions(resp[:, :3], pos[:3], 1.0, 10, **ok)
    with pytest.raises(ValueError, match="objective"):
        optimize_positions(resp, pos, 1.0, 10, objective="nope", **ok)
    with pytest.raises(ValueError, match="backend"):
        optimize_positions(resp, pos, 1.0, 10, progress=False, backend="gpu")
    with pytest.raises(ValueError, match="neighbourhood_width_mm"):
        optimize_positions(resp, pos, -1.0, 10, **ok)
    with pytest.raises(ValueError, match="steps"):
        optimize_positions(resp, pos, 1.0, -1, **ok)
    with pytest.raises(ValueError, match="seed"):
        optimize_positions(resp, pos, 1.0, 10, seed=-3, **ok)
    with pytest.raises(TypeError, match="steps"):
        optimize_positions(resp, pos, 1.0, 1.5, **ok)


def test_available_backends_lists_reference():
    avail = available_backends()
    assert avail[0] == "reference"
    if not torch.cuda.is_available():
        assert "cuda" not in avail
        with pytest.raises(RuntimeError, match="not available"):
            optimize_positions(np.zeros((3, 5)), np.zeros((5, 2)), 1.0, 1, backend="cuda", progress=False)


def test_sheet_convenience(rng):
    from tdann_fast.sheet import CorticalSheet

    sheet = CorticalSheet.retinotopic(8, 6, 6, side_mm=6.0, neighbourhood_width_mm=2.0, num_neighbourhoods=50,
                                      min_units=5)
    resp = rng.normal(size=(20, sheet.num_units))
    new, stats = optimize_sheet_positions(sheet, resp, 2000, steps_per_neighbourhood=200, backend="reference",
                                          progress=False, neighbourhood_kwargs=dict(num_neighbourhoods=30,
                                                                                    min_units=5))
    assert isinstance(new, CorticalSheet) and new.num_units == sheet.num_units
    assert new.side_mm == sheet.side_mm and 1 <= new.neighbourhoods.shape[0] <= 30
    a = sorted(map(tuple, new.positions.tolist()))
    assert a == sorted(map(tuple, sheet.positions.tolist()))
    assert stats.extent == (0.0, 0.0, 6.0, 6.0)
    with pytest.raises(TypeError, match="CorticalSheet"):
        optimize_sheet_positions("sheet", resp, 10)


def test_positions_outside_the_given_sheet_are_refused(rng):
    """With side_mm, a unit outside [0, side_mm]^2 would never be in a window (never moved): an error."""
    pos = rng.uniform(0, 4, (60, 2))
    resp = rng.normal(size=(10, 60))
    optimize_positions(resp, pos, 1.0, steps=10, side_mm=4.0, backend="reference", progress=False)
    pos[7] = (4.5, 1.0)
    with pytest.raises(ValueError, match=r"positions: 1 of 60 units lie outside the sheet .* unit 7"):
        optimize_positions(resp, pos, 1.0, steps=10, side_mm=4.0, backend="reference", progress=False)
