"""The spatial correlation loss in plain, batched PyTorch (DESIGN §3): the CPU path and the reference for every
fast path.

All neighbourhoods of all layers with the same (M, rows) are processed at once: gather the (K, M, rows) unit
responses (only the sampled units are read), standardise, form the K correlation matrices with one ``bmm`` and
reduce each to one loss value; the backward is analytic (one more ``bmm``). No Python loop over pairs or
neighbourhoods, and no triangle index set: R and S are symmetric, so the strict-lower-triangle statistics of
DESIGN §3 are computed over the whole off-diagonal (each pair twice), which gives identical values without
gathering the triangle and scattering its gradient back.

Package definitions on top of DESIGN §3 (shared by every backend):

* a unit is *dead* (zero variance) when ``std <= 1e-6·|mean|`` over the rows (this includes ``std == 0``); its
  std is replaced by 1, so its correlations are ~0 and its gradient finite;
* standardisation is scale-safe: with ``spread = max - min`` of a unit's rows, the centred responses are divided by
  the spread before they are squared, ``u = (x - mean) / spread`` (|u| <= 1, Σu² >= 1/4), so
  ``std = spread · sqrt(Σu² / (rows-1))`` and the dead-unit test ``sqrt(Σu² / (rows-1)) <= 1e-6·|mean| / spread``
  neither overflow nor underflow for any finite fp32 activations (1e19 or 1e-22 give the loss of the same responses
  at scale 1: Pearson correlations are scale-invariant). A unit with ``spread == 0`` is dead and its mean is its
  (exact) value, so its centred responses are exactly 0 (a float32 sum of equal values can miss by an ulp). The one
  part of the definition that is not scale-invariant is std := 1 for a dead unit that is not exactly constant: its
  centred responses keep the units of the input, so its correlations are ~0 only while those are small;
* ``r = Sxy / sqrt(max(Sxx·Syy, 1e-30))``: when the correlations or the similarities of a neighbourhood have no
  variance (e.g. all units dead, or M = 2, a single pair) ``r = 0``, so SL_rel = 0.5 with zero gradient;
* computation in float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .._validation import VARIANTS, check_choice, check_not_complex, feature_geometry
from .gather import gather_units_flat

DEAD_STD_RELATIVE = 1e-6
PEARSON_DENOM_FLOOR = 1e-30
GROUP_MATRIX_ELEMENTS = 1 << 21  # M×M entries per batched call (e.g. 8 neighbourhoods of 500 units)

__all__ = ["compute_dtype", "gather_units", "neighbourhood_losses", "layer_loss", "layer_losses", "similarity_matrix"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gather_units(features: torch.Tensor, neighbourhoods: torch.Tensor, time_reduction: str) -> torch.Tensor:
    """Responses of the units of every neighbourhood: (K, M, rows) in the compute dtype.

    Only the sampled units are read. ``time_reduction`` for (B, C, T, H, W) inputs: ``"mean"`` gives B rows (the
    time-mean response), ``"flatten"`` gives B·T rows (every (sample, frame) pair is an observation).
    """
    b, c, t, hw = feature_geometry(features)
    k, m = neighbourhoods.shape
    g = gather_units_flat(features, neighbourhoods.reshape(-1), c, t, hw)  # (B, K·M, T)
    g = g.to(compute_dtype(features.dtype)).permute(1, 0, 2)  # (K·M, B, T)
    if time_reduction == "mean":
        g = g.mean(dim=-1)
    elif time_reduction == "flatten":
        g = g.reshape(k * m, b * t)
    else:
        raise ValueError(f"gather_units: time_reduction must be 'mean' or 'flatten', got {time_reduction!r}")
    return g.reshape(k, m, -1)


def similarity_matrix(unit_positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """S_ij = 1 / (d_ij + 1) for every pair of units: unit_positions (K, M, 2) → (K, M, M), no grad."""
    with torch.no_grad():
        pos = unit_positions.to(dtype)
        dist = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist")  # exact, no |a|²+|b|²-2ab
        return dist.add_(1.0).reciprocal_()


def _batched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b over all but the first axis, (K, ...) × (K, ...) → (K,)."""
    k = a.shape[0]
    return torch.linalg.vecdot(a.reshape(k, -1), b.reshape(k, -1))


def _zero_diagonal_(x: torch.Tensor) -> torch.Tensor:
    x.diagonal(dim1=1, dim2=2).zero_()
    return x


