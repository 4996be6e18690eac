"""The six stages of a TDANN run (DESIGN §6) as a table of functions, the same for every task.

======  ===============  ======================================================================================
stage   name             what it does
======  ===============  ======================================================================================
1       ``pretrain``     contrastive loss only (alpha = 0): :func:`tdann_fast.train.loop.train_stage`
2       ``retinotopic``  retinotopic positions from the task's preset at the training input size
3       ``swap``         positions swap-optimised on the pre-trained encoder's responses to the task's probe set
                         (training samples by default; gratings only when asked); the probe record is kept
4       ``freeze``       positions frozen (``SpatialLoss.freeze()``: state, never parameters)
5       ``finetune``     the task's weight × contrastive loss + spatial loss (alpha > 0: joint; alpha = 0:
                         contrastive only; weight 0: spatial only)
6       ``full``         full training with the same composite loss
======  ===============  ======================================================================================

Every stage function takes ``(run, start_step, resume_state)``: the :class:`~tdann_fast.train.state.RunState`,
the step to start from (a resume inside a training stage) and the optimiser state of that resume (or None).
"""
from __future__ import annotations

import json
import warnings
from typing import Callable, Dict

import numpy as np
import torch

from tdann_fast._io import atomic_write_text

from . import checkpoint as ckpt_io
from .checkpoint import stage_dir
from .config import active_layers, swap_layers, swap_steps
from .distributed import broadcast_object
from .loop import train_stage


def retinotopic(run, start_step: int = 0, resume_state=None) -> None:
    """Stage 2: the preset's retinotopic sheets for the layers of ``spatial.layers`` (made on rank 0)."""
    sheets = run.task.sheets(active_layers(run.cfg)) if run.dist.is_main else None
    run.sheets = broadcast_object(sheets, run.dist)
    run.spatial_loss = None
    run.write_sheets(2)
    ckpt_io.save_stage(run, 2, 0, True)


@torch.no_grad()
def probe_responses(run, layers=None) -> dict:
    """Responses (stimuli, units) of ``layers`` (default: every layer with a sheet) to the task's probe set,
    time-mean for clips."""
    from tdann_fast.models.taps import FeatureTaps

    names = list(run.sheets) if layers is None else list(layers)
    out = {n: [] for n in names}
    enc = run.encoder
    was_training = enc.training
    enc.eval()
    try:
        with FeatureTaps(enc, names) as taps:
            for b in run.task.probe_batches(run.dataset, run.count_faults):
                with run.autocast():
                    enc(b.to(run.device))
                for n in names:
                    f = taps.features[n].float()
                    f = f.mean(2) if f.ndim == 5 else f
                    out[n].append(f.flatten(1).cpu())
                taps.clear()
    finally:
        enc.train(was_training)
    return {n: torch.cat(v) for n, v in out.items()}


def _swap_record(stats, steps: int) -> dict:
    def mean(values):
        return float(np.nanmean(values)) if np.isfinite(values).any() else None
    return {"backend": stats.backend, "steps": steps, "accepted": int(np.sum(stats.accepted)),
            "trials": int(np.sum(stats.trials)), "windows": int(stats.num_windows), "seconds": float(stats.seconds),
            "objective_before": mean(stats.objective_before), "objective_after": mean(stats.objective_after)}


def swap(run, start_step: int = 0, resume_state=None) -> None:
    """Stage 3: swap-optimise the positions of ``swap.layers`` on the probe responses (rank 0; the result is
    broadcast). Writes ``swap_stats.json`` (the probe record and per-layer statistics)."""
    cfg = run.cfg
    stats_all, sheets, probe = {}, None, None
    if run.dist.is_main:
        try:
            from tdann_fast.swap import optimize_sheet_positions
        except ImportError as exc:  # the swap package is optional at this point
            optimize_sheet_positions = None
            warnings.warn(f"stage 3: tdann_fast.swap unavailable ({exc}); positions left retinotopic",
                          RuntimeWarning, stacklevel=2)
        sheets = dict(run.sheets)
        todo = [n for n in swap_layers(cfg) if swap_steps(cfg, n) > 0] if optimize_sheet_positions else []
        if todo:
            responses = probe_responses(run, todo)
            for i, (name, sheet) in enumerate(run.sheets.items()):  # seed by sheet index: stable per layer
                if name not in todo:
                    continue
                steps = swap_steps(cfg, name)
                sheets[name], stats = optimize_sheet_positions(
                    sheet, responses[name].numpy(), steps, objective=cfg.swap.objective, seed=cfg.seed + i,
                    backend=cfg.swap.backend, progress=cfg.progress,
                    neighbourhood_kwargs={"num_neighbourhoods": cfg.spatial.num_neighbourhoods, "seed": cfg.seed})
                stats_all[name] = _swap_record(stats, steps)
        probe = run.task.describe_probe(todo)
        atomic_write_text(stage_dir(run.run_dir, 3) / "swap_stats.json",
                          json.dumps({"probe": probe, "layers": stats_all}, indent=2))
    run.sheets, run.probe = broadcast_object((sheets, probe), run.dist)
    run.write_sheets(3)
    ckpt_io.save_stage(run, 3, 0, True, extra={"swap": stats_all})


def freeze(run, start_step: int = 0, resume_state=None) -> None:
    """Stage 4: the spatial loss over the swapped sheets, positions frozen."""
    run.spatial_loss = run.make_spatial_loss(run.sheets)
    run.spatial_loss.freeze()
    run.sheets = run.spatial_loss.sheets_dict()
    run.write_sheets(4)
    ckpt_io.save_stage(run, 4, 0, True)


def _training(stage: int) -> Callable:
    def run_stage(run, start_step: int = 0, resume_state=None) -> None:
        train_stage(run, stage, start_step, resume_state)
    run_stage.__name__ = ckpt_io.STAGES[stage]
    run_stage.__doc__ = f"Stage {stage}: :func:`tdann_fast.train.loop.train_stage` for stage {stage}."
    return run_stage


STAGE_FUNCTIONS: Dict[int, Callable] = {1: _training(1), 2: retinotopic, 3: swap, 4: freeze,
                                        5: _training(5), 6: _training(6)}
