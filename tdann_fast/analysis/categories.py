"""Category-selective patches on a cortical sheet (ventral TDANN, VTC = layer4.x), against position-shuffled nulls.

Definitions
-----------
**Selectivity.** For category c, unit n: Welch's t of the unit's responses to the stimuli of c (set A, n_A
stimuli) against all other stimuli (set B),

    t = (mean_A - mean_B) / sqrt(var_A / n_A + var_B / n_B),     var with ddof = 1,

computed in float64 (:func:`category_tvalues`). Where the denominator is 0 (a unit constant within both sets, e.g.
a unit that never responds) t = 0, not NaN.

**Smoothed t-map.** ``T(g) = Σ_n K(g - x_n)·t_n / Σ_n K(g - x_n)`` with a Gaussian K of width σ, on a grid of
spacing σ/2 (default) over the sheet (:func:`smooth_tmap`, the kernel sums of
:func:`~tdann_fast.analysis.pinwheels.smooth_vector_field`); a normalised kernel average, so T is in units of t.
Grid points whose kernel density Σ K is below 0.2 × its median are left out (NaN), as in ``maps.py``. Default σ
(:func:`default_category_sigma_mm`): an eighth of the sheet's neighbourhood width (31.8 / 8 ≈ 4 mm on the 70 mm
VTC sheet of the ``analysis`` preset), and never below 3/sqrt(unit density) (about 28 units within one σ).

**Patches.** Connected regions (4-connectivity, ``scipy.ndimage.label``) of grid points with T ≥ ``threshold``
(default 3) and area ≥ ``min_area_mm2`` (default π σ²/4, a disc of radius σ/2: smaller specks are below the
smoothing's resolution). Each patch: area (grid cells × spacing²), centroid (mean of its grid points), peak T,
number of units inside (units whose nearest grid point belongs to it) (:func:`find_patches`).

**Smoothness.** The correlation of t between neighbouring units, as in ``maps.py``: with u = t - mean(t) and P
the unordered pairs of 4 nearest neighbours, ``Σ_P u_i u_j / Σ_P (u_i² + u_j²)/2`` (:func:`tmap_smoothness`).
Its null: ``smoothness_shuffles`` (default 999) position shuffles (t values permuted over units), mean ± sd, and
the one-sided p = (1 + #{null ≥ model}) / (1 + n). The same statistic against distance bins (the pairs of a
sample of units) makes the correlation-against-distance curve, with its null.

**Patch-count null.** The first ``num_shuffles`` (default 10) of those permutations, applied to all categories
at once (a unit carries all its t values), each smoothed and thresholded at the same σ, grid, threshold and
minimum area (:func:`patch_statistics`).

**Verdict.** A category **has patches** when (a) its t-map smoothness p < ``alpha_level`` (default 0.05) and (b)
its patch count is at least 1 and above the 95th percentile of the shuffled maps' patch counts. "Category patches
detected" when at least one category has patches; "not detected" otherwise. Both criteria are against
position-shuffled maps, so a t-map that is merely noisy (or merely high everywhere) is not called a patch map.

**Caveat.** The null tests spatial structure, not its cause. On a retinotopic sheet (units of one image location
clustered) category t-maps are smooth whenever the categories differ in *where* in the image their contrast lies
(faces fill the frame, words sit in a band across the middle), even in a random network: judge a trained model
beside the random-init control (``controls``).

**Overlap** of two maps (:func:`map_overlap`): the Dice coefficient of their patch masks, 2|A ∩ B| / (|A| + |B|)
(NaN when both are empty), and the Pearson r of the smoothed maps over the grid points valid in both; in
:func:`analyze_categories` against nulls where the second map is position-shuffled. Faces vs bodies is the pair
of the ventral TDANN; "not available: no body category" when the stimuli have no bodies.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .maps import NullStat, _check_extent, _check_number, _neighbour_pairs, _nullstat, _progress
from .pinwheels import check_positions, default_sigma_mm, grid_axes, smooth_vector_field

try:  # the package's one home of the constants
    from tdann_fast.data.normalization import IMAGENET_MEAN, IMAGENET_STD
except ImportError:  # pragma: no cover
    IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

__all__ = ["IT_LAYER", "analyze_checkpoint_categories", "category_tvalues", "SmoothMap", "smooth_tmap", "Patch", "PatchResult", "find_patches",
           "TmapSmoothness", "tmap_smoothness", "PatchStatistics", "patch_statistics", "map_overlap",
           "default_category_sigma_mm", "analyze_categories", "category_report_lines", "DEFAULT_THRESHOLD",
           "DEFAULT_ALPHA"]

DEFAULT_THRESHOLD = 3.0     # smoothed t above which a grid point belongs to a patch
DEFAULT_ALPHA = 0.05        # smoothness significance level of the verdict
_MIN_DENSITY = 0.2          # grid points with kernel density below this × median are left out (as maps.py)
_NEIGHBOURS = 4
_SIGMA_PER_WIDTH = 1.0 / 8  # default σ = neighbourhood width / 8
_CURVE_ANCHORS = 1500
_CURVE_MAX_PAIRS = 400_000
_CURVE_BINS = 12


# ------------------------------------------------------------------------------------------------ t-values
def category_tvalues(responses, labels, num_categories: int) -> np.ndarray:
    """Welch t (C, N) float64 of each unit's responses (S, N) to category c against all other stimuli (formula in
    the module docstring; t = 0 where the denominator is 0). ``labels`` (S,) are integers in [0, C); every
    category needs at least 2 stimuli, and at least 2 stimuli outside it."""
    if isinstance(num_categories, bool) or not isinstance(num_categories, (int, np.integer)) or num_categories < 2:
        raise ValueError(f"num_categories must be an integer >= 2, got {num_categories!r}")
    c = int(num_categories)
    if np.iscomplexobj(responses):
        raise TypeError("responses must hold real numbers, got complex values")
    try:
        r = np.asarray(responses, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"responses must be an (S, N) array of numbers, got {type(responses).__name__}") from None
    if r.ndim != 2 or r.shape[0] < 4 or r.shape[1] < 1:
        raise ValueError(f"responses must have shape (S >= 4, N >= 1), got {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("responses holds non-finite values")
    lab = np.asarray(labels)
    if lab.shape != (r.shape[0],) or not (np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool):
        raise ValueError(f"labels must be integers of shape ({r.shape[0]},) (one per stimulus), got "
                         f"{lab.dtype} {lab.shape}")
    if lab.min() < 0 or lab.max() >= c:
        raise ValueError(f"labels must lie in [0, num_categories - 1] = [0, {c - 1}], got values in "
                         f"[{lab.min()}, {lab.max()}]")
    counts = np.bincount(lab, minlength=c)
    bad = [int(k) for k in np.flatnonzero((counts < 2) | (r.shape[0] - counts < 2))]
    if bad:
        raise ValueError(f"labels: categories {bad} have {[int(counts[k]) for k in bad]} stimuli; every category "
                         "needs at least 2 stimuli in it and 2 outside it")
    out = np.zeros((c, r.shape[1]), dtype=np.float64)
    for k in range(c):
        a, b = r[lab == k], r[lab != k]
        va, vb = a.var(axis=0, ddof=1), b.var(axis=0, ddof=1)
        den = np.sqrt(va / a.shape[0] + vb / b.shape[0])
        num = a.mean(axis=0) - b.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return out


# ------------------------------------------------------------------------------------------------ smoothing
def _positions_array(positions) -> np.ndarray:
    pos = getattr(positions, "positions", positions)
    if hasattr(pos, "detach"):
        pos = pos.detach().cpu().numpy()
    return check_positions(pos)


def _field_values(t, n: int, name: str = "t") -> np.ndarray:
    if np.iscomplexobj(t):
        raise TypeError(f"{name} must hold real numbers, got complex values")
    try:
        v = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of numbers, got {type(t).__name__}") from None
    if v.ndim not in (1, 2) or v.shape[-1] != n:
        raise ValueError(f"{name} must have shape ({n},) or (M, {n}) to match positions, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} holds non-finite values")
    return v


def _extent(p: np.ndarray, extent) -> Tuple[float, float, float, float]:
    if extent is None:
        e = (float(p[:, 0].min()), float(p[:, 0].max()), float(p[:, 1].min()), float(p[:, 1].max()))
        if not (e[1] > e[0] and e[3] > e[2]):
            raise ValueError(f"positions must span a 2-D region (their bounding box is {e}); or pass extent")
        return e
    return _check_extent(extent)


@dataclass
class SmoothMap:
    """A smoothed scalar map: ``field`` (ny, nx) (or (M, ny, nx) for a stack) in the units of the input, NaN
    outside ``valid``; ``density`` (ny, nx) the kernel sum; grid axes ``grid_x`` (nx,), ``grid_y`` (ny,) mm."""

    field: np.ndarray
    density: np.ndarray
    valid: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray
    sigma_mm: float
    grid_mm: float
    extent: Tuple[float, float, float, float]

    @property
    def cell_area_mm2(self) -> float:
        return float(self.grid_mm) ** 2

    @property
    def valid_area_mm2(self) -> float:
        return float(self.valid.sum()) * self.cell_area_mm2


def smooth_tmap(positions, t, sigma_mm: float, grid_spacing_mm: Optional[float] = None, extent=None,
                dtype=None) -> SmoothMap:
    """Normalised Gaussian average of the scalar field ``t`` (N,) or a stack (M, N) at ``positions`` (N, 2) mm
    onto a grid of spacing ``grid_spacing_mm`` (default σ/2) over ``extent`` (x0, x1, y0, y1) (default: the
    positions' bounding box); see the module docstring. ``dtype``: torch dtype of the kernel sums (default
    float32)."""
    import torch

    p = _positions_array(positions)
    v = _field_values(t, p.shape[0])
    sigma = _check_number(sigma_mm, "sigma_mm", positive=True)
    h = sigma / 2 if grid_spacing_mm is None else _check_number(grid_spacing_mm, "grid_spacing_mm", positive=True)
    ext = _extent(p, extent)
    gx, gy = grid_axes(ext, h)
    single = v.ndim == 1
    stack = v.reshape(-1, p.shape[0])
    m = stack.shape[0]
    if m % 2:
        stack = np.concatenate([stack, np.zeros((1, p.shape[0]))], 0)
    packed = stack[0::2] + 1j * stack[1::2]          # two real maps per complex map (the kernel is real)
    f, dens = smooth_vector_field(p, packed, sigma, gx, gy, dtype=torch.float32 if dtype is None else dtype)
    f = f.reshape(-1, gy.size, gx.size)
    out = np.empty((stack.shape[0], gy.size, gx.size))
    out[0::2], out[1::2] = f.real, f.imag
    out = out[:m]
    valid = dens >= _MIN_DENSITY * np.median(dens)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(valid[None], out / np.where(dens > 0, dens, 1.0)[None], np.nan)
    return SmoothMap(field=out[0] if single else out, density=dens, valid=valid, grid_x=gx, grid_y=gy,
                     sigma_mm=float(sigma), grid_mm=float(h), extent=ext)


# ------------------------------------------------------------------------------------------------ patches
@dataclass
class Patch:
    """One patch: ``area_mm2``, ``centroid_mm`` (x, y), ``peak_t`` (max of the smoothed map inside),
    ``num_units`` (units whose nearest grid point is inside), ``label`` (its value in ``PatchResult.labels``)."""

    area_mm2: float
    centroid_mm: Tuple[float, float]
    peak_t: float
    num_units: int
    label: int

    def as_dict(self) -> dict:
        return {"area_mm2": float(self.area_mm2), "centroid_mm": [float(c) for c in self.centroid_mm],
                "peak_t": float(self.peak_t), "num_units": int(self.num_units)}


@dataclass
class PatchResult:
    """Output of :func:`find_patches`: ``patches`` (largest first), the smoothed ``map``, ``labels`` (ny, nx)
    int (0 outside patches, else 1 + index into ``patches``), ``threshold`` and ``min_area_mm2``."""

    patches: List[Patch]
    map: SmoothMap
    labels: np.ndarray
    threshold: float
    min_area_mm2: float

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    @property
    def count(self) -> int:
        return len(self.patches)

    @property
    def total_area_mm2(self) -> float:
        return float(sum(p.area_mm2 for p in self.patches))

    @property
    def fraction_of_sheet(self) -> float:
        a = self.map.valid_area_mm2
        return self.total_area_mm2 / a if a > 0 else float("nan")

    def summary(self) -> dict:
        """count, total area (mm²), fraction of the (valid) sheet, and every patch."""
        return {"count": self.count, "total_area_mm2": self.total_area_mm2,
                "fraction_of_sheet": float(self.fraction_of_sheet), "threshold": float(self.threshold),
                "min_area_mm2": float(self.min_area_mm2), "sigma_mm": float(self.map.sigma_mm),
                "grid_mm": float(self.map.grid_mm), "patches": [p.as_dict() for p in self.patches]}


def _label_patches(fld: np.ndarray, valid: np.ndarray, threshold: float, min_cells: int):
    """Connected regions of ``fld >= threshold`` inside ``valid`` with at least ``min_cells`` grid points:
    (relabelled int map, list of original label ids kept sorted by size, sizes)."""
    from scipy import ndimage

    mask = valid & np.nan_to_num(fld >= threshold, nan=False)
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(lab), []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    keep = [int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_cells]
    out = np.zeros_like(lab)
    for new, old in enumerate(keep, start=1):
        out[lab == old] = new
    return out, keep


def _count_patches(fld, valid, threshold, min_cells) -> Tuple[int, int]:
    """(number of patches, grid points inside patches) of one smoothed map."""
    lab, keep = _label_patches(fld, valid, threshold, min_cells)
    return len(keep), int((lab > 0).sum())


def _min_cells(min_area_mm2: float, h: float) -> int:
    return max(1, int(math.ceil(min_area_mm2 / (h * h) - 1e-9)))


def _default_min_area(sigma: float) -> float:
    return math.pi * sigma * sigma / 4.0


def _patches_of(smap: SmoothMap, fld: np.ndarray, p: np.ndarray, threshold: float,
                min_area: float) -> PatchResult:
    h = smap.grid_mm
    lab, keep = _label_patches(fld, smap.valid, threshold, _min_cells(min_area, h))
    gx, gy = smap.grid_x, smap.grid_y
    ix = np.clip(np.rint((p[:, 0] - gx[0]) / h).astype(np.int64), 0, gx.size - 1)
    iy = np.clip(np.rint((p[:, 1] - gy[0]) / h).astype(np.int64), 0, gy.size - 1)
    unit_lab = lab[iy, ix]
    units = np.bincount(unit_lab, minlength=len(keep) + 1)
    patches = []
    for k in range(1, len(keep) + 1):
        yy, xx = np.nonzero(lab == k)
        patches.append(Patch(area_mm2=float(yy.size * h * h), centroid_mm=(float(gx[xx].mean()), float(gy[yy].mean())),
                             peak_t=float(np.nanmax(fld[yy, xx])), num_units=int(units[k]), label=k))
    return PatchResult(patches=patches, map=SmoothMap(fld, smap.density, smap.valid, gx, gy, smap.sigma_mm, h,
                                                      smap.extent),
                       labels=lab, threshold=float(threshold), min_area_mm2=float(min_area))


def find_patches(positions, t, threshold: float = DEFAULT_THRESHOLD, sigma_mm: Optional[float] = None,
                 min_area_mm2: Optional[float] = None, grid_mm: Optional[float] = None, extent=None,
                 dtype=None) -> PatchResult:
    """Patches of the t-map ``t`` (N,) at ``positions`` (N, 2) mm: connected regions of the smoothed map at or above
    ``threshold`` with area ≥ ``min_area_mm2`` (defaults and definitions in the module docstring; ``sigma_mm``
    default :func:`default_category_sigma_mm` of the positions). ``.summary()`` gives count, total area and the
    fraction of the sheet."""
    p = _positions_array(positions)
    v = _field_values(t, p.shape[0])
    if v.ndim != 1:
        raise ValueError(f"t must have shape ({p.shape[0]},) (one map), got {v.shape}")
    thr = _check_number(threshold, "threshold", minimum=None)
    sigma = default_category_sigma_mm(p) if sigma_mm is None else _check_number(sigma_mm, "sigma_mm", positive=True)
    min_area = _default_min_area(sigma) if min_area_mm2 is None else _check_number(min_area_mm2, "min_area_mm2")
    smap = smooth_tmap(p, v, sigma, grid_mm, extent, dtype=dtype)
    return _patches_of(smap, smap.field, p, thr, min_area)


def default_category_sigma_mm(sheet_or_positions, neighbourhood_width_mm: Optional[float] = None) -> float:
    """Default smoothing σ of the category maps: ``neighbourhood_width_mm / 8`` (taken from a CorticalSheet when
    one is passed), but at least 3/sqrt(unit density) (:func:`~tdann_fast.analysis.pinwheels.default_sigma_mm`,
    about 28 units within one σ); that floor alone when no width is known."""
    w = neighbourhood_width_mm
    if w is None:
        w = getattr(sheet_or_positions, "neighbourhood_width_mm", None)
    p = _positions_array(sheet_or_positions)
    floor = default_sigma_mm(p)
    if w is None:
        return float(floor)
    w = _check_number(w, "neighbourhood_width_mm", positive=True)
    return float(max(w * _SIGMA_PER_WIDTH, floor))


# ------------------------------------------------------------------------------------------------ smoothness
@dataclass
class TmapSmoothness:
    """Output of :func:`tmap_smoothness` for one map: neighbour correlation ``smoothness`` and its shuffled
    ``null`` (:class:`~tdann_fast.analysis.maps.NullStat`); the correlation-against-distance curve
    (``curve_distance_mm`` bin centres, ``curve`` model, ``curve_null_mean``/``curve_null_sd``)."""

    smoothness: float
    null: NullStat
    curve_distance_mm: np.ndarray = field(repr=False)
    curve: np.ndarray = field(repr=False)
    curve_null_mean: np.ndarray = field(repr=False)
    curve_null_sd: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        return {"smoothness": float(self.smoothness), "smoothness_null_mean": float(self.null.mean),
                "smoothness_null_sd": float(self.null.sd), "smoothness_p": float(self.null.p),
                "smoothness_shuffles": int(self.null.n),
                "curve_distance_mm": [float(x) for x in self.curve_distance_mm],
                "curve": [float(x) for x in self.curve], "curve_null_mean": [float(x) for x in self.curve_null_mean],
                "curve_null_sd": [float(x) for x in self.curve_null_sd]}


def _pair_corr(u: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Σ u_i u_j / Σ (u_i² + u_j²)/2 over the pairs, for every row of u (M, N): (M,)."""
    num = np.einsum("mp,mp->m", u[:, i], u[:, j])
    den = 0.5 * (np.einsum("mp,mp->m", u[:, i], u[:, i]) + np.einsum("mp,mp->m", u[:, j], u[:, j]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _curve_pairs(p: np.ndarray, r_max: float, seed: int):
    """Pairs (i, j, distance) of a sample of anchor units with every unit within ``r_max`` (at most
    ``_CURVE_MAX_PAIRS`` of them, a random subset)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    n = p.shape[0]
    anchors = rng.choice(n, size=min(n, _CURVE_ANCHORS), replace=False)
    nb = cKDTree(p).query_ball_point(p[anchors], r=r_max)
    i = np.concatenate([np.full(len(b), a) for a, b in zip(anchors, nb)]).astype(np.int64)
    j = np.concatenate([np.asarray(b, dtype=np.int64) for b in nb])
    keep = i != j
    i, j = i[keep], j[keep]
    if i.size > _CURVE_MAX_PAIRS:
        sel = rng.choice(i.size, size=_CURVE_MAX_PAIRS, replace=False)
        i, j = i[sel], j[sel]
    return i, j, np.hypot(*(p[i] - p[j]).T)


def tmap_smoothness(positions, t, num_shuffles: int = 999, seed: int = 0, curve_shuffles: int = 10,
                    max_distance_mm: Optional[float] = None, progress: bool = False):
    """Neighbour correlation of the t-map ``t`` (N,) — or of each row of a stack (M, N), permuted together — against
    ``num_shuffles`` position shuffles (``np.random.default_rng(seed)``); and the correlation against distance (up
    to ``max_distance_mm``, default a third of the positions' larger span) against ``curve_shuffles`` of those
    shuffles. Returns a :class:`TmapSmoothness` (a list of them for a stack)."""
    p = _positions_array(positions)
    v = _field_values(t, p.shape[0])
    if isinstance(num_shuffles, bool) or not isinstance(num_shuffles, (int, np.integer)) or num_shuffles < 1:
        raise ValueError(f"num_shuffles must be an integer >= 1, got {num_shuffles!r}")
    if isinstance(curve_shuffles, bool) or not isinstance(curve_shuffles, (int, np.integer)) or curve_shuffles < 2:
        raise ValueError(f"curve_shuffles must be an integer >= 2, got {curve_shuffles!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    single = v.ndim == 1
    u = v.reshape(-1, p.shape[0])
    u = u - u.mean(axis=1, keepdims=True)
    n = p.shape[0]
    i, j = _neighbour_pairs(p, _NEIGHBOURS)
    model = _pair_corr(u, i, j)
    rng = np.random.default_rng(seed)
    perms = []
    null = np.empty((int(num_shuffles), u.shape[0]))
    for s in _progress(range(int(num_shuffles)), progress, "smoothness shuffles"):
        q = rng.permutation(n)
        if s < curve_shuffles:
            perms.append(q)
        null[s] = _pair_corr(u[:, q], i, j)
    span = float(np.max(np.ptp(p, axis=0)))
    r_max = span / 3 if max_distance_mm is None else _check_number(max_distance_mm, "max_distance_mm", positive=True)
    ci, cj, d = _curve_pairs(p, r_max, seed + 1)
    edges = np.linspace(0.0, r_max, _CURVE_BINS + 1)
    b = np.clip(np.digitize(d, edges) - 1, 0, _CURVE_BINS - 1)

    def curve(w):  # (M, N) -> (M, bins)
        out = np.full((w.shape[0], _CURVE_BINS), np.nan)
        for k in range(_CURVE_BINS):
            sel = b == k
            if sel.sum() >= 10:
                out[:, k] = _pair_corr(w, ci[sel], cj[sel])
        return out

    c_model = curve(u)
    c_null = np.stack([curve(u[:, q]) for q in perms])     # (S, M, bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    res = []
    for m in range(u.shape[0]):
        res.append(TmapSmoothness(smoothness=float(model[m]), null=_nullstat(float(model[m]), null[:, m]),
                                  curve_distance_mm=centres, curve=c_model[m],
                                  curve_null_mean=np.nanmean(c_null[:, m], 0),
                                  curve_null_sd=np.nanstd(c_null[:, m], 0, ddof=1)))
    return res[0] if single else res


# ------------------------------------------------------------------------------------------------ patch null
@dataclass
class PatchStatistics:
    """Output of :func:`patch_statistics` for one map: the model's :class:`PatchResult`, the patch counts of the
    shuffled maps (``count_null``: mean, sd, p = (1 + #{null ≥ model}) / (1 + n)), their 95th percentile,
    the shuffled total areas, and the null maps (smoothed fields, for figures and overlap nulls)."""

    result: PatchResult
    count_null: NullStat
    count_null_p95: float
    area_null: NullStat
    null_fields: np.ndarray = field(repr=False)

    @property
    def above_null(self) -> bool:
        """At least one patch, and more than the 95th percentile of the shuffled counts."""
        return bool(self.result.count >= 1 and self.result.count > self.count_null_p95)

    def summary(self) -> dict:
        s = self.result.summary()
        s.update({"count_null_mean": float(self.count_null.mean), "count_null_sd": float(self.count_null.sd),
                  "count_null_p95": float(self.count_null_p95), "count_p": float(self.count_null.p),
                  "count_null_values": [int(x) for x in self.count_null.values],
                  "area_null_mean_mm2": float(self.area_null.mean), "area_null_sd_mm2": float(self.area_null.sd),
                  "area_p": float(self.area_null.p), "above_null": self.above_null})
        return s


def patch_statistics(positions, t, threshold: float = DEFAULT_THRESHOLD, sigma_mm: Optional[float] = None,
                     min_area_mm2: Optional[float] = None, grid_mm: Optional[float] = None, extent=None,
                     num_shuffles: int = 10, seed: int = 0, dtype=None):
    """Patches of ``t`` (N,) — or of each row of (M, N) — and the patch counts of ``num_shuffles``
    position-shuffled maps (the first ``num_shuffles`` permutations of ``np.random.default_rng(seed)``, as in
    :func:`tmap_smoothness`; a stack is permuted together), all at the same σ, grid, threshold and minimum area.
    Returns a :class:`PatchStatistics` (a list for a stack)."""
    p = _positions_array(positions)
    v = _field_values(t, p.shape[0])
    if isinstance(num_shuffles, bool) or not isinstance(num_shuffles, (int, np.integer)) or num_shuffles < 2:
        raise ValueError(f"num_shuffles must be an integer >= 2, got {num_shuffles!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    thr = _check_number(threshold, "threshold", minimum=None)
    sigma = default_category_sigma_mm(p) if sigma_mm is None else _check_number(sigma_mm, "sigma_mm", positive=True)
    min_area = _default_min_area(sigma) if min_area_mm2 is None else _check_number(min_area_mm2, "min_area_mm2")
    single = v.ndim == 1
    maps = v.reshape(-1, p.shape[0])
    m, n = maps.shape
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(int(num_shuffles))]
    stack = np.concatenate([maps] + [maps[:, q] for q in perms], 0)        # model maps first, then shuffle by shuffle
    smap = smooth_tmap(p, stack, sigma, grid_mm, extent, dtype=dtype)
    fields = smap.field.reshape(1 + len(perms), m, *smap.field.shape[1:])
    cells = _min_cells(min_area, smap.grid_mm)
    out = []
    for k in range(m):
        res = _patches_of(smap, fields[0, k], p, thr, min_area)
        counts, areas = [], []
        for s in range(1, fields.shape[0]):
            c, a = _count_patches(fields[s, k], smap.valid, thr, cells)
            counts.append(c)
            areas.append(a * smap.cell_area_mm2)
        counts = np.asarray(counts, dtype=np.float64)
        out.append(PatchStatistics(result=res, count_null=_nullstat(float(res.count), counts),
                                   count_null_p95=float(np.percentile(counts, 95)),
                                   area_null=_nullstat(res.total_area_mm2, areas), null_fields=fields[1:, k]))
    return out[0] if single else out


# ------------------------------------------------------------------------------------------------ overlap
def map_overlap(a: PatchResult, b: PatchResult) -> Dict[str, float]:
    """Overlap of two maps on the same grid: ``dice`` of their patch masks (NaN when both have none),
    ``pearson_r`` of the smoothed maps over grid points valid in both, ``patch_cells_a``/``patch_cells_b``."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, PatchResult):
            raise TypeError(f"{name} must be a PatchResult (from find_patches), got {type(x).__name__}")
    fa, fb = a.map.field, b.map.field
    if fa.shape != fb.shape or not (np.allclose(a.map.grid_x, b.map.grid_x) and np.allclose(a.map.grid_y,
                                                                                            b.map.grid_y)):
        raise ValueError(f"a and b must be maps on the same grid, got shapes {fa.shape} and {fb.shape}")
    ma, mb = a.mask, b.mask
    tot = int(ma.sum() + mb.sum())
    dice = 2.0 * float((ma & mb).sum()) / tot if tot else float("nan")
    ok = a.map.valid & b.map.valid & np.isfinite(fa) & np.isfinite(fb)
    r = float("nan")
    if ok.sum() >= 3:
        x, y = fa[ok] - fa[ok].mean(), fb[ok] - fb[ok].mean()
        den = math.sqrt(float((x * x).sum() * (y * y).sum()))
        r = float((x * y).sum() / den) if den > 0 else float("nan")
    return {"dice": dice, "pearson_r": r, "patch_cells_a": int(ma.sum()), "patch_cells_b": int(mb.sum())}


def _overlap_with_null(sa: PatchStatistics, sb: PatchStatistics, t_a, t_b) -> Dict[str, Any]:
    """Overlap of a with b, and of a with each shuffled b (b's null maps, thresholded alike)."""
    model = map_overlap(sa.result, sb.result)
    rb = sb.result
    dice, rr = [], []
    for f in sb.null_fields:
        nb = PatchResult(patches=[], map=SmoothMap(f, rb.map.density, rb.map.valid, rb.map.grid_x, rb.map.grid_y,
                                                   rb.map.sigma_mm, rb.map.grid_mm, rb.map.extent),
                         labels=_label_patches(f, rb.map.valid, rb.threshold,
                                               _min_cells(rb.min_area_mm2, rb.map.grid_mm))[0],
                         threshold=rb.threshold, min_area_mm2=rb.min_area_mm2)
        o = map_overlap(sa.result, nb)
        dice.append(o["dice"])
        rr.append(o["pearson_r"])
    dn, rn = _nullstat(model["dice"], dice), _nullstat(model["pearson_r"], rr)
    unit_r = float(np.corrcoef(t_a, t_b)[0, 1]) if np.std(t_a) > 0 and np.std(t_b) > 0 else float("nan")
    return {"available": True, **model, "dice_null_mean": dn.mean, "dice_null_sd": dn.sd, "dice_p": dn.p,
            "pearson_r_null_mean": rn.mean, "pearson_r_null_sd": rn.sd, "pearson_r_p": rn.p,
            "unit_t_pearson_r": unit_r}


# ------------------------------------------------------------------------------------------------ analysis
class _ImageBatches:
    """Adapter for :func:`~tdann_fast.analysis.responses.layer_responses`: uint8 images → normalised tensors."""

    def __init__(self, images: np.ndarray, mean, std):
        self.images, self.mean, self.std = images, mean, std

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def clips(self, idx):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2).float() / 255.0
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - m) / s


def _category_responses(encoder, layer, stimuli, batch_size, device, progress, mean, std):
    from .responses import layer_responses

    src = _ImageBatches(stimuli.images, mean, std)
    n = len(src)
    chunk = batch_size * 4
    out, shape = None, None
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"categories -> {layer}", unit="img")
        except ImportError:  # pragma: no cover
            bar = None
    try:
        for s in range(0, n, chunk):
            idx = np.arange(s, min(s + chunk, n))

            class _Part:
                def __len__(self_inner):
                    return idx.size

                def clips(self_inner, k):
                    return src.clips(idx[np.asarray(k)])

            r, shape = layer_responses(encoder, layer, _Part(), batch_size=batch_size, device=device, progress=False)
            if out is None:
                out = np.empty((n, r.shape[1]), dtype=np.float32)
            out[idx] = r
            if bar is not None:
                bar.update(idx.size)
    finally:
        if bar is not None:
            bar.close()
    return out, shape


def _canonical(name: str) -> str:
    from .floc import FLOC_SUBCATEGORIES

    return FLOC_SUBCATEGORIES.get(str(name).strip().lower(), str(name))


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "n/a" if not math.isfinite(float(v)) else f"{float(v):.{digits}g}"
    return str(v)


def _category_clause(name: str, c: Mapping) -> str:
    return (f"{name} {c.get('count')} patch{'es' if c.get('count') != 1 else ''} vs shuffled "
            f"{_fmt(c.get('count_null_mean'), 2)} ± {_fmt(c.get('count_null_sd'), 2)} (95th pct "
            f"{_fmt(c.get('count_null_p95'), 2)}), smoothness {_fmt(c.get('smoothness'), 2)} vs "
            f"{_fmt(c.get('smoothness_null_mean'), 2)} ± {_fmt(c.get('smoothness_null_sd'), 2)} "
            f"(p = {_fmt(c.get('smoothness_p'), 2)})")


def _verdict(per: Mapping[str, Mapping], stim: Mapping) -> str:
    hits = [k for k, c in per.items() if c.get("detected")]
    head = ("category patches detected in " + ", ".join(hits)) if hits else "category patches not detected"
    body = "; ".join(_category_clause(k, c) for k, c in per.items())
    missing = stim.get("missing_categories") or []
    src = stim.get("source_short") or stim.get("source", "")
    tail = f"stimuli: {src}" + (f", missing {', '.join(missing)}" if missing else "")
    return f"{head}: {body} — {tail}"


def category_report_lines(metrics: Mapping) -> List[str]:
    """Short plain lines for a terminal: the verdict, the stimuli and their notes, one line per category, the
    face–body overlap, and the controls' verdicts."""
    m = metrics
    lines = [str(m.get("verdict", "no category verdict in these metrics"))]
    st = m.get("stimuli") or {}
    if st:
        lines.append(f"stimuli: {st.get('source')} ({st.get('num_images')} images, "
                     + ", ".join(f"{k} {v}" for k, v in (st.get("counts") or {}).items()) + ")")
        for note in st.get("notes") or []:
            lines.append(f"  note: {note}")
    crit = m.get("criteria")
    if crit:
        lines.append(f"criteria: {crit}")
    for name, c in (m.get("categories") or {}).items():
        lines.append(f"  {name}: {'PATCHES' if c.get('detected') else 'no patches'} — " + _category_clause(name, c)
                     + f"; {_fmt(c.get('total_area_mm2'))} mm² ({100 * (c.get('fraction_of_sheet') or 0):.1f} % of "
                       "the sheet)")
    ov = m.get("face_body_overlap") or {}
    if ov:
        if ov.get("available"):
            lines.append(f"faces vs bodies: Dice {_fmt(ov.get('dice'), 2)} "
                         f"(shuffled {_fmt(ov.get('dice_null_mean'), 2)}"
                         f" ± {_fmt(ov.get('dice_null_sd'), 2)}), map r {_fmt(ov.get('pearson_r'), 2)} (shuffled "
                         f"{_fmt(ov.get('pearson_r_null_mean'), 2)} ± {_fmt(ov.get('pearson_r_null_sd'), 2)})")
        else:
            lines.append(f"faces vs bodies: {ov.get('reason', 'not available')}")
    for label, c in (m.get("controls") or {}).items():
        lines.append(f"control {label}: {c.get('verdict')}")
    return lines


def _control_summary(m: Mapping) -> Dict[str, Any]:
    cats = m.get("categories") or {}
    keys = ("detected", "count", "count_null_mean", "count_null_sd", "count_null_p95", "smoothness",
            "smoothness_null_mean", "smoothness_null_sd", "smoothness_p", "total_area_mm2", "fraction_of_sheet")
    return {"analysis_dir": m.get("analysis_dir"), "verdict": m.get("verdict"), "detected": m.get("detected"),
            "model": m.get("model"), "checkpoint": m.get("checkpoint"), "alpha": m.get("alpha"),
            "categories": {k: {kk: c.get(kk) for kk in keys} for k, c in cats.items()}}


def analyze_categories(
    encoder,
    sheet,
    out_dir: Union[str, Path],
    stimuli=None,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    layer: str = "layer4.1",
    device="cpu",
    batch_size: int = 32,
    sigma_mm: Optional[float] = None,
    threshold: float = DEFAULT_THRESHOLD,
    min_area_mm2: Optional[float] = None,
    num_shuffles: int = 10,
    smoothness_shuffles: int = 999,
    alpha_level: float = DEFAULT_ALPHA,
    seed: int = 0,
    progress: bool = True,
    controls: Optional[Mapping[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
    model_name: Optional[str] = None,
    per_category: int = 24,
) -> Dict[str, Any]:
    """Category t-maps of ``layer`` of the image model ``encoder`` ((B, 3, size, size) input) with unit positions
    from ``sheet`` (a CorticalSheet or (N, 2) positions in the layer's C·H·W order), judged against
    position-shuffled nulls (definitions and the verdict in the module docstring). Writes to ``out_dir``.

    ``stimuli``: a :class:`~tdann_fast.analysis.floc.CategoryStimuli` of side ``size`` (default:
    :func:`~tdann_fast.analysis.floc.embedded_floc` (``size``, ``per_category``, ``seed``)), normalised with
    ``mean``/``std`` (ImageNet). ``sigma_mm``: default :func:`default_category_sigma_mm` of the sheet (width / 8,
    ≥ 3/sqrt(density)); ``threshold``/``min_area_mm2``: patch definition; ``num_shuffles``: maps per patch-count
    null; ``smoothness_shuffles``: shuffles of the smoothness null; ``alpha_level``: its significance level.
    ``controls``: label → another analysis (its directory, ``metrics.json`` or dict), e.g. ``{"random init": dir}``,
    whose verdict and numbers the report sets beside this one's. ``extra``: added to metrics.json.

    Writes ``metrics.json``, ``tvalues.npz`` (t-values, positions, labels), ``tmaps.png``, ``patches.png``,
    ``stimuli.png`` and ``report.md`` (opening with the verdict line). Returns the metrics dict.
    """
    import torch

    from .analyze import _finish_metrics, load_metrics
    from .floc import CategoryStimuli, embedded_floc

    t0 = time.perf_counter()
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16 (pixels), got {size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    alpha_level = _check_number(alpha_level, "alpha_level", positive=True)
    if not alpha_level < 1:
        raise ValueError(f"alpha_level must be in (0, 1), got {alpha_level!r}")
    threshold = _check_number(threshold, "threshold", minimum=None)
    for name, val in (("mean", mean), ("std", std)):
        if len(tuple(val)) != 3:
            raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {val!r}")
    positions = _positions_array(sheet)
    if stimuli is None:
        stimuli = embedded_floc(int(size), per_category=per_category, seed=int(seed))
    if not isinstance(stimuli, CategoryStimuli):
        raise TypeError(f"stimuli must be a CategoryStimuli (load_floc_folder / embedded_floc), got "
                        f"{type(stimuli).__name__}")
    if stimuli.size != size:
        raise ValueError(f"stimuli are {stimuli.size}×{stimuli.size} but size={size}; make them at this size")
    side = getattr(sheet, "side_mm", None)
    extent = (0.0, float(side), 0.0, float(side)) if side is not None else _extent(positions, None)
    sigma = default_category_sigma_mm(sheet) if sigma_mm is None else _check_number(sigma_mm, "sigma_mm",
                                                                                    positive=True)
    min_area = _default_min_area(sigma) if min_area_mm2 is None else _check_number(min_area_mm2, "min_area_mm2")
    control_metrics = {str(k): load_metrics(v) for k, v in (controls or {}).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if isinstance(encoder, torch.nn.Module):
        encoder = encoder.to(device)
    resp, shape = _category_responses(encoder, layer, stimuli, int(batch_size), device, progress, tuple(mean),
                                      tuple(std))
    if resp.shape[1] != positions.shape[0]:
        raise ValueError(f"sheet has {positions.shape[0]} unit positions but layer {layer!r} has {resp.shape[1]} "
                         f"units (shape {shape} at {size}x{size}); use the sheet made for this input size")
    t1 = time.perf_counter()
    cats = list(stimuli.categories)
    tv = category_tvalues(resp, stimuli.labels, len(cats))
    zero_var = int(np.sum(resp.std(axis=0) == 0))
    sm = tmap_smoothness(positions, tv, num_shuffles=max(int(smoothness_shuffles), int(num_shuffles)), seed=int(seed),
                         curve_shuffles=max(2, min(int(num_shuffles), 10)), progress=progress)
    ps = patch_statistics(positions, tv, threshold=threshold, sigma_mm=sigma, min_area_mm2=min_area, extent=extent,
                          num_shuffles=int(num_shuffles), seed=int(seed))
    t2 = time.perf_counter()

    per: Dict[str, Dict[str, Any]] = {}
    for k, name in enumerate(cats):
        s, p = sm[k], ps[k]
        sig = bool(s.null.p < alpha_level)
        entry = {**p.summary(), **s.summary(), "smoothness_significant": sig, "patches_above_null": p.above_null,
                 "detected": bool(sig and p.above_null),
                 "t_median": float(np.median(tv[k])), "t_max": float(tv[k].max()),
                 "fraction_units_t_above_threshold": float(np.mean(tv[k] >= threshold))}
        per[name] = entry
    canon = {_canonical(c): k for k, c in enumerate(cats)}
    if "faces" in canon and "bodies" in canon:
        a, b = canon["faces"], canon["bodies"]
        face_body = _overlap_with_null(ps[a], ps[b], tv[a], tv[b])
    else:
        lack = [c for c in ("faces", "bodies") if c not in canon]
        face_body = {"available": False,
                     "reason": "not available: " + " and ".join(f"no {'face' if c == 'faces' else 'body'} category"
                                                              for c in lack)}
    pairwise = {}
    for a in range(len(cats)):
        for b in range(a + 1, len(cats)):
            o = map_overlap(ps[a].result, ps[b].result)
            pairwise[f"{cats[a]}|{cats[b]}"] = {**o, "unit_t_pearson_r": float(np.corrcoef(tv[a], tv[b])[0, 1])
                                                if tv[a].std() > 0 and tv[b].std() > 0 else float("nan")}
    detected = any(c["detected"] for c in per.values())
    missing = stimuli.missing_categories()
    short = stimuli.source.split(" (")[0]
    stim_meta = {"source": stimuli.source, "source_short": short, "categories": cats, "counts": stimuli.counts(),
                 "num_images": len(stimuli), "size": stimuli.size, "notes": list(stimuli.notes),
                 "missing_categories": missing, "is_floc": not short.startswith("embedded")}
    verdict = _verdict(per, stim_meta)
    criteria = (f"a category has patches when its t-map smoothness (neighbour correlation) has p < {alpha_level:g} "
                f"against {max(int(smoothness_shuffles), int(num_shuffles))} position shuffles AND its patch count "
                f"(regions of the σ = {sigma:.3g} mm smoothed t-map ≥ {threshold:g}, area ≥ {min_area:.3g} mm²) "
                "is ≥ 1 "
                f"and above the 95th percentile of {int(num_shuffles)} position-shuffled maps; patches are detected "
                "when at least one category has them")

    name = model_name or type(encoder).__name__
    title = f"{name} {layer}"
    t3 = time.perf_counter()
    figs = {
        "tmaps": _plot_tmaps(ps, cats, per, out / "tmaps.png", title, positions),
        "patches": _plot_patch_stats(sm, ps, cats, per, out / "patches.png", title),
        "stimuli": _plot_stimuli(stimuli, out / "stimuli.png"),
    }
    t4 = time.perf_counter()
    metrics: Dict[str, Any] = {
        "kind": "categories", "model": name, "layer": layer, "layer_shape": list(shape), "size": int(size),
        "num_units": int(positions.shape[0]), "zero_variance_units": zero_var,
        "verdict": verdict, "detected": bool(detected), "criteria": criteria,
        "sigma_mm": float(sigma), "grid_mm": float(ps[0].result.map.grid_mm), "threshold": float(threshold),
        "min_area_mm2": float(min_area), "extent": list(extent), "num_shuffles": int(num_shuffles),
        "smoothness_shuffles": max(int(smoothness_shuffles), int(num_shuffles)), "alpha_level": float(alpha_level),
        "seed": int(seed), "stimuli": stim_meta, "categories": per, "face_body_overlap": face_body,
        "pairwise_overlap": pairwise,
        "controls": {k: _control_summary(v) for k, v in control_metrics.items()},
    }
    if extra:
        metrics.update(extra)
    np.savez_compressed(out / "tvalues.npz", tvalues=tv.astype(np.float32), positions=positions,
                        labels=stimuli.labels, categories=np.asarray(cats))
    metrics["timing_s"] = {"responses": t1 - t0, "statistics": t2 - t1, "figures": t4 - t3,
                           "total": time.perf_counter() - t0}
    figs["report"] = _write_report(metrics, out, figs, control_metrics)
    return _finish_metrics(metrics, out, figs, t0, tvalues=out / "tvalues.npz")


IT_LAYER = "layer4.1"  # the last block of resnet18: VTC in the ventral TDANN (category patches)


def analyze_checkpoint_categories(checkpoint, out_dir, layer: str = IT_LAYER, floc_root=None, device="cpu",
                                  progress: bool = True, controls: Optional[Mapping[str, Any]] = None,
                                  random_init_control: bool = True, **kwargs) -> Dict[str, Any]:
    """Category patches (:func:`tdann_fast.analysis.categories.analyze_categories`) of an image checkpoint's
    ``layer`` (default layer4.1, VTC) on an fLoc-layout folder ``floc_root`` (one sub-folder per category) or,
    without one, the embedded fLoc-like probe (:func:`tdann_fast.analysis.floc.embedded_floc`; not the fLoc set, no
    bodies: the report says so). Unless ``controls`` names one or ``random_init_control`` is False, a randomly
    initialised resnet18 on the same sheet is analysed first (``out_dir/controls/random_init``) and set beside it.
    Other keyword arguments go to ``analyze_categories`` (``sigma_mm``, ``threshold``, ``num_shuffles``, ...)."""
    from tdann_fast.errors import ConfigError
    from tdann_fast.train.checkpoint import load_for_analysis

    from .analyze import _alpha_of, random_init_like
    from .floc import load_floc_folder

    bundle = load_for_analysis(checkpoint, map_location="cpu")
    if bundle.arch != "resnet18":
        raise ConfigError(f"checkpoint: {checkpoint} is a {bundle.arch} model; category patches are measured on "
                          f"image models (task image_simclr)")
    if layer not in bundle.sheets:
        raise ConfigError(f"layer: got {layer!r}; checkpoint {checkpoint} has sheets for {list(bundle.sheets)}")
    stimuli = load_floc_folder(floc_root, size=bundle.size) if floc_root else None
    seed = int(bundle.config.get("seed", 0)) if isinstance(bundle.config, dict) else 0
    common = dict(stimuli=stimuli, size=bundle.size, mean=bundle.mean, std=bundle.std, layer=layer, device=device,
                  progress=progress, seed=seed, **kwargs)
    controls = dict(controls or {})
    if random_init_control and not any("random" in str(k) for k in controls):
        ctrl_dir = Path(out_dir) / "controls" / "random_init"
        analyze_categories(random_init_like(bundle.encoder, seed), bundle.sheets[layer], ctrl_dir,
                           model_name="resnet18 (random init)",
                           extra={"checkpoint": "random init (same sheet)", "alpha": None, "stage": None}, **common)
        controls = {"random init": ctrl_dir, **controls}
    extra = {"checkpoint": str(checkpoint), "stage": bundle.stage, "alpha": _alpha_of(bundle.alpha, layer),
             "task": bundle.task}
    return analyze_categories(bundle.encoder, bundle.sheets[layer], out_dir, controls=controls, extra=extra,
                              model_name="resnet18", **common)


# ------------------------------------------------------------------------------------------------ figures
def _plt():
    from .figures import _plt as plt_

    return plt_()


def _save(fig, path) -> str:
    from .figures import _save as save_

    return save_(fig, path)


def _draw_tmap(ax, plt, fld, smap, labels, vmax, title):
    gx, gy, h = smap.grid_x, smap.grid_y, smap.grid_mm
    ext = (gx[0] - h / 2, gx[-1] + h / 2, gy[0] - h / 2, gy[-1] + h / 2)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(fld), origin="lower", extent=ext, cmap=cmap, vmin=-vmax, vmax=vmax,
                   interpolation="nearest")
    if labels is not None and (labels > 0).any():
        ax.contour(gx, gy, (labels > 0).astype(float), levels=[0.5], colors="k", linewidths=1.0)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("x (mm)", fontsize=7)
    ax.tick_params(labelsize=6)
    return im


def _plot_tmaps(ps, cats, per, path, title, positions) -> str:
    plt = _plt()
    n = len(cats)
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n, 6.8), squeeze=False)
    for k, name in enumerate(cats):
        res = ps[k].result
        fld, null = res.map.field, ps[k].null_fields[0]
        vals = np.concatenate([fld[np.isfinite(fld)], null[np.isfinite(null)]])
        vmax = max(float(np.percentile(np.abs(vals), 99)) if vals.size else 1.0, res.threshold * 1.2, 1e-6)
        c = per[name]
        im = _draw_tmap(axes[0, k], plt, fld, res.map, res.labels, vmax,
                        f"{name}: {res.count} patches (shuffled {_fmt(c['count_null_mean'], 2)} ± "
                        f"{_fmt(c['count_null_sd'], 2)})\nsmoothness {_fmt(c['smoothness'], 2)} (p = "
                        f"{_fmt(c['smoothness_p'], 2)}){' — PATCHES' if c['detected'] else ''}")
        nl = _label_patches(null, res.map.valid, res.threshold, _min_cells(res.min_area_mm2, res.map.grid_mm))[0]
        _draw_tmap(axes[1, k], plt, null, res.map, nl, vmax,
                   f"{name}, one position-shuffled map:\n{int((np.unique(nl) > 0).sum())} patches, same σ and scale")
        fig.colorbar(im, ax=[axes[0, k], axes[1, k]], shrink=0.6, label="smoothed t")
    axes[0, 0].set_ylabel("y (mm)", fontsize=7)
    axes[1, 0].set_ylabel("y (mm)", fontsize=7)
    fig.suptitle(f"{title}: category t-maps (σ = {ps[0].result.map.sigma_mm:.3g} mm), patches outlined at "
                 f"t ≥ {ps[0].result.threshold:g}; bottom: position-shuffled null", fontsize=9)
    return _save(fig, path)


def _plot_patch_stats(sm, ps, cats, per, path, title) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(len(cats))
    ax = axes[0]
    model = [per[c]["count"] for c in cats]
    nm = [per[c]["count_null_mean"] for c in cats]
    nsd = [np.nan_to_num(per[c]["count_null_sd"]) for c in cats]
    ax.bar(x - 0.2, model, 0.4, label="model", color="C0")
    ax.bar(x + 0.2, nm, 0.4, yerr=nsd, label="position-shuffled (mean ± sd)", color="0.6", capsize=3)
    ax.scatter(x + 0.2, [per[c]["count_null_p95"] for c in cats], marker="_", s=200, c="k", label="shuffled 95th pct")
    top = max([1.0] + [float(v) for v in model] + [float(a) + float(b) for a, b in zip(nm, nsd)]
              + [float(per[c]["count_null_p95"]) for c in cats])
    ax.set_ylim(0, 1.2 * top)
    ax.set_xticks(x)
    ax.set_xticklabels(cats, fontsize=8)
    ax.set_ylabel("patches")
    ax.set_title("patch count vs shuffled maps", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.bar(x - 0.2, [per[c]["smoothness"] for c in cats], 0.4, color="C0", label="model")
    ax.bar(x + 0.2, [per[c]["smoothness_null_mean"] for c in cats], 0.4,
           yerr=[2 * np.nan_to_num(per[c]["smoothness_null_sd"]) for c in cats], color="0.6", capsize=3,
           label="shuffled (mean ± 2 sd)")
    for k, c in enumerate(cats):
        ax.text(k - 0.2, per[c]["smoothness"], f"p={_fmt(per[c]['smoothness_p'], 2)}", ha="center", va="bottom",
                fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(cats, fontsize=8)
    ax.set_ylabel("neighbour correlation of t")
    ax.set_title("t-map smoothness vs shuffled", fontsize=9)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax = axes[2]
    for k, c in enumerate(cats):
        s = sm[k]
        ax.plot(s.curve_distance_mm, s.curve, color=f"C{k}", label=c)
        ax.fill_between(s.curve_distance_mm, s.curve_null_mean - 2 * s.curve_null_sd,
                        s.curve_null_mean + 2 * s.curve_null_sd, color=f"C{k}", alpha=0.2, lw=0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("cortical distance (mm)")
    ax.set_ylabel("correlation of t")
    ax.set_title("t correlation vs distance (bands: shuffled ± 2 sd)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _plot_stimuli(stimuli, path, per_row: int = 8) -> str:
    plt = _plt()
    cats = stimuli.categories
    fig, axes = plt.subplots(len(cats), per_row, figsize=(per_row * 1.2, len(cats) * 1.3), squeeze=False)
    for k, c in enumerate(cats):
        idx = np.flatnonzero(stimuli.labels == k)[:per_row]
        for j in range(per_row):
            ax = axes[k, j]
            ax.axis("off")
            if j < idx.size:
                ax.imshow(stimuli.images[idx[j]])
        axes[k, 0].set_title(c, fontsize=8, loc="left")
    fig.suptitle(stimuli.source, fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ report
def _write_report(metrics: Mapping, out: Path, figures: Mapping[str, str],
                  controls: Mapping[str, Mapping]) -> str:
    from tdann_fast._io import atomic_write_text

    m = metrics
    st = m["stimuli"]
    lines = [f"**{m['verdict']}**", "", f"# Category patches of `{m['model']}`, layer `{m['layer']}`", ""]
    for label, c in controls.items():
        lines.append(f"- control **{label}**: {c.get('verdict', 'n/a')}")
    if controls:
        lines.append("")
    lines += [f"- **stimuli**: {st['source']} — {st['num_images']} images of {st['size']}×{st['size']} ("
              + ", ".join(f"{k} {v}" for k, v in st["counts"].items()) + ")"]
    for note in st["notes"]:
        lines.append(f"  - {note}")
    for k in ("checkpoint", "alpha", "stage"):
        if m.get(k) is not None:
            lines.append(f"- **{k}**: {m[k]}")
    lines += [f"- **units**: {m['num_units']} (layer shape {m['layer_shape']}; {m['zero_variance_units']} with zero "
              "variance, t = 0)",
              f"- **smoothing**: σ = {_fmt(m['sigma_mm'])} mm on a {_fmt(m['grid_mm'])} mm grid; patches: smoothed "
              f"t ≥ {m['threshold']:g}, area ≥ {_fmt(m['min_area_mm2'])} mm²",
              f"- **run time**: {m['timing_s']['total']:.1f} s", "",
              "## Criteria", "", m["criteria"] + ".", "",
              "The nulls shuffle unit positions (every unit keeps all its t values), so they test whether the t-maps "
              "have spatial structure at all. On a retinotopic sheet, categories that differ in where their contrast "
              "lies in the image give smooth t-maps even in an untrained network: read a trained model beside its "
              "random-init control.", "",
              "## Each category against its position-shuffled nulls", ""]
    labels = list(controls)
    head = ["category", "patches", "shuffled (mean ± sd)", "95th pct", "p", "area mm² (% sheet)",
            "smoothness", "shuffled (mean ± sd)", "p", "patches?"] + [f"{lb}: patches / smoothness" for lb in labels]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in m["categories"].items():
        cells = [name, str(c["count"]), f"{_fmt(c['count_null_mean'], 2)} ± {_fmt(c['count_null_sd'], 2)}",
                 _fmt(c["count_null_p95"], 2), _fmt(c["count_p"], 2),
                 f"{_fmt(c['total_area_mm2'])} ({100 * c['fraction_of_sheet']:.1f} %)",
                 _fmt(c["smoothness"]), f"{_fmt(c['smoothness_null_mean'], 2)} ± {_fmt(c['smoothness_null_sd'], 2)}",
                 _fmt(c["smoothness_p"], 2), "yes" if c["detected"] else "no"]
        for lb in labels:
            cc = ((controls[lb].get("categories") or {}).get(name)) or {}
            cells.append(f"{cc.get('count', 'n/a')} / {_fmt(cc.get('smoothness'), 2)} (p = "
                         f"{_fmt(cc.get('smoothness_p'), 2)})" if cc else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Patches", ""]
    for name, c in m["categories"].items():
        if not c["patches"]:
            lines.append(f"- {name}: none")
            continue
        lines.append(f"- {name}: " + "; ".join(
            f"{p['area_mm2']:.3g} mm² at ({p['centroid_mm'][0]:.3g}, {p['centroid_mm'][1]:.3g}) mm, peak t "
            f"{p['peak_t']:.3g}, {p['num_units']} units" for p in c["patches"][:8])
            + (f"; … ({len(c['patches']) - 8} more)" if len(c["patches"]) > 8 else ""))
    ov = m["face_body_overlap"]
    lines += ["", "## Overlap of the maps", ""]
    if ov.get("available"):
        lines.append(f"Faces vs bodies: Dice of the patches {_fmt(ov['dice'], 2)} (body map position-shuffled: "
                     f"{_fmt(ov['dice_null_mean'], 2)} ± {_fmt(ov['dice_null_sd'], 2)}, p = {_fmt(ov['dice_p'], 2)}); "
                     f"Pearson r of the smoothed maps {_fmt(ov['pearson_r'], 2)} (shuffled "
                     f"{_fmt(ov['pearson_r_null_mean'], 2)} ± {_fmt(ov['pearson_r_null_sd'], 2)}, p = "
                     f"{_fmt(ov['pearson_r_p'], 2)}); r of the units' t values {_fmt(ov['unit_t_pearson_r'], 2)}.")
    else:
        lines.append(f"Faces vs bodies: {ov.get('reason')}.")
    lines += ["", "Other pairs (no null; for orientation): Dice / r of the smoothed maps / r of unit t:", ""]
    for pair, o in m["pairwise_overlap"].items():
        lines.append(f"- {pair.replace('|', ' vs ')}: {_fmt(o['dice'], 2)} / {_fmt(o['pearson_r'], 2)} / "
                     f"{_fmt(o['unit_t_pearson_r'], 2)}")
    captions = {
        "tmaps": "Top: smoothed t-map of every category (red: prefers the category), patches outlined. Bottom: one "
                 "position-shuffled map at the same σ and colour scale (what noise looks like).",
        "patches": "Patch counts and t-map smoothness against the position-shuffled nulls; correlation of t "
                   "between unit pairs against their distance on the sheet, with the shuffled band.",
        "stimuli": "The first images of every category, as the network saw them (before normalisation).",
    }
    lines += ["", "## Figures", ""]
    for key, pth in figures.items():
        lines += [f"![{key}]({Path(pth).name})", "", f"*{captions.get(key, key)}*", ""]
    lines += ["## Definitions", "",
              "t is Welch's t of a unit's responses to the category against all other stimuli (zero-variance "
              "units: t = 0). The smoothed map is a normalised Gaussian average of t; smoothness is the correlation "
              "of t between 4-nearest-neighbour unit pairs (mean removed). All definitions are in the docstring of "
              "`tdann_fast/analysis/categories.py`; the stimuli in `tdann_fast/analysis/floc.py`."]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return str(path)