def _standardise(units: torch.Tensor):
    """Z = (x - mean) / std per unit over the rows (dead units: std := 1), scale-safe (module docstring):
    (K, M, rows) → Z (K, M, rows), std (K, M, 1), dead (K, M, 1)."""
    rows = units.shape[-1]
    lo = units.amin(dim=-1, keepdim=True)  # (amin and amax are each ~10x faster than aminmax on the CPU)
    spread = units.amax(dim=-1, keepdim=True) - lo
    constant = spread == 0
    mean = torch.where(constant, lo, units.mean(dim=-1, keepdim=True))
    spread = torch.where(constant, torch.ones_like(spread), spread)
    xc = units - mean
    rel_std = torch.linalg.vector_norm(xc / spread, dim=-1, keepdim=True).mul_((rows - 1) ** -0.5)  # std / spread
    dead = rel_std <= mean.abs().div_(spread).mul_(DEAD_STD_RELATIVE)
    std = torch.where(dead, torch.ones_like(rel_std), rel_std.mul_(spread))
    return xc.div_(std), std, dead


class _NeighbourhoodLoss(torch.autograd.Function):
    """Standardise → R = Z·Zᵀ/(rows-1) → clamp → SL_rel or SL_abs over the strict lower triangle, with an
    analytic backward.

    R and S are symmetric, so every statistic over the strict lower triangle (its mean, the sums of the Pearson
    correlation, the mean absolute difference) equals the same statistic over all off-diagonal entries, each pair
    counted twice. Working on whole (K, M, M) matrices with a zeroed diagonal avoids gathering the triangle and
    scattering its gradient back (index operations cost several elementwise passes on a CPU), and sums of products
    are fused dot products.

    The backward is the derivative of the forward with its conventions: dead units have a constant std of 1; the
    clamp passes no gradient outside [-1, 1] (|R| > 1 happens only by rounding, so the mask is built only when it
    does); the Pearson denominator floor is a constant. The centred R and S sum to zero over the pairs, so their
    (rounding-level) means are left out of the derivative. One bmm, G·Z with G symmetric, replaces autograd's two.
    """

    @staticmethod
    def forward(ctx, units: torch.Tensor, similarity: torch.Tensor, variant: str) -> torch.Tensor:
        k, m, rows = units.shape
        pairs2 = m * (m - 1)  # off-diagonal entries = 2 × pairs
        z, std, dead = _standardise(units)
        corr = torch.baddbmm(torch.empty((), dtype=z.dtype, device=z.device), z, z.transpose(1, 2),
                             beta=0.0, alpha=1.0 / (rows - 1))
        _zero_diagonal_(corr)
        outside = True  # off the CPU: always mask (no host synchronisation)
        if corr.device.type == "cpu":
            low, high = torch.aminmax(corr)
            outside = bool(low < -1.0) or bool(high > 1.0)
        inside = None
        if outside:
            inside = corr.abs() <= 1.0
            corr.clamp_(-1.0, 1.0)
        ctx.variant, ctx.rows = variant, rows
        if variant == "abs":
            diff = _zero_diagonal_(corr.sub_(similarity))
            ctx.save_for_backward(z, std, dead, inside, diff)
            return diff.abs().sum(dim=(1, 2)) / pairs2
        mean_r = corr.sum(dim=(1, 2)) / pairs2
        mean_s = _zero_diagonal_(similarity).sum(dim=(1, 2)) / pairs2  # an internal tensor: zeroed in place
        rc = _zero_diagonal_(corr.sub_(mean_r[:, None, None]))
        sc = _zero_diagonal_(similarity - mean_s[:, None, None])
        sxy = _batched_dot(rc, sc) / 2
        sxx = _batched_dot(rc, rc) / 2
        syy = _batched_dot(sc, sc) / 2
        denom2 = sxx * syy
        floored = denom2 < PEARSON_DENOM_FLOOR
        inv = denom2.clamp_min(PEARSON_DENOM_FLOOR).rsqrt()
        r = sxy * inv
        ctx.save_for_backward(z, std, dead, inside, rc, sc, r, inv, sxx, floored)
        return (1.0 - r) / 2.0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        variant, rows = ctx.variant, ctx.rows
        if variant == "abs":
            z, std, dead, inside, diff = ctx.saved_tensors
            m = z.shape[1]
            g = torch.sign(diff).mul_((grad_loss / (m * (m - 1) / 2))[:, None, None])
        else:
            z, std, dead, inside, rc, sc, r, inv, sxx, floored = ctx.saved_tensors
            # Per pair p: loss = (1 - r)/2 with r = Sxy·inv; dSxy/dR_p = sc_p, dSxx/dR_p = 2 rc_p and
            # d inv/dSxx = -inv/(2 Sxx), unless the denominator is floored (then inv is a constant).
            coef = torch.where(floored, torch.zeros_like(r), r / sxx.clamp_min(torch.finfo(r.dtype).tiny))
            g = torch.mul(sc, (-0.5 * grad_loss * inv)[:, None, None])
            g.addcmul_(rc, (0.5 * grad_loss * coef)[:, None, None])  # rc and sc have zero diagonals
        if inside is not None:
            g.masked_fill_(~inside, 0.0)
        # G is symmetric and holds each pair's derivative at (i, j) and (j, i): dL/dZ = G·Z / (rows - 1).
        dz = torch.baddbmm(torch.empty((), dtype=z.dtype, device=z.device), g, z, beta=0.0, alpha=1.0 / (rows - 1))
        # z = xc / std: for live units std = sqrt(sum xc^2 / (rows-1)); dead units have a constant std of 1.
        proj = (dz * z).sum(dim=-1, keepdim=True).div_(rows - 1).masked_fill_(dead, 0.0)
        dxc = dz.sub_(z * proj).div_(std)
        return dxc - dxc.mean(dim=-1, keepdim=True), None, None


