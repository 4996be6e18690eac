"""PNG figures (matplotlib Agg) of the α-sweep report, seed 001 Figs 2-6 plus the map timeline.

Each ``plot_*(data, path)`` takes a :class:`SweepData` (the rows built by :mod:`tdann_fast.analysis.sweep`) and
writes one PNG; it returns ``(path, drawn)`` with ``drawn`` the reference metrics it drew (macaque references are
drawn only when marked ``comparable``). Missing values (None/NaN, a run without ``tuning.npz`` or without map
statistics) are not drawn; the figure says what is missing instead of failing.
"""
from __future__ import annotations

import math
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["SweepData", "plot_tuning_vs_alpha", "plot_fwhm_vs_cv_bandwidth", "plot_objectives",
           "plot_pinwheels_vs_alpha", "plot_ptc_across_alpha", "plot_maps_across_alpha", "plot_timeline",
           "map_region"]

from .figures import _plt, _save


GREY = "0.55"
NULL = "0.6"
REF = "green"
_NPZ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _num(v) -> float:
    """A finite float, or NaN for None / NaN / non-numbers."""
    if isinstance(v, bool) or v is None:
        return float("nan")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")


def _ok(v) -> bool:
    return math.isfinite(_num(v))


def _stats(vals) -> Tuple[float, float, int]:
    v = np.array([_num(x) for x in vals], dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else float("nan")), int(v.size)


class SweepData:
    """The rows and groups of a sweep plus lazily loaded ``tuning.npz`` arrays (``np.load(allow_pickle=False)``)."""

    def __init__(self, rows: Sequence[Dict], groups: Sequence[Dict], reference_alpha: Optional[float],
                 references=(), kind: str = "direction"):
        self.rows = list(rows)
        self.groups = list(groups)
        self.reference_alpha = reference_alpha
        self.references = tuple(references or ())
        self.kind = kind
        self._npz: Dict[str, Optional[Dict[str, np.ndarray]]] = {}

    # ---- selections
    def runs(self) -> List[Dict]:
        return [r for r in self.rows if r["role"] == "run" and r["status"] == "ok"]

    def alphas(self) -> List[float]:
        """α values of the α axis (runs that are not spatial-only), ascending."""
        return sorted({float(r["alpha"]) for r in self.runs() if r["objective"] != "spatial" and _ok(r["alpha"])})

    def at(self, alpha: float) -> List[Dict]:
        return sorted([r for r in self.runs() if r["objective"] != "spatial" and _ok(r["alpha"])
                       and math.isclose(float(r["alpha"]), alpha, abs_tol=1e-12)],
                      key=lambda r: r["seed"] if r["seed"] is not None else 0)

    def control(self, role: str) -> List[Dict]:
        return [r for r in self.rows if r["role"] == role and r["status"] == "ok"]

    def random_init(self) -> Optional[Dict]:
        c = self.control("random_init")
        return c[0] if c else None

    def representative(self, rows: Sequence[Dict], need_npz: bool = True) -> Optional[Dict]:
        """Seed 0 if present, else the lowest seed (with a readable tuning.npz when ``need_npz``)."""
        for r in sorted(rows, key=lambda r: (r["seed"] != 0, r["seed"] if r["seed"] is not None else 0)):
            if not need_npz or self.tuning(r) is not None:
                return r
        return None

    def ref_index(self) -> Optional[int]:
        a = self.alphas()
        if self.reference_alpha is None:
            return None
        for i, v in enumerate(a):
            if math.isclose(v, self.reference_alpha, abs_tol=1e-12):
                return i
        return None

    def comparable(self, metric: str) -> List[Any]:
        return [r for r in self.references if r.metric == metric and getattr(r, "comparable", False)]

    # ---- arrays
    def tuning(self, row: Mapping) -> Optional[Dict[str, np.ndarray]]:
        path = row.get("tuning_npz")
        if not path:
            return None
        if path not in self._npz:
            try:
                with np.load(path, allow_pickle=False) as z:
                    self._npz[path] = {k: np.asarray(z[k]) for k in z.files}
            except _NPZ_ERRORS:
                self._npz[path] = None
        return self._npz[path]


