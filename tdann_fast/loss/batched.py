"""The optimised PyTorch path of the spatial loss (``backend="torch"``: the CPU path, and any device without Triton).

All neighbourhoods of all layers with the same (M, rows) go through one batched call on the gathered units (see
``gather.py``): standardise, form the K correlation matrices with one ``bmm``, reduce each to one loss value; the
backward is analytic (one more ``bmm``). No Python loop over pairs or neighbourhoods, and no triangle index set: R
and S are symmetric, so the strict-lower-triangle statistics of DESIGN §3 are computed over the whole off-diagonal
(each pair twice), which gives identical values without gathering the triangle and scattering its gradient back.
The definitions (dead units, scale-safe standardisation, Pearson floor) are those of ``reference.py``, which this
path is tested against; a double backward (``create_graph=True``) recomputes the layer with the reference, so
second derivatives are exact too.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from . import reference
from .reference import DEAD_STD_RELATIVE, PEARSON_DENOM_FLOOR, unit_rows

GROUP_MATRIX_ELEMENTS = 1 << 21  # M×M entries per batched call (e.g. 8 neighbourhoods of 500 units)

__all__ = ["neighbourhood_losses", "layer_losses"]


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
    Under ``create_graph=True`` the backward differentiates ``reference.neighbourhood_losses`` instead, so the
    gradient carries a graph and second derivatives are exact.
    """

    @staticmethod
    def forward(ctx, units: torch.Tensor, unit_positions: torch.Tensor, variant: str) -> torch.Tensor:
        similarity = similarity_matrix(unit_positions, units.dtype)
        ctx.inputs = (units, unit_positions)  # for a double backward only (see backward)
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
    def backward(ctx, grad_loss: torch.Tensor):
        variant, rows = ctx.variant, ctx.rows
        units, unit_positions = ctx.inputs
        if torch.is_grad_enabled():  # create_graph=True: the reference's gradient, with its graph
            with torch.enable_grad():
                loss = reference.neighbourhood_losses(units, unit_positions, variant)
                (grad,) = torch.autograd.grad(loss, units, grad_loss, create_graph=True)
            return grad, None, None
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
    """Loss of every neighbourhood: observations (K, M, rows), unit_positions (K, M, 2) → (K,); differentiable with
    respect to ``units`` (an analytic first derivative; second derivatives through the reference)."""
    return _NeighbourhoodLoss.apply(units, unit_positions, variant)


def _cat_without_copy(tensors: List[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def layer_losses(units: Sequence[torch.Tensor], unit_positions: Sequence[torch.Tensor], variant: str,
                 time_reduction: str) -> List[torch.Tensor]:
    """Mean loss of every layer from its gathered units (B, K·M, T) and their positions (K, M, 2): a list of 0-d
    tensors in each layer's compute dtype.

    The neighbourhoods of all layers that share (M, rows, compute dtype, device) go through one batched call
    (e.g. the six M=500 layers of the r3d_18 MT preset): one bmm and one set of elementwise passes instead of one
    per layer, which matters on a CPU where each small op costs microseconds of dispatch.
    """
    tasks = []  # (layer index, weight, (K, M, rows) observations, (K, M, 2) unit positions)
    for index, (u, p) in enumerate(zip(units, unit_positions)):
        parts = ["mean", "flatten"] if time_reduction == "dual" else [time_reduction]
        for reduction in parts:
            tasks.append((index, 1.0 / len(parts), unit_rows(u, p.shape[0], reduction), p))
    groups: Dict[tuple, List[int]] = {}
    for t, (_, _, x, _) in enumerate(tasks):
        k, m, rows = x.shape
        groups.setdefault((m, rows, x.dtype, x.device), []).append(t)
    per_task: List[Optional[torch.Tensor]] = [None] * len(tasks)
    for (m, _, _, _), members in groups.items():
        x = _cat_without_copy([tasks[t][2] for t in members])
        pos = _cat_without_copy([tasks[t][3] for t in members])
        # chunks of at most GROUP_MATRIX_ELEMENTS matrix entries keep the (K, M, M) temporaries cache- and
        # heap-sized (one huge batch is memory-bound: fresh pages for every temporary)
        step = max(1, GROUP_MATRIX_ELEMENTS // (m * m))
        values = torch.cat([neighbourhood_losses(x[i:i + step], pos[i:i + step], variant)
                            for i in range(0, x.shape[0], step)])
        for t, chunk in zip(members, values.split([tasks[t][2].shape[0] for t in members])):
            per_task[t] = chunk.mean()
    out: List[Optional[torch.Tensor]] = [None] * len(units)
    for (index, weight, _, _), value in zip(tasks, per_task):
        value = value if weight == 1.0 else weight * value
        out[index] = value if out[index] is None else out[index] + value
    return out
