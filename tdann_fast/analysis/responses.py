"""Run grating stimuli through a model and read one layer's unit responses (DESIGN §7).

A unit's response to a stimulus is its time-mean activation (video models), averaged over phases, taken at the
unit's best spatial × temporal frequency (the condition with the largest peak response over directions).
The forward pass stops right after the analysed layer (the rest of the network is not run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from tdann_fast.models.taps import FeatureTaps, resolve_module

__all__ = ["GratingResponses", "layer_responses", "grating_responses"]


class _StopForward(Exception):
    pass


@dataclass
class GratingResponses:
    """``responses`` (N, D) at each unit's best condition; ``full`` (N, D, SF, TF) phase-averaged;
    ``best_sf``/``best_tf`` (N,) indices; ``directions`` (D,) radians; ``period`` 2π or π."""

    responses: np.ndarray
    full: np.ndarray
    best_sf: np.ndarray
    best_tf: np.ndarray
    directions: np.ndarray
    period: float
    layer_shape: tuple


@torch.no_grad()
def layer_responses(
    model: nn.Module,
    layer: str,
    stimuli,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
):
    """Responses (S, N) float32 of ``layer`` (flattened C·H·W after the time-mean) to every stimulus in order,
    plus the layer's per-sample output shape. ``stimuli`` is a :class:`DriftingGratings`/:class:`StaticGratings`
    (anything with ``__len__`` and ``clips(indices)``)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    module = resolve_module(model, layer)  # KeyError for unknown names
    was_training = model.training
    model.eval()
    device = torch.device(device)

    def stop(_m, _i, _o):
        raise _StopForward

    out = None
    shape = None
    n = len(stimuli)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=n, desc=f"gratings -> {layer}", unit="stim", disable=not progress) if tqdm else None
    taps = FeatureTaps(model, [layer], detach=True)
    handle = module.register_forward_hook(stop)  # registered after the tap: runs after it, then stops
    try:
        for s in range(0, n, batch_size):
            idx = list(range(s, min(s + batch_size, n)))
            x = stimuli.clips(idx).to(device=device, dtype=dtype)
            try:
                model(x)
            except _StopForward:
                pass
            feats = taps.features[layer]
            if feats.dim() == 5:      # (B, C, T, H, W): time-mean
                feats = feats.mean(2)
            shape = tuple(feats.shape[1:])
            flat = feats.reshape(feats.shape[0], -1).float().cpu().numpy()
            if out is None:
                out = np.empty((n, flat.shape[1]), dtype=np.float32)
            out[s:s + len(idx)] = flat
            taps.clear()
            if bar is not None:
                bar.update(len(idx))
    finally:
        handle.remove()
        taps.remove()
        if bar is not None:
            bar.close()
        model.train(was_training)
    return out, shape


def grating_responses(
    model: nn.Module,
    layer: str,
    stimuli,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> GratingResponses:
    """Tuning curves of every unit of ``layer``: phase-averaged, at the unit's best SF × TF (see module doc)."""
    raw, shape = layer_responses(model, layer, stimuli, batch_size=batch_size, device=device, progress=progress)
    d, nsf, ntf, nph = stimuli.shape
    full = raw.reshape(d, nsf, ntf, nph, -1).mean(3)          # (D, SF, TF, N)
    full = np.moveaxis(full, -1, 0)                            # (N, D, SF, TF)
    peak = full.max(1).reshape(full.shape[0], -1)              # (N, SF*TF)
    best = peak.argmax(1)
    best_sf, best_tf = np.unravel_index(best, (nsf, ntf))
    resp = full[np.arange(full.shape[0]), :, best_sf, best_tf]  # (N, D)
    return GratingResponses(
        responses=np.ascontiguousarray(resp, dtype=np.float32), full=full.astype(np.float32),
        best_sf=best_sf.astype(np.int64), best_tf=best_tf.astype(np.int64), directions=stimuli.directions,
        period=float(stimuli.period), layer_shape=shape,
    )
