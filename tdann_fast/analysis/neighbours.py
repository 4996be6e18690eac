"""Local map structure: preferred-angle differences between adjacent units, and the smoothness curve.

* :func:`adjacent_differences`: for every unit, the difference Δ ∈ [0, period/2] between its preferred angle and
  that of its nearest neighbour on the sheet; the null is the same with the preferred angles shuffled over
  positions (a position-shuffled map).
* :func:`smoothness_curve` (TDANN style): the mean Δ of unit pairs as a function of their cortical distance, for
  the map and for the shuffled null; ``smoothness`` = 1 - (mean Δ of the closest distance bin)/(shuffled mean Δ).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["NeighbourDifferences", "adjacent_differences", "SmoothnessCurve", "smoothness_curve",
           "circular_difference"]


def circular_difference(a, b, period: float) -> np.ndarray:
    """|a - b| wrapped to [0, period/2]."""
    d = np.mod(np.asarray(a) - np.asarray(b), period)
    return np.minimum(d, period - d)


@dataclass
class NeighbourDifferences:
    delta: np.ndarray          # (M,) radians, adjacent pairs
    delta_null: np.ndarray     # (M,) radians, position-shuffled
    bin_edges_deg: np.ndarray
    hist: np.ndarray           # fraction of pairs per bin
    hist_null: np.ndarray
    period: float

    def summary(self) -> dict:
        return {
            "median_adjacent_delta_deg": float(np.degrees(np.median(self.delta))) if self.delta.size else float("nan"),
            "median_shuffled_delta_deg": float(np.degrees(np.median(self.delta_null))) if self.delta.size else float("nan"),
            "num_pairs": int(self.delta.size),
        }


def _check(positions, preferred, mask):
    p = np.asarray(positions, dtype=np.float64)
    a = np.asarray(preferred, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2), got {p.shape}")
    if a.shape != (p.shape[0],):
        raise ValueError(f"preferred must have shape ({p.shape[0]},) to match positions, got {a.shape}")
    keep = np.isfinite(a) & np.all(np.isfinite(p), 1)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise ValueError(f"mask must have shape {a.shape}, got {m.shape}")
        keep &= m
    return p[keep], a[keep]


def adjacent_differences(positions, preferred, period: float = 2 * np.pi, mask=None, bins: int = 18,
                         seed: int = 0) -> NeighbourDifferences:
    """Preferred-angle difference of each unit (in ``mask``) with its nearest neighbour, vs a shuffled null."""
    p, a = _check(positions, preferred, mask)
    edges = np.linspace(0, np.degrees(period) / 2, bins + 1)
    if a.size < 2:
        z = np.zeros(bins)
        return NeighbourDifferences(np.zeros(0), np.zeros(0), edges, z, z, float(period))
    _, nn = cKDTree(p).query(p, k=2)
    j = nn[:, 1]
    delta = circular_difference(a, a[j], period)
    rng = np.random.default_rng(seed)
    sh = a[rng.permutation(a.size)]
    delta_null = circular_difference(sh, sh[j], period)
    h = np.histogram(np.degrees(delta), edges)[0] / delta.size
    h0 = np.histogram(np.degrees(delta_null), edges)[0] / delta.size
    return NeighbourDifferences(delta, delta_null, edges, h, h0, float(period))


@dataclass
class SmoothnessCurve:
    distance_mm: np.ndarray    # bin centres
    mean_delta_deg: np.ndarray
    null_delta_deg: np.ndarray
    smoothness: float


def smoothness_curve(positions, preferred, period: float = 2 * np.pi, mask=None, max_distance_mm: Optional[float] = None,
                     bins: int = 12, num_pairs: int = 200_000, seed: int = 0) -> SmoothnessCurve:
    """Mean preferred-angle difference against cortical distance (``num_pairs`` random pairs at distances up to
    about ``max_distance_mm``, default a quarter of the map's extent), with the position-shuffled level."""
    p, a = _check(positions, preferred, mask)
    if a.size < 2:
        e = np.full(bins, np.nan)
        return SmoothnessCurve(e, e, e, float("nan"))
    rng = np.random.default_rng(seed)
    extent = float(np.max(np.ptp(p, axis=0)))
    dmax = extent / 4 if max_distance_mm is None else float(max_distance_mm)
    if not dmax > 0:
        raise ValueError(f"max_distance_mm must be positive, got {max_distance_mm!r}")
    # pairs: a random anchor unit and the unit nearest to a random point at a uniform random distance (< dmax)
    # in a random direction from it; distances are then measured between the two units
    i = rng.integers(0, a.size, size=num_pairs)
    r = rng.uniform(0, dmax, size=num_pairs)
    phi = rng.uniform(0, 2 * np.pi, size=num_pairs)
    target = p[i] + np.stack([r * np.cos(phi), r * np.sin(phi)], 1)
    _, j = cKDTree(p).query(target, k=1)
    dist = np.hypot(*(p[i] - p[j]).T)
    keep = (j != i) & (dist < dmax)
    i, j, dist = i[keep], j[keep], dist[keep]
    delta = np.degrees(circular_difference(a[i], a[j], period))
    edges = np.linspace(0, dmax, bins + 1)
    which = np.clip(np.digitize(dist, edges) - 1, 0, bins - 1)
    cnt = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean = np.bincount(which, weights=delta, minlength=bins) / cnt
    sh = a[rng.permutation(a.size)]
    null_delta = float(np.degrees(circular_difference(sh[i], sh[j], period)).mean())
    first = mean[np.argmax(cnt > 0)] if np.any(cnt > 0) else np.nan
    return SmoothnessCurve(0.5 * (edges[1:] + edges[:-1]), mean, np.full(bins, null_delta),
                           float(1.0 - first / null_delta) if null_delta > 0 else float("nan"))