# ------------------------------------------------------------------------------------------------ helpers
def _xticks(ax, alphas):
    ax.set_xticks(range(len(alphas)))
    ax.set_xticklabels([f"{a:g}" for a in alphas], fontsize=8)
    ax.set_xlabel("α")
    ax.set_xlim(-0.5, max(len(alphas) - 0.5, 0.5))


def _ref_alpha_line(ax, data):
    i = data.ref_index()
    if i is not None:
        ax.axvline(i, color="0.7", lw=1.2, zorder=0)


def _draw_refs(ax, data, metric) -> List[str]:
    drawn = []
    for r in data.comparable(metric):
        vals = r.lines()
        for j, v in enumerate(vals):
            ax.axhline(v, color=REF, ls="--", lw=1.2, label=f"macaque {r.text}" if j == 0 else None)
        if vals:
            drawn.append(metric)
    return drawn


def _series(ax, data, key, color="C0", label=None, offset=0.0) -> bool:
    """Mean ± sd over seeds at every α (points for single seeds, faint dots for each seed)."""
    alphas = data.alphas()
    xs, ms = [], []
    any_drawn = False
    for i, a in enumerate(alphas):
        vals = [_num(r[key]) for r in data.at(a)]
        vals = [v for v in vals if math.isfinite(v)]
        if not vals:
            continue
        any_drawn = True
        m, sd, n = _stats(vals)
        if n > 1:
            ax.scatter(np.full(n, i + offset) + np.linspace(-0.08, 0.08, n), vals, s=8, color=color, alpha=0.35,
                       linewidths=0)
            ax.errorbar(i + offset, m, yerr=sd if math.isfinite(sd) else None, fmt="o", color=color, capsize=3,
                        ms=5)
        else:
            ax.plot(i + offset, m, "o", color=color, ms=5)
        xs.append(i + offset)
        ms.append(m)
    if xs:
        ax.plot(xs, ms, "-", color=color, lw=1, label=label)
    return any_drawn


def _note(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.3",
            wrap=True)


def _random_line(ax, data, key, label="random init"):
    r = data.random_init()
    if r is not None and _ok(r.get(key)):
        ax.axhline(_num(r[key]), color=GREY, lw=1.5, ls="-", alpha=0.8, label=label)


