"""The Markdown report of one analysis: a verdict line first, then every statistic beside its controls.

Rules the report keeps (so that it cannot be over-read):

* it opens with one plain verdict line from :meth:`~tdann_fast.analysis.maps.MapStatistics.verdict` ("direction
  map detected: ..." or "no direction map detected: ...");
* every map statistic is shown beside its position-shuffled null (mean ± sd, p) and beside the controls given
  (a random-init network, the α = 0 run);
* a macaque reference sits beside a model number only when its definition matches the model's
  (``Reference.comparable``), and a reference for a map statistic only when a map is detected; the others are
  listed apart, with the reason;
* the swap's probe set is stated, with a warning when it held the analysis stimuli (gratings);
* V1 (orientation) reports add the spatial-frequency preference map (smoothness against position-shuffled nulls,
  or "not measured" with one SF) and the cardinal bias (against uniform preferences, binomial p), each beside
  the controls; no macaque number is set beside either (no reference with a matching definition).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from .references import SOURCES, Reference, references_for

__all__ = ["metrics_table", "map_table", "reference_shown", "verdict_line", "write_report", "sf_lines",
           "cardinal_lines"]


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}g}"
    return str(v)


def _null(m: Mapping, key: str) -> str:
    mu, sd = m.get(f"{key}_null_mean"), m.get(f"{key}_null_sd")
    if mu is None or (isinstance(mu, float) and math.isnan(mu)):
        return "n/a"
    return f"{_fmt(mu)} ± {_fmt(sd, 2)}"


def reference_shown(r: Reference, detected: bool) -> bool:
    """A reference sits beside the model's number only when comparable, and (map metrics) when a map is
    detected."""
    comparable = bool(getattr(r, "comparable", False))
    if getattr(r, "map_metric", False):
        return comparable and bool(detected)
    return comparable


def verdict_line(metrics: Mapping) -> str:
    """The report's first line: the map verdict of :func:`~tdann_fast.analysis.maps.map_statistics`."""
    v = metrics.get("verdict") or (metrics.get("map") or {}).get("verdict")
    kind = metrics.get("kind", "direction")
    return v if v else f"no {kind} map statistics in this analysis (metrics.json written by an older version)"


def _control_value(ctrl: Mapping, section: str, key: str):
    return ((ctrl or {}).get(section) or {}).get(key)


def map_table(metrics: Mapping, controls: Mapping[str, Mapping] = ()) -> str:
    """Markdown table of the map statistics: model | position-shuffled null (mean ± sd) | p | each control."""
    m = metrics.get("map") or {}
    labels = list(controls)
    head = ["statistic", "model", "position-shuffled (mean ± sd)", "p", *labels]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    items = [
        ("map detected", "detected", None, None),
        ("smoothness (neighbour vector correlation)", "smoothness", "smoothness", "smoothness_p"),
        ("column spacing Λ (mm)", "spacing_mm", None, "spacing_p"),
        ("Λ resolved", "spacing_resolved", None, None),
        ("spectrum peak / max null", "spectrum_peak_ratio", None, None),
        ("winding centres (count)", "num_pinwheels", None, None),
        (f"winding centres per mm² at σ = {_fmt(m.get('sigma_mm'))} mm", "density_per_mm2", "density_per_mm2",
         "density_per_mm2_p"),
        ("pinwheels per Λ²", "density_per_spacing2", "density_per_spacing2", None),
    ]
    for label, key, null_key, p_key in items:
        cells = [label, _fmt(m.get(key)), _null(m, null_key) if null_key else "-", _fmt(m.get(p_key)) if p_key else "-"]
        cells += [_fmt(_control_value(controls[c], "map", key)) for c in labels]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


