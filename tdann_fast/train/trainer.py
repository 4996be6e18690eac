"""The six-stage TDANN training run (DESIGN §6): MoCo v2 on video with r3d_18, single process or torchrun/DDP.

Stages (each writes ``run_dir/stage{N}_{name}/``; any stage can be resumed, or rerun with ``from_stage``):

1. ``pretrain``    -- contrastive loss only (alpha = 0);
2. ``retinotopic`` -- retinotopic positions from the ``r3d18_mt`` preset at the training clip size;
3. ``swap``        -- positions swap-optimised on the pre-trained encoder's responses to gratings + video clips;
4. ``freeze``      -- positions frozen (``SpatialLoss.freeze()``; buffers, never parameters);
5. ``finetune``    -- joint fine-tuning, contrastive + spatial loss;
6. ``full``        -- full training with the composite loss.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from .checkpoint import (FORMAT, STAGES, atomic_save, checkpoint_path, latest_checkpoint, load_checkpoint,
                         remove_stale_temporaries, sheets_from_state, sheets_to_state, stage_dir)
from .config import TrainConfig, config_to_dict
from .distributed import DistInfo, barrier, broadcast_object, cleanup, gather_objects, init_distributed
from .logging import MetricLogger

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


def _rng_state(aug_gen: torch.Generator) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "augment": aug_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, aug_gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    aug_gen.set_state(state["augment"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        except Exception:
            pass


class Trainer:
    """Runs (or resumes) the six stages of one training run described by a :class:`TrainConfig`.

    Args:
        cfg: the configuration. resume: continue from the latest checkpoint in ``cfg.run_dir``.
        from_stage: (re)run from this stage, starting from the completed checkpoint of the stage before it
            (later stages' checkpoints are renamed ``checkpoint.superseded.pt``).
        stop_after: stop once this stage has completed.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, from_stage: int | None = None,
                 stop_after: int = 6):
        if from_stage is not None and from_stage not in STAGES:
            raise ValueError(f"from_stage: expected 1..6, got {from_stage!r}")
        if stop_after not in STAGES:
            raise ValueError(f"stop_after: expected 1..6, got {stop_after!r}")
        self.cfg, self.resume, self.from_stage, self.stop_after = cfg, resume, from_stage, stop_after
        self.run_dir = Path(cfg.run_dir)
        self.timings: dict[str, float] = {}
        self.step_rates: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        self.dist: DistInfo = init_distributed(cfg.device)
        self.device = self.dist.device
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed = cfg.seed + 1000 * self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 17)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        barrier(self.dist)
        self._build_data()
        self._build_model()
        self.sheets: dict = {}
        self.spatial_loss = None

    def _build_data(self) -> None:
        from tdann_fast.data import (ClipAugment, ClipPairDataset, ResumableSampler, SyntheticMotion,
                                     VideoFolder, collate_pairs, embedded_default)

        d = self.cfg.data
        load = d.load_size or int(round(1.25 * d.size))
        if d.source == "embedded":
            source = embedded_default(load, d.synthetic_videos, d.synthetic_frames, seed=self.cfg.seed)
        elif d.source == "synthetic":
            source = SyntheticMotion(d.synthetic_videos, num_frames=d.synthetic_frames, side=load, seed=self.cfg.seed)
        else:
            source = VideoFolder(d.root, side=load, cache_in_memory=d.cache_in_memory)
            if len(source) == 0:
                raise ValueError(f"data.root: no readable videos under {d.root!r} (skipped: {len(source.skipped)})")
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
        self.data_state = {"epoch": 0, "batches": 0}
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
                self.data_state["batches"] += 1
                return batch
            except StopIteration:
                self._batches = None
                self.data_state = {"epoch": self.data_state["epoch"] + 1, "batches": 0}

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _alpha(self):
        a = self.cfg.spatial.alpha
        return dict(a) if isinstance(a, dict) else float(a)

    def _save(self, stage: int, step: int, complete: bool, optimizer=None, scheduler=None, scaler=None,
              extra: dict | None = None) -> None:
        rng_all = gather_objects(_rng_state(self.aug_gen), self.dist)
        if not self.dist.is_main:
            barrier(self.dist)
            return
        weights_change = stage in TRAINING_STAGES
        ckpt = {
            "format": FORMAT, "stage": stage, "stage_name": STAGES[stage], "step": int(step),
            "complete": bool(complete), "config": config_to_dict(self.cfg),
            "model": self.moco.state_dict() if weights_change or self._model_ref is None else None,
            "model_ref": None if weights_change else self._model_ref,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "spatial_loss": self.spatial_loss.state_dict() if self.spatial_loss is not None else None,
            "sheets": sheets_to_state(self.sheets) if self.sheets else None,
            "frozen": bool(self.spatial_loss is not None and self.spatial_loss.frozen),
            "alpha": self._alpha() if stage >= 5 else 0.0,
            "rng": rng_all, "data_state": dict(self.data_state), "world_size": self.dist.world_size,
            "queue_ptr": int(self.moco.queue_ptr), "positions_sha1": positions_digest(self.sheets),
            "extra": extra or {},
        }
        if ckpt["model"] is None and self._model_ref is None:
            ckpt["model"] = self.moco.state_dict()
        path = checkpoint_path(self.run_dir, stage)
        atomic_save(ckpt, path)
        if weights_change:
            self._model_ref = f"../{path.parent.name}/{path.name}"
        barrier(self.dist)

    def _restore(self, ckpt: dict) -> None:
        self.moco.load_state_dict(ckpt["model"])
        self.sheets = sheets_from_state(ckpt.get("sheets"))
        self.spatial_loss = None
        if ckpt.get("spatial_loss") is not None:
            self.spatial_loss = self._make_spatial_loss(self.sheets)
            self.spatial_loss.load_state_dict(ckpt["spatial_loss"])
        self.data_state = dict(ckpt.get("data_state", {"epoch": 0, "batches": 0}))
        if ckpt.get("world_size", 1) != self.dist.world_size:
            warnings.warn(f"resuming a run written with world size {ckpt.get('world_size')} on "
                          f"{self.dist.world_size} ranks: the data order restarts at the current epoch",
                          RuntimeWarning, stacklevel=2)
            self.data_state["batches"] = 0
        rngs = ckpt.get("rng") or []
        if self.dist.rank < len(rngs):
            _set_rng_state(rngs[self.dist.rank], self.aug_gen)
        self._batches = None
        stage = ckpt["stage"]
        if stage in TRAINING_STAGES:
            self._model_ref = f"../{stage_dir(self.run_dir, stage).name}/checkpoint.pt"
        else:
            ref = ckpt.get("model_ref")
            self._model_ref = ref

    # ------------------------------------------------------------------------------------------------ spatial
    def _layer_names(self) -> list:
        from tdann_fast.presets import r3d18_layer_shapes

        names = list(r3d18_layer_shapes(self.cfg.data.size))
        if self.cfg.spatial.layers:
            unknown = [n for n in self.cfg.spatial.layers if n not in names]
            if unknown:
                raise KeyError(f"spatial.layers: unknown layer(s) {unknown}; r3d18_mt layers are {names}")
            names = [n for n in names if n in self.cfg.spatial.layers]
        return names

    def _make_spatial_loss(self, sheets):
        from tdann_fast.loss import SpatialLoss

        s = self.cfg.spatial
        alpha = s.alpha if not isinstance(s.alpha, dict) else {k: float(v) for k, v in s.alpha.items()}
        return SpatialLoss(sheets, alpha=alpha, variant=s.variant, neighbourhoods_per_step=s.neighbourhoods_per_step,
                           time_reduction=s.time_reduction, seed=self.cfg.seed + self.dist.rank,
                           gather_distributed=s.gather_distributed, backend=s.backend).to(self.device)

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        """Run the remaining stages; returns a summary (stage timings, steps/s, where the outputs are)."""
        self._setup()
        try:
            start, start_step, ckpt = self._starting_point()
            for stage in range(start, self.stop_after + 1):
                t0 = time.perf_counter()
                step0 = start_step if stage == start else 0
                resume_ckpt = ckpt if stage == start and ckpt is not None and not ckpt.get("complete") else None
                if stage in TRAINING_STAGES:
                    self._train_stage(stage, step0, resume_ckpt)
                elif stage == 2:
                    self._stage_retinotopic()
                elif stage == 3:
                    self._stage_swap()
                else:
                    self._stage_freeze()
                self.timings[f"stage{stage}_{STAGES[stage]}"] = time.perf_counter() - t0
            summary = {"run_dir": str(self.run_dir), "timings_s": self.timings, "steps_per_s": self.step_rates,
                       "latest_checkpoint": str(latest_checkpoint(self.run_dir)),
                       "skipped_videos": len(getattr(self.source, "skipped", [])),
                       "video_read_failures": int(getattr(self.source, "read_failures", 0))}
            if self.dist.is_main:
                with (self.run_dir / "summary.json").open("w") as fh:
                    json.dump(summary, fh, indent=2)
            return summary
        finally:
            self._batches = None
            cleanup(self.dist)

    def _starting_point(self):
        """(first stage to run, step inside it, checkpoint to resume from or None)."""
        self._model_ref = None
        if self.from_stage is not None and self.from_stage > 1:
            prev = checkpoint_path(self.run_dir, self.from_stage - 1)
            if not prev.is_file():
                raise FileNotFoundError(f"from_stage={self.from_stage}: needs the checkpoint of stage "
                                        f"{self.from_stage - 1} at {prev}")
            ckpt = load_checkpoint(prev, map_location=self.device)
            if not ckpt.get("complete"):
                raise ValueError(f"from_stage={self.from_stage}: stage {self.from_stage - 1} is not complete")
            self._supersede(self.from_stage)
            self._restore(ckpt)
            return self.from_stage, 0, None
        if self.from_stage == 1:
            self._supersede(1)
            return 1, 0, None
        if not self.resume:
            if latest_checkpoint(self.run_dir) is not None:
                raise FileExistsError(f"run_dir {self.run_dir} already holds checkpoints: pass resume=True "
                                      f"(--resume) to continue, from_stage to rerun, or use another run_dir")
            return 1, 0, None
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return 1, 0, None
        ckpt = load_checkpoint(path, map_location=self.device)
        self._restore(ckpt)
        if self.dist.is_main:
            record = {"checkpoint": str(path), "stage": ckpt["stage"], "step": ckpt["step"],
                      "complete": ckpt["complete"], "queue_ptr": int(self.moco.queue_ptr),
                      "positions_sha1": positions_digest(self.sheets), "data_state": self.data_state,
                      "time": time.time()}
            with (self.run_dir / "resume_log.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if ckpt["complete"]:
            return ckpt["stage"] + 1, 0, None
        return ckpt["stage"], int(ckpt["step"]), ckpt

    def _supersede(self, first: int) -> None:
        if not self.dist.is_main:
            return
        for stage in range(first, 7):
            p = checkpoint_path(self.run_dir, stage)
            if p.is_file():
                p.replace(p.with_name("checkpoint.superseded.pt"))

    # ------------------------------------------------------------------------------------------------ stages
    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    def _train_stage(self, stage: int, start_step: int, ckpt: dict | None) -> None:
        from tdann_fast.models.taps import FeatureTaps

        cfg = self.cfg
        sched_cfg = getattr(cfg, TRAINING_STAGES[stage])
        total = int(sched_cfg.steps)
        use_spatial = stage >= 5 and self.spatial_loss is not None
        if stage >= 5 and self.spatial_loss is None:
            raise RuntimeError(f"stage {stage}: no spatial loss (stages 2-4 have not run)")
        model = self._wrap_ddp()
        self.moco.train()
        params = [p for p in self.moco.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=sched_cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_warmup(total, sched_cfg.warmup_steps, sched_cfg.lr, sched_cfg.min_lr))
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.precision == "fp16")
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        sdir = stage_dir(self.run_dir, stage)
        logger = MetricLogger(sdir, enabled=self.dist.is_main, resume_step=start_step if ckpt is not None else None)
        layers = self.spatial_loss.layer_names if use_spatial else []
        taps = FeatureTaps(self.moco.encoder_q, layers) if layers else None
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=start_step, desc=f"stage {stage} {STAGES[stage]}", dynamic_ncols=True)
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
                loss = loss_moco
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
        if self.sheets:
            self._write_sheets(stage)  # the (frozen) positions this stage trained with
        elapsed = time.perf_counter() - t_stage
        if n_timed:
            self.step_rates[f"stage{stage}_{STAGES[stage]}"] = n_timed / elapsed

    def _stage_retinotopic(self) -> None:
        from tdann_fast.presets import r3d18_mt

        d = self.cfg.data
        names = self._layer_names()
        sheets = None
        if self.dist.is_main:
            all_sheets = r3d18_mt(input_size=d.size, frames=d.frames, seed=self.cfg.seed,
                                  num_neighbourhoods=self.cfg.spatial.num_neighbourhoods)
            sheets = {n: all_sheets[n] for n in names}
        self.sheets = broadcast_object(sheets, self.dist)
        self.spatial_loss = None
        self._write_sheets(2)
        self._save(2, 0, True)

    def _write_sheets(self, stage: int) -> None:
        if not self.dist.is_main:
            return
        out = stage_dir(self.run_dir, stage) / "sheets"
        out.mkdir(parents=True, exist_ok=True)
        for name, sheet in self.sheets.items():
            sheet.save(out / f"{name}.pt")

    @torch.no_grad()
    def probe_responses(self) -> dict:
        """Time-mean responses (stimuli, units) of every tapped layer to the probe set (gratings + clips)."""
        from tdann_fast.data import drifting_gratings
        from tdann_fast.models.taps import FeatureTaps

        d, s = self.cfg.data, self.cfg.swap
        gratings, _ = drifting_gratings(d.size, d.frames, s.grating_directions, s.grating_spatial_freqs,
                                        s.grating_temporal_freqs, s.grating_phases, mean=d.mean, std=d.std)
        clips = []
        n_videos = min(s.probe_clips, len(self.dataset))
        for i in range(n_videos):
            q, _ = self.dataset[i]
            clips.append(q)
        batches = list(gratings.split(s.probe_batch_size))
        if clips:
            raw = torch.stack(clips)
            batches += [self.augment.center(b) for b in raw.split(s.probe_batch_size)]
        names = list(self.sheets)
        out = {n: [] for n in names}
        enc = self.moco.encoder_q
        was_training = enc.training
        enc.eval()
        try:
            with FeatureTaps(enc, names) as taps:
                for b in batches:
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
        s = self.cfg.swap
        stats_all = {}
        sheets = None
        if self.dist.is_main:
            try:
                from tdann_fast.swap import optimize_sheet_positions
            except ImportError as exc:  # the swap package is optional at this point
                optimize_sheet_positions = None
                warnings.warn(f"stage 3: tdann_fast.swap unavailable ({exc}); positions left retinotopic",
                              RuntimeWarning, stacklevel=2)
            sheets = dict(self.sheets)
            if optimize_sheet_positions is not None and s.steps > 0:
                responses = self.probe_responses()
                for i, (name, sheet) in enumerate(self.sheets.items()):
                    new_sheet, stats = optimize_sheet_positions(
                        sheet, responses[name].numpy(), s.steps, objective=s.objective, seed=self.cfg.seed + i,
                        backend=s.backend, progress=self.cfg.progress,
                        neighbourhood_kwargs={"num_neighbourhoods": self.cfg.spatial.num_neighbourhoods,
                                              "seed": self.cfg.seed})
                    sheets[name] = new_sheet
                    stats_all[name] = {"backend": stats.backend, "accepted": int(np.sum(stats.accepted)),
                                       "trials": int(np.sum(stats.trials)), "windows": int(stats.num_windows),
                                       "seconds": float(stats.seconds),
                                       "objective_before": float(np.nanmean(stats.objective_before))
                                       if np.isfinite(stats.objective_before).any() else None,
                                       "objective_after": float(np.nanmean(stats.objective_after))
                                       if np.isfinite(stats.objective_after).any() else None}
            sdir = stage_dir(self.run_dir, 3)
            sdir.mkdir(parents=True, exist_ok=True)
            (sdir / "swap_stats.json").write_text(json.dumps(stats_all, indent=2))
        self.sheets = broadcast_object(sheets, self.dist)
        self._write_sheets(3)
        self._save(3, 0, True, extra={"swap": stats_all})

    def _stage_freeze(self) -> None:
        self.spatial_loss = self._make_spatial_loss(self.sheets)
        self.spatial_loss.freeze()
        self.sheets = self.spatial_loss.sheets_dict()
        self._write_sheets(4)
        self._save(4, 0, True)


def train(cfg: TrainConfig, resume: bool = False, from_stage: int | None = None, stop_after: int = 6) -> dict:
    """Run the six-stage training described by ``cfg`` (see :class:`Trainer`)."""
    return Trainer(cfg, resume=resume, from_stage=from_stage, stop_after=stop_after).run()
