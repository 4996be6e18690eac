"""The stage-3 probe set (training clips unless asked, recorded in the checkpoints), the swap's layer selection,
the objectives of stages 5-6 (moco.weight: joint, contrastive only, spatial only) and finetune_seed, on the smoke
config. Every fine-tuning starts from one stage-4 checkpoint (``Trainer(from_stage=5, source=...)``)."""
import csv
import json

import pytest
import torch

from tdann_fast.errors import ConfigError
from tdann_fast.train import load_checkpoint, load_for_analysis
from tdann_fast.train.checkpoint import checkpoint_path, stage_dir
from tdann_fast.train.config import check_changes, config_changes, key_rule, load_config
from tdann_fast.train.trainer import Trainer, train

FAST = ["finetune.steps=2", "full.steps=1", "checkpoint_every=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Stages 1-4 of the smoke config (the default probe: training clips)."""
    run_dir = tmp_path_factory.mktemp("probe") / "base"
    train(load_config("smoke", [f"run_dir={run_dir}"]), stop_after=4)
    return run_dir


@pytest.fixture(scope="module")
def derived(base, tmp_path_factory):
    """Stages 5-6 from the base's stage-4 checkpoint, one run per set of overrides (cached)."""
    root = tmp_path_factory.mktemp("derived")
    made = {}

    def make(*overrides):
        if overrides not in made:
            run_dir = root / f"run{len(made)}"
            cfg = load_config("smoke", [f"run_dir={run_dir}", *FAST, *overrides])
            Trainer(cfg, from_stage=5, source=checkpoint_path(base, 4)).run()
            made[overrides] = run_dir
        return made[overrides]
    return make


def _rows(run_dir, stage):
    with open(stage_dir(run_dir, stage) / "metrics.csv") as fh:
        return [{k: float(v) for k, v in r.items() if k != "clips_per_s"} for r in csv.DictReader(fh)]


def _swap_only(base, out, *overrides):
    """Stage 3 alone into a new run directory, from the base's stage-2 checkpoint (``tdann-fast swap --out``)."""
    cfg = load_config("smoke", [f"run_dir={out}", *overrides])
    Trainer(cfg, from_stage=3, stop_after=3, source=checkpoint_path(base, 2)).run()
    return load_checkpoint(checkpoint_path(out, 3)), json.loads((stage_dir(out, 3) / "swap_stats.json").read_text())


# ------------------------------------------------------------------------------------------------- the probe set
def test_default_probe_is_training_clips_and_recorded(base, derived):
    ck3 = load_checkpoint(checkpoint_path(base, 3))
    probe = ck3["extra"]["probe"]
    assert probe["probe"] == "clips" and probe["num_clips"] == 8 and probe["num_gratings"] == 0
    assert probe["grating_spatial_freqs"] is None and probe["frames"] == 4 and probe["size"] == 32
    assert probe["layers"] == list(ck3["sheets"])
    stats = json.loads((stage_dir(base, 3) / "swap_stats.json").read_text())
    assert stats["probe"] == probe and set(stats["layers"]) == set(ck3["sheets"])
    # the bundle exposes it: None before the swap, carried forward in the checkpoints after it
    assert load_for_analysis(checkpoint_path(base, 2)).probe is None
    assert load_for_analysis(checkpoint_path(base, 4)).probe == probe
    run = derived("finetune_seed=0")  # another run directory, started from the stage-4 checkpoint
    assert load_for_analysis(run).probe == probe
    assert load_checkpoint(checkpoint_path(run, 6))["extra"]["probe"] == probe


def test_gratings_only_when_asked(base, tmp_path):
    ck_g, stats_g = _swap_only(base, tmp_path / "gratings", "swap.probe=gratings")
    probe = ck_g["extra"]["probe"]
    # smoke: 8 directions x [3.2] cycles/image x [0.5] cycles/frame x 1 phase
    assert probe["probe"] == "gratings" and probe["num_clips"] == 0 and probe["num_gratings"] == 8
    assert probe["grating_spatial_freqs"] == [3.2] and probe["grating_temporal_freqs"] == [0.5]
    assert stats_g["probe"] == probe
    ck_b, _ = _swap_only(base, tmp_path / "both", "swap.probe=both")
    assert (ck_b["extra"]["probe"]["num_clips"], ck_b["extra"]["probe"]["num_gratings"]) == (8, 8)
    # another probe set, other positions (same seeds, same network)
    ck_c = load_checkpoint(checkpoint_path(base, 3))
    assert ck_g["positions_sha1"] != ck_c["positions_sha1"] != ck_b["positions_sha1"]


def test_swap_layers_and_steps_per_layer(base, tmp_path):
    ck, stats = _swap_only(base, tmp_path / "mt", "swap.layers=[layer3.1]", "swap.steps_per_layer={layer3.1: 3000}")
    assert list(stats["layers"]) == ["layer3.1"] and stats["layers"]["layer3.1"]["steps"] == 3000
    assert stats["layers"]["layer3.1"]["trials"] > 0 and ck["extra"]["probe"]["layers"] == ["layer3.1"]
    retinotopic = load_checkpoint(checkpoint_path(base, 2))["sheets"]
    for name, sheet in ck["sheets"].items():
        same = torch.equal(sheet["positions"], retinotopic[name]["positions"])
        assert same == (name != "layer3.1"), name
    # a layer without steps is not swapped; no swapped layer: no probe set shown
    _, stats = _swap_only(base, tmp_path / "none", "swap.steps_per_layer={layer1.0: 0, layer3.1: 0}",
                          "swap.steps=1000", "swap.layers=[layer1.0, layer3.1]")
    assert stats["layers"] == {} and stats["probe"]["num_clips"] == 0 and stats["probe"]["layers"] == []


# ------------------------------------------------------------------------------------------------- objectives
def test_spatial_only_loss_is_the_spatial_loss(derived):
    spatial = derived("moco.weight=0", "finetune_seed=0")
    joint = derived("finetune_seed=0")
    for stage in (5, 6):
        for row in _rows(spatial, stage):
            assert row["loss"] == row["loss_spatial"] and row["loss_moco"] != row["loss"]  # logged, not added
        for row in _rows(joint, stage):
            assert row["loss"] == pytest.approx(row["loss_moco"] + row["loss_spatial"], rel=1e-6)
    # the MoCo forward ran on the same data, augmentation and weights at the first step
    assert _rows(spatial, 5)[0]["loss_moco"] == _rows(joint, 5)[0]["loss_moco"]
    ck = load_checkpoint(checkpoint_path(spatial, 6))
    assert ck["moco_weight"] == 0.0 and ck["config"]["moco"]["weight"] == 0.0 and ck["alpha"] == 0.5
    assert load_for_analysis(spatial).moco_weight == 0.0 and load_for_analysis(joint).moco_weight == 1.0


def test_finetune_seed_sets_stage5_data_order(base, derived, tmp_path):
    a, b, none = derived("finetune_seed=0"), derived("finetune_seed=1"), derived()
    assert _rows(a, 5)[0]["loss_moco"] != _rows(b, 5)[0]["loss_moco"]
    # with a seed, stage 5 starts a fresh epoch of its own data order; without one it goes on with stage 1's
    assert load_checkpoint(checkpoint_path(a, 5))["data_state"]["epoch"] == 0
    assert load_checkpoint(checkpoint_path(a, 5))["data_state"]["batches"] == 2
    assert (load_checkpoint(checkpoint_path(none, 5))["data_state"]
            != load_checkpoint(checkpoint_path(a, 5))["data_state"])
    # the shared stages do not depend on it: stage 1 with a finetune_seed is the base's stage 1
    other = tmp_path / "seeded"
    train(load_config("smoke", [f"run_dir={other}", "finetune_seed=5"]), stop_after=1)
    assert _rows(other, 1) == _rows(base, 1)


def test_finetune_seed_resume_inside_stage5_matches(base, derived, tmp_path, monkeypatch):
    """A crash inside stage 5 of a seeded run, then --resume: the same metrics as the uninterrupted run."""
    reference = derived("finetune_seed=1")
    run_dir = tmp_path / "crashed"
    cfg = load_config("smoke", [f"run_dir={run_dir}", *FAST, "finetune_seed=1"])
    from tdann_fast.train import checkpoint as ckpt_io

    original = ckpt_io.save_stage

    def crash_after_step1(run, stage, step, complete, *args, **kwargs):
        original(run, stage, step, complete, *args, **kwargs)
        if stage == 5 and step == 1:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(ckpt_io, "save_stage", crash_after_step1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, from_stage=5, source=checkpoint_path(base, 4)).run()
    monkeypatch.setattr(ckpt_io, "save_stage", original)
    assert load_checkpoint(checkpoint_path(run_dir, 5))["step"] == 1
    Trainer(cfg, resume=True).run()
    for stage in (5, 6):
        assert _rows(run_dir, stage) == _rows(reference, stage), stage


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, key", [
    (["moco.weight=-1"], "moco.weight"),
    (["moco.weight=0", "spatial.alpha=0"], "spatial.alpha"),
    (["moco.weight=0", "spatial.layers=[layer3.1]", "spatial.alpha={layer3.1: 0}"], "moco.weight"),
    (["finetune_seed=-1"], "finetune_seed"),
    (["finetune_seed=abc"], "finetune_seed"),
    (["swap.probe=images"], "swap.probe"),
    (["swap.probe_clips=2"], "swap.probe_clips"),
    (["swap.probe=gratings", "swap.grating_directions=5"], "swap.grating_directions"),
    (["swap.grating_temporal_freqs=[0]"], "swap.grating_temporal_freqs"),
    (["swap.probe=gratings", "swap.grating_directions=4", "swap.grating_spatial_freqs=[1]",
      "swap.grating_temporal_freqs=[0.25]", "swap.grating_phases=1", "swap.probe_clips=0"], None),
    (["swap.layers=[layer9.9]"], "swap.layers"),
    (["spatial.layers=[layer3.1]", "analysis.layer=layer3.1", "swap.layers=[layer1.0]"], "swap.layers"),
    (["swap.steps_per_layer={layer3.1: -5}"], "swap.steps_per_layer.layer3.1"),
    (["swap.steps_per_layer={layer3.x: 5}"], "swap.steps_per_layer.layer3.x"),
    (["swap.layers=[layer3.1]", "swap.steps_per_layer={layer1.0: 5}"], "swap.steps_per_layer.layer1.0"),
])
def test_bad_values_name_the_key(overrides, key):
    if key is None:  # 4 gratings and no clips: fine (the probe has >= 3 stimuli)
        assert load_config("smoke", overrides).swap.probe == "gratings"
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        load_config("smoke", overrides)
    assert "\n" not in str(info.value)
    if "moco.weight=0" in overrides:
        assert "moco.weight" in str(info.value) and "spatial.alpha" in str(info.value)


def test_rerun_rules_of_the_new_keys(base):
    assert key_rule("moco.weight") == ("fixed", 5) and key_rule("finetune_seed") == ("fixed", 5)
    assert key_rule("moco.dim") == ("fixed", 1) and key_rule("swap.probe") == ("fixed", 3)
    assert key_rule("swap.steps_per_layer") == ("fixed", 3) and key_rule("swap.layers") == ("fixed", 3)
    recorded = load_checkpoint(checkpoint_path(base, 4))["config"]
    new = load_config("smoke", [f"run_dir={base}", "moco.weight=0", "finetune_seed=3"])
    changes = config_changes(recorded, new)
    assert {"moco.weight", "finetune_seed"} <= set(changes)
    check_changes(changes, 4, "--from-stage 5")  # stages 1-4 kept: allowed
    with pytest.raises(ConfigError, match="finetune_seed.*--from-stage 5"):
        check_changes(changes, 5, "--from-stage 6")
    probe_change = config_changes(recorded, load_config("smoke", [f"run_dir={base}", "swap.probe=both"]))
    with pytest.raises(ConfigError, match="swap.probe"):
        check_changes(probe_change, 4, "--from-stage 5")
