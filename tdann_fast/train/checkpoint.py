"""Checkpoint files: what a stage checkpoint holds, how it is written and read back, and loading for analysis.

Layout of a run directory (see also :mod:`tdann_fast.train.rundir`)::

    run_dir/
      config.yaml  lineage.jsonl  summary.json  .lock
      stage1_pretrain/checkpoint.pt      stage2_retinotopic/checkpoint.pt + sheets/   stage3_swap/ ...
      stage4_freeze/ ...                 stage5_finetune/ ...                         stage6_full/ ...
      previous/1/stage5_finetune/ ...    (stage directories moved aside by a rerun, never deleted)

Every stage directory holds one ``checkpoint.pt``, overwritten atomically during the stage (``complete`` is True
once the stage has finished). A checkpoint holds only tensors, numbers, strings, lists and dicts, and is read
with ``weights_only=True``: opening one never runs code. To stay compact it stores each thing once:

* the network: stages 2-4 do not change it, so their checkpoints name the stage-1 file (``model_ref``) instead
  of copying the weights;
* the cortical sheets (positions and neighbourhood tables): they are the files ``sheets/<layer>.pt`` of the same
  stage directory, listed in ``sheets`` with the SHA-1 of their positions; a stage whose sheets equal the
  previous stage's (frozen positions) hard-links those files instead of writing them again;
* optimiser, scheduler and grad-scaler state: only in the checkpoints of a stage still running (a finished
  stage is never resumed; the next stage starts its own optimiser).

``extra`` holds what a stage adds: stage 3 the swap statistics (``extra["swap"]``) and the probe set it swapped on
(``extra["probe"]``: kind, counts, grating frequencies); every later checkpoint carries ``extra["probe"]`` forward
(a run started from another run's checkpoint too), so a stage-6 checkpoint knows its probe set.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from tdann_fast._io import atomic_save, safe_load
from tdann_fast.errors import DamagedFileError

from tdann_fast.data.normalization import KINETICS_MEAN, KINETICS_STD

__all__ = ["FORMAT", "CHECKPOINT_NAME", "STAGES", "stage_dir", "checkpoint_path", "latest_checkpoint",
           "existing_checkpoints", "load_checkpoint", "save_checkpoint", "sheet_digest", "sheets_from_state",
           "checkpoint_status", "AnalysisBundle", "load_for_analysis", "atomic_save"]

FORMAT = "tdann_fast.checkpoint/2"
CHECKPOINT_NAME = "checkpoint.pt"
SHEETS_DIR = "sheets"
STAGES = {1: "pretrain", 2: "retinotopic", 3: "swap", 4: "freeze", 5: "finetune", 6: "full"}


def stage_dir(run_dir: str | Path, stage: int) -> Path:
    if stage not in STAGES:
        raise ValueError(f"stage: expected 1..6, got {stage!r}")
    return Path(run_dir) / f"stage{stage}_{STAGES[stage]}"


def checkpoint_path(run_dir: str | Path, stage: int) -> Path:
    return stage_dir(run_dir, stage) / CHECKPOINT_NAME


def existing_checkpoints(run_dir: str | Path) -> list:
    """Checkpoint files present in ``run_dir``, newest stage first."""
    return [p for p in (checkpoint_path(run_dir, s) for s in sorted(STAGES, reverse=True)) if p.is_file()]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest stage present in ``run_dir`` (``None`` when there is none)."""
    found = existing_checkpoints(run_dir)
    return found[0] if found else None


def remove_stale_temporaries(run_dir: str | Path) -> int:
    """Delete temporary files left by a process killed while writing (they are never read)."""
    n = 0
    for pattern in ("stage*/.*.tmp", "stage*/sheets/.*.tmp", ".*.tmp"):
        for p in Path(run_dir).glob(pattern):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n


