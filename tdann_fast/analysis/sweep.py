"""α-sweep report (seed 001, Figs 2-6): read a sweep manifest, gather every analysed model's ``metrics.json`` and
``tuning.npz``, and write the sweep figures, ``sweep_rows.json`` and ``sweep_report.md``.

Input
-----
A sweep manifest (``sweep.json``, written by ``tdann-fast sweep``; a path or the loaded dict)::

    {"config": "demo", "alphas": [0, 0.5], "seeds": [0, 1], "reference_alpha": 0.5,
     "runs": [{"name": "alpha0.5_seed0", "alpha": 0.5, "seed": 0, "objective": "joint",
               "analysis_dir": "...", "complete": true, ...}, ...],
     "controls": {"random_init": "<analysis dir or null>",
                  "timeline": [{"stage": 2, "label": "...", "analysis_dir": "..."}, ...]}}

Relative paths are resolved against the manifest's folder first, then the working directory. Each analysis
directory holds ``metrics.json`` (with the ``map`` statistics and their position-shuffled nulls) and
``tuning.npz``. The old call ``sweep_report([run_dir, ...], out_dir, alphas=None)`` builds the manifest from the
analysed run directories (``find_metrics``; objective "joint"; seed = the run's index among the runs with the same
α, 0 for the first).

Bad input: problems with the manifest itself (missing file, not JSON, no ``runs``, a run without an α, ...) raise
an error that names the argument (``manifest``, ``manifest runs[2].alpha``); problems with one run (its
``analysis_dir`` is null or missing, its ``metrics.json`` absent or unreadable) skip that run with a note in the
report and in the row (``status`` "skipped", ``note``); no usable run at all raises ``ValueError`` naming
``manifest``. A ``metrics.json`` without ``map`` (older analyses) is kept: its map statistics are "not analysed",
and the legacy ``pinwheels`` density is shown labelled "no null".

Outputs (in ``out_dir``)
------------------------
``fig2_tuning_vs_alpha.png``, ``fig3a_fwhm_vs_cv_bandwidth.png``, ``fig3b_objectives.png``,
``fig4b_pinwheels_vs_alpha.png``, ``fig5_ptc_across_alpha.png``, ``fig6_maps_across_alpha.png``, ``timeline.png``,
``sweep_report.md`` and ``sweep_rows.json`` (named so it cannot overwrite the manifest).

Macaque references are drawn or quoted only when the reference is marked ``comparable``
(:mod:`tdann_fast.analysis.references`), and map metrics only for runs whose map was detected.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .sweep_figures import _num

__all__ = ["find_metrics", "load_manifest", "manifest_from_run_dirs", "collect_rows", "sweep_report", "FIGURES"]

FIGURES = {
    "fig2_tuning_vs_alpha": "fig2_tuning_vs_alpha.png",
    "fig3a_fwhm_vs_cv_bandwidth": "fig3a_fwhm_vs_cv_bandwidth.png",
    "fig3b_objectives": "fig3b_objectives.png",
    "fig4b_pinwheels_vs_alpha": "fig4b_pinwheels_vs_alpha.png",
    "fig5_ptc_across_alpha": "fig5_ptc_across_alpha.png",
    "fig6_maps_across_alpha": "fig6_maps_across_alpha.png",
    "timeline": "timeline.png",
}

TUNING_KEYS = ("num_units", "num_responsive", "selective_fraction", "median_fwhm_deg", "median_cv_bandwidth_deg",
               "median_circular_variance", "median_dsi", "median_dsi_normalised", "median_axial_share",
               "ptc_fwhm_deg", "selective_threshold")
MAP_KEYS = ("num_shuffles", "sigma_mm", "grid_mm", "area_mm2", "smoothness", "smoothness_null_mean",
            "smoothness_null_sd", "smoothness_p", "spacing_mm", "spacing_resolved", "spacing_p",
            "spectrum_peak_ratio", "num_pinwheels", "density_per_mm2", "density_per_mm2_null_mean",
            "density_per_mm2_null_sd", "density_per_mm2_p", "density_per_spacing2",
            "density_per_spacing2_null_mean", "density_per_spacing2_null_sd")
OBJECTIVES = ("joint", "contrastive", "spatial")
# reference metric name -> row key holding the model's value
REFERENCE_KEYS = {"pinwheel_density_per_mm2": "density_per_mm2"}
MAP_METRICS = ("pinwheel_density_per_mm2", "density_per_spacing2", "spacing_mm")  # when `map_metric` is absent

PathLike = Union[str, Path]


# ------------------------------------------------------------------------------------------------ helpers
def _finite(v) -> bool:
    return not math.isnan(_num(v))


def fmt(v, spec: str = ".3g") -> str:
    """``v`` formatted with ``spec``, "n/a" for None/NaN."""
    return format(_num(v), spec) if _finite(v) else "n/a"


def _pm(mean, sd, spec: str = ".3g") -> str:
    if not _finite(mean):
        return "n/a"
    return f"{format(_num(mean), spec)} ± {format(_num(sd), spec)}" if _finite(sd) else format(_num(mean), spec)


def find_metrics(run_dir: PathLike) -> Path:
    """The ``metrics.json`` of a run: ``run_dir`` itself if it is the file, else ``run_dir/metrics.json``, else
    ``run_dir/analysis/metrics.json``, else the newest ``metrics.json`` below ``run_dir``."""
    p = Path(run_dir)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"run directory {str(p)!r} does not exist")
    for cand in (p / "metrics.json", p / "analysis" / "metrics.json"):
        if cand.is_file():
            return cand
    found = sorted(p.rglob("metrics.json"), key=lambda q: q.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no metrics.json in {str(p)!r}: run `tdann-fast analyze` on it first")
    return found[-1]


def _config_error(msg: str) -> Exception:
    from tdann_fast.errors import ConfigError

    return ConfigError(msg)


# ------------------------------------------------------------------------------------------------ manifest
def load_manifest(manifest: Union[PathLike, Mapping]) -> Dict[str, Any]:
    """The manifest dict (a copy) with ``_base`` = the folder relative paths are resolved against.

    ``manifest`` is the path of ``sweep.json``, a sweep folder holding ``sweep.json``, or the dict itself."""
    if isinstance(manifest, Mapping):
        m = dict(manifest)
        m.setdefault("_base", None)
    elif isinstance(manifest, (str, Path)):
        p = Path(manifest)
        if p.is_dir() and (p / "sweep.json").is_file():
            p = p / "sweep.json"
        if not p.is_file():
            raise FileNotFoundError(f"manifest: {str(p)!r} does not exist (expected the sweep.json written by "
                                    "`tdann-fast sweep`)")
        try:
            with open(p, encoding="utf-8") as f:
                m = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _config_error(f"manifest: {str(p)!r} is not valid JSON ({exc})") from None
        if not isinstance(m, dict):
            raise _config_error(f"manifest: {str(p)!r} must hold a JSON object, got {type(m).__name__}")
        m["_base"] = str(p.parent)
    else:
        raise TypeError(f"manifest must be a path to sweep.json or a dict, got {type(manifest).__name__}")
    runs = m.get("runs")
    if not isinstance(runs, list):
        raise _config_error(f"manifest: needs a list 'runs', got {type(runs).__name__}")
    clean = []
    for i, r in enumerate(runs):
        if not isinstance(r, Mapping):
            raise _config_error(f"manifest runs[{i}]: must be an object, got {type(r).__name__}")
        r = dict(r)
        obj = r.get("objective") or "joint"
        if obj not in OBJECTIVES:
            raise _config_error(f"manifest runs[{i}].objective: must be one of {list(OBJECTIVES)}, got {obj!r}")
        r["objective"] = obj
        a = r.get("alpha")
        if a is None and obj != "spatial":
            raise _config_error(f"manifest runs[{i}].alpha: missing (only a spatial-only run may omit it)")
        if a is not None and not _finite(a):
            raise _config_error(f"manifest runs[{i}].alpha: must be a number, got {a!r}")
        r["alpha"] = None if a is None else float(a)
        s = r.get("seed", 0)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or s != int(s):
            raise _config_error(f"manifest runs[{i}].seed: must be an integer, got {s!r}")
        r["seed"] = int(s)
        r.setdefault("name", f"alpha{r['alpha']:g}_seed{r['seed']}" if r["alpha"] is not None
                     else f"{obj}_seed{r['seed']}")
        clean.append(r)
    m["runs"] = clean
    controls = m.get("controls") or {}
    if not isinstance(controls, Mapping):
        raise _config_error(f"manifest controls: must be an object, got {type(controls).__name__}")
    timeline = controls.get("timeline") or []
    if not isinstance(timeline, list) or not all(isinstance(t, Mapping) for t in timeline):
        raise _config_error("manifest controls.timeline: must be a list of objects {stage, label, analysis_dir}")
    m["controls"] = {"random_init": controls.get("random_init"), "timeline": [dict(t) for t in timeline],
                     "training_motion": controls.get("training_motion")}
    ra = m.get("reference_alpha")
    if ra is not None and not _finite(ra):
        raise _config_error(f"manifest reference_alpha: must be a number, got {ra!r}")
    return m


def manifest_from_run_dirs(run_dirs: Sequence[PathLike], alphas: Optional[Sequence[float]] = None) -> Dict:
    """A manifest for analysed run directories (the old ``sweep-report RUN_DIR...`` call): α from each
    ``metrics.json`` unless ``alphas`` is given, objective "joint", seed = index among runs with the same α."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("run_dirs must name at least one analysed run")
    if alphas is not None and len(alphas) != len(run_dirs):
        raise ValueError(f"alphas has {len(alphas)} values for {len(run_dirs)} run directories")
    runs, counts = [], {}
    for i, d in enumerate(run_dirs):
        path = find_metrics(d)
        if alphas is not None:
            a = alphas[i]
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    a = json.load(f).get("alpha")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
                raise _config_error(f"run_dirs: {str(path)!r} is not a readable metrics.json ({exc})") from None
            if isinstance(a, dict):
                a = next(iter(a.values()), None)
        if a is None or not _finite(a):
            raise ValueError(f"{path} holds no alpha (a random-init analysis?); pass alphas explicitly")
        a = float(a)
        seed = counts.get(a, 0)
        counts[a] = seed + 1
        runs.append({"name": str(d), "alpha": a, "seed": seed, "objective": "joint", "run_dir": str(d),
                     "analysis_dir": str(path.parent), "metrics": str(path), "complete": True})
    al = sorted(counts)
    return {"config": None, "alphas": al, "seeds": sorted({r["seed"] for r in runs}),
            "reference_alpha": 0.5 if 0.5 in counts else None, "runs": runs,
            "controls": {"random_init": None, "timeline": []}, "_base": None}


