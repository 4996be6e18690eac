"""Falsifiable statistics of a preference map: every statistic against position-shuffled nulls (DESIGN §7).

Input: unit positions x_i (mm) and complex vectors v_i, the unit's normalised vector sum (|v_i| ≤ 1; for
orientation, ``period`` = π, the vector of the doubled angle: the maths is the same). NaN vectors (unresponsive
units) and units outside ``mask`` are dropped; so are units outside the **inner extent**, the sheet extent
(x0, x1, y0, y1) shrunk by ``margin_mm`` on every side (border band exclusion), before anything else.

Nulls
-----
A null map keeps the vectors and permutes them over the kept positions (``np.random.default_rng(seed)``). Every
statistic of the model is computed at the same σ, grid and neighbour pairs for every null. Empirical p-values are
one-sided, ``p = (1 + #{null ≥ model}) / (1 + n)`` in the direction meaning "more map-like" (two-sided about the
null mean for the pinwheel density, which has no such direction: see below).

Smoothness
----------
With ``u_i = v_i - mean(v)`` and P the unordered pairs {i, j} where j is one of the 4 nearest neighbours of i,

    smoothness = Σ_P Re(u_i conj(u_j)) / Σ_P (|u_i|² + |u_j|²)/2 ∈ [-1, 1],

the correlation of neighbouring vectors. Under a position shuffle E[smoothness] = -1/(N-1) ≈ 0; a smooth map
gives ≈ the vectors' spatial autocorrelation at the neighbour distance (→ 1 for smooth maps of well-tuned units).
The pair set is fixed, so a shuffle costs one permutation: the smoothness null uses ``smoothness_shuffles``
(default 999) permutations, the first ``num_shuffles`` of which are the map-level nulls, so that p can reach
0.001.

Spectrum and column spacing Λ
-----------------------------
Each map (model and nulls) is smoothed, ``z(g) = Σ_i exp(-|g - x_i|²/2σ_s²)·v_i``, with a small
σ_s = unit spacing ``sqrt(area/N)`` on a grid of spacing σ_s/2 over the inner extent; S(k) is the radially
averaged power spectrum of z (mean removed, Hann window, zero-padded ×2, k in cycles/mm). For a shuffled map S is
white noise times the kernel's taper exp(-4π²σ_s²k²), so the **whitened** spectrum R_j(k) = S_j(k)/D_j(k), with
D_j the mean spectrum of the *other* n maps (model and nulls; for the model, the mean null), removes the taper and
is ≈ 1 for a null; a map with columns has R - 1 ∝ its own power spectrum. Over the admissible wavenumbers
2/L ≤ k ≤ k_max = 1/(3 × unit spacing) (L the longer side of the inner extent: a column period must fit twice
into the region; periods shorter than three unit spacings are not columns), Λ is **resolved**
(``spacing_resolved``) only when all of

1. the model's R has its maximum at k* strictly inside the admissible range (not its lowest bin, not its
   highest): a true interior peak;
2. the model's raw power S_0(k*) exceeds every shuffled spectrum at k* (``spectrum_peak_ratio`` = S_0(k*) / max
   of the null S(k*) > 1);
3. the peak stands above the nulls' own largest fluctuations: with T_j = max_k R_j(k) (a maximum statistic, so the
   choice of k* is paid for), ``spacing_p`` = (1 + #{T_null ≥ T_model}) / (1 + n) is the smallest possible,
   1/(1 + n) (T_model above every null's T), or below ``alpha_level``.

Then Λ = 1/k̄ with k̄ the (R - 1)-weighted mean wavenumber over the contiguous bins around k* where R - 1 is at
least half its peak value (``spacing_mm``; NaN when not resolved). For a map that is itself position-shuffled
(exchangeable with its nulls) criterion 3 holds with probability 1/(1 + n), so such maps resolve a spacing in at
most ~5 % of cases with 20 shuffles (the tests measure about 2 %); ``detected`` also needs the smoothness criteria.

Pinwheels
---------
Counted as in :func:`~tdann_fast.analysis.pinwheels.pinwheels`: ±1 winding numbers of the smoothed field around
every plaquette of a grid of spacing ``grid_mm`` (default and maximum σ/2) over the inner extent, counted only in
the **count window**, the inner extent shrunk by min(2σ, a quarter of its shorter side) on every side (there the
kernel is not cut by the edge; :func:`count_window`); density = count / window area. The counting σ is
``sigma_mm`` when given; else, when Λ is resolved, σ = max(Λ/12, 0.8 unit spacings)
(:data:`SIGMA_PER_SPACING`); else ``default_sigma_mm`` of the kept positions. Model and nulls are counted at that
same σ and grid. Why Λ/12: smoothing a *phase* map (units' vectors have no zeros at the pinwheels) annihilates
close ± pairs; on ring-spectrum Gaussian random fields sampled by tuned units (400 units per Λ²) the count
falls to about 0.96, 0.92, 0.88 and 0.8 of the true density at σ = Λ/12, Λ/8, Λ/6 and Λ/4, while σ below ~0.8
unit spacings loses pinwheels to the gaps between units. ``density_per_spacing2`` = density·Λ² (NaN when Λ is
not resolved). A smoothed white-noise map has density 1/(4πσ²) (Gaussian random field with ⟨k²⟩ = 1/σ² in
rad/mm), which is above or below π/Λ² depending on σ, so the density's p-value is two-sided:
(1 + #{|null - null mean| ≥ |model - null mean|}) / (1 + n). ``density_vs_sigma`` repeats the count (model and
nulls) over ``sigmas_mm`` (default: 6 values geometric from 1.5 unit spacings to a third of the inner extent's
shorter side, grid σ/2), showing how the density depends on σ.

Verdict
-------
``detected`` is True only when smoothness p < ``alpha_level``, smoothness > null mean + 3 null sd, and Λ is
resolved.

Rayleigh test
-------------
:func:`rayleigh_test`: mean resultant length R̄ = |Σ w_k e^{iφ_k}| / Σ w_k with φ = 2π·θ/period; Z = n·R̄² and
the p-value of uniformity p ≈ exp(sqrt(1 + 4n + 4(n² - R_n²)) - (1 + 2n)), R_n = n·R̄ (the standard
small-sample approximation, as given in Zar's Biostatistical Analysis), clipped to [0, 1]. With
weights, n is the effective sample size (Σw)²/Σw² (equal weights give the usual test).

Scalar maps
-----------
:func:`scalar_map_statistics` judges a real-valued preference map (e.g. log2 of the preferred spatial
frequency) the same way: smoothness with real u_i = x_i - mean(x) over the same neighbour pairs, against
position-shuffled nulls (one-sided p), after the same border-band exclusion. A scalar map has no angle and no
pinwheels; it is ``significant`` when its smoothness passes both smoothness criteria of the verdict.

Ground truth
------------
:func:`ring_spectrum_field` is a complex Gaussian random field with its power on a thin ring |k| ≈ 1/Λ (cycles/mm):
``z(x) = Σ_w a_w exp(2πi k_w·x) / sqrt(Σ|a_w|²)`` with ``num_waves`` plane waves, random directions,
|k_w| = (1 + bandwidth·ε_w)/Λ (ε_w standard normal) and complex normal a_w (E|z|² = 1). Its pinwheel density is
π⟨|k|²⟩ ≈ π/Λ² (Wolf & Geisel 1998; Kaschube et al. 2010). :func:`synthetic_tuning_map` gives each unit von Mises
tuning ``exp(κ(cos(2π(θ - μ)/period) - 1))`` around the preferred angle μ = arg(z)·period/2π, with multiplicative
and additive Gaussian noise (sd ``noise``) per response, rectified at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .pinwheels import (PinwheelResult, check_positions, count_pinwheels, default_sigma_mm, grid_axes, radial_power_spectrum,
                        smooth_vector_field)

__all__ = ["NullStat", "MapStatistics", "map_statistics", "rayleigh_test", "inner_extent", "ring_spectrum_field",
           "synthetic_tuning_map", "count_window", "spectral_peak", "SIGMA_PER_SPACING", "SUMMARY_KEYS",
           "ScalarMapStatistics", "scalar_map_statistics"]

#: Counting σ = max(Λ · SIGMA_PER_SPACING, 0.8 unit spacings) when Λ is resolved and no ``sigma_mm`` is given.
SIGMA_PER_SPACING = 1.0 / 12.0
_NEIGHBOURS = 4            # nearest neighbours per unit in the smoothness pairs
_SPECTRUM_PAD = 2          # zero padding of the spectrum FFT
_MIN_WAVELENGTH_UNITS = 3.0  # shortest admissible column period, in unit spacings
_MIN_PERIODS = 2.0          # longest admissible column period: the inner extent's longer side / 2
_MIN_DENSITY = 0.2         # grid points with kernel density below this × median are excluded (as pinwheels())
_MIN_UNITS = 16
_COUNT_BAND_SIGMAS = 2.0   # pinwheels are counted at >= 2σ from the inner extent's edge
_MIN_SIGMA_UNITS = 0.8     # the counting σ tied to Λ is at least this many unit spacings

SUMMARY_KEYS = (
    "detected", "verdict", "num_units", "num_shuffles", "sigma_mm", "grid_mm", "margin_mm", "area_mm2",
    "smoothness", "smoothness_null_mean", "smoothness_null_sd", "smoothness_p", "spacing_mm", "spacing_resolved",
    "spacing_p", "spectrum_peak_ratio", "num_pinwheels", "density_per_mm2", "density_per_mm2_null_mean",
    "density_per_mm2_null_sd", "density_per_mm2_p", "density_per_spacing2", "density_per_spacing2_null_mean",
    "density_per_spacing2_null_sd", "density_vs_sigma",
)


@dataclass
class NullStat:
    """A statistic's position-shuffled null: ``mean``, ``sd`` (ddof 1), ``n`` shuffles, the model's empirical
    p-value ``p`` and the null ``values``."""

    mean: float
    sd: float
    n: int
    p: float
    values: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def _nullstat(model: float, values, two_sided: bool = False) -> NullStat:
    vals = np.asarray(values, dtype=np.float64)
    n = int(vals.size)
    fin = vals[np.isfinite(vals)]
    mean = float(fin.mean()) if fin.size else float("nan")
    sd = float(fin.std(ddof=1)) if fin.size > 1 else float("nan")
    if not math.isfinite(model) or n == 0:
        p = float("nan")
    elif two_sided:
        p = (1 + int(np.sum(np.abs(vals - mean) >= abs(model - mean) - 1e-12))) / (1 + n)
    else:
        p = (1 + int(np.sum(vals >= model))) / (1 + n)
    return NullStat(mean=mean, sd=sd, n=n, p=float(p), values=vals)


def _kind(period: float) -> str:
    if abs(period - 2 * math.pi) < 1e-9:
        return "direction"
    if abs(period - math.pi) < 1e-9:
        return "orientation"
    return "preference"


@dataclass
class MapStatistics:
    """Output of :func:`map_statistics` (definitions in the module docstring).

    Spectrum arrays (``spectrum_k`` cycles/mm, raw powers of the σ_s-smoothed maps, ``spectrum_ratio`` the
    model's whitened spectrum R) are for figures; ``pinwheel`` is the model's :class:`PinwheelResult` at the
    counting σ (its ``spacing_mm`` is this Λ). ``density_vs_sigma`` holds arrays ``sigma_mm``, ``model``,
    ``null_mean``, ``null_sd`` (densities in mm⁻²).
    """

    detected: bool
    smoothness: float
    smoothness_null: NullStat
    spacing_mm: float
    spacing_resolved: bool
    spacing_p: float
    spectrum_peak_ratio: float
    spectrum_peak_k: float
    density_per_mm2: float
    density_per_mm2_null: NullStat
    density_per_spacing2: float
    density_per_spacing2_null: NullStat
    num_pinwheels: int
    num_pinwheels_null: NullStat
    sigma_mm: float
    grid_mm: float
    spectrum_sigma_mm: float
    margin_mm: float
    extent: Tuple[float, float, float, float]
    inner_extent: Tuple[float, float, float, float]
    area_mm2: float
    num_units: int
    num_shuffles: int
    period: float
    alpha_level: float
    spectrum_k: np.ndarray = field(repr=False)
    spectrum_model: np.ndarray = field(repr=False)
    spectrum_null_mean: np.ndarray = field(repr=False)
    spectrum_null_sd: np.ndarray = field(repr=False)
    spectrum_ratio: np.ndarray = field(repr=False)
    density_vs_sigma: Dict[str, np.ndarray] = field(repr=False)
    pinwheel: PinwheelResult = field(repr=False)

    @property
    def kind(self) -> str:
        """"direction" (period 2π), "orientation" (period π) or "preference"."""
        return _kind(self.period)

    def failed_criteria(self) -> List[str]:
        """The detection criteria that failed, in words (empty when detected)."""
        out = []
        s, n = self.smoothness, self.smoothness_null
        if not (n.p < self.alpha_level):
            out.append(f"smoothness not significant (p >= {self.alpha_level:g})")
        elif not (s > n.mean + 3 * n.sd):
            out.append("smoothness within 3 sd of shuffled")
        if not self.spacing_resolved:
            out.append("column spacing not resolved")
        return out

    def verdict(self) -> str:
        """One plain line: map detected or not, with the numbers."""
        s, n = self.smoothness, self.smoothness_null
        if self.detected:
            return (f"{self.kind} map detected: Λ = {self.spacing_mm:.2f} mm, {self.density_per_spacing2:.1f} "
                    f"pinwheels per Λ², smoothness {s:.2f} vs shuffled {n.mean:.2f} ± {n.sd:.2f} (p = {n.p:.2g})")
        return (f"no {self.kind} map detected: smoothness {s:.3f} vs shuffled {n.mean:.3f} ± {n.sd:.3f} "
                f"(p = {n.p:.2g}); " + "; ".join(self.failed_criteria()))

    def summary(self) -> dict:
        """Flat JSON-able dict with exactly the keys :data:`SUMMARY_KEYS` (floats are Python floats; NaN kept)."""
        f = float
        dvs = {k: [f(x) for x in np.asarray(self.density_vs_sigma[k])]
               for k in ("sigma_mm", "model", "null_mean", "null_sd")}
        out = {
            "detected": bool(self.detected),
            "verdict": self.verdict(),
            "num_units": int(self.num_units),
            "num_shuffles": int(self.num_shuffles),
            "sigma_mm": f(self.sigma_mm),
            "grid_mm": f(self.grid_mm),
            "margin_mm": f(self.margin_mm),
            "area_mm2": f(self.area_mm2),
            "smoothness": f(self.smoothness),
            "smoothness_null_mean": f(self.smoothness_null.mean),
            "smoothness_null_sd": f(self.smoothness_null.sd),
            "smoothness_p": f(self.smoothness_null.p),
            "spacing_mm": f(self.spacing_mm),
            "spacing_resolved": bool(self.spacing_resolved),
            "spacing_p": f(self.spacing_p),
            "spectrum_peak_ratio": f(self.spectrum_peak_ratio),
            "num_pinwheels": int(self.num_pinwheels),
            "density_per_mm2": f(self.density_per_mm2),
            "density_per_mm2_null_mean": f(self.density_per_mm2_null.mean),
            "density_per_mm2_null_sd": f(self.density_per_mm2_null.sd),
            "density_per_mm2_p": f(self.density_per_mm2_null.p),
            "density_per_spacing2": f(self.density_per_spacing2),
            "density_per_spacing2_null_mean": f(self.density_per_spacing2_null.mean),
            "density_per_spacing2_null_sd": f(self.density_per_spacing2_null.sd),
            "density_vs_sigma": dvs,
        }
        return out


# ----------------------------------------------------------------------------------------------- helpers
def inner_extent(extent, margin_mm: float) -> Tuple[float, float, float, float]:
    """``extent`` = (x0, x1, y0, y1) shrunk by ``margin_mm`` on every side; ValueError when nothing is left."""
    x0, x1, y0, y1 = _check_extent(extent)
    m = _check_number(margin_mm, "margin_mm", minimum=0.0)
    half = 0.5 * min(x1 - x0, y1 - y0)
    if not m < half:
        raise ValueError(f"margin_mm must be smaller than half the extent's shorter side ({half:g} mm), got {m:g}")
    return (x0 + m, x1 - m, y0 + m, y1 - m)


def _check_extent(extent):
    try:
        e = tuple(float(x) for x in extent)
    except (TypeError, ValueError):
        raise ValueError(f"extent must be 4 numbers (x0, x1, y0, y1) in mm, got {extent!r}") from None
    if len(e) != 4 or not all(math.isfinite(x) for x in e) or not (e[1] > e[0] and e[3] > e[2]):
        raise ValueError(f"extent must be (x0, x1, y0, y1) with finite x1 > x0 and y1 > y0, got {extent!r}")
    return e


def _check_number(value, name: str, minimum: float = 0.0, positive: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or isinstance(value, complex) or np.iscomplexobj(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or (positive and not v > 0) or (minimum is not None and v < minimum):
        need = "a positive number" if positive else f"a finite number >= {minimum:g}"
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return v


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _neighbour_pairs(p: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Unique unordered pairs (i < j) where j is one of the k nearest neighbours of i (or i of j)."""
    from scipy.spatial import cKDTree

    k = min(k, p.shape[0] - 1)
    _, nn = cKDTree(p).query(p, k=k + 1)
    i = np.repeat(np.arange(p.shape[0]), k)
    j = nn[:, 1:].reshape(-1)
    a, b = np.minimum(i, j), np.maximum(i, j)
    key = np.unique(a.astype(np.int64) * p.shape[0] + b)
    return key // p.shape[0], key % p.shape[0]


def _smoothness(u: np.ndarray, i: np.ndarray, j: np.ndarray) -> float:
    num = float(np.sum((u[i] * np.conj(u[j])).real))
    den = float(np.sum(0.5 * (np.abs(u[i]) ** 2 + np.abs(u[j]) ** 2)))
    return num / den if den > 0 else float("nan")


def _progress(iterable, enabled: bool, desc: str, total: Optional[int] = None):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total)


