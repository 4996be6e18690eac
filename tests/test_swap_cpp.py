"""Position swap optimisation: the C++ (OpenMP) backend reproduces the NumPy reference exactly."""
import numpy as np
import pytest
import torch

from tdann_fast.swap import backend as swap_backend
from tdann_fast.swap import optimize_positions, reference, windows

_C = swap_backend.extension()
pytestmark = pytest.mark.skipif(_C is None, reason=f"tdann_fast._C not built: {swap_backend.extension_error()}")


def _problem(rng, n=400, stimuli=30, side=10.0, dead=6):
    pos = rng.uniform(0.0, side, size=(n, 2)).astype(np.float32)
    anchors = rng.uniform(0.0, side, size=(n, 2))
    resp = np.cos(anchors[:, 1] / 1.5)[None, :] * rng.normal(size=(stimuli, 1)) + 0.5 * rng.normal(size=(stimuli, n))
    resp[:, :dead] = 1.0
    return resp, pos


def test_extension_reports_backends():
    assert "cpp" in swap_backend.available_backends()
    assert isinstance(_C.with_cuda, bool)


@pytest.mark.parametrize("objective", ["tdann", "exact"])
def test_window_kernel_matches_reference(rng, objective):
    for m in (2, 5, 37, 120):
        z = reference.standardize(rng.normal(size=(25, m)))
        c = reference.window_correlation(z, np.arange(m))
        assert c.dtype == np.float32 and c.shape == (m, m)
        pos = rng.uniform(0, 2.0, size=(m, 2))
        seed, window = int(rng.integers(2**63)), int(rng.integers(1000))
        p_ref, acc_ref, b_ref, a_ref = reference.optimize_window(c, pos, seed, window, 1500, objective)
        perm, acc, before, after = _C.swap_window_cpu(torch.from_numpy(c), torch.from_numpy(pos), seed, window, 1500,
                                                      objective == "exact")
        np.testing.assert_array_equal(perm.numpy(), p_ref)
        assert acc == acc_ref
        assert before == pytest.approx(b_ref, abs=1e-10) and after == pytest.approx(a_ref, abs=1e-10)
        # the incrementally maintained objective equals a full float64 recomputation after many swaps
        assert after == pytest.approx(reference.window_objective(c, pos[perm.numpy()], objective), abs=1e-10)


def test_window_correlation_matches_reference(rng):
    z = reference.standardize(rng.normal(size=(60, 90)))
    units = rng.choice(90, size=40, replace=False)
    ref = reference.window_correlation(z, units)
    got = _C.window_correlation(torch.from_numpy(z), torch.from_numpy(units)).numpy()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, got.T)  # exactly symmetric: the gain formula relies on it
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(got, np.corrcoef(z[units].astype(np.float64)), atol=1e-5)


def test_schedule_matches_reference(rng):
    rects = windows.window_rects(int(rng.integers(2**63)), 700, 2.0, (0.0, 0.0, 9.0, 7.0))
    ref = windows.schedule_rounds(rects, 16, 64)
    ids, off = _C.schedule_rounds(torch.from_numpy(rects), 16, 64)
    got = [ids.numpy()[off[i]:off[i + 1]] for i in range(len(off) - 1)]
    assert len(got) == len(ref) and all(np.array_equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("objective", ["tdann", "exact"])
def test_cpp_reproduces_reference_exactly(rng, objective):
    resp, pos = _problem(rng)
    seed = int(rng.integers(2**63))
    kw = dict(steps_per_neighbourhood=250, max_units=120, objective=objective, seed=seed, progress=False)
    p_ref, s_ref = optimize_positions(resp, pos, 3.0, 8000, backend="reference", **kw)
    p1, s1 = optimize_positions(resp, pos, 3.0, 8000, backend="cpp", threads=1, **kw)
    np.testing.assert_array_equal(p1, p_ref)
    np.testing.assert_array_equal(s1.accepted, s_ref.accepted)
    np.testing.assert_array_equal(s1.units, s_ref.units)
    np.testing.assert_allclose(s1.objective_after, s_ref.objective_after, atol=1e-9)
    assert s1.total_accepted > 0 and s1.backend == "cpp"


def test_cpp_independent_of_thread_count(rng):
    resp, pos = _problem(rng, n=1500, side=20.0)
    kw = dict(steps_per_neighbourhood=200, max_units=150, seed=int(rng.integers(2**63)), progress=False)
    p1, s1 = optimize_positions(torch.from_numpy(resp), torch.from_numpy(pos), 3.0, 40000, backend="cpp",
                                threads=1, **kw)
    p2, s2 = optimize_positions(torch.from_numpy(resp), torch.from_numpy(pos), 3.0, 40000, backend="cpp",
                                threads=2, **kw)
    assert isinstance(p1, torch.Tensor)
    assert torch.equal(p1, p2)
    np.testing.assert_array_equal(s1.accepted, s2.accepted)
    ok = ~s1.skipped
    assert np.all(s1.objective_after[ok] <= s1.objective_before[ok] + 1e-12)
    assert s1.rounds < s1.num_windows  # windows did run concurrently
    # a permutation of the input rows
    assert sorted(map(tuple, p1.tolist())) == sorted(map(tuple, torch.from_numpy(pos).tolist()))
