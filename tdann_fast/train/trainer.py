"""The six-stage TDANN training run (DESIGN §6): MoCo v2 on video with r3d_18, single process or torchrun/DDP.

Stages (each writes ``run_dir/stage{N}_{name}/``; any stage can be resumed, or rerun with ``from_stage``):

1. ``pretrain``    -- contrastive loss only (alpha = 0);
2. ``retinotopic`` -- retinotopic positions from the ``r3d18_mt`` preset at the training clip size;
3. ``swap``        -- positions swap-optimised on the pre-trained encoder's responses to a probe set: centre-cropped
                      training clips (``swap.probe: clips``, the default), drifting gratings (``gratings``, only
                      when asked) or both; the probe set is recorded in the checkpoint (``extra["probe"]``);
4. ``freeze``      -- positions frozen (``SpatialLoss.freeze()``; state, never parameters);
5. ``finetune``    -- fine-tuning with ``moco.weight`` × contrastive + spatial loss (weight 1, alpha > 0: joint;
                      alpha = 0: contrastive only; weight 0: spatial only, the MoCo forward still runs);
6. ``full``        -- full training with the same composite loss.

With ``finetune_seed`` set, stage 5 starts (fresh, not when resumed inside it) with every random stream reseeded
from it: Python, NumPy and torch, the augmentation generator, the data order and clip draws, the spatial loss's
neighbourhood sampling. Several fine-tunings with different seeds can then start from one stage-4 checkpoint.

Order of a run: the config is checked whole; the run directory is read to plan where to start
(:func:`tdann_fast.train.rundir.plan_run`, which also refuses config changes the kept stages were not made with);
data and model are built; only then is the run directory created and locked, earlier results a rerun replaces
moved aside, ``config.yaml`` written and the start recorded in ``lineage.jsonl``. A command that fails before that
point leaves nothing behind. After a restore, the config's values win over those saved with the restored state
(alpha, learning rate, momentum, weight decay), and every checkpoint records the values its stage used.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from tdann_fast._io import atomic_write_text, link_or_copy
from tdann_fast.errors import ConfigError, RunDirError

from .checkpoint import (STAGES, checkpoint_path, existing_checkpoints, latest_checkpoint, load_checkpoint,
                         probe_record, remove_stale_temporaries, save_checkpoint, sheet_digest, sheet_records,
                         sheets_from_state, stage_dir)
from .config import (TrainConfig, active_layers, check_changes, config_changes, config_to_dict, probe_counts,
                     swap_layers, swap_steps, validate_config)
from .distributed import DistInfo, barrier, broadcast_object, cleanup, gather_objects, init_distributed
from .logging import MetricLogger
from .rundir import RunLock, RunPlan, plan_run, read_lineage, start_run

TRAINING_STAGES = {1: "pretrain", 5: "finetune", 6: "full"}


def positions_digest(sheets) -> str:
    """SHA-1 over the positions of all sheets (order of layers kept): cheap equality check for tests/logs."""
    h = hashlib.sha1()
    for name, s in sheets.items():
        h.update(name.encode())
        h.update(s.positions.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cosine_warmup(total: int, warmup: int, lr: float, min_lr: float = 0.0):
    """LambdaLR factor: linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr``."""
    floor = min_lr / lr if lr > 0 else 0.0

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def describe_probe(cfg: TrainConfig, layers) -> dict:
    """The record of the stage-3 probe set (kept in ``extra["probe"]`` of the checkpoints and in swap_stats.json):
    which stimuli, how many, in which units, and the layers whose positions were swapped on it (none swapped: no
    probe set was shown, the counts are 0)."""
    s, d = cfg.swap, cfg.data
    clips, gratings = probe_counts(cfg) if layers else (0, 0)
    return {"probe": s.probe, "num_clips": clips, "num_gratings": gratings,
            "clips": f"centre crops of the query clips of training samples 0..{clips - 1}" if clips else None,
            "grating_directions": s.grating_directions if gratings else None,
            "grating_spatial_freqs": list(s.grating_spatial_freqs) if gratings else None,
            "grating_temporal_freqs": list(s.grating_temporal_freqs) if gratings else None,
            "grating_phases": s.grating_phases if gratings else None,
            "units": "spatial frequency: cycles per image width; temporal frequency: cycles per frame",
            "frames": d.frames, "size": d.size, "layers": list(layers)}


def _rng_state(aug_gen: torch.Generator) -> dict:
    """Every random state of this process, as tensors, numbers, strings and lists only (weights-only loadable)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [int(version), list(mt), gauss],
             "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state(), "augment": aug_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, aug_gen: torch.Generator) -> None:
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