def _smooth_all(p, stack, sigma, gx, gy, dtype):
    field_, dens = smooth_vector_field(p, stack, sigma, gx, gy, dtype=dtype)
    valid = dens >= _MIN_DENSITY * np.median(dens)
    return field_, valid


def count_window(extent, sigma: float) -> Tuple[float, float, float, float]:
    """The part of ``extent`` where pinwheels are counted: shrunk by ``min(2σ, a quarter of its shorter side)`` on
    every side, so the smoothing kernel is not cut by the edge of the (inner) sheet."""
    x0, x1, y0, y1 = extent
    b = min(_COUNT_BAND_SIGMAS * sigma, 0.25 * min(x1 - x0, y1 - y0))
    return (x0 + b, x1 - b, y0 + b, y1 - b)


def _densities(p, stack, sigma, h, extent, dtype):
    gx, gy = grid_axes(extent, h)
    fields, valid = _smooth_all(p, stack, sigma, gx, gy, dtype)
    w = count_window(extent, sigma)
    valid &= ((gx[None, :] >= w[0]) & (gx[None, :] <= w[1]) & (gy[:, None] >= w[2]) & (gy[:, None] <= w[3]))
    counts, area = [], float("nan")
    for f in fields:
        _, ch, area = count_pinwheels(f, valid, gx, gy)
        counts.append(ch.size)
    counts = np.asarray(counts, dtype=np.float64)
    dens = counts / area if area > 0 else np.full(counts.shape, np.nan)
    return dens, counts, area, (fields[0], valid, gx, gy)


