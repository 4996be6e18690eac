"""α-sweep report from a sweep manifest: figures, sweep_report.md, references only when comparable, old-style
analyses without `map`, the old RUN_DIR signature and bad inputs. Built on a synthetic sweep (2 α × 2 seeds, a
spatial-only run, random init, timeline stages) with small metrics.json / tuning.npz files."""
import argparse
import json
import math
import re
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from tdann_fast.analysis.commands import register  # noqa: E402
from tdann_fast.analysis.sweep import FIGURES, sweep_report  # noqa: E402
from tdann_fast.analysis.sweep_figures import map_region  # noqa: E402
from tdann_fast.analysis.tuning import tuning_metrics  # noqa: E402

SIDE = 3.0
N = 400


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _smooth_preferred(pos, rng, spacing=0.8):
    """A smooth direction map with pinwheels: the phase of a sum of plane waves of wavelength ``spacing``."""
    k = 2 * np.pi / spacing
    z = np.zeros(len(pos), complex)
    for j in range(6):
        th = np.pi * j / 6 + rng.uniform(0, 0.3)
        z += np.exp(1j * (k * (pos[:, 0] * np.cos(th) + pos[:, 1] * np.sin(th)) + rng.uniform(0, 2 * np.pi)))
    return np.mod(np.angle(z), 2 * np.pi)


def _map(detected: bool, **over):
    m = {"detected": detected, "verdict": "direction map detected" if detected else "no direction map",
         "num_units": N, "num_shuffles": 20, "sigma_mm": 0.25 if detected else 0.15, "grid_mm": 0.075,
         "margin_mm": 0.3, "area_mm2": 5.0,
         "smoothness": 0.6 if detected else 0.03, "smoothness_null_mean": 0.02, "smoothness_null_sd": 0.01,
         "smoothness_p": 0.01 if detected else 0.4, "spacing_mm": 0.8 if detected else None,
         "spacing_resolved": detected, "spacing_p": 0.01 if detected else None, "spectrum_peak_ratio": 3.0,
         "num_pinwheels": 17 if detected else 60, "density_per_mm2": 3.4 if detected else 12.0,
         "density_per_mm2_null_mean": 11.5, "density_per_mm2_null_sd": 0.9, "density_per_mm2_p": 0.01,
         "density_per_spacing2": 2.18 if detected else None, "density_per_spacing2_null_mean": 7.4,
         "density_per_spacing2_null_sd": 0.6,
         "density_vs_sigma": {"sigma_mm": [0.1, 0.15], "model": [4.0, 3.4], "null_mean": [20, 11.5],
                              "null_sd": [1, 0.9]}}
    m.update(over)
    return m


def _analysis(d, rng, alpha, stage, smooth=False, map_=True, detected=False, map_over=None, tuning_over=None):
    d.mkdir(parents=True, exist_ok=True)
    pos = rng.uniform(0, SIDE, (N, 2))
    dirs = np.arange(16) * 2 * np.pi / 16
    pref = _smooth_preferred(pos, rng) if smooth else rng.uniform(0, 2 * np.pi, N)
    kappa = rng.uniform(0.5, 4.0, N)[:, None]
    base = rng.uniform(0.0, 1.5, N)[:, None]
    resp = base + np.exp(kappa * (np.cos(dirs[None, :] - pref[:, None]) - 1)) + rng.uniform(0, 0.05, (N, 16))
    tm = tuning_metrics(resp, dirs)
    np.savez_compressed(d / "tuning.npz", positions=pos, responses=resp, directions=dirs, **tm.arrays())
    summ = tm.summary()
    summ.update(tuning_over or {})
    m = {"kind": "direction", "model": "r3d_18", "layer": "layer3.1", "alpha": alpha, "stage": stage,
         "checkpoint": str(d / "ckpt.pt"), "tuning": summ,
         "pinwheels": {"density_per_mm2": 9.9, "spacing_mm": 1.1, "density_per_spacing2": 12.0, "sigma_mm": 0.15},
         "preferred_uniformity": {"mean_resultant_length": 0.05, "rayleigh_z": 1.0, "p": 0.4,
                                  "mean_angle_deg": 10.0, "fraction_within_45_of_mode": 0.26}}
    if map_:
        m["map"] = _map(detected, **(map_over or {}))
    (d / "metrics.json").write_text(json.dumps(_jsonable(m)))
    return d