def training_source(cfg: TrainConfig):
    """The training videos of ``cfg`` (``data.source``: the embedded default, SyntheticMotion or a folder), without
    the clip-pair dataset around them. A folder needs PyAV and at least one readable video (ConfigError)."""
    from tdann_fast.data import SyntheticMotion, VideoFolder, embedded_default

    d = cfg.data
    load = d.load_size or int(round(1.25 * d.size))
    if d.source == "embedded":
        return embedded_default(load, d.synthetic_videos, d.synthetic_frames, seed=cfg.seed)
    if d.source == "synthetic":
        return SyntheticMotion(d.synthetic_videos, num_frames=d.synthetic_frames, side=load, seed=cfg.seed)
    from tdann_fast._deps import check

    check("data.source=folder (decoding video files)", "av")
    source = VideoFolder(d.root, side=load, cache_in_memory=d.cache_in_memory)
    if len(source) == 0:
        raise ConfigError(f"data.root: got {d.root!r}; expected a folder holding readable videos (found "
                          f"none; {len(source.skipped)} file(s) skipped)")
    return source


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
        self.timings: dict[str, float] = {}
        self.step_rates: dict[str, float] = {}
        self.lineage: list = []
        self.sheets: dict = {}
        self.spatial_loss = None
        self._model_ref = None
        self._sheet_files: dict = {}  # layer -> (file, digest) of the sheet files written last
        self._video_faults = Counter()  # video fault records seen by this process (summary.json)
        self._probe = None  # the stage-3 probe record, carried forward in the checkpoints of stages 3-6

    # ------------------------------------------------------------------------------------------------ setup
    def _plan(self) -> RunPlan:
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

    def _setup(self) -> None:
        """Seeds, data and model; writes nothing."""
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._seed_all(cfg.seed)
        self._build_data()
        self._build_model()

    def _seed_all(self, base: int) -> None:
        """Python, NumPy and torch RNGs and the augmentation generator of this rank, from ``base``."""
        seed = base + 1000 * self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 17)

    def _use_finetune_seed(self, fresh: bool) -> None:
        """Stages 5-6 with ``finetune_seed``: data order (sampler) and clip draws (dataset) from it; ``fresh`` (the
        start of stage 5) also reseeds every RNG, restarts the data epochs and the neighbourhood sampler. After a
        restore inside stages 5-6, only the seeds of sampler and dataset are set (the RNG states, data position and
        sampler state come from the checkpoint)."""
        fs = self.cfg.finetune_seed
        self.sampler.seed = fs
        self.dataset.seed = fs
        self._batches = None
        self.loader = torch.utils.data.DataLoader(self.dataset, **self.loader_kwargs)  # workers copy the dataset
        if fresh:
            self._seed_all(fs)
            self.data_state = {"epoch": 0, "batches": 0, "video_faults": self.data_state.get("video_faults", {})}
            frozen = self.spatial_loss is not None and self.spatial_loss.frozen
            self.spatial_loss = self._make_spatial_loss(self.sheets, seed=fs)
            if frozen:
                self.spatial_loss.freeze()

    def _build_data(self) -> None:
        from tdann_fast.data import ClipAugment, ClipPairDataset, ResumableSampler, collate_pairs

        d = self.cfg.data
        source = training_source(self.cfg)
        self.source = source
        world, bs = self.dist.world_size, self.cfg.batch_size
        length = max(d.clips_per_epoch or len(source), bs * world)
        self.dataset = ClipPairDataset(source, d.frames, d.stride, length=length, seed=self.cfg.seed)
        self.sampler = ResumableSampler(length, world, self.dist.rank, seed=self.cfg.seed)
        self.loader_kwargs = dict(batch_size=bs, sampler=self.sampler, drop_last=True, collate_fn=collate_pairs,
                                  num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                                  pin_memory=self.device.type == "cuda")
        self.loader = torch.utils.data.DataLoader(self.dataset, **self.loader_kwargs)
        self.augment = ClipAugment.from_config(d.size, d.augment, d.mean, d.std)
        self.data_state = {"epoch": 0, "batches": 0, "video_faults": {}}
        self._batches = None

    def _build_model(self) -> None:
        from tdann_fast.models.moco import MoCo

        m = self.cfg.moco
        queue = min(m.queue_size, len(self.source) if self.cfg.data.clips_per_epoch == 0
                    else max(len(self.source), self.cfg.data.clips_per_epoch))
        queue = max(queue, 1)
        self.moco = MoCo(dim=m.dim, hidden_dim=m.hidden_dim, queue_size=queue, momentum=m.momentum,
                         temperature=m.temperature, shuffle_bn=m.shuffle_bn).to(self.device)
        self.ddp = None

    def _wrap_ddp(self) -> nn.Module:
        if not self.dist.distributed:
            return self.moco
        if self.ddp is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.moco, device_ids=ids, broadcast_buffers=False)
        return self.ddp

    # ------------------------------------------------------------------------------------------------ data
    def _next_batch(self):
        while True:
            if self._batches is None:
                self.sampler.set_epoch(self.data_state["epoch"], self.data_state["batches"] * self.cfg.batch_size)
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                self.data_state = {**self.data_state, "epoch": self.data_state["epoch"] + 1, "batches": 0}
                continue
            self.data_state["batches"] += 1
            q, k, faults = batch
            self._count_faults(faults)
            return q, k

    def _count_faults(self, faults) -> None:
        """Decode faults travel with the samples (from the DataLoader workers too): count them in the data state
        (saved in checkpoints, so a resume keeps the counts)."""
        if not faults:
            return
        counts = self.data_state.setdefault("video_faults", {})
        for f in faults:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        self._video_faults.update(faults)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _effective_alpha(self):
        """The alpha the spatial loss actually uses (read from its buffer): a float, or {layer: float}."""
        if self.spatial_loss is None:
            return 0.0
        values = [float(v) for v in self.spatial_loss.alpha.detach().cpu()]
        if not isinstance(self.cfg.spatial.alpha, dict) and len(set(values)) == 1:
            return values[0]
        return dict(zip(self.spatial_loss.layer_names, values))

    def _spatial_state(self) -> dict | None:
        """The spatial loss's state without the positions and tables (they are the stage's sheet files)."""
        if self.spatial_loss is None:
            return None
        return {k: v for k, v in self.spatial_loss.state_dict().items()
                if not (k.startswith("sheets.") and k.rsplit(".", 1)[-1] in ("positions", "neighbourhoods"))}

    def _save(self, stage: int, step: int, complete: bool, optimizer=None, scheduler=None, scaler=None,
              extra: dict | None = None) -> None:
        rng_all = gather_objects(_rng_state(self.aug_gen), self.dist)
        faults_all = gather_objects(dict(self.data_state.get("video_faults", {})), self.dist)
        if not self.dist.is_main:
            barrier(self.dist)
            return
        weights_change = stage in TRAINING_STAGES
        running = not complete  # optimiser state is needed only to resume inside the stage
        ckpt = {
            "stage": stage, "stage_name": STAGES[stage], "step": int(step),
            "complete": bool(complete), "config": config_to_dict(self.cfg),
            "model": self.moco.state_dict() if weights_change or self._model_ref is None else None,
            "model_ref": None if weights_change else self._model_ref,
            "optimizer": optimizer.state_dict() if optimizer is not None and running else None,
            "scheduler": scheduler.state_dict() if scheduler is not None and running else None,
            "scaler": scaler.state_dict() if scaler is not None and running else None,
            "spatial_loss": self._spatial_state(),
            "sheets": sheet_records(self.sheets) if self.sheets else None,
            "frozen": bool(self.spatial_loss is not None and self.spatial_loss.frozen),
            "alpha": self._effective_alpha() if stage >= 5 else 0.0,
            "moco_weight": float(self.cfg.moco.weight) if stage >= 5 else 1.0,
            "rng": rng_all, "data_state": json.loads(json.dumps(self.data_state)), "video_faults": faults_all,
            "world_size": self.dist.world_size, "queue_ptr": int(self.moco.queue_ptr),
            "positions_sha1": positions_digest(self.sheets), "lineage": list(self.lineage),
            "extra": {**({"probe": self._probe} if stage >= 3 and self._probe is not None else {}), **(extra or {})},
        }
        path = checkpoint_path(self.run_dir, stage)
        save_checkpoint(ckpt, path)
        if weights_change:
            self._model_ref = f"../{path.parent.name}/{path.name}"
        barrier(self.dist)

    def _restore(self, ckpt: dict) -> None:
        self.moco.load_state_dict(ckpt["model"])
        self.sheets = sheets_from_state(ckpt.get("sheets"))
        self.spatial_loss = None
        if ckpt.get("spatial_loss") is not None:
            self.spatial_loss = self._make_spatial_loss(self.sheets)
            state = self.spatial_loss.state_dict()
            state.update(ckpt["spatial_loss"])
            self.spatial_loss.load_state_dict(state)
        old_bs = int(ckpt.get("config", {}).get("batch_size", self.cfg.batch_size))
        self.data_state = {"epoch": 0, "batches": 0, "video_faults": {}, **dict(ckpt.get("data_state", {}))}
        if old_bs != self.cfg.batch_size:  # the position inside the epoch is kept in samples
            self.data_state["batches"] = self.data_state["batches"] * old_bs // self.cfg.batch_size
        if ckpt.get("world_size", 1) != self.dist.world_size:
            warnings.warn(f"resuming a run written with world size {ckpt.get('world_size')} on "
                          f"{self.dist.world_size} ranks: the data order restarts at the current epoch",
                          RuntimeWarning, stacklevel=2)
            self.data_state["batches"] = 0
        per_rank = ckpt.get("video_faults") or []  # each rank's fault counts
        if len(per_rank) == self.dist.world_size:
            mine = per_rank[self.dist.rank]
        else:  # another world size: rank 0 carries the totals
            mine = sum(map(Counter, per_rank), Counter()) if self.dist.is_main else {}
        self.data_state["video_faults"] = dict(mine)
        rngs = ckpt.get("rng") or []
        if self.dist.rank < len(rngs):
            _set_rng_state(rngs[self.dist.rank], self.aug_gen)
        self._batches = None
        stage = ckpt["stage"]
        own = Path(ckpt["path"]).resolve().parent.parent == self.run_dir.resolve()
        if not own:  # a checkpoint of another run (tdann-fast swap --out): keep the weights in this run's files
            self._model_ref = None
        elif stage in TRAINING_STAGES:
            self._model_ref = f"../{stage_dir(self.run_dir, stage).name}/checkpoint.pt"
        else:
            self._model_ref = ckpt.get("model_ref")
        self._probe = probe_record(ckpt)
        if stage >= 5 and self.cfg.finetune_seed is not None:
            self._use_finetune_seed(fresh=False)
        self._sheet_files = {}
        if own and ckpt.get("sheets"):
            folder = Path(ckpt["path"]).parent
            self._sheet_files = {name: (folder / "sheets" / f"{name}.pt", sheet_digest(s))
                                 for name, s in self.sheets.items()}
        self._apply_config()

    def _apply_config(self) -> None:
        """After a restore the config wins: the alpha saved with the spatial loss is replaced by the config's."""
        if self.spatial_loss is not None:
            self.spatial_loss.set_alpha(self._alpha_arg())

    # ------------------------------------------------------------------------------------------------ spatial
    def _alpha_arg(self):
        a = self.cfg.spatial.alpha
        return {k: float(v) for k, v in a.items()} if isinstance(a, dict) else float(a)

    def _make_spatial_loss(self, sheets, seed: int | None = None):
        from tdann_fast.loss import SpatialLoss

        s = self.cfg.spatial
        seed = self.cfg.seed if seed is None else seed
        return SpatialLoss(sheets, alpha=self._alpha_arg(), variant=s.variant,
                           neighbourhoods_per_step=s.neighbourhoods_per_step, time_reduction=s.time_reduction,
                           seed=seed + self.dist.rank, gather_distributed=s.gather_distributed,
                           backend=s.backend).to(self.device)

    def _write_sheets(self, stage: int) -> None:
        """The stage's sheet files; a sheet equal to the one written last is hard-linked, not written again."""
        if not self.dist.is_main:
            return
        out = stage_dir(self.run_dir, stage) / "sheets"
        files = {}
        for name, sheet in self.sheets.items():
            target = out / f"{name}.pt"
            digest = sheet_digest(sheet)
            prev = self._sheet_files.get(name)
            if prev is not None and prev[1] == digest and prev[0].is_file():
                if prev[0].resolve() != target.resolve():
                    link_or_copy(prev[0], target)
            else:
                sheet.save(target)
            files[name] = (target, digest)
        self._sheet_files = files

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        """Run the remaining stages; returns a summary (stage timings, steps/s, where the outputs are)."""
        validate_config(self.cfg)
        self.dist: DistInfo = init_distributed(self.cfg.device)
        self.device = self.dist.device
        try:
            plan = self._plan()
            seen = self._checkpoint_files()
            self._setup()
            lock = self._open_run_dir(plan, seen)
            try:
                resume_state = None
                if plan.checkpoint is not None:
                    self._restore(plan.checkpoint)
                    if plan.mid_stage:
                        resume_state = {k: plan.checkpoint.get(k) for k in ("optimizer", "scheduler", "scaler")}
                    plan.checkpoint = {k: plan.checkpoint.get(k) for k in ("stage", "step", "complete", "path")}
                self._run_stages(plan, resume_state)
                return self._write_summary()
            finally:
                if lock is not None:
                    lock.release()
        finally:
            self._batches = None
            cleanup(self.dist)

    def _checkpoint_files(self) -> list:
        """(path, size, mtime) of every checkpoint in the run directory: what the plan was made from."""
        out = []
        for p in existing_checkpoints(self.run_dir):
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        return out

    def _on_main(self, fn):
        """Run ``fn`` on rank 0; every rank raises if it failed there (no rank is left waiting)."""
        error, result = None, None
        if self.dist.is_main:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below on every rank
                error = exc
        message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}", self.dist)
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
                self.lineage = start_run(self.run_dir, plan, self.stop_after)
                atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(self.cfg),
                                                                              sort_keys=False))
            except BaseException:
                lock.release()
                raise
            return lock
        lock = self._on_main(prepare)
        self.lineage = broadcast_object(self.lineage, self.dist)
        return lock

    def _write_summary(self) -> dict:
        summary = {"run_dir": str(self.run_dir), "timings_s": self.timings, "steps_per_s": self.step_rates,
                   "latest_checkpoint": str(latest_checkpoint(self.run_dir)),
                   "skipped_videos": len(getattr(self.source, "skipped", [])),
                   "video_faults": self._fault_summary(),
                   "lineage": read_lineage(self.run_dir) if self.dist.is_main else self.lineage}
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        return summary

    def _fault_summary(self) -> dict:
        """Video faults of every rank (DataLoader workers included: faults travel with the samples): counts by
        kind over the whole run (kept across resumes), the reasons seen by this run's processes, and the files
        skipped when the folder was indexed."""
        from tdann_fast.data import summarize_faults

        counts, seen = Counter(), Counter()
        for rank_counts, rank_seen in gather_objects((self.data_state.get("video_faults", {}), self._video_faults),
                                                     self.dist):
            counts.update(rank_counts)
            seen.update(rank_seen)
        skipped = getattr(self.source, "skip_faults", list)()
        return {"counts": dict(counts), "seen_in_this_run": summarize_faults(seen),
                "skipped_when_indexed": summarize_faults(skipped)}

    def _run_stages(self, plan: RunPlan, resume_state: dict | None) -> None:
        for stage in range(plan.start, self.stop_after + 1):
            t0 = time.perf_counter()
            mid = stage == plan.start and plan.mid_stage
            if stage == 5 and not mid and self.cfg.finetune_seed is not None:
                self._use_finetune_seed(fresh=True)
            if stage in TRAINING_STAGES:
                self._train_stage(stage, plan.step if mid else 0, resume_state if mid else None)
            elif stage == 2:
                self._stage_retinotopic()
            elif stage == 3:
                self._stage_swap()
            else:
                self._stage_freeze()
            self.timings[f"stage{stage}_{STAGES[stage]}"] = time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------------ stages
    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    def _optimiser(self, stage: int, resume_state: dict | None):
        """SGD + warm-up/cosine schedule + grad scaler of a training stage; a resume restores their state, then the
        config's momentum, weight decay and learning-rate schedule replace the saved ones (a resume may change
        them, and the values used are the ones recorded)."""
        cfg = self.cfg
        sched_cfg = getattr(cfg, TRAINING_STAGES[stage])
        params = [p for p in self.moco.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=sched_cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        lr_factor = cosine_warmup(int(sched_cfg.steps), sched_cfg.warmup_steps, sched_cfg.lr, sched_cfg.min_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.precision == "fp16")
        if resume_state is not None:
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            if resume_state.get("scaler"):
                scaler.load_state_dict(resume_state["scaler"])
            scheduler.base_lrs = [float(sched_cfg.lr)] * len(optimizer.param_groups)
            for group in optimizer.param_groups:
                group.update(momentum=cfg.momentum, weight_decay=cfg.weight_decay, initial_lr=float(sched_cfg.lr),
                             lr=float(sched_cfg.lr) * lr_factor(scheduler.last_epoch))
        return params, optimizer, scheduler, scaler

    def _train_stage(self, stage: int, start_step: int, resume_state: dict | None) -> None:
        from tdann_fast.models.taps import FeatureTaps

        cfg = self.cfg
        total = int(getattr(cfg, TRAINING_STAGES[stage]).steps)
        use_spatial = stage >= 5 and self.spatial_loss is not None
        weight = 1.0 if stage == 1 else float(cfg.moco.weight)  # 0: spatial only (the MoCo forward still runs)
        if stage >= 5 and self.spatial_loss is None:
            raise RuntimeError(f"stage {stage}: no spatial loss (stages 2-4 have not run)")
        model = self._wrap_ddp()
        self.moco.train()
        params, optimizer, scheduler, scaler = self._optimiser(stage, resume_state)
        if self.sheets:
            self._write_sheets(stage)  # the (frozen) positions this stage trains with, before its first checkpoint
        sdir = stage_dir(self.run_dir, stage)
        logger = MetricLogger(sdir, enabled=self.dist.is_main,
                              resume_step=start_step if resume_state is not None else None)
        layers = self.spatial_loss.layer_names if use_spatial else []
        taps = FeatureTaps(self.moco.encoder_q, layers) if layers else None
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=min(start_step, total), desc=f"stage {stage} {STAGES[stage]}",
                       dynamic_ncols=True)
        t_stage, n_timed = time.perf_counter(), 0
        t_last = time.perf_counter()
        step = start_step
        try:
            if step >= total:
                self._save(stage, step, True, optimizer, scheduler, scaler)
            while step < total:
                q_raw, k_raw = self._next_batch()
                q_raw = q_raw.to(self.device, non_blocking=True)
                k_raw = k_raw.to(self.device, non_blocking=True)
                im_q = self.augment(q_raw, self.aug_gen)
                im_k = self.augment(k_raw, self.aug_gen)
                with self._autocast():
                    loss_moco, logits, _ = model(im_q, im_k)
                loss = loss_moco if weight == 1.0 else weight * loss_moco  # weight 0: exactly the spatial loss
                loss_sp = None
                if use_spatial:
                    feats = {n: taps.features[n] for n in layers}
                    loss_sp = self.spatial_loss(feats)
                    loss = loss + loss_sp
                if taps is not None:
                    taps.clear()
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"stage {stage} step {step}: non-finite loss {float(loss)}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                n_timed += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if step % cfg.log_every == 0 or step == total:
                    acc = (logits.argmax(1) == 0).float().mean()
                    vals = {"loss": float(loss.detach()), "loss_moco": float(loss_moco.detach()), "acc1": float(acc),
                            "lr": optimizer.param_groups[0]["lr"],
                            "clips_per_s": cfg.batch_size * self.dist.world_size / max(dt, 1e-9),
                            "queue_ptr": int(self.moco.queue_ptr), "epoch": self.data_state["epoch"]}
                    if loss_sp is not None:
                        vals["loss_spatial"] = float(loss_sp.detach())
                        for n, v in self.spatial_loss.last_layer_losses.items():
                            vals[f"loss_spatial/{n}"] = float(v)
                    logger.log(step, vals)
                if step % cfg.checkpoint_every == 0 or step == total:
                    self._save(stage, step, step == total, optimizer, scheduler, scaler)
        finally:
            if bar is not None:
                bar.close()
            if taps is not None:
                taps.remove()
            logger.close()
        elapsed = time.perf_counter() - t_stage
        if n_timed:
            self.step_rates[f"stage{stage}_{STAGES[stage]}"] = n_timed / elapsed

    def _stage_retinotopic(self) -> None:
        from tdann_fast.presets import r3d18_mt

        d = self.cfg.data
        names = active_layers(self.cfg)
        sheets = None
        if self.dist.is_main:
            all_sheets = r3d18_mt(input_size=d.size, frames=d.frames, seed=self.cfg.seed,
                                  num_neighbourhoods=self.cfg.spatial.num_neighbourhoods)
            sheets = {n: all_sheets[n] for n in names}
        self.sheets = broadcast_object(sheets, self.dist)
        self.spatial_loss = None
        self._write_sheets(2)
        self._save(2, 0, True)

    def probe_batches(self):
        """The stage-3 probe set as normalised clip batches (B, 3, T, size, size): drifting gratings
        (:class:`tdann_fast.data.DriftingGratings`) when ``swap.probe`` is ``gratings`` or ``both``, then the centre
        crops of the query clips of training samples ``0..probe_clips-1`` when it is ``clips`` or ``both``."""
        d, s = self.cfg.data, self.cfg.swap
        n_clips, n_gratings = probe_counts(self.cfg)
        if n_gratings:
            from tdann_fast.data import DriftingGratings

            gratings = DriftingGratings(frames=d.frames, size=d.size, num_directions=s.grating_directions,
                                        spatial_freqs=s.grating_spatial_freqs, temporal_freqs=s.grating_temporal_freqs,
                                        num_phases=s.grating_phases, mean=d.mean, std=d.std)
            yield from gratings.batches(s.probe_batch_size)
        for start in range(0, n_clips, s.probe_batch_size):
            clips = []
            for i in range(start, min(start + s.probe_batch_size, n_clips)):
                q, _, faults = self.dataset[i]  # any index: samples past the videos draw other clips of them
                self._count_faults(faults)
                clips.append(q)
            yield self.augment.center(torch.stack(clips))

    @torch.no_grad()
    def probe_responses(self, layers=None) -> dict:
        """Time-mean responses (stimuli, units) of ``layers`` (default: every layer with a sheet) to the probe set
        (:meth:`probe_batches`)."""
        from tdann_fast.models.taps import FeatureTaps

        names = list(self.sheets) if layers is None else list(layers)
        out = {n: [] for n in names}
        enc = self.moco.encoder_q
        was_training = enc.training
        enc.eval()
        try:
            with FeatureTaps(enc, names) as taps:
                for b in self.probe_batches():
                    with self._autocast():
                        enc(b.to(self.device))
                    for n in names:
                        f = taps.features[n].float()
                        f = f.mean(2) if f.ndim == 5 else f
                        out[n].append(f.flatten(1).cpu())
                    taps.clear()
        finally:
            enc.train(was_training)
        return {n: torch.cat(v) for n, v in out.items()}

    def _stage_swap(self) -> None:
        cfg = self.cfg
        s = cfg.swap
        stats_all = {}
        sheets, probe = None, None
        if self.dist.is_main:
            try:
                from tdann_fast.swap import optimize_sheet_positions
            except ImportError as exc:  # the swap package is optional at this point
                optimize_sheet_positions = None
                warnings.warn(f"stage 3: tdann_fast.swap unavailable ({exc}); positions left retinotopic",
                              RuntimeWarning, stacklevel=2)
            sheets = dict(self.sheets)
            todo = [n for n in swap_layers(cfg) if swap_steps(cfg, n) > 0]
            if optimize_sheet_positions is None:
                todo = []
            if todo:
                responses = self.probe_responses(todo)
                for i, (name, sheet) in enumerate(self.sheets.items()):  # seed by sheet index: stable per layer
                    if name not in todo:
                        continue
                    steps = swap_steps(cfg, name)
                    new_sheet, stats = optimize_sheet_positions(
                        sheet, responses[name].numpy(), steps, objective=s.objective, seed=cfg.seed + i,
                        backend=s.backend, progress=cfg.progress,
                        neighbourhood_kwargs={"num_neighbourhoods": cfg.spatial.num_neighbourhoods,
                                              "seed": cfg.seed})
                    sheets[name] = new_sheet
                    stats_all[name] = {"backend": stats.backend, "steps": steps,
                                       "accepted": int(np.sum(stats.accepted)),
                                       "trials": int(np.sum(stats.trials)), "windows": int(stats.num_windows),
                                       "seconds": float(stats.seconds),
                                       "objective_before": float(np.nanmean(stats.objective_before))
                                       if np.isfinite(stats.objective_before).any() else None,
                                       "objective_after": float(np.nanmean(stats.objective_after))
                                       if np.isfinite(stats.objective_after).any() else None}
            probe = describe_probe(cfg, todo)
            atomic_write_text(stage_dir(self.run_dir, 3) / "swap_stats.json",
                              json.dumps({"probe": probe, "layers": stats_all}, indent=2))
        self.sheets, self._probe = broadcast_object((sheets, probe), self.dist)
        self._write_sheets(3)
        self._save(3, 0, True, extra={"swap": stats_all})

    def _stage_freeze(self) -> None:
        self.spatial_loss = self._make_spatial_loss(self.sheets)
        self.spatial_loss.freeze()
        self.sheets = self.spatial_loss.sheets_dict()
        self._write_sheets(4)
        self._save(4, 0, True)


def train(cfg: TrainConfig, resume: bool = False, from_stage: int | None = None, stop_after: int = 6,
          fallback: bool = False) -> dict:
    """Run the six-stage training described by ``cfg`` (see :class:`Trainer`)."""
    return Trainer(cfg, resume=resume, from_stage=from_stage, stop_after=stop_after, fallback=fallback).run()