def positions_sha1(sheet) -> str:
    return hashlib.sha1(sheet.positions.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def sheet_digest(sheet) -> str:
    """SHA-1 over a sheet's positions and neighbourhood table: equal digests, equal sheet files."""
    h = hashlib.sha1(sheet.positions.detach().cpu().contiguous().numpy().tobytes())
    h.update(sheet.neighbourhoods.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def sheet_records(sheets) -> dict:
    """What a checkpoint stores about its sheets: the file (relative to the stage directory) and a digest."""
    return {name: {"file": f"{SHEETS_DIR}/{name}.pt", "positions_sha1": positions_sha1(s),
                   "num_units": int(s.num_units), "neighbourhoods": list(s.neighbourhoods.shape)}
            for name, s in sheets.items()}


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write a checkpoint dict atomically (it must hold only tensors, numbers, strings, lists and dicts)."""
    return atomic_save({"format": FORMAT, **ckpt}, path)


def _resolve_sheets(ckpt: dict, path: Path, map_location) -> dict | None:
    from tdann_fast.sheet import CorticalSheet

    records = ckpt.get("sheets")
    if not records:
        return None
    out = {}
    for name, rec in records.items():
        file = path.parent / rec["file"]
        if not file.is_file():
            raise DamagedFileError(path, f"its sheet file {file} is missing (a stage directory is kept whole)")
        sheet = CorticalSheet.load(file, map_location=map_location)
        if positions_sha1(sheet) != rec["positions_sha1"]:
            raise DamagedFileError(file, f"positions differ from those recorded in {path}")
        out[name] = sheet.state()
    return out


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint (file, or run directory: its newest stage) without running code.

    Resolves ``model_ref`` (weights kept in the stage-1 checkpoint) and the sheet files, so ``ckpt["model"]`` is
    a state dict and ``ckpt["sheets"]`` is ``{layer: CorticalSheet.state()}`` (or None before stage 2). A damaged,
    foreign or unsafe file raises :class:`~tdann_fast.errors.DamagedFileError` naming it.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"checkpoint: no stage*/{CHECKPOINT_NAME} under {path}")
        path = found
    ckpt = safe_load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or not str(ckpt.get("format", "")).startswith("tdann_fast.checkpoint/"):
        raise DamagedFileError(path, "not a tdann_fast training checkpoint (no 'format' field of ours)")
    if ckpt["format"] != FORMAT:
        raise DamagedFileError(path, f"checkpoint format {ckpt['format']!r}; this version reads {FORMAT!r}")
    ref = ckpt.get("model_ref")
    if ckpt.get("model") is None and ref:
        src = path.parent / ref
        if not src.is_file():
            raise DamagedFileError(path, f"its model weights are in {src}, which is missing (a run directory is "
                                         f"kept whole)")
        other = safe_load(src, "checkpoint", map_location)
        if not isinstance(other, dict) or other.get("model") is None:
            raise DamagedFileError(src, f"holds no model weights, but {path} refers to it for them")
        ckpt["model"] = other["model"]
    ckpt["sheets"] = _resolve_sheets(ckpt, path, map_location)
    ckpt["path"] = str(path)
    return ckpt


def checkpoint_status(path: str | Path) -> dict | None:
    """``{"stage", "step", "complete"}`` of a checkpoint file, read without copying its tensors (memory-mapped),
    or None when the file does not exist. A damaged file raises :class:`~tdann_fast.errors.DamagedFileError`."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - read again the careful way, which names what is wrong
        ckpt = safe_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DamagedFileError(path, f"not a tdann_fast training checkpoint of format {FORMAT!r}")
    return {"stage": ckpt.get("stage"), "step": int(ckpt.get("step", 0)), "complete": bool(ckpt.get("complete"))}


def probe_record(ckpt: dict) -> dict | None:
    """The stage-3 probe set a loaded checkpoint's positions were swapped on (``extra["probe"]``); for a checkpoint
    written without it, the record of its run's stage-3 checkpoint when there is one; None before stage 3."""
    found = (ckpt.get("extra") or {}).get("probe")
    if found is not None or int(ckpt.get("stage") or 0) < 3 or not ckpt.get("path"):
        return found
    stage3 = checkpoint_path(Path(ckpt["path"]).parent.parent, 3)
    if stage3.is_file() and stage3.resolve() != Path(ckpt["path"]).resolve():
        return (safe_load(stage3, "checkpoint").get("extra") or {}).get("probe")
    return None


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
    alpha: Any                             # float or {layer: float}: the value the stage trained with
    config: dict = field(default_factory=dict)
    step: int = 0
    complete: bool = True
    path: str = ""
    probe: dict | None = None              # the stage-3 probe set of the positions (None before stage 3)
    moco_weight: float = 1.0               # weight of the contrastive loss the stage trained with


def load_for_analysis(path: str | Path, map_location="cpu") -> AnalysisBundle:
    """Load the query encoder and cortical sheets of a checkpoint (file or run directory: latest stage)."""
    from tdann_fast.models.moco import r3d18_backbone

    ckpt = load_checkpoint(path, map_location=map_location)
    encoder = r3d18_backbone()
    prefix = "encoder_q."
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    if not state:
        raise DamagedFileError(ckpt["path"], "holds no encoder_q weights")
    encoder.load_state_dict(state)
    encoder.eval()
    cfg = ckpt.get("config", {})
    data = cfg.get("data", {})
    return AnalysisBundle(
        encoder=encoder, sheets=sheets_from_state(ckpt.get("sheets")), frames=int(data.get("frames", 16)),
        size=int(data.get("size", 112)), mean=tuple(data.get("mean", KINETICS_MEAN)),
        std=tuple(data.get("std", KINETICS_STD)), stage=ckpt.get("stage"),
        alpha=ckpt.get("alpha", 0.0), config=cfg, step=int(ckpt.get("step", 0)),
        complete=bool(ckpt.get("complete", False)), path=ckpt["path"], probe=probe_record(ckpt),
        moco_weight=float(ckpt.get("moco_weight", 1.0)))