def neighbourhood_losses(units: torch.Tensor, unit_positions: torch.Tensor, variant: str = "rel") -> torch.Tensor:
    """Loss of every neighbourhood: units (K, M, rows), unit_positions (K, M, 2) → (K,).

    R = Pearson correlations of the M units over the rows (clamped to [-1, 1]); S_ij = 1 / (d_ij + 1) from the
    Euclidean distances; strict lower triangle. ``"rel"``: (1 - Pearson(R, S)) / 2. ``"abs"``: mean |R - S|.
    Differentiable with respect to ``units`` (first order); positions are constants.
    """
    check_choice(variant, "variant", VARIANTS)
    check_not_complex(units, "units")
    check_not_complex(unit_positions, "unit_positions")
    similarity = similarity_matrix(unit_positions, units.dtype)
    return _NeighbourhoodLoss.apply(units, similarity, variant)


def layer_loss(
    features: torch.Tensor,
    positions: torch.Tensor,
    neighbourhoods: torch.Tensor,
    variant: str = "rel",
    time_reduction: str = "mean",
) -> torch.Tensor:
    """Mean loss over the (K, M) ``neighbourhoods`` of one layer (inputs already validated): a 0-d tensor."""
    return layer_losses([features], [positions], [neighbourhoods], variant, time_reduction)[0]


def _cat_without_copy(tensors: List[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def layer_losses(
    features: Sequence[torch.Tensor],
    positions: Sequence[torch.Tensor],
    neighbourhoods: Sequence[torch.Tensor],
    variant: str = "rel",
    time_reduction: str = "mean",
) -> List[torch.Tensor]:
    """Mean loss of every layer (inputs already validated): a list of 0-d tensors in each layer's compute dtype.

    The neighbourhoods of all layers that share (M, rows, compute dtype, device) go through one batched call
    (e.g. the six M=500 layers of the r3d_18 MT preset): one bmm and one set of elementwise passes instead of one
    per layer, which matters on a CPU where each small op costs microseconds of dispatch.
    ``time_reduction="dual"`` on 5-D inputs is the mean of the "mean" and "flatten" losses of the layer.
    """
    # One task per (layer, time reduction): the (K, M, rows) units and their (K, M, 2) positions.
    tasks = []  # (layer index, weight, units, unit positions)
    for index, (f, p, nb) in enumerate(zip(features, positions, neighbourhoods)):
        if time_reduction == "dual" and f.dim() == 5:
            parts = [("mean", 0.5), ("flatten", 0.5)]
        else:
            parts = [("mean" if time_reduction == "dual" else time_reduction, 1.0)]
        unit_positions = p[nb]
        for reduction, weight in parts:
            tasks.append((index, weight, gather_units(f, nb, reduction), unit_positions))
    groups: Dict[tuple, List[int]] = {}
    for t, (_, _, units, _) in enumerate(tasks):
        k, m, rows = units.shape
        groups.setdefault((m, rows, units.dtype, units.device), []).append(t)
    per_task: List[Optional[torch.Tensor]] = [None] * len(tasks)
    for (m, _, _, _), members in groups.items():
        units = _cat_without_copy([tasks[t][2] for t in members])
        unit_positions = _cat_without_copy([tasks[t][3] for t in members])
        # chunks of at most GROUP_MATRIX_ELEMENTS matrix entries keep the (K, M, M) temporaries cache- and
        # heap-sized (one huge batch is memory-bound: fresh pages for every temporary)
        step = max(1, GROUP_MATRIX_ELEMENTS // (m * m))
        values = torch.cat([neighbourhood_losses(units[i:i + step], unit_positions[i:i + step], variant)
                            for i in range(0, units.shape[0], step)])
        for t, chunk in zip(members, values.split([tasks[t][2].shape[0] for t in members])):
            per_task[t] = chunk.mean()
    out: List[Optional[torch.Tensor]] = [None] * len(features)
    for (index, weight, _, _), value in zip(tasks, per_task):
        value = value if weight == 1.0 else weight * value
        out[index] = value if out[index] is None else out[index] + value
    return out