# ------------------------------------------------------------------------------------------------ rows
def _resolve(p, base) -> Optional[Path]:
    if p is None or p == "":
        return None
    q = Path(p)
    if not q.is_absolute() and base is not None and (Path(base) / q).exists():
        return Path(base) / q
    return q


def _row(entry: Mapping, role: str, base) -> Dict[str, Any]:
    """One row: the entry's identity plus its tuning and map statistics (or status "skipped" with a note)."""
    row: Dict[str, Any] = {
        "name": entry.get("name"), "role": role, "alpha": entry.get("alpha"), "seed": entry.get("seed"),
        "objective": entry.get("objective"), "stage": entry.get("stage"), "label": entry.get("label"),
        "analysis_dir": None, "metrics": None, "tuning_npz": None, "status": "skipped", "note": "",
        "map_analysed": False, "map_detected": None, "map_verdict": None,
    }
    row.update({k: None for k in TUNING_KEYS + MAP_KEYS})
    row.update({"legacy_density_per_mm2": None, "legacy_spacing_mm": None, "legacy_density_per_spacing2": None,
                "pinwheel_density_per_mm2": None, "uniformity_resultant_length": None, "uniformity_p": None})
    if entry.get("complete") is False:
        row["note"] = "run not complete"
    ad = _resolve(entry.get("metrics") or entry.get("analysis_dir"), base)
    if ad is None:
        row["note"] = "; ".join(x for x in (row["note"], "no analysis_dir (not analysed yet)") if x)
        return row
    try:
        mpath = find_metrics(ad)
    except FileNotFoundError as exc:
        row["note"] = "; ".join(x for x in (row["note"], str(exc)) if x)
        return row
    row["analysis_dir"] = str(mpath.parent)
    row["metrics"] = str(mpath)
    try:
        with open(mpath, encoding="utf-8") as f:
            m = json.load(f)
        if not isinstance(m, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        row["note"] = f"{mpath}: unreadable metrics.json ({exc})"
        return row
    row["status"] = "ok"
    row["kind"] = m.get("kind", "direction")
    if row["alpha"] is None and role != "run":
        a = m.get("alpha")
        if isinstance(a, dict):
            a = next(iter(a.values()), None)
        row["alpha"] = a if _finite(a) else None
    if row["stage"] is None:
        row["stage"] = m.get("stage")
    t = m.get("tuning") or {}
    for k in TUNING_KEYS:
        row[k] = t.get(k)
    mp = m.get("map")
    if isinstance(mp, dict):
        row["map_analysed"] = True
        det = mp.get("detected")
        row["map_detected"] = None if det is None else bool(det)
        row["map_verdict"] = mp.get("verdict")
        for k in MAP_KEYS:
            row[k] = mp.get(k)
        row["pinwheel_density_per_mm2"] = mp.get("density_per_mm2")
        dvs = mp.get("density_vs_sigma")
        row["density_vs_sigma"] = dvs if isinstance(dvs, dict) else None
    pw = m.get("pinwheels")
    if isinstance(pw, dict):
        row["legacy_density_per_mm2"] = pw.get("density_per_mm2")
        row["legacy_spacing_mm"] = pw.get("spacing_mm")
        row["legacy_density_per_spacing2"] = pw.get("density_per_spacing2")
        if not row["map_analysed"]:
            row["pinwheel_density_per_mm2"] = pw.get("density_per_mm2")
            row["sigma_mm"] = pw.get("sigma_mm")
    pu = m.get("preferred_uniformity")
    if isinstance(pu, dict):
        row["uniformity_resultant_length"] = pu.get("mean_resultant_length")
        row["uniformity_p"] = pu.get("p")
    npz = mpath.parent / "tuning.npz"
    row["tuning_npz"] = str(npz) if npz.is_file() else None
    if not row["map_analysed"]:
        row["note"] = "; ".join(x for x in (row["note"], "metrics.json has no `map` (older analysis): map "
                                            "statistics not analysed") if x)
    return row


def collect_rows(manifest: Mapping) -> List[Dict[str, Any]]:
    """Rows of every run (role "run") and control (roles "random_init", "timeline") of a loaded manifest."""
    base = manifest.get("_base")
    rows = [_row(r, "run", base) for r in manifest["runs"]]
    ctl = manifest.get("controls") or {}
    ri = ctl.get("random_init")
    if ri:
        rows.append(_row({"name": "random init", "analysis_dir": ri, "label": "random init"}, "random_init", base))
    for t in ctl.get("timeline") or []:
        stage = t.get("stage")
        rows.append(_row({"name": f"stage {stage}", "stage": stage, "label": t.get("label") or f"stage {stage}",
                          "analysis_dir": t.get("analysis_dir")}, "timeline", base))
    return rows


# ------------------------------------------------------------------------------------------------ groups
def _alpha_key(a) -> float:
    return float("inf") if a is None else float(a)


def group_label(objective: str, alpha) -> tuple:
    """(label, qualifier) of a run group: ("α = 0", "contrastive only"), ("spatial only", "")."""
    if objective == "spatial":
        return "spatial only" + (f" (α = {alpha:g})" if alpha is not None else ""), ""
    if objective == "contrastive":
        return f"α = {alpha:g}", "contrastive only"
    return f"α = {alpha:g}", ""


def run_groups(rows: Sequence[Mapping]) -> List[Dict[str, Any]]:
    """Runs grouped by (objective, α): α ascending, spatial-only last."""
    groups: Dict[Any, Dict[str, Any]] = {}
    for r in rows:
        if r["role"] != "run":
            continue
        key = (r["objective"] == "spatial", _alpha_key(r["alpha"]), r["objective"])
        label, qual = group_label(r["objective"], r["alpha"])
        g = groups.setdefault(key, {"objective": r["objective"], "alpha": r["alpha"], "label": label,
                                    "qualifier": qual, "rows": []})
        g["rows"].append(r)
    out = [groups[k] for k in sorted(groups)]
    for g in out:
        g["rows"].sort(key=lambda r: r["seed"] if r["seed"] is not None else 0)
    return out


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _mean_sd(vals) -> tuple:
    v = np.array([_num(x) for x in vals], dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else float("nan")), int(v.size)


def _map_word(kind: str) -> str:
    return "orientation map" if kind == "orientation" else "direction map"


def verdict_line(label: str, rows: Sequence[Mapping], kind: str = "direction", control: bool = False,
                 qualifier: str = "") -> str:
    """"α = 0.5 (3 seeds): direction map detected in 2/3 seeds (Λ = ...)" / "no direction map detected"."""
    word = _map_word(kind)
    n = len(rows)
    head = label if control else f"{label} ({qualifier + ', ' if qualifier else ''}{_seeds(n)})"
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        why = "; ".join(sorted({r["note"] for r in rows if r["note"]})) or "not analysed"
        return f"{head}: not analysed ({why})"
    mapped = [r for r in ok if r["map_analysed"] and r["map_detected"] is not None]
    missing = "" if len(ok) == n else f"; {n - len(ok)} not analysed"
    if not mapped:
        if any(r["map_analysed"] for r in ok):
            return f"{head}: map test not available (`map.detected` is null){missing}"
        return f"{head}: map statistics not computed (metrics.json without `map`){missing}"
    det = [r for r in mapped if r["map_detected"]]
    if not det:
        s = "" if control and len(mapped) == 1 else f" (0/{len(mapped)} {'seeds' if not control else 'analyses'})"
        return f"{head}: no {word} detected{s}{missing}"
    lam = _mean_sd([r["spacing_mm"] for r in det if r.get("spacing_resolved")])
    dps = _mean_sd([r["density_per_spacing2"] for r in det if r.get("spacing_resolved")])
    extra = []
    if lam[2]:
        extra.append(f"Λ = {_pm(lam[0], lam[1], '.2f')} mm")
        extra.append(f"{_pm(dps[0], dps[1], '.2f')} pinwheels per Λ²")
    else:
        extra.append("Λ not resolved")
    if control and len(mapped) == 1:
        return f"{head}: {word} detected ({'; '.join(extra)}){missing}"
    return f"{head}: {word} detected in {len(det)}/{len(mapped)} seeds ({'; '.join(extra)}){missing}"


# ------------------------------------------------------------------------------------------------ markdown
_TABLE_COLS = ("run", "α", "seed", "objective", "selective fraction", "median FWHM (°)", "median CV",
               "median DSI", "map", "smoothness (null mean ± sd)", "Λ (mm)", "pinwheels per Λ² (null mean ± sd)",
               "pinwheels mm⁻² (null mean ± sd)")


def _map_cell(r: Mapping) -> str:
    if r["status"] != "ok":
        return "skipped"
    if not r["map_analysed"]:
        return "not analysed"
    if r["map_detected"] is None:
        return "n/a"
    return "detected" if r["map_detected"] else "no map"


def _with_null(v, mean, sd, spec=".3g") -> str:
    if not _finite(v):
        return "n/a"
    return f"{fmt(v, spec)} ({_pm(mean, sd, spec)})"


def _table_row(r: Mapping) -> str:
    name = r["name"] if r["role"] == "run" else (r.get("label") or r["name"])
    if r["role"] == "timeline" and r.get("stage") is not None and r.get("label"):
        name = f"stage {r['stage']}: {r['label']}"
    ok = r["status"] == "ok"
    if ok and not r["map_analysed"]:
        lam = (f"{fmt(r['legacy_spacing_mm'], '.2f')} (no null)" if _finite(r["legacy_spacing_mm"]) else "n/a")
        dps = "n/a"
        dens = (f"{fmt(r['legacy_density_per_mm2'])} (no null: old metrics.json)"
                if _finite(r["legacy_density_per_mm2"]) else "n/a")
        smooth = "n/a"
    else:
        lam = fmt(r["spacing_mm"], ".2f") if r.get("spacing_resolved") else (
            "not resolved" if ok and r["map_analysed"] else "n/a")
        dps = (_with_null(r["density_per_spacing2"], r["density_per_spacing2_null_mean"],
                          r["density_per_spacing2_null_sd"]) if r.get("spacing_resolved") else "n/a")
        dens = _with_null(r["density_per_mm2"], r["density_per_mm2_null_mean"], r["density_per_mm2_null_sd"])
        smooth = _with_null(r["smoothness"], r["smoothness_null_mean"], r["smoothness_null_sd"])
    cells = [str(name).replace("|", "/"), fmt(r["alpha"], "g"), "n/a" if r["seed"] is None else str(r["seed"]),
             r["objective"] or ("control" if r["role"] != "run" else "n/a"), fmt(r["selective_fraction"]),
             fmt(r["median_fwhm_deg"], ".1f"), fmt(r["median_circular_variance"]), fmt(r["median_dsi"]),
             _map_cell(r), smooth, lam, dps, dens]
    return "| " + " | ".join(cells) + " |"


_CAPTIONS = {
    "fig2_tuning_vs_alpha": "**Fig. 2 C-F.** Selective-unit fraction, median bandwidth (von Mises FWHM), median "
                            "circular variance and median DSI against α (mean ± sd over seeds; single seeds as "
                            "points). Grey horizontal line: random-init control; grey vertical line: the reference "
                            "α; green dashed: macaque references marked comparable (none are drawn otherwise).",
    "fig3a_fwhm_vs_cv_bandwidth": "**Fig. 3A.** Median FWHM and median CV-derived bandwidth against α (left) and "
                                  "per-unit FWHM against CV-derived bandwidth at the reference α (right, responsive "
                                  "units; dashed: identity).",
    "fig3b_objectives": "**Fig. 3B.** Tuning under the contrastive-only (α = 0), spatial-only and joint "
                        "(reference α) objectives: population tuning curves, DSI and FWHM distributions of "
                        "responsive units (selective fraction in the legend). Missing objectives are noted on "
                        "the figure.",
    "fig4b_pinwheels_vs_alpha": "**Fig. 4B.** Pinwheel density against α with its position-shuffled null (grey, "
                                "mean ± sd) and the random-init control (left), and pinwheels per Λ² where the "
                                "column spacing Λ was resolved (right). Filled markers: map detected; hollow: no "
                                "map (the density of a map that is not there counts noise). Green dashed: macaque "
                                "references, only if marked comparable.",
    "fig5_ptc_across_alpha": "**Fig. 5.** Population tuning curves for each α (mean over seeds) with their "
                             "primary-peak FWHM.",
    "fig6_maps_across_alpha": "**Fig. 6.** Direction maps across α in the same sub-region of the sheet (centred; "
                              "2 × 2 mm or the sheet if smaller), recomputed from tuning.npz at each run's map σ: "
                              "hue = preferred direction, brightness = |smoothed field|; white/black dots: "
                              "+1/−1 pinwheel centres.",
    "timeline": "**Where the map comes from.** Map smoothness (model, coloured; position-shuffled null, grey mean ± "
                "sd) and pinwheel density with its null for the random-init model, stage 2 (pre-trained, "
                "retinotopic positions), stage 3 (after the swap) and stage 6 (each seed at the reference α and "
                "at α = 0). Filled: map detected; hollow: no map; ×: map not analysed.",
}


def _references_section(refs, rows, kind) -> List[str]:
    comparable = [r for r in refs if getattr(r, "comparable", False)]
    other = [r for r in refs if not getattr(r, "comparable", False)]
    lines = ["## Macaque references", "",
             "Only references marked `comparable` in `tdann_fast.analysis.references` (the model's metric is "
             "defined and measured as in the macaque studies) are drawn in the figures or quoted here; the "
             "others are listed without their values. Map metrics (pinwheel density, pinwheels per Λ²) are "
             f"compared only for runs whose {_map_word(kind)} was detected against the position-shuffled null: "
             "the pinwheels of a map that is not there count noise.", ""]
    if comparable:
        for r in comparable:
            line = f"- compared: {r.label} — macaque {r.text}"
            srcs = getattr(r, "sources", ())
            if srcs:
                line += f" (sources: {', '.join(srcs)})"
            if getattr(r, "map_metric", r.metric in MAP_METRICS):
                key = REFERENCE_KEYS.get(r.metric, r.metric)
                det = [x for x in rows if x["role"] == "run" and x["status"] == "ok" and x["map_detected"]
                       and (r.metric not in ("density_per_spacing2", "spacing_mm") or x.get("spacing_resolved"))
                       and _finite(x.get(key))]
                if det:
                    vals = ", ".join(f"{x['name']} {fmt(x[key])}" for x in det)
                    line += f"; detected maps only: {vals}"
                else:
                    line += "; no run has a detected map with this statistic, so nothing is compared"
            lines.append(line)
    else:
        lines.append("- no reference is marked comparable: no macaque value is drawn or quoted.")
    for r in other:
        lines.append(f"- not compared (not marked comparable): {r.label}")
    return lines + [""]


def _training_motion_section(out: Path, manifest: Mapping) -> list:
    """The motion directions of the training clips (manifest ``controls.training_motion``): a population bias of
    the model's preferred directions is a property of the model only if the data move evenly in all directions.
    The PNG is copied next to the report."""
    src = _resolve((manifest.get("controls") or {}).get("training_motion"), manifest.get("_base"))
    if src is None:
        return []
    summary = src / "summary.json"
    if not summary.is_file():
        return ["## Training data: motion directions", "", f"n/a: no summary.json in {src}", ""]
    with open(summary, encoding="utf-8") as f:
        sm = json.load(f)
    near = sm.get("fraction_within_45_of_mode")
    near_text = f"{100 * near:.1f} %" if isinstance(near, (int, float)) else "n/a"
    lines = ["## Training data: motion directions", "",
             f"Global motion of {sm.get('included', 'n/a')} training clips from {sm.get('videos_included', 'n/a')} "
             f"videos (phase correlation; slow or unclear clips left out): mean resultant length "
             f"{fmt(sm.get('mean_resultant_length'), '.3g')}, Rayleigh p = {fmt(sm.get('rayleigh_p'), '.2g')}, "
             f"{near_text} within ±45° of the modal direction (25 % if uniform). Clips of one video are correlated, "
             "so p overstates the evidence when several clips per video are used.", ""]
    png = src / "motion_directions.png"
    if png.is_file():
        import shutil

        shutil.copyfile(png, out / "training_motion_directions.png")
        lines += ["![training motion directions](training_motion_directions.png)", ""]
    return lines


def _write_markdown(out: Path, manifest: Mapping, rows, groups, refs, kind, notes) -> tuple:
    word = _map_word(kind)
    title = manifest.get("config")
    lines = [f"# α sweep{f': {title}' if title else ''}", ""]
    verdicts = [verdict_line(g["label"], g["rows"], kind, qualifier=g["qualifier"]) for g in groups]
    ctl = [r for r in rows if r["role"] != "run"]
    verdicts += [verdict_line(f"control: {r.get('label') or r['name']}", [r], kind, control=True) for r in ctl]
    lines += [f"- {v}" for v in verdicts]
    lines += ["", f"A {word} is *detected* when the analysis' test against position-shuffled maps says so "
                  "(metrics.json `map.detected`, smoothness and spectrum against their nulls). Reference α: "
                  f"{fmt(manifest.get('reference_alpha'), 'g')}.", ""]
    if notes:
        lines += ["**Skipped / incomplete:**", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Runs", "", "| " + " | ".join(_TABLE_COLS) + " |", "|" + "---|" * len(_TABLE_COLS)]
    lines += [_table_row(r) for g in groups for r in g["rows"]]
    lines += ["", "## Controls", ""]
    if ctl:
        lines += ["| " + " | ".join(_TABLE_COLS) + " |", "|" + "---|" * len(_TABLE_COLS)]
        lines += [_table_row(r) for r in ctl]
    else:
        lines.append("No controls in the manifest (random init, timeline stages).")
    lines += ["", "Numbers in brackets: the position-shuffled null (mean ± sd). \"no null\": older metrics.json "
                  "without `map`; such a density is not a tested map statistic. n/a: not available.", ""]
    lines += _training_motion_section(out, manifest)
    lines += ["## Figures", ""]
    for key, name in FIGURES.items():
        lines += [f"![{key}]({name})", "", _CAPTIONS[key], ""]
    lines += _references_section(refs, rows, kind)
    if manifest.get("timings_s"):
        lines += ["## Timings", "", "| step | s |", "|---|---|"]
        lines += [f"| {k} | {fmt(v, '.1f')} |" for k, v in manifest["timings_s"].items()]
        lines.append("")
    from tdann_fast._io import atomic_write_text

    path = out / "sweep_report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return str(path), verdicts


# ------------------------------------------------------------------------------------------------ main
def sweep_report(manifest: Union[PathLike, Mapping, Sequence[PathLike]], out_dir: PathLike,
                 alphas: Optional[Sequence[float]] = None, references=None) -> Dict[str, Any]:
    """Write the sweep figures, ``sweep_rows.json`` and ``sweep_report.md`` into ``out_dir``.

    ``manifest``: the path of ``sweep.json`` (or of the folder holding it) or the manifest dict; or, the old call,
    a list of analysed run directories (then ``alphas`` may give their α). ``references`` overrides the macaque
    references (default :func:`~tdann_fast.analysis.references.references_for` of the analyses' kind); only
    those with ``comparable=True`` are drawn or quoted.

    Returns ``{"rows", "files", "verdicts", "skipped", "references_compared"}``: ``files`` maps each figure name
    (:data:`FIGURES`), ``"report"`` and ``"rows"`` to its path; ``references_compared`` lists the reference metrics
    drawn in each figure.
    """
    if isinstance(manifest, (list, tuple)):
        m = manifest_from_run_dirs(manifest, alphas)
    else:
        if alphas is not None:
            raise _config_error("alphas: only for a list of run directories; a manifest carries each run's alpha")
        m = load_manifest(manifest)
    rows = collect_rows(m)
    runs_ok = [r for r in rows if r["role"] == "run" and r["status"] == "ok"]
    if not runs_ok:
        why = "; ".join(f"{r['name']}: {r['note']}" for r in rows if r["role"] == "run") or "no runs"
        raise ValueError(f"manifest: no run has an analysis to report ({why})")
    kind = next((r.get("kind") for r in runs_ok if r.get("kind")), "direction")
    if references is None:
        from .references import references_for

        try:
            references = references_for(kind)
        except ValueError:
            references = ()
    groups = run_groups(rows)
    rows = [r for g in groups for r in g["rows"]] + [r for r in rows if r["role"] != "run"]
    notes = [f"{r['name']}: {r['note']}" for r in rows if r["note"]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    from . import sweep_figures as sf

    ref_alpha = m.get("reference_alpha")
    ref_alpha = None if ref_alpha is None else float(ref_alpha)
    data = sf.SweepData(rows, groups, ref_alpha, references, kind)
    files: Dict[str, str] = {}
    compared: Dict[str, List[str]] = {}
    for key, fn in (("fig2_tuning_vs_alpha", sf.plot_tuning_vs_alpha),
                    ("fig3a_fwhm_vs_cv_bandwidth", sf.plot_fwhm_vs_cv_bandwidth),
                    ("fig3b_objectives", sf.plot_objectives),
                    ("fig4b_pinwheels_vs_alpha", sf.plot_pinwheels_vs_alpha),
                    ("fig5_ptc_across_alpha", sf.plot_ptc_across_alpha),
                    ("fig6_maps_across_alpha", sf.plot_maps_across_alpha),
                    ("timeline", sf.plot_timeline)):
        path, drawn = fn(data, out / FIGURES[key])
        files[key] = path
        compared[key] = drawn
    from tdann_fast._io import atomic_write_text, jsonable

    clean = jsonable(rows)
    atomic_write_text(out / "sweep_rows.json", json.dumps(clean, indent=2) + "\n")
    files["rows"] = str(out / "sweep_rows.json")
    files["report"], verdicts = _write_markdown(out, m, rows, groups, references, kind, notes)
    return {"rows": clean, "files": files, "verdicts": verdicts, "skipped": notes, "references_compared": compared}