def spectral_peak(k, spectra, b_lo: int, b_hi: int, alpha_level: float = 0.01) -> dict:
    """The column-spacing test of the module docstring on radial spectra ``spectra`` (1 + n, B), model first, at
    wavenumbers ``k`` (B,), over the admissible bins ``b_lo..b_hi``. Returns a dict: ``ratio`` (1 + n, B) whitened
    spectra, ``peak_k``, ``peak_ratio`` (model / max null at the peak), ``p`` (maximum-statistic p-value),
    ``resolved`` and ``spacing_mm`` (NaN unless resolved)."""
    spectra = np.asarray(spectra, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    n = spectra.shape[0] - 1
    total = spectra.sum(0)
    others = (total[None] - spectra) / n                 # mean of the other n maps
    others[0] = spectra[1:].mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(others > 0, spectra / others, np.nan)
    out = {"ratio": ratio, "peak_k": float("nan"), "peak_ratio": float("nan"), "p": float("nan"),
           "resolved": False, "spacing_mm": float("nan")}
    if b_hi - b_lo < 2:
        return out
    r_adm = np.nan_to_num(ratio[:, b_lo:b_hi + 1], nan=-np.inf)
    t = r_adm.max(1)                                      # maximum statistic of every map
    b_star = b_lo + int(np.argmax(r_adm[0]))
    null_max = float(spectra[1:, b_star].max())
    peak_ratio = float(spectra[0, b_star] / null_max) if null_max > 0 else float("inf")
    p = (1 + int(np.sum(t[1:] >= t[0]))) / (1 + n)
    interior = b_lo < b_star < b_hi
    above = bool(np.all(t[1:] < t[0])) or p < alpha_level
    resolved = bool(interior and peak_ratio > 1 and above)
    out.update(peak_k=float(k[b_star]), peak_ratio=peak_ratio, p=float(p), resolved=resolved)
    if resolved:
        ex = ratio[0] - 1.0
        half = 0.5 * ex[b_star]
        lo = b_star
        while lo > b_lo and ex[lo - 1] >= half:
            lo -= 1
        hi = b_star
        while hi < b_hi and ex[hi + 1] >= half:
            hi += 1
        w = ex[lo:hi + 1]
        out["spacing_mm"] = float(1.0 / ((k[lo:hi + 1] * w).sum() / w.sum()))
    return out


# ------------------------------------------------------------------------------------------------- main
def map_statistics(
    positions,
    vectors,
    period: float = 2 * math.pi,
    *,
    sigma_mm: Optional[float] = None,
    grid_mm: Optional[float] = None,
    extent=None,
    margin_mm: float = 0.0,
    num_shuffles: int = 20,
    seed: int = 0,
    sigmas_mm=None,
    mask=None,
    alpha_level: float = 0.01,
    smoothness_shuffles: int = 999,
    progress: bool = False,
    dtype=None,
) -> MapStatistics:
    """Map statistics of ``vectors`` (N,) complex at ``positions`` (N, 2) mm against ``num_shuffles``
    position-shuffled nulls, and the ``detected`` verdict (all definitions in the module docstring).

    ``period``: 2π (direction) or π (orientation; vectors of the doubled angle). ``sigma_mm``: counting σ
    (default max(Λ/12, 0.8 unit spacings) when Λ is resolved, else :func:`default_sigma_mm`); ``grid_mm``:
    counting grid (default and maximum σ/2). ``extent`` (x0, x1, y0, y1): the sheet (default: bounding box of
    ``positions``), shrunk by ``margin_mm`` on every side. ``num_shuffles`` (≥ 2): map-level nulls; ``seed``:
    their permutations. ``sigmas_mm``: the σ values of ``density_vs_sigma``. ``mask`` (N,) bool: units to use
    (e.g. ``TuningMetrics.responsive``). ``alpha_level``: significance level of the verdict.
    ``smoothness_shuffles``: size of the smoothness null (the larger of it and ``num_shuffles``). ``progress``:
    tqdm bars. ``dtype``: torch dtype of the smoothing sums (default float32: the maps are normalised vectors, so
    single precision is ample; pass torch.float64 for double-precision sums).
    """
    import torch

    p_all = check_positions(positions)
    n_all = p_all.shape[0]
    v_all = np.asarray(vectors)
    if not np.iscomplexobj(v_all):
        raise TypeError("vectors must be complex (each unit's normalised vector sum, e.g. TuningMetrics.vector); "
                        "use angles_to_vectors() for angles")
    if v_all.shape != (n_all,):
        raise ValueError(f"vectors must have shape ({n_all},) to match positions, got {v_all.shape}")
    if np.any(np.isinf(v_all.real) | np.isinf(v_all.imag)):
        raise ValueError("vectors holds infinite values (NaN marks unresponsive units; inf is not allowed)")
    period = _check_number(period, "period", positive=True)
    num_shuffles = _check_int(num_shuffles, "num_shuffles", 2)
    smoothness_shuffles = _check_int(smoothness_shuffles, "smoothness_shuffles", 1)
    alpha_level = _check_number(alpha_level, "alpha_level", positive=True)
    if not alpha_level < 1:
        raise ValueError(f"alpha_level must be in (0, 1), got {alpha_level!r}")
    sigma_user = _check_number(sigma_mm, "sigma_mm", positive=True, allow_none=True)
    grid_user = _check_number(grid_mm, "grid_mm", positive=True, allow_none=True)
    if sigma_user is not None and grid_user is not None and grid_user > sigma_user / 2 + 1e-12:
        raise ValueError(f"grid_mm must be <= sigma_mm/2 = {sigma_user / 2:g}, got {grid_user:g}")
    if not (seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0)):
        raise TypeError(f"seed must be a non-negative integer or None, got {seed!r}")
    if sigmas_mm is not None:
        try:
            sig = np.asarray(sigmas_mm, dtype=np.float64).reshape(-1) if not np.iscomplexobj(sigmas_mm) else None
        except (TypeError, ValueError):
            sig = None
        if sig is None or sig.size == 0 or not np.all(np.isfinite(sig) & (sig > 0)):
            raise ValueError(f"sigmas_mm must be a non-empty list of positive numbers, got {sigmas_mm!r}")
    if extent is None:
        ext = (float(p_all[:, 0].min()), float(p_all[:, 0].max()), float(p_all[:, 1].min()), float(p_all[:, 1].max()))
        if not (ext[1] > ext[0] and ext[3] > ext[2]):
            raise ValueError(f"positions must span a 2-D region (their bounding box is {ext}); or pass extent")
    else:
        ext = _check_extent(extent)
    margin = _check_number(margin_mm, "margin_mm", minimum=0.0)
    inner = inner_extent(ext, margin)
    keep = np.isfinite(v_all.real) & np.isfinite(v_all.imag)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (n_all,) or m.dtype != bool:
            raise ValueError(f"mask must be a bool array of shape ({n_all},), got {m.dtype} {m.shape}")
        keep &= m
    x, y = p_all[:, 0], p_all[:, 1]
    keep &= (x >= inner[0]) & (x <= inner[1]) & (y >= inner[2]) & (y <= inner[3])
    p, v = p_all[keep], v_all[keep].astype(np.complex128)
    n = p.shape[0]
    if n < _MIN_UNITS:
        raise ValueError(f"vectors: only {n} units are finite, in mask and inside the inner extent {inner}; "
                         f"need at least {_MIN_UNITS}")
    dt = torch.float32 if dtype is None else dtype
    lx, ly = inner[1] - inner[0], inner[3] - inner[2]
    area_inner = lx * ly
    spacing_units = math.sqrt(area_inner / n)

    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(num_shuffles)]

    # --- smoothness (fixed neighbour pairs; nulls permute the vectors)
    i, j = _neighbour_pairs(p, _NEIGHBOURS)
    u = v - v.mean()
    smooth = _smoothness(u, i, j)
    null_s = [_smoothness(u[q], i, j) for q in perms]
    for _ in range(max(smoothness_shuffles - num_shuffles, 0)):
        null_s.append(_smoothness(u[rng.permutation(n)], i, j))
    smooth_null = _nullstat(smooth, null_s)

    stack = np.stack([v] + [v[q] for q in perms], 0)  # (1 + n_shuffles, N): model first

    # --- spectrum at a small σ_s, whitened by the nulls
    sig_s = spacing_units
    gx, gy = grid_axes(inner, sig_s / 2)
    fields, valid = _smooth_all(p, stack, sig_s, gx, gy, dt)
    spectra = []
    for f in _progress(fields, progress, "spectra"):
        k, pw = radial_power_spectrum(f, sig_s / 2, valid, pad=_SPECTRUM_PAD)
        spectra.append(pw)
    spectra = np.asarray(spectra)                               # (M, B)
    k_max = 1.0 / (_MIN_WAVELENGTH_UNITS * spacing_units)
    dk = k[1] - k[0]
    b_lo = max(1, int(math.ceil(_MIN_PERIODS / (max(lx, ly) * dk) - 1e-9)))  # k >= 2/L
    b_hi = min(int(math.floor(k_max / dk)), k.size - 1)
    peak = spectral_peak(k, spectra, b_lo, b_hi, alpha_level)
    ratio, resolved, spacing = peak["ratio"], peak["resolved"], peak["spacing_mm"]
    peak_k, peak_ratio, spacing_p = peak["peak_k"], peak["peak_ratio"], peak["p"]
    spec_null_mean = spectra[1:].mean(0)
    spec_null_sd = spectra[1:].std(0, ddof=1)

    # --- pinwheels at the counting σ (model and nulls on one grid)
    if sigma_user is not None:
        sigma = sigma_user
    elif resolved:
        sigma = max(SIGMA_PER_SPACING * spacing, _MIN_SIGMA_UNITS * spacing_units)
    else:
        sigma = default_sigma_mm(p)
    h = grid_user if grid_user is not None else sigma / 2
    if h > sigma / 2 + 1e-12:
        raise ValueError(f"grid_mm must be <= sigma_mm/2 = {sigma / 2:g} (sigma_mm = {sigma:g}), got {h:g}")
    dens, counts, area, (f0, valid0, gx0, gy0) = _densities(p, stack, sigma, h, inner, dt)
    centres, charges, _ = count_pinwheels(f0, valid0, gx0, gy0)
    density_null = _nullstat(float(dens[0]), dens[1:], two_sided=True)
    count_null = _nullstat(float(counts[0]), counts[1:], two_sided=True)
    lam2 = spacing ** 2 if resolved else float("nan")
    dps_null = _nullstat(float(dens[0] * lam2), dens[1:] * lam2, two_sided=True)
    pw = PinwheelResult(
        field=f0, grid_x=gx0, grid_y=gy0, valid=valid0, centres=centres, charges=charges, area_mm2=area,
        density_per_mm2=float(dens[0]), spacing_mm=float(spacing), density_per_spacing2=float(dens[0] * lam2),
        sigma_mm=float(sigma), grid_mm=float(h), period=float(period), spectrum_k=k, spectrum_power=spectra[0],
    )

    # --- density against σ
    if sigmas_mm is None:
        lo_s = 1.5 * spacing_units
        hi_s = max(min(lx, ly) / 3.0, lo_s * 1.01)
        sig = np.geomspace(lo_s, hi_s, 6)
    dvs_model, dvs_mean, dvs_sd = [], [], []
    for s in _progress(sig, progress, "density vs sigma"):
        d_s, _, _, _ = _densities(p, stack, float(s), float(s) / 2, inner, dt)
        dvs_model.append(d_s[0])
        dvs_mean.append(d_s[1:].mean())
        dvs_sd.append(d_s[1:].std(ddof=1))
    dvs = {"sigma_mm": sig.astype(np.float64), "model": np.asarray(dvs_model), "null_mean": np.asarray(dvs_mean),
           "null_sd": np.asarray(dvs_sd)}

    detected = bool(smooth_null.p < alpha_level and smooth > smooth_null.mean + 3 * smooth_null.sd and resolved)
    return MapStatistics(
        detected=detected, smoothness=float(smooth), smoothness_null=smooth_null, spacing_mm=float(spacing),
        spacing_resolved=resolved, spacing_p=float(spacing_p), spectrum_peak_ratio=float(peak_ratio),
        spectrum_peak_k=peak_k, density_per_mm2=float(dens[0]), density_per_mm2_null=density_null,
        density_per_spacing2=float(dens[0] * lam2), density_per_spacing2_null=dps_null,
        num_pinwheels=int(counts[0]), num_pinwheels_null=count_null, sigma_mm=float(sigma), grid_mm=float(h),
        spectrum_sigma_mm=float(sig_s), margin_mm=float(margin), extent=tuple(ext), inner_extent=tuple(inner),
        area_mm2=float(area), num_units=int(n), num_shuffles=int(num_shuffles), period=float(period),
        alpha_level=float(alpha_level), spectrum_k=k, spectrum_model=spectra[0], spectrum_null_mean=spec_null_mean,
        spectrum_null_sd=spec_null_sd, spectrum_ratio=ratio[0], density_vs_sigma=dvs, pinwheel=pw,
    )