_TUNING_ROWS = (
    ("num_units", "units analysed"), ("responsive_fraction", "responsive fraction"),
    ("selective_fraction", "selective fraction (DSI ≥ threshold)"), ("median_dsi", "median DSI"),
    ("median_dsi_normalised", "median normalised DSI"), ("median_circular_variance", "median circular variance"),
    ("fraction_cv_below_0.6", "fraction with CV < 0.6"), ("median_fwhm_deg", "median von Mises FWHM (°)"),
    ("median_cv_bandwidth_deg", "median CV-derived bandwidth (°)"), ("median_axial_share", "median axial share"),
    ("ptc_fwhm_deg", "PTC FWHM (°)"),
)


def metrics_table(metrics: Mapping, controls: Mapping[str, Mapping] = ()) -> str:
    """Markdown table of the tuning metrics: model | each control | macaque reference (comparable ones only)."""
    kind = metrics.get("kind", "direction")
    refs = {r.metric: r for r in references_for(kind)}
    detected = bool((metrics.get("map") or {}).get("detected", False))
    t = metrics.get("tuning", {})
    labels = list(controls)
    head = ["metric", "model", *labels, "macaque (comparable only)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in _TUNING_ROWS:
        if key not in t:
            continue
        if kind == "orientation":
            if key in ("median_axial_share", "median_dsi_normalised"):
                continue
            label = label.replace("DSI", "OSI")
        r = refs.get(key)
        ref = f"{r.text} [{', '.join(r.sources)}]" if r is not None and reference_shown(r, detected) else "-"
        cells = [label, _fmt(t.get(key))] + [_fmt(_control_value(controls[c], "tuning", key)) for c in labels]
        rows.append("| " + " | ".join(cells + [ref]) + " |")
    return "\n".join(rows)


def _uniformity_text(u: Mapping, what: str) -> str:
    if not u or not u.get("num_units"):
        return f"{what}: no units"
    within = u.get("fraction_within_quarter_of_mode", float("nan"))
    return (f"{what} (n = {u['num_units']}): mean resultant length {_fmt(u.get('mean_resultant_length'))}, "
            f"Rayleigh p = {_fmt(u.get('p'), 2)}, {100 * within:.1f} % within ±{u.get('period_deg', 360) / 8:g}° of "
            f"the modal bin (25 % if uniform)")


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def _p_cell(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2g}"


def sf_lines(metrics: Mapping, controls: Mapping[str, Mapping] = ()) -> List[str]:
    """The spatial-frequency preference section (orientation analyses): the SF map's smoothness against its
    position-shuffled nulls beside the controls, the preferred-SF distribution, or why it was not measured."""
    sf = metrics.get("sf_preference")
    out = ["## Spatial-frequency preference map", ""]
    if not sf:
        return out + ["SF preference not measured (this analysis predates it or is not an orientation analysis).", ""]
    if not sf.get("measured"):
        return out + [f"SF preference not measured: {sf.get('reason', 'n/a')}.", ""]
    labels = list(controls)
    csf = {c: ((controls[c] or {}).get("sf_preference") or {}) for c in labels}
    head = ["statistic", "model", "position-shuffled (mean ± sd)", "p", *labels]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def null(m):
        return "n/a" if not m else f"{_fmt(m.get('smoothness_null_mean'))} ± {_fmt(m.get('smoothness_null_sd'), 2)}"

    for label, key in (("smoothness of the log2 SF centroid map", "map"),
                       ("smoothness of the log2 preferred-SF map", "map_preferred_index")):
        m = sf.get(key) or {}
        rows.append("| " + " | ".join([label, _fmt(m.get("smoothness")), null(m), _p_cell(m.get("smoothness_p"))]
                                      + [_fmt((csf[c].get(key) or {}).get("smoothness")) for c in labels]) + " |")
    m = sf.get("map") or {}
    rows.append("| " + " | ".join(["SF map significant (p < 0.01 and > null + 3 sd)", _fmt(m.get("significant")),
                                   "-", "-"] + [_fmt((csf[c].get("map") or {}).get("significant")) for c in labels])
                + " |")
    rows.append("| " + " | ".join(["median SF centroid (cycles/image)", _fmt(sf.get("median_centroid_sf")), "-", "-"]
                                  + [_fmt(csf[c].get("median_centroid_sf")) for c in labels]) + " |")
    rows.append("| " + " | ".join(["units with a non-flat SF curve", _fmt(sf.get("num_tuned")), "-", "-"]
                                  + [_fmt(csf[c].get("num_tuned")) for c in labels]) + " |")
    freqs = sf.get("spatial_freqs") or []
    fr = sf.get("preferred_sf_fractions") or []
    dist = ", ".join(f"{f:g}: {100 * x:.1f} %" for f, x in zip(freqs, fr))
    out += [f"Per unit, the SF tuning curve is the {sf.get('curve', 'phase-averaged response per SF')} over "
            f"{len(freqs)} SFs ({', '.join(f'{f:g}' for f in freqs)} cycles/image); the preferred SF is its "
            "maximum, the centroid 2^(Σ w log2 f / Σ w) with w the curve less its minimum. The map is the centroid's "
            "log2 on the sheet (responsive units with a non-flat curve, inside the border margin), judged by the "
            f"smoothness of the orientation map's definition against {m.get('num_shuffles', 'n/a')} "
            "position-shuffled maps.", "", "\n".join(rows), "",
            f"- preferred SF of the model's units (cycles/image: share): {dist or 'n/a'}",
            "- SFs at the ends of the range are preferences that may lie beyond it; no macaque SF reference is set "
            "beside these numbers (cycles per image are not cycles per degree).", ""]
    return out


def cardinal_lines(metrics: Mapping, controls: Mapping[str, Mapping] = ()) -> List[str]:
    """The cardinal-bias section (orientation analyses): share of selective units preferring 0° or 90° against
    uniform preferences, binomial p, for the model and each control."""
    cb = metrics.get("cardinal_bias")
    out = ["## Cardinal bias", ""]
    if not cb:
        return out + ["Cardinal bias not measured (this analysis predates it or is not an orientation analysis).", ""]
    sel = cb.get("selective") or {}
    head = ["units", "analysis", "n", "share at 0°/90°", "expected if uniform", "ratio", "binomial p (two-sided)",
            "p (excess)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = [("model", cb)] + [(c, (controls[c] or {}).get("cardinal_bias") or {}) for c in controls]
    for which, key in (("selective", "selective"), ("selective, inside the border margin", "selective_inside")):
        for label, c in entries:
            d = (c or {}).get(key) or {}
            rows.append("| " + " | ".join([which, label, _fmt(d.get("num_units")), _pct(d.get("share")),
                                           _pct(d.get("expected_share")), _fmt(d.get("ratio")),
                                           _p_cell(d.get("p")), _p_cell(d.get("p_greater"))]) + " |")
    rand = [c for c in controls if "random" in str(c).lower()]
    self_random = str(metrics.get("checkpoint") or "").startswith("random init")
    out += [f"Share of orientation-selective units whose preferred orientation lies within "
            f"±{_fmt(sel.get('half_window_deg'))}° (half an orientation step) of 0° or 90°, against "
            f"{_pct(sel.get('expected_share'))} if preferred orientations were uniform (the null does not depend on "
            "positions); ratio = share / expected; exact binomial p-values.", "", "\n".join(rows), "",
            "A cardinal bias in a CNN can come from the pixel grid itself (square kernels, horizontal and vertical "
            "sampling, the zero padding along the image's horizontal and vertical borders), not from learning: "
            "only an excess above the random-init network's (same architecture, same sheet) speaks for a learned "
            "bias, and the units inside the border margin are shown apart because the padding is strongest in "
            "the band. "
            + ("Compare with the " + ", ".join(f"**{c}**" for c in rand) + " rows." if rand
               else "This analysis is itself a random-init network: its numbers are the pixel-grid baseline for "
                    "trained networks of the same architecture." if self_random
               else "**No random-init control is given in this report, so a cardinal bias here cannot be told "
                    "apart from the pixel grid.**")
            + " The null is uniform preferences: when the preferred orientations are far from uniform overall "
              "(the Rayleigh test above), the cardinal share departs from the expected one for that reason too. "
              "No macaque reference is set beside these numbers.", ""]
    return out


def _probe_lines(probe) -> List[str]:
    if not probe:
        return []
    kind = probe.get("probe") if isinstance(probe, Mapping) else str(probe)
    line = f"- **swap probe set**: {kind}"
    if isinstance(probe, Mapping):
        parts = [f"{k} {v}" for k, v in probe.items() if k != "probe" and v not in (None, [], 0)]
        if parts:
            line += " (" + ", ".join(parts) + ")"
    out = [line]
    if kind in ("gratings", "both"):
        out.append("- **warning**: the swap optimised the positions on responses to gratings, the kind of "
                   "stimulus this analysis measures the map with; a map here is partly put in by the swap.")
    return out


def write_report(metrics: Mapping, out_dir, figures: Mapping[str, str],
                 controls: Optional[Mapping[str, Mapping]] = None) -> str:
    """Write ``report.md`` in ``out_dir`` and return its path. ``controls``: label → that analysis's metrics."""
    out_dir = Path(out_dir)
    controls = dict(controls or {})
    kind = metrics.get("kind", "direction")
    area = "MT" if kind == "direction" else "V1"
    refs: Sequence[Reference] = references_for(kind)
    mp = metrics.get("map") or {}
    detected = bool(mp.get("detected", False))
    lines = [f"# {area} analysis of `{metrics.get('model', 'model')}`, layer `{metrics.get('layer')}`", "",
             f"**{verdict_line(metrics)}**", ""]
    for label, c in controls.items():
        lines.append(f"- control **{label}**: {c.get('verdict') or verdict_line(c)}")
    if controls:
        lines.append("")
    meta = [("checkpoint", metrics.get("checkpoint")), ("stage", metrics.get("stage")), ("alpha", metrics.get("alpha")),
            ("contrastive weight", metrics.get("moco_weight")), ("task", metrics.get("task")),
            ("stimuli", metrics.get("stimuli_text")),
            ("units", metrics.get("tuning", {}).get("num_units")),
            ("run time", f"{metrics.get('timing_s', {}).get('total', float('nan')):.1f} s")]
    for k, v in meta:
        if v is not None:
            lines.append(f"- **{k}**: {v}")
    lines += _probe_lines(metrics.get("probe"))
    border = metrics.get("border") or {}
    lines += ["", "## The map against its nulls", "",
              f"Measured inside the sheet less a border band of {_fmt(border.get('margin_mm', mp.get('margin_mm')))} mm "
              f"({border.get('units_inside', 'n/a')} units inside, {border.get('units_in_band', 'n/a')} in the band), "
              f"on {_fmt(mp.get('area_mm2'))} mm², against {mp.get('num_shuffles', 'n/a')} position-shuffled maps "
              "(same tuning, positions permuted) at the same σ and grid.", "",
              map_table(metrics, controls), "",
              "A map counts as detected only when its smoothness is significant (p < 0.01) and above the shuffled "
              "mean + 3 sd, and the column spacing Λ is resolved (an interior spectral peak above every shuffled "
              "spectrum). Winding centres of an undetected map are the zeros of smoothed noise, not pinwheels: their "
              "density depends on σ only (see the density-against-σ figure).", "",
              "## Tuning beside the controls", "", metrics_table(metrics, controls), ""]
    u = metrics.get("preferred_uniformity") or {}
    lines += ["## Population bias and the border band", "",
              "- " + _uniformity_text(u, "preferred directions of the selective units" if kind == "direction"
                                      else "preferred orientations of the selective units"),
              "- " + _uniformity_text(border.get("preferred_inside") or {}, "inside the border margin"),
              "- " + _uniformity_text(border.get("preferred_in_band") or {}, "in the border band"), "",
              "A shared bias of the preferred angles is not a map: smoothing turns it into one colour over the "
              "sheet. The smoothness statistic removes the population mean vector before comparing neighbours.", ""]
    if kind == "orientation":
        lines += cardinal_lines(metrics, controls) + sf_lines(metrics, controls)
    lines += ["## Figures", ""]
    captions = {
        "direction_map": "Smoothed preference map (hue: preferred angle; brightness: vector length) with +1 "
                         "(white) and -1 (black) winding centres; the dashed box is the region used for the "
                         "statistics. Middle: the selective units coloured by preference. Right: one "
                         "position-shuffled null at the same σ.",
        "map_spectrum": "Radial power spectrum of the map against the shuffled nulls (mean ± 2 sd), and the "
                        "winding-centre density against σ for map and null.",
        "preferred_histogram": "Preferred angles of the selective units with the Rayleigh test; inside vs in the "
                               "border band.",
        "ptc": "Population tuning curve (curves aligned at the preferred angle, peak-normalised, averaged); the "
               "dotted line is half height between the curve's minimum and its value at offset 0.",
        "metric_histograms": "Metric distributions over responsive units; green dashed lines are macaque values "
                             "only where the definitions match.",
        "delta_histogram": "Preferred-angle difference between adjacent units vs a position-shuffled null; mean "
                           "difference against cortical distance.",
        "sf_map": "Spatial-frequency preference map: the smoothed log2 SF centroid (own colour scale), the units "
                  "coloured by it, one position-shuffled null at the same σ and colour scale, and the counts of "
                  "preferred SFs.",
    }
    for key, path in figures.items():
        if key == "report":
            continue
        lines += [f"![{key}]({Path(path).name})", "", f"*{captions.get(key, key)}*", ""]
    shown = [r for r in refs if reference_shown(r, detected)]
    apart = [r for r in refs if not reference_shown(r, detected)]
    lines += ["## Macaque references", ""]
    if shown:
        lines.append("Shown beside the model above: " + "; ".join(f"{r.label} ({r.text})" for r in shown) + ".")
    else:
        lines.append("No macaque reference is set beside a model number in this report.")
    lines += ["", "Not compared, and why:", ""]
    for r in apart:
        why = []
        if not getattr(r, "comparable", False):
            why.append("the definitions differ or are not yet known")
        if getattr(r, "map_metric", False) and not detected:
            why.append("no map is detected")
        if not r.verified:
            why.append("not yet checked against the primary paper")
        lines.append(f"- {r.label}: {r.text} [{', '.join(r.sources)}] — {'; '.join(why) or 'n/a'}"
                     f"{'. ' + r.note if r.note else ''}")
    used: List[str] = []
    for r in refs:
        for s in r.sources:
            if s not in used:
                used.append(s)
    t = metrics.get("tuning", {})
    lines += [
        "", "## Definitions", "",
        "Responses are time-mean activations averaged over phases at each unit's best spatial × temporal "
        "frequency; DSI = 1 - R_null/R_pref; CV = 1 - |Σ r e^{iθ}|/Σ r"
        + (" (doubled angles for orientation: the orientation CV of Ringach et al. 2002, over the orientations at "
           "each unit's best SF, the SF whose best orientation gives the largest response)"
           if kind == "orientation" else "")
        + f"; selective means DSI ≥ {t.get('selective_threshold', 0.5):g}; FWHM = 2·arccos(1 + ln 0.5/κ) of a "
        "fitted von Mises; the CV-derived bandwidth is the FWHM of the von Mises with the same CV. Medians are over "
        "responsive units. The map statistics are defined in the docstring of `tdann_fast/analysis/maps.py`, the "
        "tuning metrics in `tdann_fast/analysis/tuning.py`.",
        "", "## Sources", ""]
    for s in used:
        lines.append(f"- [{s}] {SOURCES[s]}")
    path = out_dir / "report.md"
    from tdann_fast._io import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")
    return str(path)
