"""The spatial correlation loss in plain, batched PyTorch (DESIGN §3): the CPU path and the reference for every
fast path.

All neighbourhoods of a layer are processed at once: gather (K, M, rows) unit responses, standardise, form the
K correlation matrices with one ``bmm``, gather their strict lower triangles with cached indices, and reduce each
to one loss value. No Python loop over pairs or neighbourhoods.

Package definitions on top of DESIGN §3 (shared by every backend):

* a unit is *dead* (zero variance) when ``std <= 1e-6·|mean|`` over the rows (this includes ``std == 0``); its
  std is replaced by 1, so its correlations are ~0 and its gradient finite;
* ``r = Sxy / sqrt(max(Sxx·Syy, 1e-30))``: when the correlations or the similarities of a neighbourhood have no
  variance (e.g. all units dead, or M = 2, a single pair) ``r = 0``, so SL_rel = 0.5 with zero gradient;
* computation in float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs.
"""
from __future__ import annotations

import functools

import torch

from .._validation import feature_geometry

DEAD_STD_RELATIVE = 1e-6
PEARSON_DENOM_FLOOR = 1e-30

__all__ = ["compute_dtype", "gather_units", "neighbourhood_losses", "layer_loss", "tril_flat_indices"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def _tril_flat_indices_cached(m: int, device: str) -> torch.Tensor:
    rows, cols = torch.tril_indices(m, m, offset=-1, device=device)
    return rows * m + cols


def tril_flat_indices(m: int, device) -> torch.Tensor:
    """Flat indices (i·M + j) of the strict lower triangle (i > j) of an M×M matrix; cached per (M, device)."""
    return _tril_flat_indices_cached(int(m), str(torch.device(device)))


def gather_units(features: torch.Tensor, neighbourhoods: torch.Tensor, time_reduction: str) -> torch.Tensor:
    """Responses of the units of every neighbourhood: (K, M, rows) in the compute dtype.

    Only the sampled units are read. ``time_reduction`` for (B, C, T, H, W) inputs: ``"mean"`` gives B rows (the
    time-mean response), ``"flatten"`` gives B·T rows (every (sample, frame) pair is an observation).
    """
    b, c, t, hw = feature_geometry(features)
    k, m = neighbourhoods.shape
    view = features.reshape(b, c, t, hw)
    flat = neighbourhoods.reshape(-1)
    g = view[:, torch.div(flat, hw, rounding_mode="floor"), :, flat % hw]  # (K·M, B, T)
    g = g.to(compute_dtype(features.dtype))
    if time_reduction == "mean":
        g = g.mean(dim=-1)
    elif time_reduction == "flatten":
        g = g.reshape(k * m, b * t)
    else:
        raise ValueError(f"gather_units: time_reduction must be 'mean' or 'flatten', got {time_reduction!r}")
    return g.reshape(k, m, -1)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """z-scores over the last axis (unbiased std); dead units get std := 1."""
    rows = x.shape[-1]
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).sum(dim=-1, keepdim=True) / (rows - 1)
    with torch.no_grad():
        dead = var <= (DEAD_STD_RELATIVE * mean) ** 2
    std = torch.where(dead, torch.ones_like(var), var).sqrt()
    return xc / std


def neighbourhood_losses(units: torch.Tensor, unit_positions: torch.Tensor, variant: str = "rel") -> torch.Tensor:
    """Loss of every neighbourhood: units (K, M, rows), unit_positions (K, M, 2) → (K,).

    R = Pearson correlations of the M units over the rows (clamped to [-1, 1]); S_ij = 1 / (d_ij + 1) from the
    Euclidean distances; strict lower triangle. ``"rel"``: (1 - Pearson(R, S)) / 2. ``"abs"``: mean |R - S|.
    """
    k, m, rows = units.shape
    z = _standardise(units)
    corr = torch.bmm(z, z.transpose(1, 2)) / (rows - 1)
    idx = tril_flat_indices(m, units.device)
    r_pairs = corr.reshape(k, m * m)[:, idx].clamp(-1.0, 1.0)
    pos = unit_positions.to(units.dtype)
    i, j = torch.div(idx, m, rounding_mode="floor"), idx % m
    dist = (pos[:, i, :] - pos[:, j, :]).norm(dim=-1)
    s_pairs = 1.0 / (dist + 1.0)
    if variant == "abs":
        return (r_pairs - s_pairs).abs().mean(dim=-1)
    if variant != "rel":
        raise ValueError(f"variant must be 'rel' or 'abs', got {variant!r}")
    rc = r_pairs - r_pairs.mean(dim=-1, keepdim=True)
    sc = s_pairs - s_pairs.mean(dim=-1, keepdim=True)
    sxy = (rc * sc).sum(dim=-1)
    sxx = (rc * rc).sum(dim=-1)
    syy = (sc * sc).sum(dim=-1)
    r = sxy / (sxx * syy).clamp_min(PEARSON_DENOM_FLOOR).sqrt()
    return (1.0 - r) / 2.0


def layer_loss(
    features: torch.Tensor,
    positions: torch.Tensor,
    neighbourhoods: torch.Tensor,
    variant: str = "rel",
    time_reduction: str = "mean",
) -> torch.Tensor:
    """Mean loss over the (K, M) ``neighbourhoods`` of one layer (inputs already validated): a 0-d tensor."""
    if time_reduction == "dual":
        if features.dim() != 5:  # no time axis: both time scales coincide
            return layer_loss(features, positions, neighbourhoods, variant, "mean")
        return 0.5 * (
            layer_loss(features, positions, neighbourhoods, variant, "mean")
            + layer_loss(features, positions, neighbourhoods, variant, "flatten")
        )
    units = gather_units(features, neighbourhoods, time_reduction)
    unit_positions = positions[neighbourhoods]
    return neighbourhood_losses(units, unit_positions, variant).mean()
