"""Matplotlib (Agg) PNG figures of the analysis: map with pinwheels, PTC, metric histograms, Δ histogram, α sweep."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["plot_direction_map", "plot_ptc", "plot_metric_histograms", "plot_delta_histogram", "plot_sweep"]


def _plt():
    from .._deps import require

    matplotlib = require("matplotlib", "the analysis figures (PNG)")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return str(path)


def plot_direction_map(pw, path, positions=None, preferred=None, selective=None, title: str = "",
                       zoom_mm: Optional[float] = None) -> str:
    """Smoothed preference map (hue = preferred angle) with positive (white) and negative (black) pinwheel centres,
    and, when ``positions``/``preferred`` are given, the units themselves coloured by preferred angle."""
    plt = _plt()
    period = pw.period
    deg = math.degrees(period)
    hue = pw.preference_map() / period
    amp = np.abs(pw.field)
    amp = amp / (np.percentile(amp[pw.valid], 99) if pw.valid.any() else 1.0)
    rgb = plt.get_cmap("hsv")(hue)[..., :3]
    rgb = np.where(pw.valid[..., None], rgb, 0.85)
    x0, x1 = pw.grid_x[0] - pw.grid_mm / 2, pw.grid_x[-1] + pw.grid_mm / 2
    y0, y1 = pw.grid_y[0] - pw.grid_mm / 2, pw.grid_y[-1] + pw.grid_mm / 2
    panels = 2 if positions is not None and preferred is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.6), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(rgb, origin="lower", extent=(x0, x1, y0, y1), interpolation="nearest")
    pos = pw.charges > 0
    ax.scatter(pw.centres[pos, 0], pw.centres[pos, 1], s=14, c="white", edgecolors="k", linewidths=0.5,
               label=f"+1 ({int(pos.sum())})")
    ax.scatter(pw.centres[~pos, 0], pw.centres[~pos, 1], s=14, c="black", edgecolors="w", linewidths=0.5,
               label=f"-1 ({int((~pos).sum())})")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(f"{title}\n{pw.charges.size} pinwheels, {pw.density_per_mm2:.2f} mm⁻², "
                 f"Λ = {pw.spacing_mm:.2f} mm, σ = {pw.sigma_mm:.3f} mm", fontsize=9)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    if zoom_mm:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ax.set_xlim(cx - zoom_mm / 2, cx + zoom_mm / 2)
        ax.set_ylim(cy - zoom_mm / 2, cy + zoom_mm / 2)
    # colour key
    key = fig.add_axes([0.02, 0.02, 0.09, 0.09], projection="polar")
    th = np.linspace(0, 2 * np.pi, 256)
    key.scatter(th, np.ones_like(th), c=th / (2 * np.pi), cmap="hsv", s=6)
    key.set_yticks([])
    key.set_xticks(np.linspace(0, 2 * np.pi, 4, endpoint=False))
    key.set_xticklabels([f"{v:g}°" for v in np.linspace(0, deg, 4, endpoint=False)], fontsize=6)
    key.set_ylim(0, 1.2)
    if panels == 2:
        ax2 = axes[0, 1]
        p = np.asarray(positions)
        a = np.asarray(preferred)
        m = np.isfinite(a)
        if selective is not None:
            m &= np.asarray(selective, dtype=bool)
        ax2.set_facecolor("0.85")
        ax2.scatter(p[m, 0], p[m, 1], c=np.mod(a[m], period) / period, cmap="hsv", vmin=0, vmax=1, s=2,
                    linewidths=0)
        ax2.set_xlim(ax.get_xlim())
        ax2.set_ylim(ax.get_ylim())
        ax2.set_aspect("equal")
        ax2.set_xlabel("x (mm)")
        ax2.set_title(f"units ({'selective, ' if selective is not None else ''}n = {int(m.sum())}) "
                      "coloured by preferred angle", fontsize=9)
    return _save(fig, path)


def plot_ptc(metrics, path, title: str = "") -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = np.degrees(metrics.ptc_offsets)
    y = metrics.ptc
    ax.plot(np.append(x, -x[0]), np.append(y, y[0]), "o-", color="C0")
    ax.axhline(np.nanmin(y) + 0.5 * (1 - np.nanmin(y)), color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("offset from preferred " + ("direction" if metrics.period > 4 else "orientation") + " (°)")
    ax.set_ylabel("normalised response")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{title}\npopulation tuning curve, FWHM = {metrics.ptc_fwhm_deg:.1f}°", fontsize=9)
    return _save(fig, path)


def _hist(ax, values, label, refs=(), bins=30, rng=None):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size:
        ax.hist(v, bins=bins, range=rng, color="C0", alpha=0.8)
        ax.axvline(np.median(v), color="C1", lw=1.5, label=f"model median {np.median(v):.3g}")
    for i, (val, text) in enumerate(refs):
        ax.axvline(val, color="green", ls="--", lw=1.5, label=text if i == 0 else None)
    ax.set_xlabel(label)
    ax.legend(fontsize=6)


def plot_metric_histograms(metrics, path, references=(), title: str = "") -> str:
    """Histograms of DSI, CV, FWHM, CV-derived bandwidth and axial share with macaque reference lines (green)."""
    plt = _plt()
    refs = {r.metric: r for r in references}

    def lines(key):
        r = refs.get(key)
        if r is None:
            return []
        return [(v, f"macaque {r.text}{'' if r.verified else ' (to verify)'}") for v in r.lines()]

    direction = metrics.period > 4
    mask = metrics.responsive
    full = math.degrees(metrics.period)
    items = [
        (metrics.dsi[mask], "DSI" if direction else "OSI", lines("median_dsi"), (0, 1)),
        (metrics.circular_variance[mask], "circular variance", lines("median_circular_variance"), (0, 1)),
        (metrics.fwhm_deg[mask], "von Mises FWHM (°)", lines("median_fwhm_deg"), (0, full)),
        (metrics.cv_bandwidth_deg[mask], "CV-derived bandwidth (°)", [], (0, full)),
    ]
    if direction:
        items.append((metrics.axial_share[mask], "axial share A2/(A1+A2)", [], (0, 1)))
    fig, axes = plt.subplots(1, len(items), figsize=(3.3 * len(items), 3.2))
    for ax, (v, label, r, rg) in zip(axes, items):
        _hist(ax, v, label, r, rng=rg)
    s = metrics.summary()
    fig.suptitle(f"{title}  selective fraction {s['selective_fraction']:.2f} "
                 f"(DSI ≥ {metrics.selective_threshold:g}), responsive {s['num_responsive']}/{s['num_units']}",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_delta_histogram(nd, path, smooth=None, title: str = "") -> str:
    """Histogram of adjacent-unit preferred-angle differences vs the position-shuffled null, plus the smoothness
    curve when given."""
    plt = _plt()
    panels = 2 if smooth is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    e = nd.bin_edges_deg
    c = 0.5 * (e[1:] + e[:-1])
    w = (e[1] - e[0]) * 0.42
    ax.bar(c - w / 2, nd.hist, width=w, color="C0", label="adjacent units")
    ax.bar(c + w / 2, nd.hist_null, width=w, color="0.6", label="position-shuffled")
    ax.set_xlabel("Δ preferred " + ("direction" if nd.period > 4 else "orientation") + " (°)")
    ax.set_ylabel("fraction of pairs")
    ax.legend(fontsize=7)
    ax.set_title(f"{title}\nnearest-neighbour Δ, n = {nd.delta.size}", fontsize=9)
    if smooth is not None:
        ax2 = axes[0, 1]
        ax2.plot(smooth.distance_mm, smooth.mean_delta_deg, "o-", label="model")
        ax2.plot(smooth.distance_mm, smooth.null_delta_deg, "--", color="0.5", label="shuffled")
        ax2.set_xlabel("cortical distance (mm)")
        ax2.set_ylabel("mean Δ (°)")
        ax2.set_title(f"smoothness {smooth.smoothness:.3f}", fontsize=9)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(alphas: Sequence[float], rows: Sequence[Dict[str, float]], path, references=(),
               highlight: Optional[float] = 0.5) -> str:
    """Selective fraction, median bandwidth, median CV, median DSI and pinwheel density against α."""
    plt = _plt()
    refs = {r.metric: r for r in references}
    panels = [
        ("selective_fraction", "selective fraction"),
        ("median_fwhm_deg", "median FWHM (°)"),
        ("median_circular_variance", "median CV"),
        ("median_dsi", "median DSI"),
        ("pinwheel_density_per_mm2", "pinwheel density (mm⁻²)"),
    ]
    order = np.argsort(alphas)
    a = np.asarray(alphas, dtype=float)[order]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    xs = np.arange(a.size)
    for ax, (key, label) in zip(axes, panels):
        y = np.array([rows[i].get(key, np.nan) for i in order], dtype=float)
        ax.plot(xs, y, "o-", color="C0")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in a], fontsize=7)
        ax.set_xlabel("α")
        ax.set_ylabel(label)
        r = refs.get(key)
        if r is not None:
            for v in r.lines():
                ax.axhline(v, color="green", ls="--", lw=1.2)
        if highlight is not None and np.any(np.isclose(a, highlight)):
            ax.axvline(xs[np.argmax(np.isclose(a, highlight))], color="0.6", lw=1)
    fig.tight_layout()
    return _save(fig, path)
