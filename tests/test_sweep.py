"""`tdann-fast sweep` on the smoke config: stages 1-4 once, stages 5-6 per (alpha, seed) plus the spatial-only run,
resumable as a whole (a crash in the middle, a rerun that trains nothing), the manifest, the analyses and controls."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tdann_fast.errors import ConfigError
from tdann_fast.sweep import check_sweep_args, parse_values, reference_alpha, run_name, run_sweep
from tdann_fast.train.checkpoint import checkpoint_path, stage_dir
from tdann_fast.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
ALPHAS, SEEDS = [0, 0.5], [0, 1]
FAST = ["finetune.steps=1", "full.steps=1"]
NAMES = ["alpha0_seed0", "alpha0_seed1", "alpha0.5_seed0", "alpha0.5_seed1", "spatial_only_alpha0.5_seed0"]
RUN_KEYS = {"name", "alpha", "seed", "objective", "run_dir", "checkpoint", "analysis_dir", "complete"}


def _mtimes(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("checkpoint.pt")}


def _raw(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _events(run_dir):
    return [json.loads(line)["event"] for line in (Path(run_dir) / "lineage.jsonl").read_text().splitlines()]


def _rows(run_dir, stage):
    with open(stage_dir(run_dir, stage) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep, first interrupted by a crash in stage 6 of its second run, then run again to the end."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    from tdann_fast.train import stages

    original = stages.train_stage

    def crash(run, stage, start_step, resume_state):
        if stage == 6 and Path(run.cfg.run_dir).name == "alpha0_seed1":
            raise RuntimeError("simulated crash")
        return original(run, stage, start_step, resume_state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "train_stage", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_sweep("smoke", ALPHAS, SEEDS, out_dir=out, analyze=False, overrides=FAST, progress=False)
    interrupted = json.loads((out / "sweep.json").read_text())
    before = _mtimes(out)
    result = run_sweep("smoke", ALPHAS, SEEDS, out_dir=out, analyze=False, overrides=FAST, progress=False)
    return SimpleNamespace(out=out, interrupted=interrupted, before=before, result=result,
                           manifest=json.loads((out / "sweep.json").read_text()))


def test_manifest(sweep):
    m, out = sweep.manifest, sweep.out
    assert set(m) == {"config", "alphas", "seeds", "reference_alpha", "shared_run", "shared_stage4", "runs",
                      "controls", "timings_s"}
    assert m["config"] == "smoke" and m["alphas"] == [0.0, 0.5] and m["seeds"] == [0, 1]
    assert m["reference_alpha"] == 0.5 and m["shared_run"] == str(out / "shared")
    assert m["shared_stage4"] == str(checkpoint_path(out / "shared", 4))
    assert [r["name"] for r in m["runs"]] == NAMES
    assert [r["objective"] for r in m["runs"]] == ["contrastive"] * 2 + ["joint"] * 2 + ["spatial"]
    for r in m["runs"]:
        assert set(r) == RUN_KEYS and r["complete"] and r["analysis_dir"] is None
        assert r["run_dir"] == str(out / "runs" / r["name"]) and Path(r["checkpoint"]).is_file()
        assert r["checkpoint"] == str(checkpoint_path(r["run_dir"], 6))
    assert m["controls"]["random_init"] is None
    assert [(t["stage"], t["analysis_dir"]) for t in m["controls"]["timeline"]] == [(2, None), (3, None)]
    assert {"shared", "total", *NAMES} <= set(m["timings_s"])
    assert sweep.result["manifest"] == str(out / "sweep.json")
    assert {k: v for k, v in sweep.result.items() if k != "manifest"} == m


def test_shared_stages_ran_once(sweep):
    shared = sweep.out / "shared"
    assert _events(shared) == ["start"]  # not resumed or rerun by the second call
    assert sorted(p.parent.name for p in shared.glob("stage*/checkpoint.pt")) == [
        "stage1_pretrain", "stage2_retinotopic", "stage3_swap", "stage4_freeze"]
    stage1 = checkpoint_path(shared, 1)
    assert stage1.stat().st_mtime_ns == sweep.before[stage1]
    for r in sweep.manifest["runs"]:
        first = json.loads((Path(r["run_dir"]) / "lineage.jsonl").read_text().splitlines()[0])
        assert first["event"] == "derive" and first["checkpoint"] == sweep.manifest["shared_stage4"]
        assert not (Path(r["run_dir"]) / "stage1_pretrain").exists()


def test_interrupted_sweep_resumes(sweep):
    runs = {r["name"]: r for r in sweep.interrupted["runs"]}
    assert runs["alpha0_seed0"]["complete"] and not runs["alpha0_seed1"]["complete"]
    assert not any(runs[n]["complete"] for n in NAMES[1:])
    # the crashed run went on from its stage-5 checkpoint; the finished one was not touched
    crashed = sweep.out / "runs" / "alpha0_seed1"
    assert _events(crashed) == ["derive", "resume"]
    assert [r["step"] for r in _rows(crashed, 5)] == ["1"] and [r["step"] for r in _rows(crashed, 6)] == ["1"]
    done = checkpoint_path(sweep.out / "runs" / "alpha0_seed0", 6)
    assert done.stat().st_mtime_ns == sweep.before[done] and _events(done.parents[1]) == ["derive"]


def test_runs_record_what_they_trained_with(sweep):
    probe = _raw(checkpoint_path(sweep.out / "shared", 3))["extra"]["probe"]
    assert probe["probe"] == "clips"
    for r in sweep.manifest["runs"]:
        ck = _raw(r["checkpoint"])
        assert ck["stage"] == 6 and ck["complete"]
        assert ck["alpha"] == r["alpha"] and ck["config"]["spatial"]["alpha"] == r["alpha"]
        assert ck["config"]["finetune_seed"] == r["seed"]
        weight = 0.0 if r["objective"] == "spatial" else 1.0
        assert ck["moco_weight"] == weight and ck["config"]["moco"]["weight"] == weight
        assert ck["extra"]["probe"] == probe
    # one stage-4 checkpoint, one data order per seed: the first contrastive loss depends on the seed only
    first = {r["name"]: float(_rows(r["run_dir"], 5)[0]["loss_moco"]) for r in sweep.manifest["runs"]}
    assert first["alpha0_seed0"] == first["alpha0.5_seed0"] == first["spatial_only_alpha0.5_seed0"]
    assert first["alpha0_seed1"] == first["alpha0.5_seed1"] != first["alpha0_seed0"]
    spatial = _rows(sweep.out / "runs" / "spatial_only_alpha0.5_seed0", 5)[0]
    assert spatial["loss"] == spatial["loss_spatial"]


def test_rerun_trains_nothing(sweep, monkeypatch):
    def refuse(self):
        raise AssertionError(f"a finished sweep trained again: {self.cfg.run_dir}")

    monkeypatch.setattr(Trainer, "run", refuse)
    before = _mtimes(sweep.out)
    again = run_sweep("smoke", ALPHAS, SEEDS, out_dir=sweep.out, analyze=False, overrides=FAST, progress=False)
    assert _mtimes(sweep.out) == before
    assert [r["complete"] for r in again["runs"]] == [True] * 5


def test_analyses_controls_and_report(sweep, monkeypatch):
    """Runs last (it rewrites the manifest for a one-run sweep): analyses of a finished run and of the controls,
    skipped on a rerun while up to date."""
    monkeypatch.setattr(Trainer, "run", lambda self: pytest.fail("no training expected"))
    kwargs = "analysis.kwargs={num_directions: 8, spatial_freqs: [2.0], temporal_freqs: [0.25], num_phases: 1}"
    out = sweep.out
    m = run_sweep("smoke", [0.5], [0], out_dir=out, spatial_only=False, overrides=[*FAST, kwargs], progress=False)
    (run,) = m["runs"]
    assert run["analysis_dir"] == str(out / "analysis" / "alpha0.5_seed0")
    metrics = json.loads((Path(run["analysis_dir"]) / "metrics.json").read_text())
    assert metrics["stage"] == 6 and metrics["alpha"] == 0.5
    assert m["controls"]["random_init"] == str(out / "analysis" / "random_init")
    assert (out / "analysis" / "random_init" / "metrics.json").is_file()
    for entry, stage in zip(m["controls"]["timeline"], (2, 3)):
        assert entry["stage"] == stage and entry["analysis_dir"] == str(out / "analysis" / f"timeline_stage{stage}")
        assert json.loads((Path(entry["analysis_dir"]) / "metrics.json").read_text())["stage"] == stage
    assert json.loads((out / "sweep.json").read_text())["runs"][0]["analysis_dir"] == run["analysis_dir"]
    # the run's report sets the controls beside it and opens with the verdict line
    assert set(metrics["controls"]) == {"random init", "after the swap"}
    report = (Path(run["analysis_dir"]) / "report.md").read_text().splitlines()
    assert report[2] == f"**{metrics['verdict']}**"
    assert not (Path(run["analysis_dir"]) / "controls").exists()  # the sweep's own random-init control is used
    # the training data's motion directions, and the sweep report with the paper's figures
    motion = json.loads((out / "analysis" / "training_motion" / "summary.json").read_text())
    assert motion["clips"] > 0 and 0 <= motion["rayleigh_p"] <= 1
    from tdann_fast.analysis.sweep import FIGURES

    for name in FIGURES.values():
        assert (out / "report" / name).stat().st_size > 5_000, name
    md = (out / "report" / "sweep_report.md").read_text()
    assert "## Training data: motion directions" in md and "training_motion_directions.png" in md
    written = {p: p.stat().st_mtime_ns for p in (out / "analysis").rglob("metrics.json")}
    m2 = run_sweep("smoke", [0.5], [0], out_dir=out, spatial_only=False, overrides=[*FAST, kwargs],
                   progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "analysis").rglob("metrics.json")} == written
    assert m2["runs"][0]["analysis_dir"] == run["analysis_dir"]


# ------------------------------------------------------------------------------------------------- arguments
def test_arguments_are_checked_first(tmp_path):
    assert parse_values("0, 0.1,2.5", "--alphas") == [0.0, 0.1, 2.5] and parse_values("3,1", "--seeds", int) == [3, 1]
    for bad in ("", "0,,1", "0,x"):
        with pytest.raises(ConfigError, match="--alphas"):
            parse_values(bad, "--alphas")
    with pytest.raises(ConfigError, match="--seeds"):
        parse_values("0,1.5", "--seeds", int)
    for alphas, seeds, option in (([], [0], "--alphas"), ([-1], [0], "--alphas"), ([float("nan")], [0], "--alphas"),
                                  ([0, 0.0], [0], "--alphas"), ([0], [], "--seeds"), ([0], [0.5], "--seeds"),
                                  ([0], [1, 1], "--seeds"), ([0], [-2], "--seeds")):
        with pytest.raises(ConfigError, match=option):
            check_sweep_args(alphas, seeds)
    assert reference_alpha([0, 0.5, 2.5]) == 0.5 and reference_alpha([0, 0.25, 1.25]) == 1.25
    assert reference_alpha([0]) is None and run_name(0.25, 2) == "alpha0.25_seed2"
    # a config error (spatial-only refused at alpha 0 by moco.weight=0) before anything is made
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="moco.weight"):
        run_sweep("smoke", [0, 0.5], [0], out_dir=out, analyze=False, overrides=["moco.weight=0"], progress=False)
    with pytest.raises(ConfigError, match="data.frams"):
        run_sweep("smoke", [0.5], [0], out_dir=out, analyze=False, overrides=["data.frams=3"], progress=False)
    assert not out.exists()


def test_cli_errors_are_one_line(tmp_path):
    out = tmp_path / "never"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for args, key in ((["--alphas", "0,x", "--seeds", "0"], "--alphas"),
                      (["--alphas", "0.5", "--seeds", "0,0"], "--seeds"),
                      (["--alphas", "0.5", "--seeds", "0", "spatial.alpha=-1"], "spatial.alpha")):
        res = subprocess.run([sys.executable, "-m", "tdann_fast.cli", "sweep", "--config", "smoke", "--out", str(out),
                              *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        assert res.returncode == 2 and res.stderr.startswith("tdann-fast: error: ") and key in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_demo_trains_alpha_and_alpha0_from_one_stage4(tmp_path, capsys):
    """`tdann-fast demo` is a small sweep: stages 1-4 once, then stages 5-6 at the config's alpha and at alpha 0
    from the same stage-4 checkpoint."""
    from tdann_fast import cli

    out = tmp_path / "demo"
    code = cli.main(["demo", "--config", "smoke", f"run_dir={out}", "analysis.enabled=false", *FAST])
    assert code == 0
    manifest = json.loads((out / "sweep.json").read_text())
    assert [(r["alpha"], r["objective"]) for r in manifest["runs"]] == [(0.0, "contrastive"), (0.5, "joint")]
    assert _events(out / "shared").count("start") == 1
    stage4 = str(checkpoint_path(out / "shared", 4))
    for r in manifest["runs"]:
        ckpt = _raw(r["checkpoint"])
        assert ckpt["stage"] == 6 and ckpt["config"]["spatial"]["alpha"] == r["alpha"]
        assert any(e.get("checkpoint") == stage4 or stage4 in json.dumps(e)
                   for e in map(json.loads, (Path(r["run_dir"]) / "lineage.jsonl").read_text().splitlines()))
    assert "total" in capsys.readouterr().out