# ------------------------------------------------------------------------------------------- Rayleigh test
def rayleigh_test(angles, period: float = 2 * math.pi, weights=None):
    """Rayleigh test of circular uniformity of ``angles`` (radians, one ``period``). Returns
    ``(mean_resultant_length, z, p, mean_angle)`` with mean_angle in [0, period); see the module docstring."""
    if np.iscomplexobj(angles):
        raise TypeError("angles must hold real numbers (radians), got complex values")
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    if a.size < 2 or not np.all(np.isfinite(a)):
        raise ValueError(f"angles must hold at least 2 finite values, got {a.size} values")
    period = _check_number(period, "period", positive=True)
    if weights is None:
        w = np.ones_like(a)
    else:
        if np.iscomplexobj(weights):
            raise TypeError("weights must hold real numbers, got complex values")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != a.shape or not np.all(np.isfinite(w) & (w >= 0)) or not w.sum() > 0:
            raise ValueError(f"weights must be {a.size} finite numbers >= 0 with a positive sum")
    s = np.sum(w * np.exp(1j * a * (2 * math.pi / period)))
    rbar = float(abs(s) / w.sum())
    n = float(w.sum() ** 2 / np.sum(w ** 2))
    z = n * rbar ** 2
    rn = n * rbar
    p = math.exp(math.sqrt(1 + 4 * n + 4 * (n * n - rn * rn)) - (1 + 2 * n))
    mean_angle = float(np.mod(np.angle(s), 2 * math.pi) * period / (2 * math.pi))
    return rbar, float(z), float(min(max(p, 0.0), 1.0)), mean_angle


