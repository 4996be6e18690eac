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
    assert set(stats) == set(load_checkpoint(stage_dir(run_dir, 3) / "checkpoint.pt")["sheets"])


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
    assert (stage_dir(run_dir, 6) / "checkpoint.superseded.pt").is_file()
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg)  # an existing run is never overwritten silently


def test_atomic_save_never_leaves_partial_file(tmp_path):
    path = tmp_path / "stage1_pretrain" / "checkpoint.pt"
    atomic_save({"a": torch.zeros(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": torch.ones(3), "b": Boom()}, path)
    assert torch.load(path)["a"].sum() == 0  # the old checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary left


def _cli(run_dir, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tdann_fast.cli", "train", "--config", "smoke", f"run_dir={run_dir}",
           "checkpoint_every=1", "finetune.steps=4", *extra]
    return cmd, env


def test_resume_after_sigkill(tmp_path, smoke_run):
    run_dir = tmp_path / "run"
    cmd, env = _cli(run_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    target = stage_dir(run_dir, 5) / "checkpoint.pt"
    deadline = time.time() + 240
    try:
        while not target.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail("no stage-5 checkpoint within 240 s")
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
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
    first = json.loads((run_dir / "resume_log.jsonl").read_text().splitlines()[0])
    assert {k: first[k] for k in expected} == expected
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
