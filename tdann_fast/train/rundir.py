"""The run directory: where a run starts, one writer at a time, reruns that keep earlier results, and the lineage.

* :func:`plan_run` reads the run directory (never writes) and decides where a run starts: a new run, a resume
  (``--resume``: the newest checkpoint, or with ``fallback`` the newest intact one when it is damaged) or a rerun
  (``--from-stage N``: from the finished checkpoint of stage N-1). It also refuses config changes that the kept
  stages were not made with (:func:`tdann_fast.train.config.check_changes`).
* :class:`RunLock` is an exclusive ``flock`` on ``run_dir/.lock`` held for the whole run: a second process that
  wants to write the same run directory stops with an error naming the holder. The kernel drops the lock when the
  holder dies, even by SIGKILL, so a lock is never stale.
* :func:`move_aside` moves the stage directories a rerun replaces to ``run_dir/previous/<n>/`` (numbered, never
  deleted: checkpoints, CSV and TensorBoard files stay), with a hard link to any file outside them that their
  checkpoints refer to (the stage-1 weights), so every moved checkpoint still loads.
* ``lineage.jsonl`` records every start, resume, rerun and changed config key, one JSON line each (append-only);
  ``summary.json`` repeats it.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tdann_fast._io import fsync_dir, link_or_copy, new_file_mode, safe_load
from tdann_fast.errors import DamagedFileError, RunDirError

from .checkpoint import CHECKPOINT_NAME, checkpoint_path, existing_checkpoints, load_checkpoint, stage_dir
from .config import TrainConfig, check_changes, config_changes

LOCK_NAME = ".lock"
LINEAGE_NAME = "lineage.jsonl"
PREVIOUS_DIR = "previous"

__all__ = ["RunPlan", "plan_run", "RunLock", "move_aside", "start_run", "append_lineage", "read_lineage",
           "LINEAGE_NAME", "PREVIOUS_DIR"]


@dataclass
class RunPlan:
    """Where a run starts and what it keeps (see :func:`plan_run`)."""

    start: int                      # first stage to run (7 when every stage is finished)
    step: int = 0                   # step inside ``start`` (a resume in the middle of a training stage)
    checkpoint: Optional[dict] = None  # loaded checkpoint to restore (None: stage 1 from scratch)
    kept_until: int = 0             # the last stage whose results (whole or in part) are kept
    action: str = "new run"         # what the user asked for, in words
    event: str = "start"            # lineage event: start | resume | rerun | fallback | derive
    changes: dict = field(default_factory=dict)  # {key: [recorded, new]} against the kept checkpoint's config
    move_from: Optional[int] = None  # stage directories from this stage on are moved aside before running
    damaged: list = field(default_factory=list)  # [[path, problem]] found by --resume

    @property
    def mid_stage(self) -> bool:
        return self.checkpoint is not None and not self.checkpoint.get("complete") and self.start <= 6


def _stage_dirs(run_dir: Path, first: int = 1) -> list:
    return [stage_dir(run_dir, s) for s in range(first, 7) if stage_dir(run_dir, s).exists()]


def plan_run(cfg: TrainConfig, resume: bool = False, from_stage: Optional[int] = None, fallback: bool = False,
             map_location="cpu") -> RunPlan:
    """Decide where a run starts; reads ``cfg.run_dir`` only. Raises RunDirError / ConfigError / DamagedFileError
    with a message that says what to do."""
    run_dir = Path(cfg.run_dir)
    if from_stage is not None:
        return _plan_rerun(cfg, run_dir, from_stage, map_location)
    if resume:
        return _plan_resume(cfg, run_dir, fallback, map_location)
    found = existing_checkpoints(run_dir) if run_dir.is_dir() else []
    if found:
        raise RunDirError(f"run_dir {run_dir} already holds checkpoints (newest: {found[0]}): pass --resume to "
                          f"continue it, --from-stage N to rerun from stage N, or choose another run_dir")
    # stage directories without a checkpoint (a run stopped before its first one) are moved aside, not reused
    return RunPlan(start=1, move_from=1 if run_dir.is_dir() and _stage_dirs(run_dir) else None)


def _plan_rerun(cfg, run_dir: Path, from_stage: int, map_location) -> RunPlan:
    action = f"--from-stage {from_stage}"
    if from_stage == 1:
        return RunPlan(start=1, action=action, event="rerun", move_from=1)
    prev = checkpoint_path(run_dir, from_stage - 1)
    if not prev.is_file():
        raise RunDirError(f"{action}: needs the finished checkpoint of stage {from_stage - 1}, and {prev} does "
                          f"not exist")
    ckpt = load_checkpoint(prev, map_location=map_location)
    if not ckpt.get("complete"):
        raise RunDirError(f"{action}: stage {from_stage - 1} is not finished ({prev} is at step {ckpt['step']}); "
                          f"finish it with --resume first")
    changes = config_changes(ckpt.get("config", {}), cfg)
    check_changes(changes, from_stage - 1, action)
    return RunPlan(start=from_stage, checkpoint=ckpt, kept_until=from_stage - 1, action=action, event="rerun",
                   changes=changes, move_from=from_stage)


def _plan_resume(cfg, run_dir: Path, fallback: bool, map_location) -> RunPlan:
    if not run_dir.is_dir():
        raise RunDirError(f"--resume: run_dir {run_dir} does not exist (nothing to resume); start a new run "
                          f"without --resume")
    found = existing_checkpoints(run_dir)
    if not found:
        raise RunDirError(f"--resume: run_dir {run_dir} holds no checkpoint (nothing to resume); start a new run "
                          f"without --resume")
    damaged, ckpt = [], None
    for path in found:
        try:
            ckpt = load_checkpoint(path, map_location=map_location)
            break
        except DamagedFileError as exc:
            damaged.append([str(path), str(exc)])
    if damaged and ckpt is None:
        raise RunDirError(f"--resume: every checkpoint in {run_dir} is damaged (newest: {damaged[0][1]}); start "
                          f"again with --from-stage 1")
    if damaged and not fallback:
        state = "finished" if ckpt["complete"] else f"step {ckpt['step']}"
        raise RunDirError(f"--resume: the newest checkpoint is damaged ({damaged[0][1]}); the newest intact one is "
                          f"{ckpt['path']} (stage {ckpt['stage']}, {state}): pass --fallback to resume from it "
                          f"(the damaged stages are moved to {run_dir / PREVIOUS_DIR}, not deleted)")
    stage = int(ckpt["stage"])
    action = "--resume --fallback" if damaged else "--resume"
    changes = config_changes(ckpt.get("config", {}), cfg)
    check_changes(changes, stage, action)
    if ckpt["complete"]:
        start, step = stage + 1, 0
    else:
        start, step = stage, int(ckpt["step"])
    return RunPlan(start=start, step=step, checkpoint=ckpt, kept_until=stage, action=action,
                   event="fallback" if damaged else "resume", changes=changes,
                   move_from=stage + 1 if damaged else None, damaged=damaged)


# ---------------------------------------------------------------------------------------------------------- lock
class RunLock:
    """Exclusive lock on a run directory for the life of one run (``with RunLock(run_dir): ...``)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, new_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown process"
            finally:
                os.close(fd)
            raise RunDirError(f"run_dir {self.path.parent} is in use by another tdann-fast run ({holder}; lock "
                              f"{self.path}): wait for it to finish, or use another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------------------------- moving aside
def move_aside(run_dir: str | Path, first: int) -> Optional[dict]:
    """Move the stage directories ``first``..6 that exist to ``run_dir/previous/<n>/`` (n = 1, 2, ...).

    Checkpoints there that refer to a file left behind (stages 2-4 name the stage-1 weights) get a hard link to
    it (a copy where links fail), so they keep loading after the original is rerun. The run's ``config.yaml`` and
    ``summary.json`` are copied beside them. Returns what moved (None when nothing did).
    """
    run_dir = Path(run_dir)
    dirs = _stage_dirs(run_dir, first)
    if not dirs:
        return None
    root = run_dir / PREVIOUS_DIR
    root.mkdir(exist_ok=True)
    n = 1 + max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0)
    target = root / str(n)
    target.mkdir()
    moved, linked = [], []
    for d in dirs:
        os.replace(d, target / d.name)
        moved.append(d.name)
    for name in moved:
        ckpt_file = target / name / CHECKPOINT_NAME
        try:
            ref = safe_load(ckpt_file, "checkpoint").get("model_ref") if ckpt_file.is_file() else None
        except (DamagedFileError, AttributeError):
            ref = None  # a damaged checkpoint is kept as it is
        if not ref:
            continue
        here = Path(os.path.normpath(target / name / ref))      # where the moved checkpoint looks for it
        left = Path(os.path.normpath(run_dir / name / ref))     # where it was before the move
        if not here.exists() and left.is_file():
            link_or_copy(left, here)
            linked.append(str(here.relative_to(target)))
    for name in ("config.yaml", "summary.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    fsync_dir(run_dir)
    return {"previous": str(target.relative_to(run_dir)), "moved": moved, "linked": linked}


# -------------------------------------------------------------------------------------------------- lineage
def start_run(run_dir: str | Path, plan: RunPlan, stop_after: int) -> list:
    """Under the run's lock: move aside what the plan replaces and record the start in the lineage; returns the
    lineage so far."""
    moved = move_aside(run_dir, plan.move_from) if plan.move_from is not None else None
    event = {"event": plan.event, "action": plan.action, "start_stage": plan.start, "start_step": plan.step,
             "stop_after": stop_after}
    ck = plan.checkpoint
    if ck is not None:
        event.update(checkpoint=ck["path"], stage=ck["stage"], step=ck["step"], complete=ck["complete"],
                     queue_ptr=ck.get("queue_ptr"), positions_sha1=ck.get("positions_sha1"),
                     data_state=ck.get("data_state"))
    if plan.changes:
        event["changes"] = plan.changes
    if plan.damaged:
        event["damaged"] = plan.damaged
    if moved:
        event["moved_aside"] = moved
    append_lineage(run_dir, event)
    return read_lineage(run_dir)


def append_lineage(run_dir: str | Path, event: dict) -> dict:
    """Append one event (``{"event": ..., ...}`` plus the time) to ``run_dir/lineage.jsonl``; returns it."""
    event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}
    path = Path(run_dir) / LINEAGE_NAME
    with open(path, "a") as fh:
        fh.write(json.dumps(event, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return event


def read_lineage(run_dir: str | Path) -> list:
    """The events of ``run_dir/lineage.jsonl`` (a line cut short by a crash is skipped)."""
    path = Path(run_dir) / LINEAGE_NAME
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out

