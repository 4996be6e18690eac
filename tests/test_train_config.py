"""Config loading: YAML + key=value overrides, shipped configs, clear errors."""
import pytest

from tdann_fast.errors import ConfigError

from tdann_fast.train.config import TrainConfig, config_from_dict, load_config, parse_overrides, resolve_config_path


@pytest.mark.parametrize("name", ["smoke", "demo", "mt_gpu", "mt_full", "v1_smoke", "v1_demo", "tdann_gpu",
                                  "tdann_full"])
def test_shipped_configs_load(name, tmp_path):
    cfg = load_config(name, [f"data.root={tmp_path}"] if name.endswith("_full") else [])
    assert isinstance(cfg, TrainConfig)
    assert cfg.task == ("image_simclr" if name.startswith(("v1_", "tdann_")) else "video_moco")
    if name == "tdann_full":  # the published models: alpha 0.25 on all eight blocks, sheets at the trained sides
        assert cfg.spatial.alpha == 0.25 and cfg.spatial.layers is None and cfg.spatial.sheet_sizes == "trained"
    assert resolve_config_path(name).suffix == ".yaml"


def test_overrides_nested():
    cfg = load_config("smoke", ["batch_size=6", "data.frames=3", "spatial.alpha={layer3.1: 0.25}",
                                "spatial.layers=[layer3.1]", "analysis.layer=layer3.1",
                                "pretrain.steps=9", "swap.grating_spatial_freqs=[0.1,0.2]"])
    assert cfg.batch_size == 6 and cfg.data.frames == 3 and cfg.pretrain.steps == 9
    assert cfg.spatial.alpha == {"layer3.1": 0.25} and cfg.swap.grating_spatial_freqs == [0.1, 0.2]
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.frams"):
        load_config("smoke", ["data.frams=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["batch_size"])
    with pytest.raises(ValueError, match="batch_size"):
        config_from_dict({"batch_size": 2})
    with pytest.raises(ValueError, match="data.root"):
        config_from_dict({"data": {"source": "folder"}})
    with pytest.raises(ConfigError, match="nope"):
        load_config("nope")


def test_cli_parses_subcommands_and_overrides():
    from tdann_fast.cli import build_parser

    parser = build_parser()
    args, extra = parser.parse_known_args(["swap", "ck.pt", "--out", "d", "swap.steps=5"])
    assert args.checkpoint == "ck.pt" and args.out == "d" and (args.overrides + extra) == ["swap.steps=5"]
    args = parser.parse_args(["train", "--config", "smoke", "--resume", "batch_size=4"])
    assert args.resume and args.overrides == ["batch_size=4"] and args.stop_after == 6
    args = parser.parse_args(["demo"])
    assert args.config == "demo"
