"""Checkpoint files: what a stage checkpoint holds, how it is written and read back, and loading for analysis.

The checkpoint layout is one part of the trainer (the others: :mod:`~tdann_fast.train.tasks`,
:mod:`~tdann_fast.train.state`, :mod:`~tdann_fast.train.loop`, :mod:`~tdann_fast.train.stages`):
:func:`save_stage` writes a stage's file from a run state, :func:`restore_run` puts one back, and
:func:`load_for_analysis` gives the analysis the trained encoder of either task (the checkpoint's ``task``; files
written before tasks existed are video MoCo runs).

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
           "checkpoint_status", "AnalysisBundle", "load_for_analysis", "atomic_save", "TRAINING_STAGES",
           "positions_digest", "rng_state", "set_rng_state", "save_stage", "restore_run"]

FORMAT = "tdann_fast.checkpoint/2"
CHECKPOINT_NAME = "checkpoint.pt"
SHEETS_DIR = "sheets"
STAGES = {1: "pretrain", 2: "retinotopic", 3: "swap", 4: "freeze", 5: "finetune", 6: "full"}
TRAINING_STAGES = {1: "pretrain", 5: "finetune", 6: "full"}  # the stages that change the weights


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

    encoder: nn.Module                     # the trained encoder, eval mode, fc = Identity (r3d_18 or resnet18)
    sheets: dict                           # layer name -> CorticalSheet (frozen positions when present)
    frames: int | None                     # clip length; None for an image model (static gratings)
    size: int                              # clip or image side in pixels
    mean: tuple                            # input normalisation (RGB)
    std: tuple
    stage: Any                             # 1..6 (int)
    alpha: Any                             # float or {layer: float}: the value the stage trained with
    config: dict = field(default_factory=dict)
    step: int = 0
    complete: bool = True
    path: str = ""
    probe: dict | None = None              # the stage-3 probe set of the positions (None before stage 3)
    moco_weight: float = 1.0               # weight of the contrastive loss the stage trained with (any task)
    task: str = "video_moco"               # the config's task: "video_moco" or "image_simclr"
    arch: str = "r3d_18"                   # the encoder's torchvision name: "r3d_18" or "resnet18"


def load_for_analysis(path: str | Path, map_location="cpu") -> AnalysisBundle:
    """Load the trained encoder and cortical sheets of a checkpoint (file or run directory: latest stage); the
    model family comes from the checkpoint's config (``task``; checkpoints written before tasks existed are
    video MoCo runs)."""
    from .tasks import task_class

    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = ckpt.get("config", {})
    name = cfg.get("task", "video_moco") if isinstance(cfg, dict) else "video_moco"
    try:
        task = task_class(name)
    except ValueError:
        raise DamagedFileError(ckpt["path"], f"its config names the task {name!r}, which this version does not "
                                             f"know") from None
    encoder = task.encoder_from_state(ckpt["model"], ckpt["path"])
    data = cfg.get("data", {})
    image = task.arch == "resnet18"
    from tdann_fast.data.normalization import IMAGENET_MEAN, IMAGENET_STD

    return AnalysisBundle(
        encoder=encoder, sheets=sheets_from_state(ckpt.get("sheets")),
        frames=None if image else int(data.get("frames", 16)),
        size=int(data.get("size", 112)),
        mean=tuple(data.get("mean", IMAGENET_MEAN if image else KINETICS_MEAN)),
        std=tuple(data.get("std", IMAGENET_STD if image else KINETICS_STD)), stage=ckpt.get("stage"),
        alpha=ckpt.get("alpha", 0.0), config=cfg, step=int(ckpt.get("step", 0)),
        complete=bool(ckpt.get("complete", False)), path=ckpt["path"], probe=probe_record(ckpt),
        moco_weight=float(ckpt.get("moco_weight", 1.0)), task=name, arch=task.arch)


# ------------------------------------------------------------------------------------ a run's state <-> a file
def rng_state(aug_gen) -> dict:
    """Every random state of this process, as tensors, numbers, strings and lists only (weights-only loadable)."""
    import random

    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [int(version), list(mt), gauss],
             "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state(), "augment": aug_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, aug_gen) -> None:
    """Restore what :func:`rng_state` recorded."""
    import random

    import numpy as np
    import torch

    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    aug_gen.set_state(state["augment"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        except Exception:
            pass


def positions_digest(sheets) -> str:
    """SHA-1 over the positions of all sheets (order of layers kept): cheap equality check for tests/logs."""
    h = hashlib.sha1()
    for name, s in sheets.items():
        h.update(name.encode())
        h.update(s.positions.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_stage(run, stage: int, step: int, complete: bool, optimizer=None, scheduler=None, scaler=None,
               extra: dict | None = None) -> None:
    """Write the checkpoint of ``stage`` at ``step`` from a :class:`~tdann_fast.train.state.RunState` (every rank
    calls it: the RNG states and fault counts of all ranks are gathered; rank 0 writes).

    Keys: stage, stage_name, step, complete, task, config, model (or model_ref), optimizer/scheduler/scaler (a
    stage still running only), spatial_loss (without positions and tables: the sheet files), sheets, frozen, alpha
    and moco_weight (the values the stage used; ``moco_weight`` is the contrastive loss's weight of any task),
    rng, data_state, video_faults (fault counts of any data), world_size, the task's state values (``queue_ptr``
    of MoCo), positions_sha1, lineage, extra.
    """
    import json

    from .config import config_to_dict
    from .distributed import barrier, gather_objects

    rng_all = gather_objects(rng_state(run.aug_gen), run.dist)
    faults_all = gather_objects(dict(run.data_state.get("video_faults", {})), run.dist)
    if not run.dist.is_main:
        barrier(run.dist)
        return
    weights_change = stage in TRAINING_STAGES
    running = not complete  # optimiser state is needed only to resume inside the stage
    ckpt = {
        "stage": stage, "stage_name": STAGES[stage], "step": int(step),
        "complete": bool(complete), "task": run.task.name, "config": config_to_dict(run.cfg),
        "model": run.model.state_dict() if weights_change or run.model_ref is None else None,
        "model_ref": None if weights_change else run.model_ref,
        "optimizer": optimizer.state_dict() if optimizer is not None and running else None,
        "scheduler": scheduler.state_dict() if scheduler is not None and running else None,
        "scaler": scaler.state_dict() if scaler is not None and running else None,
        "spatial_loss": run.spatial_state(),
        "sheets": sheet_records(run.sheets) if run.sheets else None,
        "frozen": bool(run.spatial_loss is not None and run.spatial_loss.frozen),
        "alpha": run.effective_alpha() if stage >= 5 else 0.0,
        "moco_weight": run.task.contrastive_weight if stage >= 5 else 1.0,
        "rng": rng_all, "data_state": json.loads(json.dumps(run.data_state)), "video_faults": faults_all,
        "world_size": run.dist.world_size, **run.task.state_metrics(run.model),
        "positions_sha1": positions_digest(run.sheets), "lineage": list(run.lineage),
        "extra": {**({"probe": run.probe} if stage >= 3 and run.probe is not None else {}), **(extra or {})},
    }
    path = checkpoint_path(run.run_dir, stage)
    save_checkpoint(ckpt, path)
    if weights_change:
        run.model_ref = f"../{path.parent.name}/{path.name}"
    barrier(run.dist)


def restore_run(run, ckpt: dict) -> None:
    """Put a loaded checkpoint (:func:`load_checkpoint`) into a built :class:`~tdann_fast.train.state.RunState`:
    weights, sheets, spatial loss, data position (kept in samples when the batch size changed; restarted in the
    epoch when the world size changed), fault counts, RNG states, probe record, where the weights and sheet files
    are. Then the config wins: the alpha saved with the spatial loss is replaced by the config's."""
    import warnings
    from collections import Counter

    run.model.load_state_dict(ckpt["model"])
    run.sheets = sheets_from_state(ckpt.get("sheets"))
    run.spatial_loss = None
    if ckpt.get("spatial_loss") is not None:
        run.spatial_loss = run.make_spatial_loss(run.sheets)
        state = run.spatial_loss.state_dict()
        state.update(ckpt["spatial_loss"])
        run.spatial_loss.load_state_dict(state)
    cfg, dist = run.cfg, run.dist
    old_bs = int(ckpt.get("config", {}).get("batch_size", cfg.batch_size))
    run.data_state = {"epoch": 0, "batches": 0, "video_faults": {}, **dict(ckpt.get("data_state", {}))}
    if old_bs != cfg.batch_size:  # the position inside the epoch is kept in samples
        run.data_state["batches"] = run.data_state["batches"] * old_bs // cfg.batch_size
    if ckpt.get("world_size", 1) != dist.world_size:
        warnings.warn(f"resuming a run written with world size {ckpt.get('world_size')} on "
                      f"{dist.world_size} ranks: the data order restarts at the current epoch",
                      RuntimeWarning, stacklevel=2)
        run.data_state["batches"] = 0
    per_rank = ckpt.get("video_faults") or []  # each rank's fault counts
    if len(per_rank) == dist.world_size:
        mine = per_rank[dist.rank]
    else:  # another world size: rank 0 carries the totals
        mine = sum(map(Counter, per_rank), Counter()) if dist.is_main else {}
    run.data_state["video_faults"] = dict(mine)
    rngs = ckpt.get("rng") or []
    if dist.rank < len(rngs):
        set_rng_state(rngs[dist.rank], run.aug_gen)
    run.close_data()
    stage = ckpt["stage"]
    own = Path(ckpt["path"]).resolve().parent.parent == run.run_dir.resolve()
    if not own:  # a checkpoint of another run (tdann-fast swap --out): keep the weights in this run's files
        run.model_ref = None
    elif stage in TRAINING_STAGES:
        run.model_ref = f"../{stage_dir(run.run_dir, stage).name}/{CHECKPOINT_NAME}"
    else:
        run.model_ref = ckpt.get("model_ref")
    run.probe = probe_record(ckpt)
    if stage >= 5 and cfg.finetune_seed is not None:
        run.use_finetune_seed(fresh=False)
    run.sheet_files = {}
    if own and ckpt.get("sheets"):
        folder = Path(ckpt["path"]).parent
        run.sheet_files = {name: (folder / SHEETS_DIR / f"{name}.pt", sheet_digest(s))
                           for name, s in run.sheets.items()}
    if run.spatial_loss is not None:
        run.spatial_loss.set_alpha(run.alpha_arg())
