"""NumPy reference of the position swap optimisation (DESIGN §5): the definition the C++/CUDA backends match.

Per window (M units, correlation matrix C fixed, local positions p):

* ``S_ij = 1 / (|p_i - p_j| + 1)``.
* objective ``"tdann"`` (parity with the reference TDANN code): SL_rel = (1 - r)/2 with r the Pearson correlation
  of C against S over the rows of the units involved, all columns included; for the whole window (reported in
  :class:`~tdann_fast.swap.SwapStats`) that is all M² entries, diagonal included.
* objective ``"exact"``: SL_rel over the P = M(M-1)/2 pairs i > j of the window (the training loss of DESIGN §3).

A trial picks units a != b, swaps their positions and keeps the swap only if the objective strictly decreases.
Swapping a and b permutes the S values (the multiset of S entries of rows {a, b}, and of the whole window, is
unchanged), and C is fixed, so in both objectives the means and variances of x = C and y = S do not change; only
the co-moment Σxy does, by

    gain = Σ_{j ∉ {a, b}} (C_aj - C_bj) · (S_bj - S_aj)        (S before the swap)

(the two-row objective counts each affected pair once, the lower triangle too). Hence for both objectives
"the objective strictly decreases" ⟺ ``gain > 0`` (when gain > 0 both variances are > 0), and both objectives
accept exactly the same swaps; they differ in the objective value that is reported. The decision is computed in
float64 in a fixed order (:func:`lane_sum`; j = a and j = b contribute 0), which the C++ backend reproduces bit
for bit; ``test_swap_reference.py`` checks the equivalence with a full recomputation.

The objective of a window is kept up to date from maintained sums (Σx, Σy, Σxx, Σyy constant, Σxy += gain·k
with k = 1 for "exact" and 2 for "tdann"), O(1) per accepted swap after the O(M) gain.

Correlation matrices: responses are standardised once per optimisation (:func:`standardize`: dead units, whose
std <= 1e-6·|mean|, get z = 0 and therefore zero correlations), stored in float32; a window's
``C = clip(Z_w Z_wᵀ / (S - 1), -1, 1)`` is a float32 GEMM (:func:`window_correlation`).

Differences from the reference TDANN code (DESIGN §5): the random numbers are counter-based per (seed, window,
trial) (no re-seeding with a constant, so windows get different pairs), and windows of any size work
(subsampled to ``max_units`` without replacement).
"""
from __future__ import annotations

import numpy as np

from .._options import SWAP_OBJECTIVES as OBJECTIVES
from . import rng
from .windows import window_slots

MIN_UNITS = 5


def standardize(responses: np.ndarray) -> np.ndarray:
    """z-scores over stimuli, float32, transposed: shape (N, S) (a unit per row); dead units (std <= 1e-6·|mean|)
    get z = 0."""
    x = np.asarray(responses, dtype=np.float64)
    s = x.shape[0]
    mean = x.mean(axis=0)
    xc = x - mean
    std = np.sqrt((xc * xc).sum(axis=0) / (s - 1))
    dead = std <= 1e-6 * np.abs(mean)
    z = xc / np.where(dead, 1.0, std)
    z[:, dead] = 0.0
    return np.ascontiguousarray(z.T, dtype=np.float32)


def window_correlation(zt: np.ndarray, units: np.ndarray) -> np.ndarray:
    """C (M, M) float32 of the window's units: ``clip(Z_w Z_wᵀ / (S - 1), -1, 1)`` from the float32 standardised
    responses ``zt`` (N, S) (units as rows).

    Computed in float32 with torch's CPU BLAS, exactly the operations the C++ backend runs through ATen, so both
    see the same bits (single-precision GEMM results do not depend on the thread count for these shapes; the tests
    check the equality)."""
    import torch

    zw = torch.from_numpy(zt).index_select(0, torch.from_numpy(np.asarray(units, dtype=np.int64)))
    c = torch.mm(zw, zw.t()).div_(float(zt.shape[1] - 1)).clamp_(-1.0, 1.0)
    c = torch.tril(c) + torch.tril(c, -1).t()  # exactly symmetric (a GEMM need not be); the gain formula needs it
    return torch.nan_to_num(c, 0.0).contiguous().numpy()


def similarity(pos: np.ndarray) -> np.ndarray:
    """S (M, M) float64 = 1 / (distance + 1)."""
    dx = pos[:, None, 0] - pos[None, :, 0]
    dy = pos[:, None, 1] - pos[None, :, 1]
    return 1.0 / (np.sqrt(dx * dx + dy * dy) + 1.0)


def _sl_rel(x: np.ndarray, y: np.ndarray) -> float:
    """(1 - pearson(x, y)) / 2 with the package's guard r = Sxy / sqrt(max(Sxx·Syy, 1e-30))."""
    xc = x - x.mean()
    yc = y - y.mean()
    r = (xc * yc).sum() / np.sqrt(max((xc * xc).sum() * (yc * yc).sum(), 1e-30))
    return float((1.0 - r) / 2.0)


def window_objective(c: np.ndarray, pos: np.ndarray, objective: str) -> float:
    """Full float64 recomputation of a window's objective (see module docstring)."""
    c = np.asarray(c, dtype=np.float64)
    s = similarity(np.asarray(pos, dtype=np.float64))
    if objective == "exact":
        i, j = np.tril_indices(c.shape[0], -1)
        return _sl_rel(c[i, j], s[i, j])
    return _sl_rel(c.ravel(), s.ravel())


