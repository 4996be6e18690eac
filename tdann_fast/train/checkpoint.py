"""Atomic, resumable checkpoints and loading a trained encoder for analysis.

Layout of a run directory::

    run_dir/
      config.yaml
      stage1_pretrain/checkpoint.pt      stage2_retinotopic/checkpoint.pt + sheets/    stage3_swap/...
      stage4_freeze/...                  stage5_finetune/...                           stage6_full/...

Every stage directory holds one ``checkpoint.pt`` (overwritten atomically during the stage; ``complete`` is True
once the stage has finished). Stages 2-4 do not change the network, so their checkpoints refer to the stage-1
weights (``model_ref``) instead of copying 250 MB; :func:`load_checkpoint` resolves the reference.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

FORMAT = "tdann_fast.checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"
STAGES = {1: "pretrain", 2: "retinotopic", 3: "swap", 4: "freeze", 5: "finetune", 6: "full"}


def stage_dir(run_dir: str | Path, stage: int) -> Path:
    if stage not in STAGES:
        raise ValueError(f"stage: expected 1..6, got {stage!r}")
    return Path(run_dir) / f"stage{stage}_{STAGES[stage]}"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``: a reader sees either
    the old file or the complete new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        try:  # persist the rename itself
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def remove_stale_temporaries(run_dir: str | Path) -> int:
    """Delete temporary files left by a process killed while writing (they are never read)."""
    n = 0
    for p in Path(run_dir).glob("stage*/.*.tmp"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def checkpoint_path(run_dir: str | Path, stage: int) -> Path:
    return stage_dir(run_dir, stage) / CHECKPOINT_NAME


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest stage present in ``run_dir`` (``None`` when there is none)."""
    run_dir = Path(run_dir)
    for stage in sorted(STAGES, reverse=True):
        p = checkpoint_path(run_dir, stage)
        if p.is_file():
            return p
    return None


def _torch_load(path: Path, map_location):
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except TypeError:  # very old torch
        return torch.load(path, map_location=map_location)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint dict, resolving ``model_ref`` (weights kept in an earlier stage's checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"checkpoint: no stage*/{CHECKPOINT_NAME} under {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    ckpt = _torch_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} is not a tdann_fast training checkpoint")
    ref = ckpt.get("model_ref")
    if ckpt.get("model") is None and ref:
        src = (path.parent / ref).resolve()
        other = _torch_load(src, map_location)
        ckpt["model"] = other["model"]
    ckpt["path"] = str(path)
    return ckpt


def sheets_to_state(sheets) -> dict:
    return {name: {"positions": s.positions.detach().cpu().clone(), "side_mm": float(s.side_mm),
                   "neighbourhood_width_mm": float(s.neighbourhood_width_mm),
                   "neighbourhoods": None if s.neighbourhoods is None else s.neighbourhoods.detach().cpu().clone(),
                   "shape": None if s.shape is None else tuple(int(v) for v in s.shape)}
            for name, s in sheets.items()}


def sheets_from_state(state: dict | None) -> dict:
    from tdann_fast.sheet import CorticalSheet

    if not state:
        return {}
    return {name: CorticalSheet(d["positions"], d["side_mm"], d["neighbourhood_width_mm"],
                                neighbourhoods=d.get("neighbourhoods"), shape=d.get("shape"))
            for name, d in state.items()}


@dataclass
class AnalysisBundle:
    """What the analysis needs from a training checkpoint (see :func:`load_for_analysis`)."""

    encoder: nn.Module                     # torchvision r3d_18, trained weights, eval mode, fc = Identity
    sheets: dict                           # layer name -> CorticalSheet (frozen positions when present)
    frames: int                            # clip length
    size: int                              # clip side in pixels
    mean: tuple                            # input normalisation (RGB)
    std: tuple
    stage: Any                             # 1..6 (int)
    alpha: Any                             # float or {layer: float}
    config: dict = field(default_factory=dict)
    step: int = 0
    complete: bool = True
    path: str = ""


def load_for_analysis(path: str | Path, map_location="cpu") -> AnalysisBundle:
    """Load the query encoder and cortical sheets of a checkpoint (file or run directory: latest stage)."""
    from tdann_fast.models.moco import r3d18_backbone

    ckpt = load_checkpoint(path, map_location=map_location)
    encoder = r3d18_backbone()
    prefix = "encoder_q."
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"checkpoint {path}: holds no encoder_q weights")
    encoder.load_state_dict(state)
    encoder.eval()
    cfg = ckpt.get("config", {})
    data = cfg.get("data", {})
    return AnalysisBundle(
        encoder=encoder, sheets=sheets_from_state(ckpt.get("sheets")), frames=int(data.get("frames", 16)),
        size=int(data.get("size", 112)), mean=tuple(data.get("mean", (0.43216, 0.394666, 0.37645))),
        std=tuple(data.get("std", (0.22803, 0.22145, 0.216989))), stage=ckpt.get("stage"),
        alpha=ckpt.get("alpha", 0.0), config=cfg, step=int(ckpt.get("step", 0)),
        complete=bool(ckpt.get("complete", False)), path=ckpt["path"])
