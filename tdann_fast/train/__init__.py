"""Training: the six-stage TDANN schedule for two tasks (MoCo v2 on video with r3d_18; SimCLR on images with
resnet18), torchrun/DDP, atomic checkpoints.

Names are imported lazily: reading and checking a config (``tdann_fast.train.config``) does not import torch.
"""
from tdann_fast._lazy import lazy_exports

_LAZY = {
    "STAGES": "checkpoint", "AnalysisBundle": "checkpoint", "checkpoint_path": "checkpoint",
    "latest_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "load_for_analysis": "checkpoint",
    "stage_dir": "checkpoint",
    "TrainConfig": "config", "config_from_dict": "config", "config_to_dict": "config", "configs_dir": "config",
    "load_config": "config", "parse_overrides": "config", "resolve_config_path": "config",
    "Trainer": "trainer", "train": "trainer", "RunState": "state", "TASKS": "tasks", "make_task": "tasks",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