def _fake_sweep(root, rng):
    """2 α × 2 seeds (α = 0 contrastive; α = 0.5 seed 0 has a smooth map, detected), a third α = 0.5 seed not
    analysed yet, a spatial-only run with missing values, random init and timeline stages 2 (map) and 3 (an old
    metrics.json without `map`)."""
    runs = []
    for a, obj in ((0.0, "contrastive"), (0.5, "joint")):
        for s in (0, 1):
            name = f"alpha{a:g}_seed{s}"
            det = a == 0.5 and s == 0
            _analysis(root / name / "analysis", rng, a, 6, smooth=det, detected=det)
            runs.append({"name": name, "alpha": a, "seed": s, "objective": obj, "run_dir": str(root / name),
                         "checkpoint": str(root / name / "ckpt.pt"), "analysis_dir": f"{name}/analysis",
                         "complete": True})
    runs.append({"name": "alpha0.5_seed2", "alpha": 0.5, "seed": 2, "objective": "joint", "run_dir": "x",
                 "checkpoint": None, "analysis_dir": None, "complete": False})
    _analysis(root / "spatial" / "analysis", rng, None, 6,
              map_over={"smoothness": None, "density_per_mm2": float("nan")},
              tuning_over={"median_fwhm_deg": float("nan"), "median_dsi": None})
    runs.append({"name": "spatial_seed0", "alpha": None, "seed": 0, "objective": "spatial",
                 "run_dir": str(root / "spatial"), "checkpoint": None,
                 "analysis_dir": str(root / "spatial" / "analysis"),
                 "complete": True})
    _analysis(root / "random_init", rng, None, None)
    _analysis(root / "stage2", rng, None, 2)
    _analysis(root / "stage3", rng, 0.5, 3, map_=False)
    manifest = {"config": "demo", "alphas": [0, 0.5], "seeds": [0, 1], "reference_alpha": 0.5,
                "shared_run": "shared", "shared_stage4": "shared/stage4.pt", "runs": runs,
                "controls": {"random_init": str(root / "random_init"),
                             "timeline": [{"stage": 2, "label": "after pre-training (retinotopic positions)",
                                           "analysis_dir": "stage2"},
                                          {"stage": 3, "label": "after the swap", "analysis_dir": "stage3"}]},
                "timings_s": {"total": 12.5}}
    (root / "sweep.json").write_text(json.dumps(_jsonable(manifest)))
    return root / "sweep.json"


@dataclass(frozen=True)
class Ref:
    metric: str
    label: str
    value: Optional[float]
    band: Optional[Tuple[float, float]]
    text: str
    comparable: bool
    sources: Tuple[str, ...] = ("test",)

    def lines(self):
        return [self.value] if self.value is not None else (list(self.band) if self.band else [])


REFS = (Ref("median_fwhm_deg", "direction tuning FWHM (°)", None, (80.0, 100.0), "≈ 80-100°", True),
        Ref("pinwheel_density_per_mm2", "pinwheel density (mm⁻²)", 4.9, None, "≈ 4.9 mm⁻²", False),
        Ref("median_dsi", "median DSI", 0.77, None, "DSI 0.77", False))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    manifest = _fake_sweep(root, np.random.default_rng(1))
    before = manifest.read_text()
    res = sweep_report(manifest, root, references=REFS)   # out_dir = the manifest's folder
    assert manifest.read_text() == before                  # the manifest is not overwritten
    return root, res, (root / "sweep_report.md").read_text()


def _png_ok(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] > 150 and img.shape[1] > 150
    assert float(np.var(img[..., :3])) > 1e-3  # not blank


def test_every_figure_is_a_png(sweep):
    root, res, _ = sweep
    for key, name in FIGURES.items():
        assert res["files"][key] == str(root / name)
        _png_ok(root / name)
    rows = json.loads((root / "sweep_rows.json").read_text())
    assert len(rows) == 5 + 3 + 1   # runs + controls + the unanalysed seed


