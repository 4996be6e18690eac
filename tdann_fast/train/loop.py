"""The step loop of the training stages (1 pre-train, 5 fine-tune, 6 full), the same for every task.

One step: the next batch of this rank → the task's two views → the task's contrastive loss, times the stage's
weight (stage 1: 1; stages 5-6: the task's ``weight``; 0 = spatial only, the contrastive forward still runs) →
plus the spatial loss on the encoder's tapped layers (stages 5-6, once positions exist) → backward, optional
gradient clipping, SGD with linear warm-up and cosine decay. Every ``log_every`` steps one row of metrics
(``metrics.csv`` + TensorBoard, one global step); every ``checkpoint_every`` steps and at the end a checkpoint.
"""
from __future__ import annotations

import math
import time

import torch

from . import checkpoint as ckpt_io
from .checkpoint import STAGES, TRAINING_STAGES, stage_dir
from .logging import MetricLogger


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


def make_optimiser(run, stage: int, resume_state: dict | None):
    """SGD + warm-up/cosine schedule + grad scaler of a training stage; a resume restores their state, then the
    config's momentum, weight decay and learning-rate schedule replace the saved ones (a resume may change
    them, and the values used are the ones recorded)."""
    cfg = run.cfg
    sched_cfg = getattr(cfg, TRAINING_STAGES[stage])
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=sched_cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    lr_factor = cosine_warmup(int(sched_cfg.steps), sched_cfg.warmup_steps, sched_cfg.lr, sched_cfg.min_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler("cuda", enabled=run.device.type == "cuda" and cfg.precision == "fp16")
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


def train_stage(run, stage: int, start_step: int = 0, resume_state: dict | None = None) -> None:
    """Train ``stage`` of ``run`` (a :class:`~tdann_fast.train.state.RunState`) from ``start_step`` to the
    stage's ``steps``; ``resume_state`` holds the optimiser, scheduler and scaler state of a resume inside it."""
    from tdann_fast.models.taps import FeatureTaps

    cfg, task = run.cfg, run.task
    total = int(getattr(cfg, TRAINING_STAGES[stage]).steps)
    if stage >= 5 and run.spatial_loss is None:
        raise RuntimeError(f"stage {stage}: no spatial loss (stages 2-4 have not run)")
    use_spatial = stage >= 5
    weight = 1.0 if stage == 1 else task.contrastive_weight  # 0: spatial only (the contrastive forward runs)
    model = run.wrapped_model()
    run.model.train()
    params, optimizer, scheduler, scaler = make_optimiser(run, stage, resume_state)
    if run.sheets:
        run.write_sheets(stage)  # the (frozen) positions this stage trains with, before its first checkpoint
    logger = MetricLogger(stage_dir(run.run_dir, stage), enabled=run.dist.is_main,
                          resume_step=start_step if resume_state is not None else None)
    layers = run.spatial_loss.layer_names if use_spatial else []
    taps = FeatureTaps(run.encoder, layers) if layers else None
    bar = None
    if cfg.progress and run.dist.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=min(start_step, total), desc=f"stage {stage} {STAGES[stage]}",
                   dynamic_ncols=True)
    t_stage = t_last = time.perf_counter()
    n_timed, step = 0, start_step
    try:
        if step >= total:
            ckpt_io.save_stage(run, stage, step, True, optimizer, scheduler, scaler)
        while step < total:
            views = task.views(run.next_batch(), run.aug_gen)
            with run.autocast():
                loss_task, aux = task.objective(model, views)
            loss = loss_task if weight == 1.0 else weight * loss_task  # weight 0: exactly the spatial loss
            loss_sp = None
            if use_spatial:
                loss_sp = run.spatial_loss({n: taps.features[n] for n in layers})
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
                vals = {"loss": float(loss.detach()), **task.step_metrics(loss_task, aux),
                        "lr": optimizer.param_groups[0]["lr"],
                        f"{task.sample_name}_per_s": cfg.batch_size * run.dist.world_size / max(dt, 1e-9),
                        **task.state_metrics(run.model), "epoch": run.data_state["epoch"]}
                if loss_sp is not None:
                    vals["loss_spatial"] = float(loss_sp.detach())
                    for n, v in run.spatial_loss.last_layer_losses.items():
                        vals[f"loss_spatial/{n}"] = float(v)
                logger.log(step, vals)
            if step % cfg.checkpoint_every == 0 or step == total:
                ckpt_io.save_stage(run, stage, step, step == total, optimizer, scheduler, scaler)
    finally:
        if bar is not None:
            bar.close()
        if taps is not None:
            taps.remove()
        logger.close()
    if n_timed:
        run.step_rates[f"stage{stage}_{STAGES[stage]}"] = n_timed / (time.perf_counter() - t_stage)
