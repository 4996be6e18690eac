"""Training: MoCo v2 on video with r3d_18, the six-stage TDANN schedule, torchrun/DDP, atomic checkpoints."""
from .checkpoint import (STAGES, AnalysisBundle, atomic_save, checkpoint_path, latest_checkpoint, load_checkpoint,
                         load_for_analysis, stage_dir)
from .config import (TrainConfig, config_from_dict, config_to_dict, configs_dir, load_config, parse_overrides,
                     resolve_config_path)

__all__ = ["STAGES", "AnalysisBundle", "atomic_save", "checkpoint_path", "latest_checkpoint", "load_checkpoint",
           "load_for_analysis", "stage_dir", "TrainConfig", "config_from_dict", "config_to_dict", "configs_dir",
           "load_config", "parse_overrides", "resolve_config_path", "Trainer", "train"]


def __getattr__(name):
    if name in ("Trainer", "train"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'tdann_fast.train' has no attribute {name!r}")
