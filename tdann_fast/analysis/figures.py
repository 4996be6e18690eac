"""Matplotlib (Agg) PNG figures of one analysis: map with winding centres and a null, spectrum and density against σ,
preferred-angle histogram, PTC, metric histograms, Δ histogram (the α-sweep figures are in ``sweep_figures``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["plot_direction_map", "plot_map_spectrum", "plot_preferred_histogram", "plot_ptc", "plot_metric_histograms",
           "plot_delta_histogram", "plot_sf_map"]


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


def _map_rgb(plt, pw):
    hue = pw.preference_map() / pw.period
    amp = np.abs(pw.field)
    top = np.percentile(amp[pw.valid], 99) if pw.valid.any() else 1.0
    val = np.clip(amp / (top if top > 0 else 1.0), 0, 1)
    rgb = plt.get_cmap("hsv")(hue)[..., :3] * (0.25 + 0.75 * val[..., None])
    return np.where(pw.valid[..., None], rgb, 0.85)


def _draw_map(ax, plt, pw, title, inner_extent=None):
    x0, x1 = pw.grid_x[0] - pw.grid_mm / 2, pw.grid_x[-1] + pw.grid_mm / 2
    y0, y1 = pw.grid_y[0] - pw.grid_mm / 2, pw.grid_y[-1] + pw.grid_mm / 2
    ax.imshow(_map_rgb(plt, pw), origin="lower", extent=(x0, x1, y0, y1), interpolation="nearest")
    pos = pw.charges > 0
    ax.scatter(pw.centres[pos, 0], pw.centres[pos, 1], s=12, c="white", edgecolors="k", linewidths=0.5,
               label=f"+1 ({int(pos.sum())})")
    ax.scatter(pw.centres[~pos, 0], pw.centres[~pos, 1], s=12, c="black", edgecolors="w", linewidths=0.5,
               label=f"-1 ({int((~pos).sum())})")
    if inner_extent is not None:
        a, b, c, d = inner_extent
        ax.plot([a, b, b, a, a], [c, c, d, d, c], color="k", ls="--", lw=0.8)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title(title, fontsize=8)
    ax.legend(loc="upper right", fontsize=6, framealpha=0.7)
    return (x0, x1, y0, y1)


def plot_direction_map(pw, path, positions=None, preferred=None, selective=None, title: str = "",
                       zoom_mm: Optional[float] = None, inner_extent=None, verdict: str = "",
                       null_vectors=None, sheet_extent=None) -> str:
    """Smoothed preference map (hue = preferred angle, brightness = vector length) with positive (white) and
    negative (black) pinwheel centres; the dashed box is the region the map statistics use (outside it: the border
    band). With ``positions``/``preferred``: the units themselves, coloured by preferred angle (the border band
    shaded). With ``null_vectors`` (a position-shuffled copy of the vectors): the same map drawn for that null at
    the same σ, so the eye can judge what noise looks like."""
    from .pinwheels import pinwheels as _pinwheels

    plt = _plt()
    period = pw.period
    deg = math.degrees(period)
    panels = [0]
    if positions is not None and preferred is not None:
        panels.append(1)
        if null_vectors is not None:
            panels.append(2)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 5.4), squeeze=False)
    ax = axes[0, 0]
    lam = f"Λ = {pw.spacing_mm:.2f} mm" if np.isfinite(pw.spacing_mm) else "Λ not resolved"
    ext = _draw_map(ax, plt, pw, f"{title}\n{pw.charges.size} winding centres, {pw.density_per_mm2:.2f} mm⁻² at "
                                 f"σ = {pw.sigma_mm:.3f} mm; {lam}", inner_extent)
    if zoom_mm:
        cx, cy = (ext[0] + ext[1]) / 2, (ext[2] + ext[3]) / 2
        ax.set_xlim(cx - zoom_mm / 2, cx + zoom_mm / 2)
        ax.set_ylim(cy - zoom_mm / 2, cy + zoom_mm / 2)
    key = fig.add_axes([0.02, 0.02, 0.07, 0.07], projection="polar")
    th = np.linspace(0, 2 * np.pi, 256)
    key.scatter(th, np.ones_like(th), c=th / (2 * np.pi), cmap="hsv", s=6)
    key.set_yticks([])
    key.set_xticks(np.linspace(0, 2 * np.pi, 4, endpoint=False))
    key.set_xticklabels([f"{v:g}°" for v in np.linspace(0, deg, 4, endpoint=False)], fontsize=6)
    key.set_ylim(0, 1.2)
    if 1 in panels:
        ax2 = axes[0, 1]
        p = np.asarray(positions)
        a = np.asarray(preferred)
        m = np.isfinite(a)
        if selective is not None:
            m &= np.asarray(selective, dtype=bool)
        ax2.set_facecolor("0.85")
        ax2.scatter(p[m, 0], p[m, 1], c=np.mod(a[m], period) / period, cmap="hsv", vmin=0, vmax=1, s=2,
                    linewidths=0)
        if inner_extent is not None:
            a0, b0, c0, d0 = inner_extent
            ax2.plot([a0, b0, b0, a0, a0], [c0, c0, d0, d0, c0], color="k", ls="--", lw=0.8)
        if sheet_extent is not None:  # the whole sheet, so the border band is visible
            ax2.set_xlim(sheet_extent[0], sheet_extent[1])
            ax2.set_ylim(sheet_extent[2], sheet_extent[3])
        else:
            ax2.set_xlim(ax.get_xlim())
            ax2.set_ylim(ax.get_ylim())
        ax2.set_aspect("equal")
        ax2.set_xlabel("x (mm)")
        ax2.set_title(f"units ({'selective, ' if selective is not None else ''}n = {int(m.sum())}) coloured by "
                      "preferred angle;\noutside the dashed box: border band (excluded)", fontsize=8)
    if 2 in panels:
        v = np.asarray(null_vectors)
        ok = np.isfinite(v)
        pts = np.asarray(positions)[ok]
        inside = np.ones(pts.shape[0], dtype=bool)
        if inner_extent is not None:
            a0, b0, c0, d0 = inner_extent
            inside = (pts[:, 0] >= a0) & (pts[:, 0] <= b0) & (pts[:, 1] >= c0) & (pts[:, 1] <= d0)
        ext_in = inner_extent if inner_extent is not None else None
        try:
            pn = _pinwheels(pts[inside], v[ok][inside], sigma_mm=pw.sigma_mm, grid_mm=pw.grid_mm, period=period,
                            extent=ext_in)
            _draw_map(axes[0, 2], plt, pn, f"position-shuffled null, same σ\n{pn.charges.size} winding centres, "
                                           f"{pn.density_per_mm2:.2f} mm⁻²", inner_extent)
            axes[0, 2].set_xlim(ax.get_xlim())
            axes[0, 2].set_ylim(ax.get_ylim())
        except ValueError as exc:  # too few units to draw a null map
            axes[0, 2].text(0.5, 0.5, f"null map not drawn: {exc}", ha="center", va="center", fontsize=7,
                            transform=axes[0, 2].transAxes)
    if verdict:
        fig.suptitle(verdict, fontsize=9)
    return _save(fig, path)


def plot_map_spectrum(ms, path, title: str = "") -> str:
    """Left: the radial power spectrum of the map against the position-shuffled nulls (mean ± 2 sd), Λ marked when
    resolved. Right: winding-centre density against the smoothing σ for the map and the nulls (mean ± sd): the
    density per mm² depends on σ, which is why the verdict uses density per Λ² at σ tied to Λ."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    k = np.asarray(ms.spectrum_k)
    sel = k > 0
    ax.plot(k[sel], np.asarray(ms.spectrum_model)[sel], "-", color="C0", label="map")
    mu, sd = np.asarray(ms.spectrum_null_mean)[sel], np.asarray(ms.spectrum_null_sd)[sel]
    ax.plot(k[sel], mu, "--", color="0.4", label=f"position-shuffled (n = {ms.num_shuffles})")
    ax.fill_between(k[sel], np.maximum(mu - 2 * sd, 1e-30), mu + 2 * sd, color="0.7", alpha=0.5)
    if ms.spacing_resolved and np.isfinite(ms.spacing_mm):
        ax.axvline(1.0 / ms.spacing_mm, color="C3", ls=":", label=f"1/Λ, Λ = {ms.spacing_mm:.2f} mm")
    ax.set_yscale("log")
    ax.set_xlabel("wavenumber (cycles/mm)")
    ax.set_ylabel("power")
    ax.set_title(f"{title}\nspectrum: peak ratio {ms.spectrum_peak_ratio:.2f}, p = {ms.spacing_p:.2g}, "
                 f"{'resolved' if ms.spacing_resolved else 'not resolved'}", fontsize=8)
    ax.legend(fontsize=7)
    ax = axes[1]
    d = ms.density_vs_sigma
    s = np.asarray(d["sigma_mm"])
    ax.plot(s, np.asarray(d["model"]), "o-", color="C0", label="map")
    mu, sd = np.asarray(d["null_mean"]), np.asarray(d["null_sd"])
    ax.errorbar(s, mu, yerr=sd, fmt="s--", color="0.4", label="position-shuffled (mean ± sd)")
    ax.axvline(ms.sigma_mm, color="C3", ls=":", label=f"σ used, {ms.sigma_mm:.3f} mm")
    ax.set_xscale("log")
    if np.any(np.asarray(d["model"]) > 0) or np.any(mu > 0):
        ax.set_yscale("log")
    ax.set_xlabel("smoothing σ (mm)")
    ax.set_ylabel("winding centres per mm²")
    ax.set_title("density against σ: map vs null", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_preferred_histogram(uniformity, border, path, title: str = "") -> str:
    """Histogram of the selective units' preferred angles with the Rayleigh test of uniformity (a population bias
    that smoothing turns into one colour over the sheet), and the same for the units in the border band and inside
    it."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))

    def bars(ax, u, label, color, offset=0.0, width=0.8):
        e = np.asarray(u.get("bin_edges_deg") or [])
        h = np.asarray(u.get("hist") or [])
        if e.size < 2 or h.sum() == 0:
            return
        c = 0.5 * (e[1:] + e[:-1])
        w = (e[1] - e[0]) * width
        ax.bar(c + offset * (e[1] - e[0]), h / h.sum(), width=w, color=color, alpha=0.85,
               label=f"{label} (n = {int(h.sum())}; R = {u['mean_resultant_length']:.3f}, Rayleigh p = "
                     f"{u['p']:.2g})")
        ax.axhline(1.0 / h.size, color="0.3", ls=":", lw=0.8)

    bars(axes[0], uniformity, "selective units", "C0")
    axes[0].set_xlabel("preferred " + ("direction" if uniformity.get("period_deg", 360) > 200 else "orientation")
                       + " (°)")
    axes[0].set_ylabel("fraction of units (dotted: uniform)")
    axes[0].set_title(f"{title}\nwithin ±{uniformity.get('period_deg', 360) / 8:g}° of the mode: "
                      f"{100 * uniformity.get('fraction_within_quarter_of_mode', float('nan')):.1f} % "
                      "(25 % if uniform)", fontsize=8)
    axes[0].legend(fontsize=6)
    bars(axes[1], border["preferred_inside"], "inside", "C0", -0.2, 0.4)
    bars(axes[1], border["preferred_in_band"], f"border band ({border['margin_mm']:.2f} mm)", "C1", 0.2, 0.4)
    axes[1].set_xlabel("preferred angle (°)")
    axes[1].set_title("selective units inside vs in the border band", fontsize=8)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_ptc(metrics, path, title: str = "") -> str:
    """The population tuning curve with its half-height line between the curve's minimum and its value at offset 0
    (the definition of ``ptc_fwhm_deg``), and the FWHM span drawn on that line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = np.degrees(metrics.ptc_offsets)
    y = np.asarray(metrics.ptc, dtype=float)
    ax.plot(np.append(x, -x[0]), np.append(y, y[0]), "o-", color="C0")
    if np.all(np.isfinite(y)):
        centre = y.size // 2
        half = np.min(y) + 0.5 * (y[centre] - np.min(y))
        ax.axhline(half, color="0.6", lw=0.8, ls=":")
        w = float(metrics.ptc_fwhm_deg)
        if np.isfinite(w):
            ax.plot([x[centre] - w / 2, x[centre] + w / 2], [half, half], color="C3", lw=2,
                    label=f"FWHM {w:.1f}°")
            ax.legend(fontsize=7)
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
    """Histograms of DSI, CV, FWHM, CV-derived bandwidth and axial share; macaque reference lines (green) only for
    references whose definition matches the model's (``Reference.comparable``)."""
    plt = _plt()
    refs = {r.metric: r for r in references}

    def lines(key):
        r = refs.get(key)
        if r is None or not getattr(r, "comparable", False) or getattr(r, "map_metric", False):
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


def plot_sf_map(sm, path, positions=None, log2_sf=None, spatial_freqs=None, counts=None, title: str = "",
                sheet_extent=None) -> str:
    """Spatial-frequency preference map: left, the smoothed log2 preferred SF (kernel-weighted mean of the units'
    values, σ of the map statistics) inside the region used for the statistics; middle, the units themselves
    coloured by their value (border band outside the dashed box); right, one position-shuffled null at the same σ
    (what an SF map without structure looks like); far right, the counts of preferred SFs. ``sm`` is a
    :class:`~tdann_fast.analysis.maps.ScalarMapStatistics`."""
    plt = _plt()
    ncol = 3 + (counts is not None)
    fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 4.4), squeeze=False)
    gx, gy, h = np.asarray(sm.grid_x), np.asarray(sm.grid_y), sm.grid_mm
    ext = (gx[0] - h / 2, gx[-1] + h / 2, gy[0] - h / 2, gy[-1] + h / 2)
    vals = np.concatenate([np.ravel(sm.smoothed), np.ravel(sm.null_smoothed)])
    vals = vals[np.isfinite(vals)]
    if log2_sf is not None:
        lv = np.asarray(log2_sf, dtype=float)
        lv = lv[np.isfinite(lv)]
        vmin, vmax = (np.percentile(lv, 2), np.percentile(lv, 98)) if lv.size else (0.0, 1.0)
    else:
        vmin, vmax = (vals.min(), vals.max()) if vals.size else (0.0, 1.0)
    fvals = np.ravel(sm.smoothed)[np.isfinite(np.ravel(sm.smoothed))]
    fmin, fmax = (fvals.min(), fvals.max()) if fvals.size else (vmin, vmax)
    n = sm.smoothness_null
    a0, b0, c0, d0 = sm.inner_extent
    box = ([a0, b0, b0, a0, a0], [c0, c0, d0, d0, c0])
    im = axes[0, 0].imshow(sm.smoothed, origin="lower", extent=ext, cmap="viridis", vmin=fmin, vmax=fmax,
                           interpolation="nearest")
    fig.colorbar(im, ax=axes[0, 0], fraction=0.046, label="log2 SF (cycles/image), own scale")
    axes[0, 0].set_title(f"{title}\nsmoothed log2 SF preference (σ = {sm.sigma_mm:.3f} mm)\nsmoothness "
                         f"{sm.smoothness:.3f} vs shuffled {n.mean:.3f} ± {n.sd:.3f} (p = {n.p:.2g})", fontsize=8)
    if positions is not None and log2_sf is not None:
        p = np.asarray(positions)
        v = np.asarray(log2_sf, dtype=float)
        m = np.isfinite(v)
        ax = axes[0, 1]
        ax.set_facecolor("0.85")
        sc = ax.scatter(p[m, 0], p[m, 1], c=v[m], cmap="viridis", vmin=vmin, vmax=vmax, s=2, linewidths=0)
        ax.plot(*box, color="k", ls="--", lw=0.8)
        if sheet_extent is not None:
            ax.set_xlim(sheet_extent[0], sheet_extent[1])
            ax.set_ylim(sheet_extent[2], sheet_extent[3])
        ax.set_aspect("equal")
        fig.colorbar(sc, ax=ax, fraction=0.046, label="log2 SF (cycles/image)")
        ax.set_title(f"units (n = {int(m.sum())}) coloured by log2 SF centroid;\noutside the dashed box: border "
                     "band (excluded)", fontsize=8)
    else:
        axes[0, 1].axis("off")
    axes[0, 2].imshow(sm.null_smoothed, origin="lower", extent=ext, cmap="viridis", vmin=fmin, vmax=fmax,
                      interpolation="nearest")
    axes[0, 2].set_title("one position-shuffled null, same σ and colour scale", fontsize=8)
    for ax in (axes[0, 0], axes[0, 2]):
        ax.plot(*box, color="w", ls="--", lw=0.8)
        ax.set_xlabel("x (mm)")
    axes[0, 0].set_ylabel("y (mm)")
    if counts is not None:
        ax = axes[0, 3]
        c = np.asarray(counts, dtype=float)
        labels = [f"{f:g}" for f in (spatial_freqs if spatial_freqs is not None else range(c.size))]
        ax.bar(np.arange(c.size), c / max(c.sum(), 1.0), color="C0")
        ax.set_xticks(np.arange(c.size))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_xlabel("preferred SF (cycles/image)")
        ax.set_ylabel("fraction of units")
        ax.set_title(f"preferred SF (n = {int(c.sum())})", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