def test_report_opens_with_verdicts_and_lists_every_run(sweep):
    root, res, md = sweep
    lines = md.splitlines()
    assert lines[0] == "# α sweep: demo"
    verdicts = [ln for ln in lines[2:] if ln.startswith("- ")][:7]
    assert lines[2].startswith("- ")
    assert verdicts[0] == "- α = 0 (contrastive only, 2 seeds): no direction map detected (0/2 seeds)"
    assert verdicts[1].startswith("- α = 0.5 (3 seeds): direction map detected in 1/2 seeds (Λ = 0.80 mm; "
                                  "2.18 pinwheels per Λ²); 1 not analysed")
    assert verdicts[2].startswith("- spatial only (1 seed): no direction map detected")
    assert "- control: random init: no direction map detected" in lines
    assert any(v.startswith("- control: after the swap: map statistics not computed") for v in verdicts)
    for name, a, s, obj in (("alpha0_seed0", "0", 0, "contrastive"), ("alpha0_seed1", "0", 1, "contrastive"),
                            ("alpha0.5_seed0", "0.5", 0, "joint"), ("alpha0.5_seed1", "0.5", 1, "joint"),
                            ("alpha0.5_seed2", "0.5", 2, "joint"), ("spatial_seed0", "n/a", 0, "spatial")):
        assert re.search(rf"^\| {re.escape(name)} \| {re.escape(a)} \| {s} \| {obj} \|", md, re.M), name
    det = next(ln for ln in lines if ln.startswith("| alpha0.5_seed0 "))
    assert "| detected |" in det and "0.6 (0.02 ± 0.01)" in det and "| 0.80 |" in det
    assert "| no map |" in next(ln for ln in lines if ln.startswith("| alpha0_seed1 "))
    assert "| skipped |" in next(ln for ln in lines if ln.startswith("| alpha0.5_seed2 "))
    assert "alpha0.5_seed2: run not complete; no analysis_dir" in md
    for key, name in FIGURES.items():
        assert f"]({name})" in md
    # controls rows
    assert re.search(r"^\| random init \| n/a \| n/a \| control \|", md, re.M)
    assert re.search(r"^\| stage 2: after pre-training \(retinotopic positions\) \| n/a \|", md, re.M)


def test_missing_values_say_na(sweep):
    _, res, md = sweep
    sp = next(ln for ln in md.splitlines() if ln.startswith("| spatial_seed0 "))
    cells = [c.strip() for c in sp.strip("|").split("|")]
    assert cells[5] == "n/a" and cells[7] == "n/a" and cells[9] == "n/a"   # FWHM, DSI, smoothness
    row = next(r for r in res["rows"] if r["name"] == "spatial_seed0")
    assert row["median_fwhm_deg"] is None and row["density_per_mm2"] is None


def test_macaque_values_only_for_comparable_references(sweep):
    _, res, md = sweep
    assert "≈ 80-100°" in md                   # comparable: quoted
    assert "4.9" not in md and "0.77" not in md  # not comparable: never shown
    assert "not compared (not marked comparable): pinwheel density (mm⁻²)" in md
    assert res["references_compared"]["fig2_tuning_vs_alpha"] == ["median_fwhm_deg"]
    assert res["references_compared"]["fig4b_pinwheels_vs_alpha"] == []


def test_map_reference_compared_for_detected_maps_only(tmp_path, rng):
    manifest = _fake_sweep(tmp_path / "s", rng)
    refs = (Ref("pinwheel_density_per_mm2", "pinwheel density (mm⁻²)", 4.9, None, "≈ 4.9 mm⁻²", True),)
    res = sweep_report(manifest, tmp_path / "out", references=refs)
    md = (tmp_path / "out" / "sweep_report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("- compared: pinwheel density"))
    assert "detected maps only: alpha0.5_seed0 3.4" in line
    assert "alpha0_seed" not in line and "alpha0.5_seed1" not in line
    assert res["references_compared"]["fig4b_pinwheels_vs_alpha"] == ["pinwheel_density_per_mm2"]


def test_default_references_respect_comparable(sweep, tmp_path):
    """With the package's own references: a reference's text appears only if it is marked comparable."""
    from tdann_fast.analysis.references import references_for

    root, _, _ = sweep
    sweep_report(root / "sweep.json", tmp_path)
    md = (tmp_path / "sweep_report.md").read_text()
    for r in references_for("direction"):
        if any(ch.isdigit() for ch in r.text):
            assert (r.text in md) == bool(getattr(r, "comparable", False)), r.metric


def test_metrics_without_map_are_handled(sweep):
    root, res, md = sweep
    st3 = next(r for r in res["rows"] if r["name"] == "stage 3")
    assert st3["status"] == "ok" and st3["map_analysed"] is False and st3["map_detected"] is None
    assert st3["pinwheel_density_per_mm2"] == 9.9          # legacy fallback, labelled in the table
    line = next(ln for ln in md.splitlines() if ln.startswith("| stage 3: after the swap "))
    assert "| not analysed |" in line and "9.9 (no null: old metrics.json)" in line


def test_old_run_dirs_signature_and_cli(tmp_path, rng, capsys):
    runs = [_analysis(tmp_path / f"run{i}", rng, a, 6, map_=False) for i, a in enumerate((2.5, 0.0, 0.5))]
    parser = argparse.ArgumentParser(prog="tdann-fast")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep-report", *map(str, runs), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert "map statistics not computed" in capsys.readouterr().out
    rows = json.loads((tmp_path / "out" / "sweep_rows.json").read_text())
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 2.5]
    assert [r["seed"] for r in rows] == [0, 0, 0] and {r["objective"] for r in rows} == {"joint"}
    for name in FIGURES.values():
        _png_ok(tmp_path / "out" / name)
    res = sweep_report(runs[:2], tmp_path / "s2", alphas=[1.0, 1.0])
    assert [(r["alpha"], r["seed"]) for r in res["rows"]] == [(1.0, 0), (1.0, 1)]
    with pytest.raises(ValueError, match="alphas"):
        sweep_report(runs, tmp_path / "s3", alphas=[1.0])
    with pytest.raises(FileNotFoundError, match="nope"):
        sweep_report([tmp_path / "nope"], tmp_path / "s4")


