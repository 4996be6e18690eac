"""Reliability of training runs: config changes on rerun/resume are honoured and recorded (or refused), checkpoints
never run code, damaged files are named, reruns keep earlier results, one writer per run directory."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tdann_fast import cli
from tdann_fast.errors import ConfigError, DamagedFileError, RunDirError
from tdann_fast.train import load_checkpoint, load_for_analysis
from tdann_fast.train.checkpoint import checkpoint_path, stage_dir
from tdann_fast.train.config import (SCHEDULE_KEYS, check_changes, config_changes, key_rule, leaf_keys, load_config)
from tdann_fast.train.rundir import plan_run
from tdann_fast.train.trainer import cosine_warmup, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """Stages 1-4 of the smoke config (stage 5 and 6 are what the tests rerun or resume)."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(load_config("smoke", [f"run_dir={run_dir}"]), stop_after=4)
    return run_dir


def _copy(base: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(base, dst)
    return dst


def _cfg(run_dir, *overrides):
    return load_config("smoke", [f"run_dir={run_dir}", *overrides])


def _rows(run_dir, stage):
    with open(stage_dir(run_dir, stage) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _spatial_ratio(row) -> float:
    per_layer = sum(float(v) for k, v in row.items() if k.startswith("loss_spatial/"))
    return float(row["loss_spatial"]) / per_layer


def _events(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "lineage.jsonl").read_text().splitlines()]


def _changes(event):
    """Changed keys of a lineage event, without run_dir (the tests copy runs to new directories)."""
    return {k: v for k, v in event.get("changes", {}).items() if k != "run_dir"}


def _listing(run_dir):
    return sorted((str(p.relative_to(run_dir)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in Path(run_dir).rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- 1. overrides are honoured
def test_rerun_uses_and_records_the_overridden_alpha(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    train(_cfg(run, "spatial.alpha=2.5"), from_stage=5, stop_after=5)
    rows = _rows(run, 5)
    assert rows and all(_spatial_ratio(r) == pytest.approx(2.5, rel=1e-5) for r in rows), \
        [_spatial_ratio(r) for r in rows]
    ck = load_checkpoint(checkpoint_path(run, 5))
    assert ck["alpha"] == 2.5 and ck["config"]["spatial"]["alpha"] == 2.5
    assert load_for_analysis(run).alpha == 2.5
    event = _events(run)[-1]
    assert event["event"] == "rerun" and _changes(event) == {"spatial.alpha": [0.5, 2.5]}


def test_resume_mid_stage_uses_the_new_alpha_lr_and_momentum(base_run, tmp_path, monkeypatch):
    run = _copy(base_run, tmp_path)
    from tdann_fast.train import checkpoint as ckpt_io, loop

    real_save = ckpt_io.save_stage

    def save_then_stop(run_state, stage, step, complete, *args, **kwargs):
        real_save(run_state, stage, step, complete, *args, **kwargs)
        if stage == 5 and step == 2:
            raise KeyboardInterrupt  # a run stopped in the middle of stage 5

    monkeypatch.setattr(ckpt_io, "save_stage", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(run, "finetune.steps=4", "checkpoint_every=1"), from_stage=5)
    monkeypatch.setattr(ckpt_io, "save_stage", real_save)
    mid = load_checkpoint(checkpoint_path(run, 5))
    assert mid["step"] == 2 and not mid["complete"] and mid["optimizer"] is not None

    seen = {}
    real_optimiser = loop.make_optimiser

    def spy(run_state, stage, resume_state):
        out = real_optimiser(run_state, stage, resume_state)
        seen["groups"] = [dict(g, params=None) for g in out[1].param_groups]
        return out

    monkeypatch.setattr(loop, "make_optimiser", spy)
    train(_cfg(run, "finetune.steps=4", "checkpoint_every=1", "spatial.alpha=2.5", "finetune.lr=0.2",
               "momentum=0.5", "weight_decay=0.001"), resume=True, stop_after=5)
    rows = _rows(run, 5)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [round(_spatial_ratio(r), 4) for r in rows] == [0.5, 0.5, 2.5, 2.5]
    factor = cosine_warmup(4, 1, 0.2, 0.0)  # smoke: finetune.warmup_steps = 1
    assert [float(r["lr"]) for r in rows[2:]] == pytest.approx([0.2 * factor(3), 0.2 * factor(4)])
    g = seen["groups"][0]
    assert g["momentum"] == 0.5 and g["weight_decay"] == 0.001 and g["initial_lr"] == 0.2
    ck = load_checkpoint(checkpoint_path(run, 5))
    assert ck["alpha"] == 2.5 and ck["config"]["finetune"]["lr"] == 0.2 and ck["optimizer"] is None
    resume = _events(run)[-1]
    assert resume["event"] == "resume" and resume["step"] == 2
    assert set(_changes(resume)) == {"spatial.alpha", "finetune.lr", "momentum", "weight_decay"}


def test_changes_the_kept_stages_were_not_made_with_are_refused(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    before = _listing(run)
    cases = [("data.size=36", "data.size", "new run"), ("swap.steps=10", "swap.steps", "--from-stage 3"),
             ("spatial.layers=[layer3.1]", "spatial.layers", "--from-stage 2"),
             ("moco.hidden_dim=64", "moco.hidden_dim", "new run"), ("seed=3", "seed", "new run")]
    for override, key, hint in cases:
        extra = ["analysis.layer=layer3.1"] if key == "spatial.layers" else []
        with pytest.raises(ConfigError) as err:
            train(_cfg(run, override, *extra), from_stage=5)
        message = str(err.value)
        assert key in message and hint in message and "--from-stage 5" in message, message
    assert _listing(run) == before  # refused before anything was written
    # the same changes are fine where the stages that used them are rerun too
    plan = plan_run(_cfg(run, "swap.steps=10"), from_stage=3)
    assert _changes({"changes": plan.changes}) == {"swap.steps": [2000, 10]}
    assert "spatial.layers" in plan_run(_cfg(run, "spatial.layers=[layer3.1]", "analysis.layer=layer3.1"),
                                         from_stage=2).changes
    # in the middle of a stage, a key of that stage that is not a schedule key may not change
    check_changes({"spatial.variant": ["rel", "abs"]}, kept_until=4, action="--from-stage 5")
    with pytest.raises(ConfigError, match="spatial.variant"):
        check_changes({"spatial.variant": ["rel", "abs"]}, kept_until=5, action="--resume")
    check_changes({"spatial.alpha": [0.5, 1.0], "finetune.lr": [0.01, 0.1]}, kept_until=6, action="--resume")


def test_every_config_key_has_a_rerun_rule():
    kinds = {key: key_rule(key) for key in leaf_keys()}
    assert kinds["spatial.alpha"] == ("schedule", 0) and kinds["data.size"] == ("fixed", 1)
    assert kinds["swap.steps"] == ("fixed", 3) and kinds["log_every"] == ("free", 0)
    assert all(key_rule(k)[0] == "schedule" for k in SCHEDULE_KEYS if k in kinds)
    from tdann_fast.train.config import TrainConfig

    assert config_changes({"spatial": {"alpha": 0.5}}, TrainConfig()) == {}  # a partial record counts its defaults
    assert config_changes({"batch_size": 4}, TrainConfig()) == {"batch_size": [4, 8]}


# ------------------------------------------------------------------------------ 2. opening a file never runs code
class _Payload:
    """Unpickling this object calls open(marker, 'w'): it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_never_runs_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = stage_dir(tmp_path / "run", 1) / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": "tdann_fast.checkpoint/2", "stage": 1, "model": _Payload(marker)}, path)
    with pytest.raises(DamagedFileError, match="refused to open"):
        load_checkpoint(path)
    assert not marker.exists()
    assert cli.main(["analyze", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tdann-fast: error: {path}: refused to open") and not marker.exists()
    assert not (tmp_path / "out").exists()


def test_our_checkpoints_are_weights_only(base_run):
    for stage in (1, 2, 3, 4):
        ckpt = torch.load(checkpoint_path(base_run, stage), weights_only=True)
        assert ckpt["stage"] == stage
    for sheet_file in stage_dir(base_run, 4).glob("sheets/*.pt"):
        torch.load(sheet_file, weights_only=True)


# ------------------------------------------------------------------------------------ 5. damaged files are named
def test_damaged_checkpoint_files_are_named(base_run, tmp_path):
    good = checkpoint_path(base_run, 2).read_bytes()
    files = {"zero": b"", "truncated": good[: len(good) // 2], "text": b"not a checkpoint\n"}
    for name, data in files.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        with pytest.raises(DamagedFileError) as err:
            load_checkpoint(p)
        assert str(p) in str(err.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(DamagedFileError, match="not a tdann_fast training checkpoint"):
        load_checkpoint(foreign)
    # a stage directory without the stage-1 weights it refers to, or without its sheet file
    run = tmp_path / "copy"
    shutil.copytree(stage_dir(base_run, 2), stage_dir(run, 2))
    with pytest.raises(DamagedFileError, match="model weights are in .*stage1_pretrain/checkpoint.pt, which is missing"):
        load_checkpoint(checkpoint_path(run, 2))
    shutil.copytree(stage_dir(base_run, 1), stage_dir(run, 1))
    load_checkpoint(checkpoint_path(run, 2))
    next(stage_dir(run, 2).glob("sheets/*.pt")).unlink()
    with pytest.raises(DamagedFileError, match="sheet file"):
        load_checkpoint(checkpoint_path(run, 2))


def test_resume_with_a_damaged_newest_checkpoint(base_run, tmp_path, capsys):
    run = _copy(base_run, tmp_path)
    ck4 = checkpoint_path(run, 4)
    cut = ck4.read_bytes()[: ck4.stat().st_size // 2]
    ck4.write_bytes(cut)
    with pytest.raises(RunDirError) as err:
        train(_cfg(run), resume=True, stop_after=4)
    message = str(err.value)
    assert str(ck4) in message and str(checkpoint_path(run, 3)) in message and "--fallback" in message
    assert cli.main(["train", "--config", "smoke", f"run_dir={run}", "--resume", "--stop-after", "4"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    summary = train(_cfg(run), resume=True, fallback=True, stop_after=4)
    assert list(summary["timings_s"]) == ["stage4_freeze"]
    assert load_checkpoint(ck4)["complete"]
    kept = run / "previous" / "1" / "stage4_freeze" / "checkpoint.pt"
    assert kept.read_bytes() == cut  # the damaged file is kept, not deleted
    event = _events(run)[-1]
    assert event["event"] == "fallback" and event["damaged"][0][0] == str(ck4)


def test_resume_needs_something_to_resume(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        train(_cfg(tmp_path / "missing"), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no checkpoint"):
        train(_cfg(tmp_path / "empty"), resume=True)
    assert not (tmp_path / "missing").exists() and not any((tmp_path / "empty").iterdir())


# ---------------------------------------------------------------------------- 6. reruns never destroy results
def test_reruns_move_earlier_results_aside(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    csv1 = (stage_dir(run, 1) / "metrics.csv").read_text()
    train(_cfg(run, "swap.steps=500"), from_stage=3, stop_after=4)
    train(_cfg(run, "swap.steps=800"), from_stage=2, stop_after=4)
    train(_cfg(run, "pretrain.steps=1"), from_stage=1, stop_after=1)
    prev = run / "previous"
    # the moved stages, the run's config and summary, and (a hard link to) the stage-1 weights they refer to
    assert sorted(p.name for p in (prev / "1").iterdir()) == ["config.yaml", "stage1_pretrain", "stage3_swap",
                                                              "stage4_freeze", "summary.json"]
    assert [p.name for p in (prev / "1" / "stage1_pretrain").iterdir()] == ["checkpoint.pt"]
    assert {"stage2_retinotopic", "stage3_swap", "stage4_freeze"} <= {p.name for p in (prev / "2").iterdir()}
    assert (prev / "3" / "stage1_pretrain" / "metrics.csv").read_text() == csv1
    assert any((prev / "3" / "stage1_pretrain" / "tensorboard").iterdir())
    # every moved checkpoint still loads, stage 2-4 ones with the stage-1 weights they were made from
    w_old = load_checkpoint(prev / "3" / "stage1_pretrain" / "checkpoint.pt")["model"]
    for ck in prev.glob("*/stage*/checkpoint.pt"):
        loaded = load_checkpoint(ck)
        if loaded["stage"] in (2, 3, 4):
            k = "encoder_q.layer3.1.conv1.0.weight"
            assert torch.equal(loaded["model"][k], w_old[k]), ck
    assert load_checkpoint(checkpoint_path(run, 1))["step"] == 1
    summary = json.loads((run / "summary.json").read_text())
    reruns = [e for e in summary["lineage"] if e["event"] == "rerun"]
    assert [e["moved_aside"]["previous"] for e in reruns] == ["previous/1", "previous/2", "previous/3"]
    assert _changes(reruns[0]) == {"swap.steps": [2000, 500]}


def test_second_writer_is_refused(base_run, tmp_path):
    """Two processes on one run dir: the second stops at once with an error naming the first."""
    run = _copy(base_run, tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tdann_fast.cli", "train", "--config", "smoke", f"run_dir={run}", "--resume",
           "finetune.steps=200"]
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (stage_dir(run, 5) / "metrics.csv").exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the first run did not start stage 5"
            time.sleep(0.1)
        second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        line = second.stderr.strip().splitlines()
        assert len(line) == 1 and "in use by another tdann-fast run" in line[0] and f"pid {first.pid}" in line[0]
    finally:
        first.kill()
        first.wait()
    rows = _rows(run, 5)
    assert len({r["step"] for r in rows}) == len(rows)  # no step logged twice


# --------------------------------------------------------------------------------------- 7. video faults are seen
def test_video_faults_in_dataloader_workers_reach_summary_json(tmp_path, rng, capsys):
    """A folder with a truncated video, read by a DataLoader worker: the faults are counted in summary.json (and
    kept in the checkpoint, so a resume keeps the count), and the run prints their table."""
    from _videos import truncate_after, write_video

    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a", "b", "c"):
        write_video(root / f"{name}.avi", 12, rng)
    write_video(root / "cut.avi", 12, rng)
    truncate_after(root / "cut.avi", 3)  # claims 12 frames, 3 decode: every 4-frame clip reaches past the end
    (root / "junk.mp4").write_bytes(b"not a video")
    run = tmp_path / "run"
    code = cli.main(["train", "--config", "smoke", f"run_dir={run}", "data.source=folder", f"data.root={root}",
                     "data.num_workers=1", "data.load_size=40", "pretrain.steps=2", "--stop-after", "1"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    faults = summary["video_faults"]
    assert faults["counts"].get("truncated", 0) >= 1, faults
    reasons = faults["seen_in_this_run"]["reasons"]
    assert any(r["kind"] == "truncated" and r["examples"] == ["cut.avi"] for r in reasons), reasons
    assert faults["skipped_when_indexed"]["by_kind"] == {"skipped": 1} and summary["skipped_videos"] == 1
    assert load_checkpoint(checkpoint_path(run, 1))["video_faults"][0]["truncated"] == faults["counts"]["truncated"]
    assert "video faults seen while reading" in capsys.readouterr().out
