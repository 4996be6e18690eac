"""α-sweep report: gather ``metrics.json`` of several analysed runs and plot the metrics against α."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from .figures import plot_sweep
from .references import references_for

__all__ = ["find_metrics", "sweep_report"]

SWEEP_KEYS = ("selective_fraction", "median_fwhm_deg", "median_cv_bandwidth_deg", "median_circular_variance",
              "median_dsi", "median_axial_share", "ptc_fwhm_deg")


def find_metrics(run_dir: Union[str, Path]) -> Path:
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


def sweep_report(run_dirs: Sequence[Union[str, Path]], out_dir: Union[str, Path],
                 alphas: Optional[Sequence[float]] = None) -> Dict:
    """Plot the α sweep of the analysed runs in ``run_dirs`` into ``out_dir`` (``sweep.png``, ``sweep.json``,
    ``sweep.md``). α is read from each ``metrics.json`` (key ``alpha``) unless ``alphas`` is given."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("run_dirs must name at least one analysed run")
    if alphas is not None and len(alphas) != len(run_dirs):
        raise ValueError(f"alphas has {len(alphas)} values for {len(run_dirs)} run directories")
    rows: List[Dict] = []
    kind = None
    for i, d in enumerate(run_dirs):
        path = find_metrics(d)
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        a = alphas[i] if alphas is not None else m.get("alpha")
        if isinstance(a, dict):
            a = next(iter(a.values()), None)
        if a is None:
            raise ValueError(f"{path} holds no alpha (a random-init analysis?); pass alphas explicitly")
        kind = kind or m.get("kind", "direction")
        t = m.get("tuning", {})
        pw = m.get("pinwheels", {})
        row = {"run": str(d), "metrics": str(path), "alpha": float(a)}
        row.update({k: t.get(k) for k in SWEEP_KEYS})
        row["pinwheel_density_per_mm2"] = pw.get("density_per_mm2")
        row["density_per_spacing2"] = pw.get("density_per_spacing2")
        rows.append({k: (float("nan") if v is None else v) for k, v in row.items()})
    rows.sort(key=lambda r: r["alpha"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = references_for(kind or "direction")
    png = plot_sweep([r["alpha"] for r in rows], rows, out / "sweep.png", refs)
    with open(out / "sweep.json", "w", encoding="utf-8") as f:
        json.dump([{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows],
                  f, indent=2)
    cols = ["alpha", "selective_fraction", "median_fwhm_deg", "median_circular_variance", "median_dsi",
            "pinwheel_density_per_mm2"]
    lines = ["# α sweep", "", "![sweep](sweep.png)", "", "| " + " | ".join(cols) + " |",
             "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("n/a" if isinstance(r[c], float) and math.isnan(r[c]) else f"{r[c]:.3g}"
                                       for c in cols) + " |")
    lines += ["", "Green dashed lines: macaque references (see each run's report.md for sources and status)."]
    (out / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"rows": rows, "files": {"png": png, "json": str(out / "sweep.json"), "md": str(out / "sweep.md")}}
