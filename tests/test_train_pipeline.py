"""The six-stage pipeline on the smoke config: all stages, frozen positions, atomic checkpoints, kill + resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _runs import kill_once_exists
from tdann_fast.errors import RunDirError
from tdann_fast.train import STAGES, latest_checkpoint, load_checkpoint, load_for_analysis, stage_dir
from tdann_fast.train.checkpoint import atomic_save
from tdann_fast.train.config import load_config
from tdann_fast.train.trainer import positions_digest, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    cfg = load_config("smoke", [f"run_dir={run_dir}"])
    summary = train(cfg)
    return run_dir, summary


def test_all_six_stages(smoke_run):
    run_dir, summary = smoke_run
    for stage, name in STAGES.items():
        ckpt = load_checkpoint(stage_dir(run_dir, stage) / "checkpoint.pt")
        assert ckpt["stage"] == stage and ckpt["complete"], name
        if stage >= 2:
            assert (stage_dir(run_dir, stage) / "sheets").is_dir()
    for stage in (1, 5, 6):
        csv = (stage_dir(run_dir, stage) / "metrics.csv").read_text().splitlines()
        assert len(csv) >= 3 and "clips_per_s" in csv[0] and "lr" in csv[0]
        if stage >= 5:
            assert "loss_spatial/layer3.1" in csv[0]
        assert any((stage_dir(run_dir, stage) / "tensorboard").iterdir())
    assert latest_checkpoint(run_dir) == stage_dir(run_dir, 6) / "checkpoint.pt"
    assert set(summary["timings_s"]) == {f"stage{s}_{n}" for s, n in STAGES.items()}
    assert not list(run_dir.glob("stage*/.*.tmp"))
    stats = json.loads((stage_dir(run_dir, 3) / "swap_stats.json").read_text())
    ck3 = load_checkpoint(stage_dir(run_dir, 3) / "checkpoint.pt")
    assert set(stats["layers"]) == set(ck3["sheets"])
    # the probe set is training clips by default, recorded in swap_stats.json and the stage-3 checkpoint
    assert stats["probe"] == ck3["extra"]["probe"]
    assert stats["probe"]["probe"] == "clips" and stats["probe"]["num_gratings"] == 0


def test_positions_swapped_then_frozen(smoke_run):
    run_dir, _ = smoke_run
    sheets = {s: load_checkpoint(stage_dir(run_dir, s) / "checkpoint.pt")["sheets"] for s in (2, 3, 4, 5, 6)}
    for name in sheets[2]:
        p2, p3 = sheets[2][name]["positions"], sheets[3][name]["positions"]
        # stage 3 permutes the retinotopic positions
        assert torch.equal(torch.sort(p2.view(-1))[0], torch.sort(p3.view(-1))[0])
        for s in (5, 6):
            assert torch.equal(sheets[s][name]["positions"], sheets[4][name]["positions"]), (name, s)
            assert torch.equal(sheets[s][name]["neighbourhoods"], sheets[4][name]["neighbourhoods"])
    assert any(not torch.equal(sheets[2][n]["positions"], sheets[3][n]["positions"]) for n in sheets[2])
    ck6 = load_checkpoint(stage_dir(run_dir, 6) / "checkpoint.pt")
    assert ck6["frozen"] and ck6["spatial_loss"] is not None
    # model weights changed in stage 5/6 (the spatial loss trains), but stage 2-4 share the stage-1 weights
    ck1 = load_checkpoint(stage_dir(run_dir, 1) / "checkpoint.pt")
    ck4 = load_checkpoint(stage_dir(run_dir, 4) / "checkpoint.pt")
    k = "encoder_q.layer3.1.conv1.0.weight"
    assert torch.equal(ck1["model"][k], ck4["model"][k]) and not torch.equal(ck1["model"][k], ck6["model"][k])


def test_load_for_analysis(smoke_run):
    run_dir, _ = smoke_run
    b = load_for_analysis(run_dir)
    assert b.stage == 6 and b.frames == 4 and b.size == 32 and len(b.mean) == 3 and not b.encoder.training
    assert "layer3.1" in b.sheets and b.sheets["layer3.1"].num_units == 256 * 4 * 4
    out = b.encoder(torch.randn(3, 3, b.frames, b.size, b.size))
    assert out.shape == (3, 512)



def test_rerun_last_stage_from_previous(smoke_run):
    """from_stage=6 restarts stage 6 from the completed stage-5 checkpoint; frozen positions stay."""
    run_dir, _ = smoke_run
    before = load_checkpoint(stage_dir(run_dir, 6) / "checkpoint.pt")
    cfg = load_config("smoke", [f"run_dir={run_dir}", "full.steps=1"])
    summary = train(cfg, from_stage=6)
    assert list(summary["timings_s"]) == ["stage6_full"]
    after = load_checkpoint(stage_dir(run_dir, 6) / "checkpoint.pt")
    assert after["complete"] and after["step"] == 1
    assert after["positions_sha1"] == before["positions_sha1"]
    # the replaced stage is kept whole under previous/1 and still loads
    old = run_dir / "previous" / "1" / "stage6_full"
    assert load_checkpoint(old / "checkpoint.pt")["step"] == before["step"]
    assert (old / "metrics.csv").is_file() and any((old / "tensorboard").iterdir())
    with pytest.raises(RunDirError, match="resume"):
        train(cfg)  # an existing run is never overwritten silently


def test_atomic_save_never_leaves_partial_file(tmp_path):
    path = tmp_path / "stage1_pretrain" / "checkpoint.pt"
    atomic_save({"a": torch.zeros(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": torch.ones(3), "b": Boom()}, path)
    assert torch.load(path, weights_only=True)["a"].sum() == 0  # the old checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left


def _cli(run_dir, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tdann_fast.cli", "train", "--config", "smoke", f"run_dir={run_dir}",
           "checkpoint_every=1", "finetune.steps=4", *extra]
    return cmd, env


def test_resume_after_sigkill(tmp_path, smoke_run):
    run_dir = tmp_path / "run"
    cmd, env = _cli(run_dir)
    kill_once_exists(cmd, env, stage_dir(run_dir, 5) / "checkpoint.pt", REPO)
    # every checkpoint that exists is complete and loadable (temporaries may remain; they are never read)
    for p in run_dir.glob("stage*/checkpoint.pt"):
        load_checkpoint(p)
    last = latest_checkpoint(run_dir)
    ck = load_checkpoint(last)
    expected = {"stage": ck["stage"], "step": ck["step"], "queue_ptr": ck["queue_ptr"],
                "positions_sha1": ck["positions_sha1"], "complete": ck["complete"]}
    cmd, env = _cli(run_dir, "--resume")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "lineage.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "resume"]
    assert {k: events[1][k] for k in expected} == expected
    assert not list(run_dir.glob("stage*/.*.tmp"))
    final = load_checkpoint(stage_dir(run_dir, 6) / "checkpoint.pt")
    assert final["complete"] and final["step"] == 2
    assert final["positions_sha1"] == ck["positions_sha1"] or ck["stage"] < 4
    # the finetune stage ran all its steps exactly once (rows after the checkpoint were dropped on resume)
    rows = (stage_dir(run_dir, 5) / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]


@pytest.mark.gpu
def test_smoke_on_cuda_bf16(tmp_path):
    """The GPU path: bf16 autocast, augmentation on the device, all six stages."""
    cfg = load_config("smoke", [f"run_dir={tmp_path / 'run'}", "device=cuda", "precision=bf16"])
    summary = train(cfg)
    ck = load_checkpoint(stage_dir(tmp_path / "run", 6) / "checkpoint.pt")
    assert ck["complete"] and summary["steps_per_s"]
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def _metrics(run_dir, stage):
    import csv

    with open(stage_dir(run_dir, stage) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: float(v) for k, v in r.items() if k != "clips_per_s"} for r in rows]  # timing differs run to run


def test_kill_at_random_moments_then_resume_matches_uninterrupted(tmp_path):
    """SIGKILL at 5 random moments (each followed by a restart: --resume once a checkpoint exists), then a final
    --resume: every stage's metrics.csv equals that of an uninterrupted run."""
    import random

    overrides = ["checkpoint_every=1", "pretrain.steps=3", "finetune.steps=3", "full.steps=2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def cmd(run_dir, *extra):
        return [sys.executable, "-m", "tdann_fast.cli", "train", "--config", "smoke", f"run_dir={run_dir}",
                *overrides, *extra]

    ref = tmp_path / "uninterrupted"
    t0 = time.time()
    res = subprocess.run(cmd(ref), env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    duration = time.time() - t0
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"kill moments seed = {seed}; uninterrupted run {duration:.1f} s")
    draw = random.Random(seed)
    moments = [draw.uniform(2.0, 0.6 * duration) for _ in range(5)]  # each restart goes on from its checkpoint
    run = tmp_path / "killed"
    for delay in moments:
        extra = ["--resume"] if latest_checkpoint(run) is not None else []
        proc = subprocess.Popen(cmd(run, *extra), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        proc.stderr.close()
        newest = latest_checkpoint(run)
        step = load_checkpoint(newest)["step"] if newest is not None else None
        print(f"killed after {delay:.1f} s; newest checkpoint: {newest and newest.parent.name} step {step}")
    extra = ["--resume"] if latest_checkpoint(run) is not None else []
    res = subprocess.run(cmd(run, *extra), env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in (1, 5, 6):
        assert _metrics(run, stage) == _metrics(ref, stage), stage
    final = load_checkpoint(stage_dir(run, 6) / "checkpoint.pt")
    assert final["complete"] and final["positions_sha1"] == load_checkpoint(ref)["positions_sha1"]


def test_checkpoints_are_compact_and_readable_by_others(smoke_run):
    """Each thing stored once: stages 2-4 refer to the stage-1 weights, sheet tables live in the stage's sheet files
    (hard links where unchanged), finished stages keep no optimiser state; files get the user's umask."""
    run_dir, _ = smoke_run
    mask = os.umask(0o022)
    os.umask(mask)
    inodes = {}
    for stage in range(1, 7):
        path = stage_dir(run_dir, stage) / "checkpoint.pt"
        raw = torch.load(path, weights_only=True)
        assert raw["optimizer"] is None and raw["scheduler"] is None  # finished stages
        if stage in (2, 3, 4):
            assert raw["model"] is None and raw["model_ref"] == "../stage1_pretrain/checkpoint.pt"
            assert path.stat().st_size < 1_000_000
        if raw["spatial_loss"] is not None:
            assert not [k for k in raw["spatial_loss"] if k.endswith(("positions", "neighbourhoods"))]
        if stage >= 2:
            assert all(isinstance(v["file"], str) for v in raw["sheets"].values())
            for f in (stage_dir(run_dir, stage) / "sheets").glob("*.pt"):
                inodes.setdefault(f.name, set()).add(f.stat().st_ino)
        for f in [path, *stage_dir(run_dir, stage).glob("sheets/*.pt")]:
            assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    # retinotopic sheets (stage 2) and swapped sheets (stage 3, shared by stages 4-6): two copies of each table
    assert all(len(ids) == 2 for ids in inodes.values()), inodes
    assert (run_dir / "config.yaml").stat().st_mode & 0o777 == 0o666 & ~mask