def test_bad_inputs_name_the_argument(tmp_path, rng):
    from tdann_fast.errors import ConfigError

    with pytest.raises(FileNotFoundError, match="manifest: .*missing.json"):
        sweep_report(tmp_path / "missing.json", tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="manifest: .*bad.json.*not valid JSON"):
        sweep_report(tmp_path / "bad.json", tmp_path / "o1")
    with pytest.raises(ConfigError, match=r"manifest runs\[0\]\.alpha"):
        sweep_report({"runs": [{"name": "a", "seed": 0, "analysis_dir": "x"}]}, tmp_path / "o1")
    with pytest.raises(ConfigError, match=r"manifest runs\[0\]\.objective"):
        sweep_report({"runs": [{"alpha": 1, "objective": "both"}]}, tmp_path / "o1")
    with pytest.raises(ConfigError, match="manifest: needs a list 'runs'"):
        sweep_report({"alphas": [0]}, tmp_path / "o1")
    # runs without an analysis are skipped with a note; none at all is an error naming the manifest
    with pytest.raises(ValueError, match="manifest: no run has an analysis.*a: no analysis_dir"):
        sweep_report({"runs": [{"name": "a", "alpha": 0.5, "analysis_dir": None}]}, tmp_path / "o1")
    with pytest.raises(ConfigError, match="alphas"):
        sweep_report({"runs": []}, tmp_path / "o1", alphas=[1.0])
    assert not (tmp_path / "o1").exists()
    # CLI: a manifest with --alphas is refused, naming the option
    manifest = _fake_sweep(tmp_path / "s", rng)
    parser = argparse.ArgumentParser(prog="tdann-fast")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep-report", str(manifest), "--out", str(tmp_path / "o2"), "--alphas", "1"])
    with pytest.raises(ConfigError, match="--alphas"):
        args.func(args)


def test_map_region_is_shared_and_clipped():
    a = np.array([[0, 0], [3, 3], [1, 2.0]])
    assert map_region([a]) == pytest.approx((0.5, 2.5, 0.5, 2.5))
    small = np.array([[0, 0], [1.5, 1.5], [0.5, 1.0]])
    assert map_region([a, small]) == pytest.approx((0.75, 2.25, 0.75, 2.25))  # the smaller sheet's side


def test_all_missing_values_do_not_crash(tmp_path):
    """A run whose every number is null/NaN and which has no tuning.npz: every figure is still written, the
    table says n/a."""
    d = tmp_path / "a"
    d.mkdir()
    mp = {k: None for k in ("smoothness", "smoothness_null_mean", "smoothness_null_sd", "spacing_mm",
                            "density_per_mm2", "density_per_mm2_null_mean", "density_per_spacing2", "sigma_mm")}
    mp["detected"] = None
    (d / "metrics.json").write_text(json.dumps({"kind": "direction", "alpha": 0.5, "tuning": {"median_dsi": None},
                                                "map": mp}))
    res = sweep_report({"reference_alpha": 0.5, "runs": [{"name": "r", "alpha": 0.5, "analysis_dir": str(d)}],
                        "controls": {"random_init": str(tmp_path / "gone"), "timeline": []}}, tmp_path / "out")
    for name in FIGURES.values():
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "out" / "sweep_report.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| r |"))
    assert row.count("n/a") >= 8
    assert "random init: " in md and "does not exist" in md      # the missing control is noted, not fatal
    assert res["rows"][0]["map_detected"] is None
    assert "- α = 0.5 (1 seed): map test not available" in md