# ------------------------------------------------------------------------------------------- ground truth
def ring_spectrum_field(positions, spacing_mm: float, seed: int = 0, bandwidth: float = 0.1,
                        num_waves: int = 256) -> np.ndarray:
    """Complex Gaussian random field with a thin ring spectrum at |k| = 1/``spacing_mm``, sampled at
    ``positions`` (N, 2) mm (see the module docstring). Returns (N,) complex128, E|z|² = 1."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or not np.all(np.isfinite(p)):
        raise ValueError(f"positions must be a finite array of shape (N, 2), got shape {p.shape}")
    lam = _check_number(spacing_mm, "spacing_mm", positive=True)
    bw = _check_number(bandwidth, "bandwidth", minimum=0.0)
    nw = _check_int(num_waves, "num_waves", 1)
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * math.pi, nw)
    kmag = np.abs(1.0 + bw * rng.standard_normal(nw)) / lam
    amp = rng.standard_normal(nw) + 1j * rng.standard_normal(nw)
    kv = 2 * math.pi * kmag[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)   # (W, 2) rad/mm
    out = np.empty(p.shape[0], dtype=np.complex128)
    for s in range(0, p.shape[0], 8192):
        out[s:s + 8192] = np.exp(1j * (p[s:s + 8192] @ kv.T)) @ amp
    return out / math.sqrt(float(np.sum(np.abs(amp) ** 2)))


def synthetic_tuning_map(positions, spacing_mm: float, num_directions: int = 16, kappa: float = 2.0,
                         noise: float = 0.2, seed: int = 0, period: float = 2 * math.pi,
                         bandwidth: float = 0.1) -> np.ndarray:
    """Responses (N, ``num_directions``) ≥ 0 of von Mises tuned units whose preferred angle is the phase of
    :func:`ring_spectrum_field` (column spacing ``spacing_mm``), to the angles ``arange(D)·period/D`` (pass them
    to :func:`~tdann_fast.analysis.tuning_metrics` with the same ``period``)."""
    d = _check_int(num_directions, "num_directions", 4)
    kappa = _check_number(kappa, "kappa", minimum=0.0)
    noise = _check_number(noise, "noise", minimum=0.0)
    period = _check_number(period, "period", positive=True)
    ss = np.random.SeedSequence(seed)
    field_seed, noise_seed = (int(c.generate_state(1)[0]) for c in ss.spawn(2))
    z = ring_spectrum_field(positions, spacing_mm, seed=field_seed, bandwidth=bandwidth)
    phase = np.angle(z)                                          # preferred angle × 2π/period
    stim = np.arange(d) * (2 * math.pi / d)                      # stimulus angles × 2π/period
    r = np.exp(kappa * (np.cos(stim[None, :] - phase[:, None]) - 1.0))
    rng = np.random.default_rng(noise_seed)
    r = r * (1.0 + noise * rng.standard_normal(r.shape)) + noise * rng.standard_normal(r.shape)
    return np.maximum(r, 0.0)


# ------------------------------------------------------------------------------------------- scalar maps
@dataclass
class ScalarMapStatistics:
    """Output of :func:`scalar_map_statistics`: smoothness of a scalar preference map (e.g. log2 preferred SF)
    against position-shuffled nulls, and the smoothed field ``smoothed`` (for figures; ``null_smoothed`` is one
    shuffled map at the same σ and grid)."""

    smoothness: float
    smoothness_null: NullStat
    num_units: int
    sigma_mm: float
    grid_mm: float
    margin_mm: float
    inner_extent: Tuple[float, float, float, float]
    alpha_level: float
    smoothed: np.ndarray = field(repr=False)
    null_smoothed: np.ndarray = field(repr=False)
    valid: np.ndarray = field(repr=False)
    grid_x: np.ndarray = field(repr=False)
    grid_y: np.ndarray = field(repr=False)

    @property
    def significant(self) -> bool:
        """Smoothness p < ``alpha_level`` and above the shuffled mean + 3 sd (the smoothness criteria of
        :attr:`MapStatistics.detected`; a scalar map has no column spacing to resolve)."""
        n = self.smoothness_null
        return bool(n.p < self.alpha_level and self.smoothness > n.mean + 3 * n.sd)

    def summary(self) -> dict:
        n = self.smoothness_null
        return {"smoothness": float(self.smoothness), "smoothness_null_mean": float(n.mean),
                "smoothness_null_sd": float(n.sd), "smoothness_p": float(n.p), "num_shuffles": int(n.n),
                "significant": self.significant, "num_units": int(self.num_units), "sigma_mm": float(self.sigma_mm),
                "grid_mm": float(self.grid_mm), "margin_mm": float(self.margin_mm)}


def scalar_map_statistics(positions, values, *, sigma_mm: Optional[float] = None, extent=None,
                          margin_mm: float = 0.0, mask=None, num_shuffles: int = 999, seed: int = 0,
                          alpha_level: float = 0.01) -> ScalarMapStatistics:
    """Smoothness of a real-valued map ``values`` (N,) at ``positions`` (N, 2) mm against ``num_shuffles``
    position-shuffled nulls: the smoothness of the module docstring with real u_i = x_i - mean(x) (the
    correlation of neighbouring values over the same 4-nearest-neighbour pairs), one-sided empirical p. Units
    with non-finite values, outside ``mask`` or outside the inner extent (``extent`` shrunk by ``margin_mm``) are
    dropped first, as in :func:`map_statistics`. The smoothed field is the kernel-weighted mean
    ``Σ_i w_i(g) x_i / Σ_i w_i(g)`` (Gaussian of ``sigma_mm``, default :func:`default_sigma_mm`) on the grid of
    spacing σ/2 over the inner extent; grid points with kernel density below 0.2 × median are not valid."""
    if np.iscomplexobj(values):
        raise TypeError("values must be real (a scalar map); use map_statistics for angle vectors")
    p_all = np.asarray(positions, dtype=np.float64)
    x_all = np.asarray(values, dtype=np.float64).reshape(-1)
    if p_all.ndim != 2 or p_all.shape[1] != 2 or p_all.shape[0] != x_all.size:
        raise ValueError(f"positions must have shape ({x_all.size}, 2), got {p_all.shape}")
    num_shuffles = _check_int(num_shuffles, "num_shuffles", 2)
    if extent is None:
        ext = (float(p_all[:, 0].min()), float(p_all[:, 0].max()), float(p_all[:, 1].min()), float(p_all[:, 1].max()))
    else:
        ext = _check_extent(extent)
    margin = _check_number(margin_mm, "margin_mm", minimum=0.0)
    inner = inner_extent(ext, margin)
    keep = np.isfinite(x_all)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool).reshape(-1)
    keep &= ((p_all[:, 0] >= inner[0]) & (p_all[:, 0] <= inner[1]) & (p_all[:, 1] >= inner[2])
             & (p_all[:, 1] <= inner[3]))
    p, x = p_all[keep], x_all[keep]
    n = p.shape[0]
    if n < _MIN_UNITS:
        raise ValueError(f"values: only {n} units are finite, in mask and inside the inner extent {inner}; "
                         f"need at least {_MIN_UNITS}")
    rng = np.random.default_rng(seed)
    i, j = _neighbour_pairs(p, _NEIGHBOURS)
    u = x - x.mean()
    smooth = _smoothness(u, i, j)
    perms = [rng.permutation(n) for _ in range(num_shuffles)]
    null = _nullstat(smooth, [_smoothness(u[q], i, j) for q in perms])
    sigma = default_sigma_mm(p) if sigma_mm is None else _check_number(sigma_mm, "sigma_mm", positive=True)
    h = sigma / 2
    gx, gy = grid_axes(inner, h)
    fields, dens = smooth_vector_field(p, np.stack([x, x[perms[0]]], 0).astype(np.complex128), sigma, gx, gy)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = fields.real / dens[None]
    valid = dens >= _MIN_DENSITY * np.median(dens)
    f[:, ~valid] = np.nan
    return ScalarMapStatistics(smoothness=float(smooth), smoothness_null=null, num_units=int(n), sigma_mm=float(sigma),
                               grid_mm=float(h), margin_mm=float(margin), inner_extent=tuple(inner),
                               alpha_level=float(alpha_level), smoothed=f[0], null_smoothed=f[1], valid=valid,
                               grid_x=gx, grid_y=gy)
