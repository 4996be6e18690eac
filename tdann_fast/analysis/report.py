"""The Markdown report: the metrics table against the macaque references, each with its source."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Sequence

from .references import SOURCES, Reference, references_for

__all__ = ["metrics_table", "write_report"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.3g}"
    return str(v)


def _flat(metrics: Mapping) -> Dict[str, float]:
    out = {}
    out.update(metrics.get("tuning", {}))
    pw = metrics.get("pinwheels", {})
    out["pinwheel_density_per_mm2"] = pw.get("density_per_mm2")
    out["density_per_spacing2"] = pw.get("density_per_spacing2")
    out["spacing_mm"] = pw.get("spacing_mm")
    return out


def metrics_table(metrics: Mapping) -> str:
    """Markdown table: metric | model | macaque reference | sources | verified."""
    kind = metrics.get("kind", "direction")
    refs = references_for(kind)
    flat = _flat(metrics)
    keys = {r.metric for r in refs}
    rows = ["| metric | model | macaque reference | sources | reference checked |", "|---|---|---|---|---|"]
    for r in refs:
        cites = ", ".join(f"[{s}]" for s in r.sources)
        rows.append(f"| {r.label} | {_fmt(flat.get(r.metric))} | {r.text} | {cites} | "
                    f"{'yes' if r.verified else 'no - to verify'} |")
    extra = [("num_units", "units analysed"), ("responsive_fraction", "responsive fraction"),
             ("selective_fraction", "selective fraction (DSI ≥ threshold)" if kind == "direction" else
              "selective fraction (OSI ≥ threshold)"),
             ("median_dsi", "median DSI" if kind == "direction" else "median OSI"),
             ("median_dsi_normalised", "median normalised DSI"),
             ("median_circular_variance", "median circular variance"),
             ("fraction_cv_below_0.6", "fraction with CV < 0.6"),
             ("median_fwhm_deg", "median von Mises FWHM (°)"), ("median_cv_bandwidth_deg", "median CV-derived bandwidth (°)"),
             ("median_axial_share", "median axial share"), ("ptc_fwhm_deg", "PTC FWHM (°)"),
             ("pinwheel_density_per_mm2", "pinwheel density (mm⁻²)"), ("spacing_mm", "column spacing Λ (mm)"),
             ("density_per_spacing2", "pinwheels per Λ²")]
    for key, label in extra:
        if key in keys or key not in flat or flat.get(key) is None:
            continue
        if kind == "orientation" and key in ("median_axial_share", "median_dsi_normalised"):
            continue
        rows.append(f"| {label} | {_fmt(flat.get(key))} | - | - | - |")
    return "\n".join(rows)


def write_report(metrics: Mapping, out_dir, figures: Mapping[str, str]) -> str:
    """Write ``report.md`` in ``out_dir`` and return its path."""
    out_dir = Path(out_dir)
    kind = metrics.get("kind", "direction")
    area = "MT" if kind == "direction" else "V1"
    refs: Sequence[Reference] = references_for(kind)
    used = []
    for r in refs:
        for s in r.sources:
            if s not in used:
                used.append(s)
    lines = [f"# {area} analysis of `{metrics.get('model', 'model')}`, layer `{metrics.get('layer')}`", ""]
    meta = [("checkpoint", metrics.get("checkpoint")), ("stage", metrics.get("stage")), ("alpha", metrics.get("alpha")),
            ("stimuli", metrics.get("stimuli_text")), ("units", metrics.get("tuning", {}).get("num_units")),
            ("run time", f"{metrics.get('timing_s', {}).get('total', float('nan')):.1f} s")]
    for k, v in meta:
        if v is not None:
            lines.append(f"- **{k}**: {v}")
    lines += ["", "## Metrics against the macaque references", "", metrics_table(metrics), ""]
    t = metrics.get("tuning", {})
    pw = metrics.get("pinwheels", {})
    lines += [
        "Definitions (DESIGN §7): responses are time-mean activations averaged over phases at each unit's best "
        "spatial × temporal frequency; DSI = 1 - R_null/R_pref; CV = 1 - |Σ r e^{iθ}|/Σ r"
        + (" (doubled angles for orientation)" if kind == "orientation" else "")
        + f"; selective means DSI ≥ {t.get('selective_threshold', 0.5):g}; FWHM = 2·arccos(1 + ln 0.5/κ) of a fitted "
        "von Mises; the CV-derived bandwidth is the FWHM of the von Mises with the same CV. Medians are over "
        "responsive units.",
        "",
        f"Pinwheels: the vector field of the units' normalised vector sums smoothed with a Gaussian of σ = "
        f"{_fmt(pw.get('sigma_mm'))} mm on a {_fmt(pw.get('grid_mm'))} mm grid; centres are ±1 winding numbers "
        f"around grid plaquettes ({pw.get('num_positive', 0)} positive, {pw.get('num_negative', 0)} negative over "
        f"{_fmt(pw.get('area_mm2'))} mm²). The density depends on σ: compare models at the same σ.",
        "",
        "## Figures",
        "",
    ]
    captions = {
        "direction_map": "Preference map (hue) with positive (white) and negative (black) pinwheel centres; right: "
                         "the units coloured by preferred angle.",
        "ptc": "Population tuning curve (curves aligned at the preferred angle, peak-normalised, averaged).",
        "metric_histograms": "Metric distributions; green dashed lines are macaque references.",
        "delta_histogram": "Preferred-angle difference between adjacent units vs a position-shuffled null; "
                           "smoothness curve.",
    }
    for key, path in figures.items():
        name = Path(path).name
        lines += [f"![{key}]({name})", "", f"*{captions.get(key, key)}*", ""]
    lines += ["## Sources", ""]
    for s in used:
        lines.append(f"- [{s}] {SOURCES[s]}")
    lines += ["", "## Reference status", ""]
    for r in refs:
        lines.append(f"- {r.label}: {r.text} - {'checked' if r.verified else 'not yet checked against the primary paper'}"
                     f"{'; ' + r.note if r.note else ''}.")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)