# ------------------------------------------------------------------------------------------------ Fig 2
def plot_tuning_vs_alpha(data: SweepData, path) -> Tuple[str, List[str]]:
    """Fig. 2 C-F: selective fraction, median FWHM, median CV, median DSI against α."""
    plt = _plt()
    dsi = "DSI" if data.kind != "orientation" else "OSI"
    panels = [("selective_fraction", "C  selective fraction"), ("median_fwhm_deg", "D  median bandwidth, FWHM (°)"),
              ("median_circular_variance", "E  median CV"), ("median_dsi", f"F  median {dsi}")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    alphas = data.alphas()
    drawn: List[str] = []
    for ax, (key, label) in zip(axes, panels):
        if not _series(ax, data, key, label="model (mean ± sd over seeds)"):
            _note(ax, "no values")
        _random_line(ax, data, key)
        drawn += _draw_refs(ax, data, key)
        _ref_alpha_line(ax, data)
        _xticks(ax, alphas)
        ax.set_ylabel(label.split("  ", 1)[1])
        ax.set_title(label, fontsize=9, loc="left")
        if key in ("selective_fraction", "median_circular_variance", "median_dsi"):
            lo, hi = ax.get_ylim()
            ax.set_ylim(min(lo, 0), max(hi, 1.0) if hi > 0.9 else hi)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7,
                   bbox_to_anchor=(0.5, -0.06))
    ra = data.reference_alpha
    fig.suptitle("Tuning against α" + (f" (grey vertical line: α = {ra:g})" if data.ref_index() is not None
                                       else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path), drawn


# ------------------------------------------------------------------------------------------------ Fig 3A
def plot_fwhm_vs_cv_bandwidth(data: SweepData, path) -> Tuple[str, List[str]]:
    """Fig. 3A: median FWHM and median CV-derived bandwidth against α; per-unit scatter at the reference α."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    alphas = data.alphas()
    a = _series(ax, data, "median_fwhm_deg", color="C0", label="median von Mises FWHM", offset=-0.05)
    b = _series(ax, data, "median_cv_bandwidth_deg", color="C3", label="median CV-derived bandwidth", offset=0.05)
    if not (a or b):
        _note(ax, "no values")
    _ref_alpha_line(ax, data)
    _xticks(ax, alphas)
    ax.set_ylabel("bandwidth (°)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title("A  bandwidth against α", fontsize=9, loc="left")
    rep = None
    if data.reference_alpha is not None:
        rep = data.representative([r for r in data.runs() if r["objective"] != "spatial" and _ok(r["alpha"])
                                   and math.isclose(float(r["alpha"]), data.reference_alpha, abs_tol=1e-12)])
    t = data.tuning(rep) if rep is not None else None
    if t is not None and "fwhm_deg" in t and "cv_bandwidth_deg" in t:
        fw = np.asarray(t["fwhm_deg"], dtype=float)
        cb = np.asarray(t["cv_bandwidth_deg"], dtype=float)
        m = np.isfinite(fw) & np.isfinite(cb)
        if "responsive" in t and t["responsive"].shape == fw.shape:
            m &= t["responsive"].astype(bool)
        if m.any():
            ax2.scatter(cb[m], fw[m], s=5, alpha=0.5, color="C0", linewidths=0, label=f"units (n = {int(m.sum())})")
            hi = float(max(cb[m].max(), fw[m].max()))
            ax2.plot([0, hi], [0, hi], "--", color="0.5", lw=1, label="identity")
            ax2.legend(fontsize=7)
        else:
            _note(ax2, "no responsive unit with both widths")
        ax2.set_title(f"per unit at α = {data.reference_alpha:g} (seed {rep['seed']})", fontsize=9)
    else:
        _note(ax2, "no tuning.npz at the reference α" if data.reference_alpha is not None
              else "no reference α in the manifest")
    ax2.set_xlabel("CV-derived bandwidth (°)")
    ax2.set_ylabel("von Mises FWHM (°)")
    fig.tight_layout()
    return _save(fig, path), []


# ------------------------------------------------------------------------------------------------ Fig 3B
def _objective_rows(data: SweepData) -> List[Tuple[str, Optional[Dict], str]]:
    runs = data.runs()
    contrastive = [r for r in runs if r["objective"] == "contrastive"] or \
                  [r for r in runs if r["objective"] == "joint" and _ok(r["alpha"]) and float(r["alpha"]) == 0.0]
    spatial = [r for r in runs if r["objective"] == "spatial"]
    ra = data.reference_alpha
    joint = [r for r in runs if r["objective"] == "joint" and ra is not None and _ok(r["alpha"])
             and math.isclose(float(r["alpha"]), ra, abs_tol=1e-12)]
    out = []
    for name, rows, why in (("contrastive only (α = 0)", contrastive, "no analysed α = 0 / contrastive run"),
                            ("spatial only", spatial, "no analysed run with objective 'spatial'"),
                            (f"joint (α = {ra:g})" if ra is not None else "joint", joint,
                             "no analysed joint run at the reference α")):
        rep = data.representative(rows)
        if rep is None and rows:
            why = "no readable tuning.npz"
        out.append((name, rep, why))
    return out


def plot_objectives(data: SweepData, path) -> Tuple[str, List[str]]:
    """Fig. 3B: PTCs, DSI and FWHM distributions under the contrastive-only, spatial-only and joint objectives."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    missing = []
    colors = ("C0", "C2", "C3")
    for (name, row, why), c in zip(_objective_rows(data), colors):
        t = data.tuning(row) if row is not None else None
        if t is None:
            missing.append(f"{name}: {why}")
            continue
        sf = row.get("selective_fraction")
        label = f"{name}, seed {row['seed']}: selective {'n/a' if not _ok(sf) else format(_num(sf), '.2f')}"
        resp = t["responsive"].astype(bool) if "responsive" in t else None
        if "ptc" in t and "ptc_offsets" in t and np.isfinite(t["ptc"]).any():
            x = np.degrees(np.asarray(t["ptc_offsets"], dtype=float))
            y = np.asarray(t["ptc"], dtype=float)
            axes[0].plot(np.append(x, -x[0]), np.append(y, y[0]), "o-", ms=3, color=c, label=label)
        for ax, key, rng in ((axes[1], "dsi", (0, 1)), (axes[2], "fwhm_deg", (0, 360))):
            if key not in t:
                continue
            v = np.asarray(t[key], dtype=float)
            if resp is not None and resp.shape == v.shape:
                v = v[resp]
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(v, bins=24, range=rng, histtype="step", density=True, color=c, lw=1.5,
                        label=f"{name} (median {np.median(v):.3g})")
    axes[0].set_xlabel("offset from preferred direction (°)")
    axes[0].set_ylabel("normalised response")
    axes[0].set_title("population tuning curves", fontsize=9)
    axes[1].set_xlabel("DSI (responsive units)")
    axes[1].set_ylabel("density")
    axes[2].set_xlabel("von Mises FWHM (°, responsive units)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        else:
            _note(ax, "no data")
    if missing:
        fig.text(0.01, -0.02, "missing: " + "; ".join(missing), fontsize=8, color="C3", ha="left", va="top")
    fig.suptitle("Tuning under contrastive-only, spatial-only and joint objectives", fontsize=10)
    fig.tight_layout()
    return _save(fig, path), []


# ------------------------------------------------------------------------------------------------ Fig 4B
def _marker(ax, x, y, detected, color, size=6):
    if detected is True:
        ax.plot(x, y, "o", color=color, ms=size, zorder=3)
    elif detected is False:
        ax.plot(x, y, "o", mfc="none", mec=color, mew=1.5, ms=size, zorder=3)
    else:
        ax.plot(x, y, "x", color=GREY, ms=size, zorder=3)


def plot_pinwheels_vs_alpha(data: SweepData, path) -> Tuple[str, List[str]]:
    """Fig. 4B: pinwheel density and density·Λ² against α, each run with its position-shuffled null."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.0))
    alphas = data.alphas()
    drawn: List[str] = []
    legacy = False
    n1 = n2 = 0
    for i, a in enumerate(alphas):
        rows = data.at(a)
        offs = np.linspace(-0.15, 0.15, len(rows)) if len(rows) > 1 else [0.0]
        for r, o in zip(rows, offs):
            x = i + o
            if r["map_analysed"]:
                if _ok(r["density_per_mm2"]):
                    n1 += 1
                    _marker(ax, x, _num(r["density_per_mm2"]), r["map_detected"], "C0")
                    if _ok(r["density_per_mm2_null_mean"]):
                        ax.errorbar(x + 0.06, _num(r["density_per_mm2_null_mean"]),
                                    yerr=_num(r["density_per_mm2_null_sd"]) if _ok(r["density_per_mm2_null_sd"])
                                    else None, fmt="s", ms=3, color=NULL, capsize=2)
                if r.get("spacing_resolved") and _ok(r["density_per_spacing2"]):
                    n2 += 1
                    _marker(ax2, x, _num(r["density_per_spacing2"]), r["map_detected"], "C1")
                    if _ok(r["density_per_spacing2_null_mean"]):
                        ax2.errorbar(x + 0.06, _num(r["density_per_spacing2_null_mean"]),
                                     yerr=_num(r["density_per_spacing2_null_sd"])
                                     if _ok(r["density_per_spacing2_null_sd"]) else None,
                                     fmt="s", ms=3, color=NULL, capsize=2)
            elif _ok(r.get("legacy_density_per_mm2")):
                legacy = True
                n1 += 1
                ax.plot(x, _num(r["legacy_density_per_mm2"]), "x", color=GREY, ms=6)
    _random_line(ax, data, "density_per_mm2", "random init")
    _random_line(ax2, data, "density_per_spacing2", "random init")
    drawn += _draw_refs(ax, data, "pinwheel_density_per_mm2")
    drawn += _draw_refs(ax2, data, "density_per_spacing2")
    for a_ in (ax, ax2):
        _ref_alpha_line(a_, data)
        _xticks(a_, alphas)
    if not n1:
        _note(ax, "no pinwheel density in the analysed runs")
    if not n2:
        _note(ax2, "Λ not resolved in any run")
    ax.set_ylabel("pinwheel density (mm⁻²)")
    ax.set_title("B  pinwheel density", fontsize=9, loc="left")
    ax2.set_ylabel("pinwheels per Λ²")
    ax2.set_title("pinwheels per Λ² (runs with Λ resolved)", fontsize=9, loc="left")
    proxies = [Line2D([], [], marker="o", ls="", color="k", label="map detected"),
               Line2D([], [], marker="o", ls="", mfc="none", mec="k", label="no map"),
               Line2D([], [], marker="s", ls="", color=NULL, label="position-shuffled null (mean ± sd)")]
    if legacy:
        proxies.append(Line2D([], [], marker="x", ls="", color=GREY, label="old metrics.json: no null"))
    for a_ in (ax, ax2):
        h, lab = a_.get_legend_handles_labels()
        a_.legend(handles=proxies + h, fontsize=6, loc="best")
    fig.tight_layout()
    return _save(fig, path), drawn


# ------------------------------------------------------------------------------------------------ Fig 5
def plot_ptc_across_alpha(data: SweepData, path) -> Tuple[str, List[str]]:
    """Fig. 5: population tuning curves for each α (mean over seeds) with their primary-peak FWHM."""
    plt = _plt()
    from .tuning import curve_fwhm

    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    alphas = data.alphas()
    cmap = plt.get_cmap("viridis")
    drawn_any = False
    for i, a in enumerate(alphas):
        curves, xs, fwhms = [], None, []
        for r in data.at(a):
            t = data.tuning(r)
            if t is None or "ptc" not in t or "ptc_offsets" not in t:
                continue
            y = np.asarray(t["ptc"], dtype=float)
            if not np.isfinite(y).all():
                continue
            x = np.asarray(t["ptc_offsets"], dtype=float)
            if xs is None:
                xs = x
            if x.shape != xs.shape or not np.allclose(x, xs):
                continue
            curves.append(y)
            fwhms.append(_num(r.get("ptc_fwhm_deg")))
        if not curves:
            continue
        y = np.mean(curves, 0)
        xd = np.degrees(xs)
        if len(curves) > 1:
            step = abs(xd[1] - xd[0]) if xd.size > 1 else float("nan")
            fw = curve_fwhm(y, step) if math.isfinite(step) else float("nan")
            seeds = f", mean of {len(curves)} seeds"
        else:
            fw = fwhms[0]
            seeds = ""
        c = cmap(0.85 * i / max(len(alphas) - 1, 1))
        fws = f"{fw:.0f}°" if math.isfinite(fw) else "n/a"
        ax.plot(np.append(xd, -xd[0]), np.append(y, y[0]), "o-", ms=3, color=c,
                label=f"α = {a:g}: FWHM {fws}{seeds}")
        drawn_any = True
    if not drawn_any:
        _note(ax, "no population tuning curve (no tuning.npz)")
    else:
        ax.legend(fontsize=7)
    ax.set_xlabel("offset from preferred direction (°)")
    ax.set_ylabel("normalised response")
    ax.set_ylim(0, 1.05)
    ax.set_title("Population tuning curves across α", fontsize=10)
    return _save(fig, path), []


# ------------------------------------------------------------------------------------------------ Fig 6
def map_region(positions_list: Sequence[np.ndarray], side_mm: float = 2.0) -> Tuple[float, float, float, float]:
    """(x0, x1, y0, y1): a square of ``side_mm`` (or the smallest sheet side if smaller) centred on the first
    sheet's bounding box; the same region for every panel."""
    p = np.asarray(positions_list[0], dtype=float)
    lo, hi = p.min(0), p.max(0)
    c = (lo + hi) / 2
    side = float(side_mm)
    for q in positions_list:
        q = np.asarray(q, dtype=float)
        side = min(side, float(np.ptp(q[:, 0])), float(np.ptp(q[:, 1])))
    h = side / 2
    return (float(c[0] - h), float(c[0] + h), float(c[1] - h), float(c[1] + h))


def plot_maps_across_alpha(data: SweepData, path, side_mm: float = 2.0, pixels: int = 160) -> Tuple[str, List[str]]:
    """Fig. 6: direction maps across α in the same sub-region, recomputed from tuning.npz at each run's σ."""
    plt = _plt()
    from .pinwheels import default_sigma_mm, pinwheels, smooth_vector_field

    panels = []
    for a in data.alphas():
        r = data.representative(data.at(a))
        if r is None:
            continue
        t = data.tuning(r)
        if "positions" not in t or "vector" not in t:
            continue
        pos = np.asarray(t["positions"], dtype=float)
        vec = np.nan_to_num(np.asarray(t["vector"]).astype(np.complex128), nan=0.0)
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] != vec.shape[0] or pos.shape[0] < 3:
            continue
        panels.append((a, r, pos, vec))
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows_ = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows_, cols, figsize=(3.4 * cols, 3.6 * rows_), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if not panels:
        _note(axes[0, 0], "no run with positions and vectors in tuning.npz")
        return _save(fig, path), []
    region = map_region([p[2] for p in panels], side_mm)
    x0, x1, y0, y1 = region
    gx = np.linspace(x0, x1, pixels)
    gy = np.linspace(y0, y1, pixels)
    cmap = plt.get_cmap("hsv")
    for ax, (a, r, pos, vec) in zip(axes.ravel(), panels):
        sigma = _num(r.get("sigma_mm"))
        if not (math.isfinite(sigma) and sigma > 0):
            sigma = default_sigma_mm(pos)
        field, _ = smooth_vector_field(pos, vec, sigma, gx, gy)
        hue = np.mod(np.angle(field), 2 * np.pi) / (2 * np.pi)
        amp = np.abs(field)
        top = np.percentile(amp, 99) if np.isfinite(amp).any() else 0.0
        amp = np.clip(amp / top, 0, 1) if top > 0 else np.zeros_like(amp)
        rgb = cmap(hue)[..., :3] * amp[..., None]
        ax.imshow(rgb, origin="lower", extent=(x0, x1, y0, y1), interpolation="bilinear")
        try:
            pw = pinwheels(pos, vec, sigma_mm=sigma, extent=region)
            cen, ch = pw.centres, pw.charges
        except ValueError:
            cen, ch = np.zeros((0, 2)), np.zeros(0)
        inside = ((cen[:, 0] >= x0) & (cen[:, 0] <= x1) & (cen[:, 1] >= y0) & (cen[:, 1] <= y1)) if len(cen) \
            else np.zeros(0, bool)
        pos_c, neg_c = inside & (ch > 0), inside & (ch < 0)
        ax.scatter(cen[pos_c, 0], cen[pos_c, 1], s=20, c="white", edgecolors="k", linewidths=0.6)
        ax.scatter(cen[neg_c, 0], cen[neg_c, 1], s=20, c="black", edgecolors="w", linewidths=0.6)
        status = ("map detected" if r["map_detected"] else "no map") if r["map_analysed"] and \
            r["map_detected"] is not None else "map not analysed"
        ax.set_title(f"α = {a:g} (seed {r['seed']}): {status}\nσ = {sigma:.2f} mm, "
                     f"{int(pos_c.sum())}+ / {int(neg_c.sum())}− pinwheels", fontsize=8)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = 0.5 if (x1 - x0) >= 1.0 else round((x1 - x0) / 4, 2)
        if bar > 0:
            bx, by = x0 + 0.05 * (x1 - x0), y0 + 0.05 * (y1 - y0)
            ax.plot([bx, bx + bar], [by, by], color="white", lw=3, solid_capstyle="butt")
            ax.text(bx + bar / 2, by + 0.03 * (y1 - y0), f"{bar:g} mm", color="white", ha="center", fontsize=7)
    key = fig.add_axes([0.0, 0.0, 0.08, 0.08], projection="polar")
    th = np.linspace(0, 2 * np.pi, 256)
    key.scatter(th, np.ones_like(th), c=th / (2 * np.pi), cmap="hsv", s=4)
    key.set_yticks([])
    key.set_xticks(np.linspace(0, 2 * np.pi, 4, endpoint=False))
    key.set_xticklabels(["0°", "90°", "180°", "270°"], fontsize=5)
    key.set_ylim(0, 1.2)
    fig.suptitle(f"Direction maps across α, same {x1 - x0:.2g} × {y1 - y0:.2g} mm sub-region", fontsize=10)
    return _save(fig, path), []


# ------------------------------------------------------------------------------------------------ timeline
def timeline_entries(data: SweepData) -> List[Tuple[str, Dict]]:
    """(label, row) for: random init, each timeline stage, each seed at the reference α and at α = 0."""
    out = []
    ri = data.random_init()
    if ri is not None:
        out.append(("random init", ri))
    for r in sorted(data.control("timeline"), key=lambda r: _num(r.get("stage"))):
        out.append((f"stage {r.get('stage')}\n{r.get('label') or ''}", r))
    shown: List[float] = []
    for a in ([data.reference_alpha] if data.reference_alpha is not None else []) + [0.0]:
        if any(math.isclose(a, b, abs_tol=1e-12) for b in shown):
            continue
        shown.append(a)
        for r in data.at(a):
            out.append((f"stage 6\nα = {a:g}, seed {r['seed']}", r))
    return out


def plot_timeline(data: SweepData, path) -> Tuple[str, List[str]]:
    """Where the map comes from: smoothness and pinwheel density (model vs null) across training stages."""
    plt = _plt()
    import textwrap

    entries = timeline_entries(data)
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 1.15 * len(entries)), 6.4), sharex=True)
    for ax, key, label in ((axes[0], "smoothness", "map smoothness"),
                           (axes[1], "density_per_mm2", "pinwheel density (mm⁻²)")):
        shown = 0
        for i, (_, r) in enumerate(entries):
            if not r["map_analysed"]:
                ax.plot(i, 0, "x", color=GREY, ms=7, transform=ax.get_xaxis_transform())
                continue
            if _ok(r.get(key)):
                shown += 1
                _marker(ax, i, _num(r[key]), r["map_detected"], "C0" if r["role"] != "run" else "C3", size=7)
            nm, ns = r.get(f"{key}_null_mean"), r.get(f"{key}_null_sd")
            if _ok(nm):
                ax.errorbar(i + 0.15, _num(nm), yerr=_num(ns) if _ok(ns) else None, fmt="s", ms=3, color=NULL,
                            capsize=2)
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([textwrap.fill(lab, 16) for lab, _ in entries], fontsize=7, rotation=0)
        ax.set_xlim(-0.6, max(len(entries) - 0.4, 0.6))
        ax.set_ylabel(label)
        if not entries:
            _note(ax, "no controls or runs to show")
        elif not shown:
            _note(ax, "no map statistics (metrics.json without `map`)")
    from matplotlib.lines import Line2D

    axes[0].legend(handles=[Line2D([], [], marker="o", ls="", color="k", label="map detected"),
                            Line2D([], [], marker="o", ls="", mfc="none", mec="k", label="no map"),
                            Line2D([], [], marker="x", ls="", color=GREY, label="map not analysed"),
                            Line2D([], [], marker="s", ls="", color=NULL, label="position-shuffled null")],
                   fontsize=6, loc="best")
    fig.suptitle("Where the map comes from: model vs position-shuffled null across training stages", fontsize=10)
    fig.tight_layout()
    return _save(fig, path), []