def rows_objective(c: np.ndarray, pos: np.ndarray, a: int, b: int) -> float:
    """The reference TDANN trial objective: SL_rel of rows {a, b} of C against S (all columns)."""
    s = similarity(np.asarray(pos, dtype=np.float64))
    rows = [a, b]
    return _sl_rel(np.asarray(c, dtype=np.float64)[rows].ravel(), s[rows].ravel())


class ObjectiveSums:
    """Maintained sums of a window's objective (float64)."""

    def __init__(self, c: np.ndarray, pos: np.ndarray, objective: str):
        c = np.asarray(c, dtype=np.float64)
        s = similarity(np.asarray(pos, dtype=np.float64))
        if objective == "exact":
            i, j = np.tril_indices(c.shape[0], -1)
            x, y = c[i, j], s[i, j]
            self.factor = 1.0
        else:
            x, y = c.ravel(), s.ravel()
            self.factor = 2.0
        self.n = float(x.size)
        self.sx, self.sy = float(x.sum()), float(y.sum())
        self.sxx, self.syy, self.sxy = float((x * x).sum()), float((y * y).sum()), float((x * y).sum())

    def accept(self, gain: float) -> None:
        self.sxy += self.factor * gain

    def value(self) -> float:
        sxy = self.sxy - self.sx * self.sy / self.n
        sxx = self.sxx - self.sx * self.sx / self.n
        syy = self.syy - self.sy * self.sy / self.n
        r = sxy / np.sqrt(max(sxx * syy, 1e-30))
        return float((1.0 - r) / 2.0)


def swap_gain(c: np.ndarray, pos: np.ndarray, a: int, b: int) -> float:
    """Σ_{j∉{a,b}} (C_aj - C_bj)(S_bj - S_aj) in float64, summed in the order of :func:`lane_sum`."""
    x, y = pos[:, 0], pos[:, 1]
    dxa, dya = pos[a, 0] - x, pos[a, 1] - y
    dxb, dyb = pos[b, 0] - x, pos[b, 1] - y
    sa = 1.0 / (np.sqrt(dxa * dxa + dya * dya) + 1.0)
    sb = 1.0 / (np.sqrt(dxb * dxb + dyb * dyb) + 1.0)
    terms = (c[a].astype(np.float64) - c[b].astype(np.float64)) * (sb - sa)
    terms[a] = 0.0
    terms[b] = 0.0
    return lane_sum(terms)


LANES = 8


def lane_sum(terms: np.ndarray) -> float:
    """The package's fixed summation order (vectorisable, reproducible): term j goes to lane j mod 8, each lane
    adds left to right, then ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))."""
    pad = (-terms.size) % LANES
    t = np.concatenate([terms, np.zeros(pad)]).reshape(-1, LANES)
    p = np.cumsum(t, axis=0)[-1].tolist()  # cumsum adds strictly in order (np.sum would use pairwise order)
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))


def optimize_window(c: np.ndarray, pos: np.ndarray, seed: int, window: int, trials: int, objective: str = "tdann"):
    """Greedy swap trials on one window.

    Args:
        c: (M, M) float32 correlation matrix (fixed).
        pos: (M, 2) float64 positions of the window's units (not modified).
        seed, window: select the counter-based stream of trial pairs.
        trials: number of trials.
        objective: "tdann" or "exact" (same decisions, different reported values).

    Returns:
        (perm, accepted, before, after): ``perm[k]`` is the index of the original local position that unit k
        holds at the end (new_pos = pos[perm]); accepted swaps; objective before and after.
    """
    m = c.shape[0]
    pos = np.array(pos, dtype=np.float64, copy=True)
    perm = np.arange(m, dtype=np.int64)
    sums = ObjectiveSums(c, pos, objective)
    before = sums.value()
    accepted = 0
    if trials > 0 and m >= 2:
        aa, bb = rng.trial_pairs(seed, window, trials, m)
        for a, b in zip(aa.tolist(), bb.tolist()):
            gain = swap_gain(c, pos, a, b)
            if gain > 0.0:
                pos[[a, b]] = pos[[b, a]]
                perm[[a, b]] = perm[[b, a]]
                sums.accept(gain)
                accepted += 1
    return perm, accepted, before, sums.value()


def run_round(zt, slot_pos, unit_at_slot, rects, window_ids, trials, seed, max_units, objective):
    """Process one round of windows sequentially (modifies ``unit_at_slot``); returns (R, 5) stats rows
    ``[units, accepted, objective_before, objective_after, trials_done]`` (NaN objectives for skipped windows)."""
    out = np.zeros((len(window_ids), 5), dtype=np.float64)
    for r, w in enumerate(np.asarray(window_ids).tolist()):
        slots = window_slots(slot_pos, rects[w], seed, w, max_units)
        m = slots.size
        if m < MIN_UNITS:
            out[r] = (m, 0, np.nan, np.nan, 0)
            continue
        units = unit_at_slot[slots]
        c = window_correlation(zt, units)
        perm, acc, before, after = optimize_window(c, slot_pos[slots], seed, w, int(trials[w]), objective)
        unit_at_slot[slots[perm]] = units
        out[r] = (m, acc, before, after, trials[w])
    return out
