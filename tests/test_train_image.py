"""The image task (ventral TDANN: resnet18 + SimCLR) through the six stages, resume after SIGKILL, its config rules,
and the video task's results unchanged by the trainer's split into task, state, loop, stages and checkpoint parts."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _runs import kill_once_exists
from tdann_fast.errors import ConfigError
from tdann_fast.train import latest_checkpoint, load_checkpoint, load_for_analysis, stage_dir
from tdann_fast.train.config import load_config
from tdann_fast.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
VIDEO_BASELINE = Path(__file__).parent / "data" / "video_smoke_seed0.json"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("v1_smoke") / "run"
    summary = train(load_config("v1_smoke", [f"run_dir={run_dir}"]))
    return run_dir, summary


def _rows(run_dir, stage):
    with open(stage_dir(run_dir, stage) / "metrics.csv") as fh:
        return [{k: float(v) for k, v in r.items() if not k.endswith("_per_s")} for r in csv.DictReader(fh)]


def test_image_smoke_all_six_stages(image_run):
    run_dir, summary = image_run
    assert summary["task"] == "image_simclr"
    assert set(summary["timings_s"]) == {"stage1_pretrain", "stage2_retinotopic", "stage3_swap", "stage4_freeze",
                                         "stage5_finetune", "stage6_full"}
    for stage in range(1, 7):
        ck = load_checkpoint(stage_dir(run_dir, stage) / "checkpoint.pt")
        assert ck["complete"] and ck["task"] == "image_simclr" and ck["config"]["task"] == "image_simclr"
        assert "queue_ptr" not in ck  # a MoCo-only value
    rows1, rows6 = _rows(run_dir, 1), _rows(run_dir, 6)
    assert [r["step"] for r in rows1] == [1, 2] and all("loss_simclr" in r and "acc1" in r for r in rows1)
    assert all(r["loss"] == pytest.approx(r["loss_simclr"]) for r in rows1)  # stage 1: contrastive only
    assert all(r["loss_spatial"] > 0 for r in rows6)
    assert rows6[0]["loss"] == pytest.approx(rows6[0]["loss_simclr"] + rows6[0]["loss_spatial"], rel=1e-5)
    # the probe set is training images (the image task's default), recorded in the checkpoint
    probe = load_checkpoint(stage_dir(run_dir, 3) / "checkpoint.pt")["extra"]["probe"]
    assert probe["probe"] == "images" and probe["num_images"] == 8 and probe["num_gratings"] == 0
    ck6 = load_checkpoint(stage_dir(run_dir, 6) / "checkpoint.pt")
    assert ck6["extra"]["probe"] == probe and ck6["frozen"]
    assert ck6["positions_sha1"] == load_checkpoint(stage_dir(run_dir, 4) / "checkpoint.pt")["positions_sha1"]
    swapped = json.loads((stage_dir(run_dir, 3) / "swap_stats.json").read_text())["layers"]
    assert set(swapped) == {f"layer{i}.{j}" for i in range(1, 5) for j in range(2)}
    assert all(v["accepted"] > 0 for v in swapped.values())


def test_image_checkpoint_loads_as_resnet18(image_run):
    run_dir, _ = image_run
    bundle = load_for_analysis(run_dir)
    assert bundle.task == "image_simclr" and bundle.arch == "resnet18" and bundle.frames is None
    assert type(bundle.encoder).__name__ == "ResNet" and bundle.size == 32
    assert bundle.mean == pytest.approx((0.485, 0.456, 0.406))
    state = load_checkpoint(run_dir)["model"]
    assert torch.equal(bundle.encoder.conv1.weight, state["encoder.conv1.weight"])
    # the sheets are the resnet18_tdann preset's at the trained sides, for the 32-pixel input
    assert bundle.sheets["layer2.1"].num_units == 128 * 4 * 4
    assert bundle.sheets["layer4.1"].num_units == 512 * 1 * 1
    x = torch.randn(2, 3, 32, 32)
    assert bundle.encoder(x).shape == (2, 512)


def _cli(run_dir, *extra):
    cmd = [sys.executable, "-m", "tdann_fast.cli", "train", "--config", "v1_smoke", f"run_dir={run_dir}",
           "checkpoint_every=1", "finetune.steps=4", *extra]
    return cmd, dict(os.environ, PYTHONUNBUFFERED="1")


def test_image_resume_after_sigkill(tmp_path):
    """SIGKILL once stage 5 has a checkpoint, then --resume: the run ends with the metrics of an uninterrupted
    run, each step logged once."""
    ref = tmp_path / "uninterrupted"
    cmd, env = _cli(ref)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp_path / "run"
    cmd, env = _cli(run_dir)
    kill_once_exists(cmd, env, stage_dir(run_dir, 5) / "checkpoint.pt", REPO)
    killed_at = load_checkpoint(latest_checkpoint(run_dir))
    assert killed_at["stage"] >= 5
    cmd, env = _cli(run_dir, "--resume")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    events = [json.loads(line)["event"] for line in (run_dir / "lineage.jsonl").read_text().splitlines()]
    assert events == ["start", "resume"]
    for stage in (1, 5, 6):
        assert _rows(run_dir, stage) == _rows(ref, stage), stage
    assert [int(r["step"]) for r in _rows(run_dir, 5)] == [1, 2, 3, 4]
    assert load_checkpoint(run_dir)["positions_sha1"] == load_checkpoint(ref)["positions_sha1"]


def test_video_results_unchanged_by_the_split(tmp_path):
    """The smoke run of the video task (seed 0) gives the metrics, swap statistics, positions and weights recorded
    with the trainer before it was split into parts (commit 22f3844, the same 2-core CPU machine and torch)."""
    from tdann_fast.train.trainer import Trainer

    want = json.loads(VIDEO_BASELINE.read_text())
    run_dir = tmp_path / "run"
    Trainer(load_config("smoke", [f"run_dir={run_dir}"])).run()
    for stage in (1, 5, 6):
        with open(stage_dir(run_dir, stage) / "metrics.csv") as fh:
            got = [{k: float(v) for k, v in r.items() if k != "clips_per_s"} for r in csv.DictReader(fh)]
        old = want["metrics"][str(stage)]
        assert [sorted(r) for r in got] == [sorted(r) for r in old], stage
        for g, o in zip(got, old):
            assert g == pytest.approx(o, rel=1e-4, abs=1e-6), stage
    swap = json.loads((stage_dir(run_dir, 3) / "swap_stats.json").read_text())["layers"]
    for layer, old in want["swap"].items():
        assert swap[layer]["accepted"] == old["accepted"], layer
        assert swap[layer]["objective_after"] == pytest.approx(old["objective_after"], rel=1e-4), layer
    ck = load_checkpoint(stage_dir(run_dir, 6) / "checkpoint.pt")
    assert ck["positions_sha1"] == want["positions_sha1"]
    sums = {k: float(v.double().sum()) for k, v in ck["model"].items() if v.is_floating_point()}
    assert sums.keys() == want["weight_sums"].keys()
    for k, v in want["weight_sums"].items():
        assert sums[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k


@pytest.mark.parametrize("config, overrides, words", [
    ("smoke", ["task=image"], "task: got 'image'"),
    ("smoke", ["task=image_simclr"], "data.source: got 'synthetic'; expected 'embedded' or 'folder'"),
    ("v1_smoke", ["swap.probe=clips"], "swap.probe: got 'clips'"),
    ("smoke", ["swap.probe=images"], "swap.probe: got 'images'"),
    ("smoke", ["data.augment.p_blur=0.5"], "data.augment.p_blur: got 0.5"),
    ("smoke", ["spatial.sheet_sizes=trained"], "spatial.sheet_sizes: got 'trained'"),
    ("v1_smoke", ["spatial.sheet_sizes=big"], "spatial.sheet_sizes: got 'big'"),
    ("v1_smoke", ["spatial.sheet_sizes={layer9: 3}"], "spatial.sheet_sizes.layer9"),
    ("v1_smoke", ["simclr.weight=0", "spatial.alpha=0"], "simclr.weight: got 0"),
    ("v1_smoke", ["simclr.temperature=0"], "simclr.temperature: got 0"),
    ("v1_smoke", ["data.augment.blur_sigma_min=3"], "data.augment.blur_sigma_max: got 2.0"),
    ("v1_smoke", ["data.source=folder", "data.root=/nonexistent/x"], "expected an existing folder of images"),
])
def test_task_config_errors(config, overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(config, overrides)
    assert words in str(err.value)


def test_image_task_defaults():
    """A config of the image task that leaves them out gets ImageNet normalisation, layer2.1 (V1) as the analysed
    layer and training images as the probe set; given values win; the video task keeps its defaults."""
    from tdann_fast.train.config import config_from_dict

    cfg = config_from_dict({"task": "image_simclr"})
    assert tuple(cfg.data.mean) == (0.485, 0.456, 0.406) and tuple(cfg.data.std) == (0.229, 0.224, 0.225)
    assert cfg.analysis.layer == "layer2.1" and cfg.swap.probe == "images"
    cfg = config_from_dict({"task": "image_simclr"}, ["data.mean=[0.5,0.5,0.5]", "swap.probe=gratings"])
    assert tuple(cfg.data.mean) == (0.5, 0.5, 0.5) and cfg.swap.probe == "gratings"
    video = config_from_dict({})
    assert video.task == "video_moco" and video.analysis.layer == "layer3.1" and video.swap.probe == "clips"
    assert tuple(video.data.mean) == (0.43216, 0.394666, 0.37645)


def test_task_change_refused_on_resume(image_run, tmp_path):
    """A run keeps its task: resuming it with another task is refused before anything is written."""
    run_dir, _ = image_run
    with pytest.raises(ConfigError, match="task"):
        train(load_config("smoke", [f"run_dir={run_dir}"]), resume=True)


def test_image_folder_without_images_is_a_config_error(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("no image here")
    cfg = load_config("v1_smoke", [f"run_dir={tmp_path / 'run'}", "data.source=folder",
                                   f"data.root={tmp_path / 'imgs'}"])
    with pytest.raises(ConfigError, match="data.root: got .*expected a folder holding readable images"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_analyze_cli_on_trained_image_checkpoint(image_run, tmp_path, capsys):
    """`tdann-fast analyze RUN` on the image smoke run: the family comes from the checkpoint (resnet18, V1 layer
    layer2.1, static gratings), orientation/SF/cardinal metrics beside a random-init network on the same sheet,
    then category patches of layer4.1 on the embedded probe, with their own random-init control."""
    from tdann_fast import cli

    run_dir, _ = image_run
    out = tmp_path / "analysis"
    assert cli.main(["analyze", str(run_dir), "--out", str(out), "--shuffles", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "orientation" and m["layer"] == "layer2.1" and m["arch"] == "resnet18"
    assert m["task"] == "image_simclr" and m["alpha"] == pytest.approx(0.25)
    assert "random init" in m["controls"] and "selective" in m["cardinal_bias"]
    assert len(m["sf_preference"]["spatial_freqs"]) >= 2
    assert (out / "orientation_map.png").is_file() and (out / "sf_preference_map.png").is_file()
    assert "orientation map detected" in "\n".join((out / "report.md").read_text().splitlines()[:3])
    c = json.loads((out / "categories" / "metrics.json").read_text())
    assert c["layer"] == "layer4.1" and set(c["categories"]) == {"faces", "characters", "places", "objects"}
    assert "random init" in c["controls"] and (out / "categories" / "tmaps.png").is_file()
    assert "category patches" in printed and "missing categories: bodies" in printed


def test_image_demo_analyses_every_run_with_one_random_init_control(tmp_path, capsys):
    """`tdann-fast demo` on the image task: V1 and category analyses of the alpha 0.25 and alpha 0 runs; the
    category control of a random-init network on the shared (frozen) sheet is made once and shown beside both."""
    from tdann_fast import cli

    out = tmp_path / "demo"
    assert cli.main(["demo", "--config", "v1_smoke", "analysis.enabled=true", f"run_dir={out}"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "sweep.json").read_text())
    ri = manifest["controls"]["random_init_categories"]
    assert "training_motion" not in manifest["controls"]  # images do not move
    dirs = [Path(r["categories_dir"]) for r in manifest["runs"]]
    assert len(dirs) == 2 and all((d / "metrics.json").is_file() for d in dirs)
    assert [d for d in dirs if (d / "controls").exists()] == [Path(ri).parent.parent]
    for d in dirs:
        shown = json.loads((d / "metrics.json").read_text())["controls"]
        assert shown["random init"]["verdict"] == json.loads((Path(ri) / "metrics.json").read_text())["verdict"]
    assert "== category patches (layer4.1" in printed and "random init (same sheet)" in printed
