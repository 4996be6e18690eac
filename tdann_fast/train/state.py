"""The state of one training run in one process: what the stages, the step loop and the checkpoints share.

:class:`RunState` holds the config, the process's place in the world (:class:`DistInfo`), the task and the model
it trains, the data (source, dataset, resumable sampler, loader and the position in the epoch), the random
generator of the augmentation, the cortical sheets and the spatial loss, and the run's bookkeeping (lineage,
timings, the probe record, the sheet files written last). It builds those parts and keeps them consistent; it
runs no stage and writes no checkpoint (:mod:`tdann_fast.train.stages`, :mod:`tdann_fast.train.loop` and
:mod:`tdann_fast.train.checkpoint` do).
"""
from __future__ import annotations

import random
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tdann_fast._io import link_or_copy

from .checkpoint import sheet_digest, stage_dir
from .distributed import DistInfo
from .tasks import make_task


class RunState:
    """One run's state in this process (see the module docstring). ``build()`` seeds every generator from
    ``cfg.seed`` and makes the data and the model; nothing is written."""

    def __init__(self, cfg, dist: DistInfo):
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.run_dir = Path(cfg.run_dir)
        self.task = make_task(cfg, self.device, dist.rank)
        self.model: nn.Module | None = None
        self.ddp: nn.Module | None = None
        self.sheets: dict = {}
        self.spatial_loss = None
        self.probe: dict | None = None       # the stage-3 probe record, carried forward in stages 3-6
        self.model_ref: str | None = None    # where the weights of stages 2-4 are (the last training stage's file)
        self.sheet_files: dict = {}          # layer -> (file, digest) of the sheet files written last
        self.faults = Counter()              # data fault records seen by this process (summary.json)
        self.lineage: list = []
        self.timings: dict[str, float] = {}
        self.step_rates: dict[str, float] = {}
        self._batches = None

    # ------------------------------------------------------------------------------------------------ building
    def build(self) -> None:
        """Seeds, data and model (in this order: the model's initialisation draws from the seeded generators)."""
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.seed_all(cfg.seed)
        self.source, self.dataset, collate = self.task.build_data(cfg.seed, self.dist.world_size)
        from tdann_fast.data import ResumableSampler

        self.sampler = ResumableSampler(len(self.dataset), self.dist.world_size, self.dist.rank, seed=cfg.seed)
        d = cfg.data
        self.loader_kwargs = dict(batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
                                  collate_fn=collate, num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                                  pin_memory=self.device.type == "cuda")
        self.loader = torch.utils.data.DataLoader(self.dataset, **self.loader_kwargs)
        self.data_state = {"epoch": 0, "batches": 0, "video_faults": {}}
        self._batches = None
        distinct = len(self.source) if d.clips_per_epoch == 0 else max(len(self.source), d.clips_per_epoch)
        self.model = self.task.build_model(distinct)
        self.ddp = None

    @property
    def encoder(self) -> nn.Module:
        """The network whose layers get cortical sheets."""
        return self.task.encoder(self.model)

    def seed_all(self, base: int) -> None:
        """Python, NumPy and torch RNGs and the augmentation generator of this rank, from ``base``."""
        seed = base + 1000 * self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 17)

    def use_finetune_seed(self, fresh: bool) -> None:
        """Stages 5-6 with ``finetune_seed``: data order (sampler) and sample draws (dataset) from it; ``fresh``
        (the start of stage 5) also reseeds every RNG, restarts the data epochs and the neighbourhood sampler.
        After a restore inside stages 5-6, only the seeds of sampler and dataset are set (the RNG states, data
        position and sampler state come from the checkpoint)."""
        fs = self.cfg.finetune_seed
        self.sampler.seed = fs
        self.dataset.seed = fs
        self._batches = None
        self.loader = torch.utils.data.DataLoader(self.dataset, **self.loader_kwargs)  # workers copy the dataset
        if fresh:
            self.seed_all(fs)
            self.data_state = {"epoch": 0, "batches": 0, "video_faults": self.data_state.get("video_faults", {})}
            frozen = self.spatial_loss is not None and self.spatial_loss.frozen
            self.spatial_loss = self.make_spatial_loss(self.sheets, seed=fs)
            if frozen:
                self.spatial_loss.freeze()

    def wrapped_model(self) -> nn.Module:
        """The model for the forward pass: DistributedDataParallel around it when the world size is > 1."""
        if not self.dist.distributed:
            return self.model
        if self.ddp is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids, broadcast_buffers=False)
        return self.ddp

    def autocast(self):
        """bf16/fp16 autocast on CUDA as ``precision`` asks; nothing on the CPU."""
        if self.device.type == "cuda" and self.cfg.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    # ------------------------------------------------------------------------------------------------ data
    def next_batch(self) -> tuple:
        """The next batch of this rank, without its fault records (counted here); a new epoch starts when the
        loader is exhausted."""
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
            *tensors, faults = batch
            self.count_faults(faults)
            return tuple(tensors)

    def count_faults(self, faults) -> None:
        """Data faults travel with the samples (from the DataLoader workers too): count them in the data state
        (saved in checkpoints, so a resume keeps the counts)."""
        if not faults:
            return
        counts = self.data_state.setdefault("video_faults", {})
        for f in faults:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        self.faults.update(faults)

    def close_data(self) -> None:
        self._batches = None

    # ------------------------------------------------------------------------------------------------ spatial
    def alpha_arg(self):
        a = self.cfg.spatial.alpha
        return {k: float(v) for k, v in a.items()} if isinstance(a, dict) else float(a)

    def make_spatial_loss(self, sheets, seed: int | None = None):
        from tdann_fast.loss import SpatialLoss

        s = self.cfg.spatial
        seed = self.cfg.seed if seed is None else seed
        return SpatialLoss(sheets, alpha=self.alpha_arg(), variant=s.variant,
                           neighbourhoods_per_step=s.neighbourhoods_per_step, time_reduction=s.time_reduction,
                           seed=seed + self.dist.rank, gather_distributed=s.gather_distributed,
                           backend=s.backend).to(self.device)

    def effective_alpha(self):
        """The alpha the spatial loss actually uses (read from its state): a float, or {layer: float}."""
        if self.spatial_loss is None:
            return 0.0
        values = [float(v) for v in self.spatial_loss.alpha.detach().cpu()]
        if not isinstance(self.cfg.spatial.alpha, dict) and len(set(values)) == 1:
            return values[0]
        return dict(zip(self.spatial_loss.layer_names, values))

    def spatial_state(self) -> dict | None:
        """The spatial loss's state without the positions and tables (they are the stage's sheet files)."""
        if self.spatial_loss is None:
            return None
        return {k: v for k, v in self.spatial_loss.state_dict().items()
                if not (k.startswith("sheets.") and k.rsplit(".", 1)[-1] in ("positions", "neighbourhoods"))}

    def write_sheets(self, stage: int) -> None:
        """The stage's sheet files (rank 0); a sheet equal to the one written last is hard-linked, not written
        again."""
        if not self.dist.is_main:
            return
        out = stage_dir(self.run_dir, stage) / "sheets"
        files = {}
        for name, sheet in self.sheets.items():
            target = out / f"{name}.pt"
            digest = sheet_digest(sheet)
            prev = self.sheet_files.get(name)
            if prev is not None and prev[1] == digest and prev[0].is_file():
                if prev[0].resolve() != target.resolve():
                    link_or_copy(prev[0], target)
            else:
                sheet.save(target)
            files[name] = (target, digest)
        self.sheet_files = files
