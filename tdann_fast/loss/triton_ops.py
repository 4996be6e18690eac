"""Host side of the fused Triton spatial loss: descriptor packing, launches and the autograd Function.

Public entry points (used by ``tdann_fast.loss.functional`` when the backend resolves to ``"triton"``):

* :func:`triton_unavailable_reason` — ``None`` when the kernels can run on a device, else why not;
* :func:`fused_unit_losses` — per-layer mean losses (L,) float32 from the gathered units (B, K·M, T) of every
  layer (``gather.py``), differentiable w.r.t. them; the kernels see each layer as a (B, K·M, T, 1, 1) tensor whose
  neighbourhood rows are ``arange(K·M).view(K, M)``;
* :func:`fused_spatial_loss` — the same from raw activations (gathers, then calls the above).

Launch structure per pass, for every group of up to 8 layers (``MAX_LAYERS``): forward = stats → tiles → merge
(three launches covering all layers × sampled neighbourhoods × tiles), backward = dZ/dX → scatter (two launches).
``time_reduction="dual"`` runs the mean and the flatten pass and averages them.

No host synchronisation: the descriptor table depends only on shapes/strides (not on data pointers, which are
kernel arguments), so it is built once per geometry and cached on the device; every buffer is allocated with
device-side ``torch.empty``/``torch.zeros``. Both passes are deterministic (fixed reduction orders, no atomics).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .._validation import check_not_complex

__all__ = ["triton_unavailable_reason", "fused_spatial_loss", "fused_unit_losses", "KernelConfig"]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_VARIANTS = {"rel": 0, "abs": 1}
_MODES = {"mean": (0,), "flatten": (1,), "dual": (0, 1)}


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes. ``block_m``: units per tile side (power of two >= 16); ``block_r``: rows per chunk (the
    ``tl.dot`` reduction dimension, power of two >= 16); ``scatter_block_r``: rows per scatter program."""

    block_m: int = 64
    block_r: int = 32
    scatter_block_r: int = 16
    num_warps: int = 4  # gather/statistics and scatter kernels
    tile_num_warps: int = 8  # kernels holding (block_m × block_m) fp32 tiles

    def __post_init__(self):
        for name in ("block_m", "block_r", "scatter_block_r"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16, got {v}")


DEFAULT_CONFIG = KernelConfig()


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """``None`` when the Triton kernels can run on ``device``, else a human-readable reason.

    CUDA devices need Triton and a GPU of compute capability >= 7.5; CPU tensors need the Triton interpreter
    (``TRITON_INTERPRET=1`` set before triton is first imported).
    """
    device = torch.device(device)
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton is a dependency
        return f"triton cannot be imported ({exc})"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if _kernels_interpreted():
            return "the Triton interpreter is active (TRITON_INTERPRET=1); it runs CPU tensors only"
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (7, 5):
            return f"the Triton kernels need compute capability >= 7.5, this GPU has {major}.{minor}"
        return None
    if device.type == "cpu":
        if _kernels_interpreted():
            return None
        if _interpreter_requested():
            return ("TRITON_INTERPRET=1 was set after triton had compiled the kernels for the GPU; "
                    "set it before the first import of triton")
        return "on CPU tensors the Triton kernels run only under the interpreter (set TRITON_INTERPRET=1 before " \
               "importing triton)"
    return f"device type {device.type!r} is not supported by the Triton kernels (use CUDA)"


def _kernels_interpreted() -> bool:
    """Whether the kernels module was (or would now be) built for the Triton interpreter."""
    from . import triton_kernels as tk

    return type(tk._stats_kernel).__name__ == "InterpretedFunction"


# ---------------------------------------------------------------------------------------------- descriptor plan

@dataclass
class _Plan:
    desc: torch.Tensor  # (L, NF) int64 on the device
    n_layers: int
    units: int  # Σ K·M
    n_lk: int  # Σ K
    kmax: int
    stats_progs: int
    tile_progs: int
    scat_progs: int
    dx_size: int
    max_tiles: int


_PLAN_CACHE: "OrderedDict[tuple, _Plan]" = OrderedDict()
_PLAN_CACHE_SIZE = 128


def _geometry(x: torch.Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """((B, C, T, HW, W), (sB, sC, sT, sH, sW)) of a (B, N), (B, C, H, W) or (B, C, T, H, W) tensor."""
    s = x.stride()
    if x.dim() == 2:
        b, n = x.shape
        return (b, n, 1, 1, 1), (s[0], s[1], 0, 0, 0)
    if x.dim() == 4:
        b, c, h, w = x.shape
        return (b, c, 1, h * w, w), (s[0], s[1], 0, s[2], s[3])
    if x.dim() == 5:
        b, c, t, h, w = x.shape
        return (b, c, t, h * w, w), (s[0], s[1], s[2], s[3], s[4])
    raise ValueError(f"features must have shape (B, N), (B, C, H, W) or (B, C, T, H, W); got {tuple(x.shape)}")


def _plan(features: Sequence[torch.Tensor], neighbourhoods: Sequence[torch.Tensor], mode: int,
          cfg: KernelConfig) -> _Plan:
    from . import triton_kernels as tk

    geo = [_geometry(f) for f in features]
    key = (mode, cfg, str(features[0].device),
           tuple((g, tuple(nb.shape)) for g, nb in zip(geo, neighbourhoods)))
    plan = _PLAN_CACHE.get(key)
    if plan is not None:
        _PLAN_CACHE.move_to_end(key)
        return plan
    nf = tk.NF.value
    rows_list = []
    table: List[List[int]] = []
    stats = tiles = units = lk = dx = scat = 0
    max_tiles = 1
    for ((b, c, t, hw, w), (sb, sc, st, sh, sw)), nb in zip(geo, neighbourhoods):
        k, m = nb.shape
        nblk = -(-m // cfg.block_m)
        ntile = nblk * (nblk + 1) // 2
        rows = b if mode == 0 else b * t
        rows_list.append(rows)
        row = [0] * nf
        vals = (  # (field, value) pairs: tl.constexpr is unhashable in triton <= 3.2
            (tk.F_SB, sb), (tk.F_SC, sc), (tk.F_ST, st), (tk.F_SH, sh), (tk.F_SW, sw),
            (tk.F_B, b), (tk.F_T, t), (tk.F_HW, hw), (tk.F_W, w), (tk.F_M, m), (tk.F_K, k), (tk.F_NB, nblk),
            (tk.F_STATS_START, stats), (tk.F_TILE_START, tiles), (tk.F_UNIT_OFF, units), (tk.F_LK_OFF, lk),
            (tk.F_DX_OFF, dx), (tk.F_N, c * hw), (tk.F_SCAT_START, scat), (tk.F_ROWS, rows),
        )
        for f, v in vals:
            row[f.value] = int(v)
        table.append(row)
        stats += k * nblk
        tiles += k * ntile
        units += k * m
        lk += k
        dx += k * rows * m
        scat += -(-rows // cfg.scatter_block_r)
        max_tiles = max(max_tiles, ntile)
    desc = torch.tensor(table, dtype=torch.int64).to(features[0].device)
    plan = _Plan(desc=desc, n_layers=len(features), units=units, n_lk=lk,
                 kmax=max(int(nb.shape[0]) for nb in neighbourhoods), stats_progs=stats, tile_progs=tiles,
                 scat_progs=scat, dx_size=dx, max_tiles=max_tiles)
    _PLAN_CACHE[key] = plan
    if len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
        _PLAN_CACHE.popitem(last=False)
    return plan


def _slots(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Pad a per-layer tensor list to the MAX_LAYERS pointer slots of the kernels (unused slots repeat slot 0)."""
    from . import triton_kernels as tk

    return list(tensors) + [tensors[0]] * (tk.MAX_LAYERS - len(tensors))


# ---------------------------------------------------------------------------------------------- passes

@dataclass
class _ForwardState:
    plan: _Plan
    stats: torch.Tensor  # per sampled unit: mean, 1/std, live
    zbuf: torch.Tensor  # standardised sampled responses, (K, rows, M) per layer
    lk: torch.Tensor  # per neighbourhood: mean R, mean S, dr/dR coefficients, pairs, r, loss


def _forward_group(feats, pos, idx, variant: int, mode: int, cfg: KernelConfig):
    """One time mode, up to MAX_LAYERS layers: (L,) losses and what the backward needs."""
    from . import triton_kernels as tk

    plan = _plan(feats, idx, mode, cfg)
    dev = feats[0].device
    stats = torch.empty(3 * plan.units, dtype=torch.float32, device=dev)
    zbuf = torch.empty(max(plan.dx_size, 1), dtype=torch.float32, device=dev)
    part = torch.empty(plan.tile_progs * tk.N_PART.value, dtype=torch.float32, device=dev)
    lk = torch.empty(plan.n_lk * tk.N_LKSTAT.value, dtype=torch.float32, device=dev)
    loss_buf = torch.zeros(plan.n_layers * plan.kmax, dtype=torch.float32, device=dev)
    xs, ps, ids = _slots(feats), _slots(pos), _slots(idx)
    L = plan.n_layers
    tk._stats_kernel[(plan.stats_progs,)](
        plan.desc, stats, zbuf, plan.units, L, *xs, *ids,
        MODE=mode, BLOCK_M=cfg.block_m, BLOCK_R=cfg.block_r, num_warps=cfg.num_warps)
    tk._tile_fwd_kernel[(plan.tile_progs,)](
        plan.desc, zbuf, part, L, *ids, *ps,
        BLOCK_M=cfg.block_m, BLOCK_R=cfg.block_r, num_warps=cfg.tile_num_warps)
    block_t = max(16, 1 << (plan.max_tiles - 1).bit_length())
    tk._merge_kernel[(plan.n_lk,)](
        plan.desc, part, lk, loss_buf, L, plan.kmax, VARIANT=variant, BLOCK_T=block_t, num_warps=1)
    losses = loss_buf.view(L, plan.kmax).sum(dim=1)
    return losses, _ForwardState(plan=plan, stats=stats, zbuf=zbuf, lk=lk)


def _backward_group(pos, idx, grads, state: _ForwardState, gout: torch.Tensor, variant: int, mode: int,
                    cfg: KernelConfig) -> None:
    """Adds the gradient of Σ_l gout[l]·loss_l (one time mode) into the contiguous ``grads`` (one dtype)."""
    from . import triton_kernels as tk

    plan = state.plan
    dev = grads[0].device
    dx = torch.empty(max(plan.dx_size, 1), dtype=torch.float32, device=dev)
    ps, ids, gs = _slots(pos), _slots(idx), _slots(grads)
    L = plan.n_layers
    tk._bwd_dz_kernel[(plan.stats_progs,)](
        plan.desc, state.stats, state.zbuf, state.lk, gout, dx, plan.units, L, *ids, *ps,
        VARIANT=variant, BLOCK_M=cfg.block_m, BLOCK_R=cfg.block_r, num_warps=cfg.tile_num_warps)
    tk._bwd_scatter_kernel[(plan.scat_progs,)](
        plan.desc, dx, L, *ids, *gs,
        MODE=mode, BLOCK_M=cfg.block_m, BLOCK_R=cfg.scatter_block_r, num_warps=cfg.num_warps)


def _groups(n: int):
    from . import triton_kernels as tk

    return [(s, min(s + tk.MAX_LAYERS, n)) for s in range(0, n, tk.MAX_LAYERS)]


class _FusedSpatialLoss(torch.autograd.Function):
    """Per-layer spatial losses (L,) from raw activations; gradients w.r.t. the activations only."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, variant: str, time_reduction: str, cfg: KernelConfig, n_layers: int, *tensors):
        L = n_layers
        feats, pos, idx = list(tensors[:L]), list(tensors[L:2 * L]), list(tensors[2 * L:3 * L])
        v = _VARIANTS[variant]
        modes = _MODES[time_reduction]
        total = None
        states: Dict[Tuple[int, int], _ForwardState] = {}
        for mode in modes:
            parts = []
            for gi, (a, b) in enumerate(_groups(L)):
                losses, st = _forward_group(feats[a:b], pos[a:b], idx[a:b], v, mode, cfg)
                parts.append(losses)
                states[(mode, gi)] = st
            out = parts[0] if len(parts) == 1 else torch.cat(parts)
            total = out if total is None else total + out
        if len(modes) > 1:
            total = total * (1.0 / len(modes))
        ctx.save_for_backward(*pos, *idx)
        ctx.inputs = feats  # the gathered units (small): for a double backward only
        ctx.states = states
        ctx.meta = (v, modes, cfg, L)
        ctx.feature_specs = [(f.shape, f.dtype, f.device) for f in feats]
        return total

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        v, modes, cfg, L = ctx.meta
        saved = ctx.saved_tensors
        pos, idx = list(saved[:L]), list(saved[L:2 * L])
        need = ctx.needs_input_grad[4:4 + L]
        if torch.is_grad_enabled():  # create_graph=True: the reference's gradient, with its graph (exact 2nd order)
            return (None, None, None, None, *_reference_gradients(ctx, grad_out, pos, idx, need),
                    *([None] * (2 * L)))
        gout = grad_out.detach().to(torch.float32).contiguous()
        if len(modes) > 1:
            gout = gout * (1.0 / len(modes))
        # Gradients are accumulated in fp32 unless every unit receives exactly one contribution (one time mode: the
        # gathered units are distinct columns): then they are written once, in the units' dtype (no fp32 copy).
        direct = len(modes) == 1
        grads = [torch.zeros(shape, dtype=dtype if direct else torch.float32, device=dev)
                 for shape, dtype, dev in ctx.feature_specs]
        for mode in modes:
            for gi, (a, b) in enumerate(_groups(L)):
                _backward_group(pos[a:b], idx[a:b], grads[a:b], ctx.states[(mode, gi)], gout[a:b], v, mode, cfg)
        ctx.states = None
        out = [g.to(dtype) if n else None for g, (_, dtype, _), n in zip(grads, ctx.feature_specs, need)]
        return (None, None, None, None, *out, *([None] * (2 * L)))


def _reference_gradients(ctx, grad_out, pos, idx, need):
    from . import reference

    variant = {v: k for k, v in _VARIANTS.items()}[ctx.meta[0]]
    reduction = {(0,): "mean", (1,): "flatten", (0, 1): "dual"}[ctx.meta[1]]
    wanted = [x for x, n in zip(ctx.inputs, need) if n]
    with torch.enable_grad():
        losses = torch.stack([reference.units_loss(x.reshape(x.shape[:3]), p[nb], variant, reduction).float()
                              for x, p, nb in zip(ctx.inputs, pos, idx)])  # x: (B, U, T, 1, 1)
        grads = iter(torch.autograd.grad(losses, wanted, grad_out, create_graph=True))
    return [next(grads) if n else None for n in need]


@torch.compiler.disable
def fused_unit_losses(
    units: Sequence[torch.Tensor],
    unit_positions: Sequence[torch.Tensor],
    variant: str,
    time_reduction: str,
    config: Optional[KernelConfig] = None,
) -> torch.Tensor:
    """Per-layer mean spatial losses from gathered units: a float32 tensor (L,).

    ``units[l]``: layer l's sampled responses (B, K·M, T) (``gather.gather_units``), float32/float16/bfloat16 (layers
    of different dtypes are promoted to float32); ``unit_positions[l]``: their positions (K, M, 2) in mm. Inputs are
    assumed validated; differentiable w.r.t. ``units`` (second order through the plain reference); deterministic.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
    if time_reduction not in _MODES:
        raise ValueError(f"time_reduction must be one of {sorted(_MODES)}, got {time_reduction!r}")
    cfg = config or DEFAULT_CONFIG
    device = units[0].device
    reason = triton_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"fused_spatial_loss cannot run on {device}: {reason}")
    units = list(units)
    dtypes = {u.dtype for u in units}
    if len(dtypes) > 1 or not dtypes <= set(_SUPPORTED_DTYPES):
        units = [u.float() for u in units]
    feats = [u[:, :, :, None, None] for u in units]  # (B, U, T, 1, 1): unit j of the kernels is column j
    positions = [p.detach().reshape(-1, 2).to(torch.float32).contiguous() for p in unit_positions]
    neighbourhoods = [_identity_rows(p.shape[0], p.shape[1], device) for p in unit_positions]
    return _FusedSpatialLoss.apply(variant, time_reduction, cfg, len(feats), *feats, *positions, *neighbourhoods)


_IDENTITY_ROWS: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


def _identity_rows(k: int, m: int, device: torch.device) -> torch.Tensor:
    """arange(K·M).view(K, M) on ``device``, cached (no launch per step)."""
    key = (k, m, str(device))
    rows = _IDENTITY_ROWS.get(key)
    if rows is None:
        rows = torch.arange(k * m, dtype=torch.int64, device=device).view(k, m)
        _IDENTITY_ROWS[key] = rows
        if len(_IDENTITY_ROWS) > _PLAN_CACHE_SIZE:
            _IDENTITY_ROWS.popitem(last=False)
    return rows


def fused_spatial_loss(
    features: Sequence[torch.Tensor],
    positions: Sequence[torch.Tensor],
    neighbourhoods: Sequence[torch.Tensor],
    variant: str,
    time_reduction: str,
    config: Optional[KernelConfig] = None,
) -> torch.Tensor:
    """Per-layer mean spatial losses with the fused Triton kernels: a float32 tensor (L,).

    ``features[l]``: layer l's activations (B, N), (B, C, H, W) or (B, C, T, H, W), float32/float16/bfloat16 (other
    floating dtypes are computed as float32; layers of different dtypes are promoted to float32), any strides.
    ``positions[l]``: (N_l, 2) unit positions in mm. ``neighbourhoods[l]``: (K_l, M_l) int64 unit indices (distinct
    within a row) — the rows sampled for this step. ``variant``: "rel" | "abs"; ``time_reduction``: "mean" |
    "flatten" | "dual". Inputs are assumed validated (see ``tdann_fast.loss.functional``); differentiable w.r.t.
    the features (the gradient goes into the features' own gradient at the sampled units, ``gather.py``);
    deterministic. The sampled units are gathered first, then :func:`fused_unit_losses` runs the kernels.
    """
    features, positions, neighbourhoods = list(features), list(positions), list(neighbourhoods)
    if not (len(features) == len(positions) == len(neighbourhoods)) or not features:
        raise ValueError("features, positions and neighbourhoods must be non-empty sequences of equal length, got "
                         f"{len(features)}, {len(positions)}, {len(neighbourhoods)}")
    for name, seq in (("features", features), ("positions", positions)):
        for l, t in enumerate(seq):
            check_not_complex(t, f"{name}[{l}]")
    device = features[0].device
    for name, seq in (("features", features), ("positions", positions), ("neighbourhoods", neighbourhoods)):
        for l, t in enumerate(seq):
            if t.device != device:
                raise ValueError(f"{name}[{l}] is on {t.device}, expected {device} like features[0]")
    for l, nb in enumerate(neighbourhoods):
        if nb.dim() != 2:
            raise ValueError(f"neighbourhoods[{l}] must be (K, M), got shape {tuple(nb.shape)}")
    from .gather import gather_layers

    units, unit_positions = gather_layers(features, positions, [nb.to(torch.int64) for nb in neighbourhoods])
    return fused_unit_losses(units, unit_positions, variant, time_reduction, config)
