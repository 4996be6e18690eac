"""A training run: plan where to start, build the run state, open the run directory, run the stages.

The parts (one job each):

* :mod:`tdann_fast.train.tasks` -- what is trained: the model, the data and its two views, the objective, the
  probe set (video MoCo on ``r3d_18``; image SimCLR on ``resnet18``);
* :mod:`tdann_fast.train.state` -- the run state of one process (model, sheets, spatial loss, data, sampler,
  distributed info);
* :mod:`tdann_fast.train.loop` -- the step loop of the training stages;
* :mod:`tdann_fast.train.stages` -- the table of the six stage functions;
* :mod:`tdann_fast.train.checkpoint` -- the checkpoint layout (what a stage's file holds, writing and restoring);
* this module -- the order of a run (:class:`Trainer`).

Stages (each writes ``run_dir/stage{N}_{name}/``; any stage can be resumed, or rerun with ``from_stage``): 1
pretrain, 2 retinotopic, 3 swap, 4 freeze, 5 finetune, 6 full (see :mod:`tdann_fast.train.stages`).

With ``finetune_seed`` set, stage 5 starts (fresh, not when resumed inside it) with every random stream reseeded
from it: Python, NumPy and torch, the augmentation generator, the data order and sample draws, the spatial loss's
neighbourhood sampling. Several fine-tunings with different seeds can then start from one stage-4 checkpoint.

Order of a run: the config is checked whole; the run directory is read to plan where to start
(:func:`tdann_fast.train.rundir.plan_run`, which also refuses config changes the kept stages were not made with);
data and model are built; only then is the run directory created and locked, earlier results a rerun replaces
moved aside, ``config.yaml`` written and the start recorded in ``lineage.jsonl``. A command that fails before that
point leaves nothing behind. After a restore, the config's values win over those saved with the restored state
(alpha, learning rate, momentum, weight decay), and every checkpoint records the values its stage used.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import yaml

from tdann_fast._io import atomic_write_text
from tdann_fast.errors import ConfigError, RunDirError

from . import stages as stage_table
from .checkpoint import (STAGES, existing_checkpoints, latest_checkpoint, load_checkpoint, positions_digest,
                         remove_stale_temporaries, restore_run)
from .config import TrainConfig, check_changes, config_changes, config_to_dict, validate_config
from .distributed import broadcast_object, cleanup, gather_objects, init_distributed
from .loop import cosine_warmup
from .rundir import RunLock, RunPlan, plan_run, read_lineage, start_run
from .state import RunState

__all__ = ["Trainer", "train", "positions_digest", "cosine_warmup"]


class Trainer:
    """Runs (or resumes) the six stages of one training run described by a :class:`TrainConfig`.

    Args:
        cfg: the configuration (checked again when the run starts).
        resume: continue from the newest checkpoint in ``cfg.run_dir`` (an error when there is none).
        from_stage: (re)run from this stage, starting from the finished checkpoint of the stage before it; the
            directories of the stages it replaces are moved to ``run_dir/previous/<n>/``, never deleted.
        stop_after: stop once this stage has finished.
        fallback: with ``resume``, when the newest checkpoint is damaged, resume from the newest intact one (the
            damaged stages are moved aside); without it such a resume stops with an error naming both files.
        source: a checkpoint (file) to start from instead of one of ``cfg.run_dir`` (``tdann-fast swap --out``);
            ``from_stage`` must be given and ``cfg.run_dir`` must hold no checkpoint.

    After :meth:`run`, ``state`` is the :class:`~tdann_fast.train.state.RunState` the run ended with.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, from_stage: int | None = None,
                 stop_after: int = 6, fallback: bool = False, source: str | Path | None = None):
        if from_stage is not None and from_stage not in STAGES:
            raise ConfigError(f"from_stage: got {from_stage!r}; expected a stage 1..6")
        if stop_after not in STAGES:
            raise ConfigError(f"stop_after: got {stop_after!r}; expected a stage 1..6")
        if resume and from_stage is not None:
            raise ConfigError("resume and from_stage: give one of them (resume continues, from_stage reruns)")
        if from_stage is not None and stop_after < from_stage:
            raise ConfigError(f"stop_after: got {stop_after}; expected >= from_stage ({from_stage})")
        if fallback and not resume:
            raise ConfigError("fallback: only meaningful with resume")
        if source is not None and from_stage is None:
            raise ConfigError("source: needs from_stage (the stage to start with after the source checkpoint)")
        self.cfg, self.resume, self.from_stage, self.stop_after = cfg, resume, from_stage, stop_after
        self.fallback, self.source_path = fallback, source
        self.run_dir = Path(cfg.run_dir)
        self.state: RunState | None = None

    def run(self) -> dict:
        """Run the remaining stages; returns a summary (stage timings, steps/s, where the outputs are)."""
        validate_config(self.cfg)
        dist = init_distributed(self.cfg.device)
        try:
            plan = self.plan()
            seen = self._checkpoint_files()
            self.state = state = RunState(self.cfg, dist)
            state.build()
            lock = self._open_run_dir(plan, seen)
            try:
                resume_state = None
                if plan.checkpoint is not None:
                    restore_run(state, plan.checkpoint)
                    if plan.mid_stage:
                        resume_state = {k: plan.checkpoint.get(k) for k in ("optimizer", "scheduler", "scaler")}
                    plan.checkpoint = {k: plan.checkpoint.get(k) for k in ("stage", "step", "complete", "path")}
                self._run_stages(plan, resume_state)
                return self._write_summary()
            finally:
                if lock is not None:
                    lock.release()
        finally:
            if self.state is not None:
                self.state.close_data()
            cleanup(dist)

    def plan(self) -> RunPlan:
        """Where the run starts (reads the run directory or the source checkpoint; writes nothing)."""
        if self.source_path is None:
            return plan_run(self.cfg, resume=self.resume, from_stage=self.from_stage, fallback=self.fallback,
                            map_location="cpu")
        if existing_checkpoints(self.run_dir):
            raise RunDirError(f"--out {self.run_dir}: already holds checkpoints; choose a new directory")
        ckpt = load_checkpoint(self.source_path)
        changes = config_changes(ckpt.get("config", {}), self.cfg)
        check_changes(changes, self.from_stage - 1, f"starting at stage {self.from_stage} from {self.source_path}")
        return RunPlan(start=self.from_stage, checkpoint=ckpt, kept_until=self.from_stage - 1,
                       action=f"starting from {ckpt['path']}", event="derive", changes=changes)

    def _run_stages(self, plan: RunPlan, resume_state: dict | None) -> None:
        state = self.state
        for stage in range(plan.start, self.stop_after + 1):
            t0 = time.perf_counter()
            mid = stage == plan.start and plan.mid_stage
            if stage == 5 and not mid and self.cfg.finetune_seed is not None:
                state.use_finetune_seed(fresh=True)
            stage_table.STAGE_FUNCTIONS[stage](state, plan.step if mid else 0, resume_state if mid else None)
            state.timings[f"stage{stage}_{STAGES[stage]}"] = time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------------ run dir
    def _checkpoint_files(self) -> list:
        """(path, size, mtime) of every checkpoint in the run directory: what the plan was made from."""
        out = []
        for p in existing_checkpoints(self.run_dir):
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        return out

    def _on_main(self, fn):
        """Run ``fn`` on rank 0; every rank raises if it failed there (no rank is left waiting)."""
        dist = self.state.dist
        error, result = None, None
        if dist.is_main:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below on every rank
                error = exc
        message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}", dist)
        if error is not None:
            raise error
        if message is not None:
            raise RunDirError(f"rank 0 failed to prepare {self.run_dir}: {message}")
        return result

    def _open_run_dir(self, plan: RunPlan, seen: list):
        """Create and lock the run directory, move aside what the run replaces, write config.yaml and lineage."""
        def prepare():
            created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(self.run_dir)
            try:
                lock.acquire()
            except BaseException:
                if created:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            try:
                if self._checkpoint_files() != seen:  # another process wrote between the plan and the lock
                    raise RunDirError(f"run_dir {self.run_dir} changed while this run was starting; run it again")
                remove_stale_temporaries(self.run_dir)
                self.state.lineage = start_run(self.run_dir, plan, self.stop_after)
                atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(self.cfg),
                                                                              sort_keys=False))
            except BaseException:
                lock.release()
                raise
            return lock
        lock = self._on_main(prepare)
        self.state.lineage = broadcast_object(self.state.lineage, self.state.dist)
        return lock

    def _write_summary(self) -> dict:
        state = self.state
        summary = {"run_dir": str(self.run_dir), "task": state.task.name, "timings_s": state.timings,
                   "steps_per_s": state.step_rates, "latest_checkpoint": str(latest_checkpoint(self.run_dir)),
                   "skipped_videos": len(getattr(state.source, "skipped", [])),
                   "video_faults": self._fault_summary(),
                   "lineage": read_lineage(self.run_dir) if state.dist.is_main else state.lineage}
        if state.dist.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        return summary

    def _fault_summary(self) -> dict:
        """Data faults of every rank (DataLoader workers included: faults travel with the samples): counts by
        kind over the whole run (kept across resumes), the reasons seen by this run's processes, and the files
        skipped when the source was indexed. (The keys keep their video names for every task.)"""
        from tdann_fast.data import summarize_faults

        state = self.state
        counts, seen = Counter(), Counter()
        for rank_counts, rank_seen in gather_objects((state.data_state.get("video_faults", {}), state.faults),
                                                     state.dist):
            counts.update(rank_counts)
            seen.update(rank_seen)
        skipped = getattr(state.source, "skip_faults", list)()
        return {"counts": dict(counts), "seen_in_this_run": summarize_faults(seen),
                "skipped_when_indexed": summarize_faults(skipped)}


def train(cfg: TrainConfig, resume: bool = False, from_stage: int | None = None, stop_after: int = 6,
          fallback: bool = False) -> dict:
    """Run the six-stage training described by ``cfg`` (see :class:`Trainer`)."""
    return Trainer(cfg, resume=resume, from_stage=from_stage, stop_after=stop_after, fallback=fallback).run()
