"""The spatial correlation loss in plain PyTorch autograd (DESIGN §3): the oracle every backend is tested against.

Readable rather than fast: plain indexing, the strict lower triangle, autograd for every derivative (so second
derivatives work too). The optimised CPU path is ``batched.py``; the CUDA path ``triton_ops.py``.

Package definitions on top of DESIGN §3 (shared by every backend):

* a unit is *dead* (zero variance) when ``std <= 1e-6·|mean|`` over the rows (this includes ``std == 0``); its
  std is replaced by 1, so its correlations are ~0 and its gradient finite;
* standardisation is scale-safe: with ``spread = max - min`` of a unit's rows, ``u = (x - mean) / spread``
  (|u| <= 1), ``std = spread · ||u|| / sqrt(rows - 1)``, and the dead-unit test compares ``||u|| / sqrt(rows - 1)``
  with ``1e-6·|mean| / spread``: no overflow or underflow for any finite fp32 activations (Pearson correlations are
  scale-invariant). A unit with ``spread == 0`` is dead and its mean is its exact value (its centred responses are
  exactly 0);
* ``r = Sxy / sqrt(max(Sxx·Syy, 1e-30))`` (the floor a constant): when R or S has no variance over the pairs (all
  units dead, or M = 2) ``r = 0`` and SL_rel = 0.5 with zero gradient;
* computed in float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs;
* ``time_reduction="dual"`` is the mean of the ``"mean"`` and ``"flatten"`` losses (for T = 1 both are equal).
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from .._validation import VARIANTS, check_choice, check_not_complex, feature_geometry

DEAD_STD_RELATIVE = 1e-6
PEARSON_DENOM_FLOOR = 1e-30

__all__ = ["compute_dtype", "gather_units", "unit_rows", "neighbourhood_losses", "units_loss", "layer_loss",
           "layer_losses"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gather_units(features: torch.Tensor, neighbourhoods: torch.Tensor) -> torch.Tensor:
    """Responses of the units of the (K, M) ``neighbourhoods`` at every frame: (B, K·M, T), plain indexing."""
    b, c, t, hw = feature_geometry(features)
    units = features.reshape(b, c, t, hw).transpose(2, 3).reshape(b, c * hw, t)  # unit c·HW + p, frames last
    return units[:, neighbourhoods.reshape(-1)]


def unit_rows(units: torch.Tensor, k: int, reduction: str) -> torch.Tensor:
    """(B, K·M, T) responses → (K, M, rows) observations in the compute dtype: ``"mean"``: B rows (time-mean),
    ``"flatten"``: B·T rows (row b·T + t)."""
    b, u, t = units.shape
    x = units.to(compute_dtype(units.dtype))
    x = x.mean(dim=2).T if reduction == "mean" else x.permute(1, 0, 2).reshape(u, b * t)
    return x.reshape(k, u // k, -1)


def neighbourhood_losses(x: torch.Tensor, unit_positions: torch.Tensor, variant: str = "rel") -> torch.Tensor:
    """Loss of every neighbourhood: observations x (K, M, rows), unit_positions (K, M, 2) → (K,)."""
    check_choice(variant, "variant", VARIANTS)
    check_not_complex(x, "units")
    check_not_complex(unit_positions, "unit_positions")
    rows, m = x.shape[-1], x.shape[1]
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    constant = hi == lo
    mean = torch.where(constant, lo, x.mean(dim=-1, keepdim=True))
    spread = torch.where(constant, torch.ones_like(hi), hi - lo)
    centred = x - mean
    rel_std = torch.linalg.vector_norm(centred / spread, dim=-1, keepdim=True) / (rows - 1) ** 0.5
    dead = rel_std <= DEAD_STD_RELATIVE * mean.abs() / spread
    std = torch.where(dead, torch.ones_like(rel_std), rel_std * spread)
    z = centred / std
    corr = (z @ z.transpose(1, 2) / (rows - 1)).clamp(-1.0, 1.0)
    pos = unit_positions.to(x.dtype)
    similarity = 1.0 / (torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist") + 1.0)
    i, j = torch.tril_indices(m, m, offset=-1, device=x.device)
    r, s = corr[:, i, j], similarity[:, i, j]
    if variant == "abs":
        return (r - s).abs().mean(dim=1)
    rc, sc = r - r.mean(dim=1, keepdim=True), s - s.mean(dim=1, keepdim=True)
    denom2 = (rc * rc).sum(dim=1) * (sc * sc).sum(dim=1)
    pearson = (rc * sc).sum(dim=1) / denom2.clamp_min(PEARSON_DENOM_FLOOR).sqrt()
    return (1.0 - pearson) / 2.0


def units_loss(units: torch.Tensor, unit_positions: torch.Tensor, variant: str, time_reduction: str) -> torch.Tensor:
    """Mean loss over the K neighbourhoods of one layer from its gathered units (B, K·M, T) and their positions
    (K, M, 2): a 0-d tensor in the compute dtype."""
    k = unit_positions.shape[0]
    parts = ["mean", "flatten"] if time_reduction == "dual" else [time_reduction]
    losses = [neighbourhood_losses(unit_rows(units, k, p), unit_positions, variant).mean() for p in parts]
    return sum(losses) / len(losses)


def layer_loss(features: torch.Tensor, positions: torch.Tensor, neighbourhoods: torch.Tensor, variant: str = "rel",
               time_reduction: str = "mean") -> torch.Tensor:
    """Mean loss over the (K, M) ``neighbourhoods`` of one layer (inputs already validated): a 0-d tensor."""
    return units_loss(gather_units(features, neighbourhoods), positions[neighbourhoods], variant, time_reduction)


def layer_losses(features: Sequence[torch.Tensor], positions: Sequence[torch.Tensor],
                 neighbourhoods: Sequence[torch.Tensor], variant: str = "rel",
                 time_reduction: str = "mean") -> List[torch.Tensor]:
    """:func:`layer_loss` of every layer."""
    return [layer_loss(f, p, nb, variant, time_reduction) for f, p, nb in zip(features, positions, neighbourhoods)]
