"""Functional form of the spatial correlation loss: gathering the sampled units, then backend dispatch."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._validation import (
    BACKENDS,
    TIME_REDUCTIONS,
    VARIANTS,
    check_choice,
    check_neighbourhoods,
    check_positions,
    check_rows,
    feature_geometry,
)
from . import batched, gather, reference

__all__ = ["spatial_correlation_loss", "resolve_backend", "layer_losses"]


def _triton_reason(device: torch.device):
    """None when the Triton path can run on ``device``; else why not."""
    try:
        from .triton_ops import triton_unavailable_reason
    except ImportError as exc:  # triton missing or broken
        return f"the Triton kernels could not be imported ({exc})"
    return triton_unavailable_reason(device)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` → ``"triton"`` for CUDA tensors when Triton can run, else ``"torch"``.

    ``"triton"`` on a device where it cannot run raises a RuntimeError saying why (on the CPU it runs only under
    the Triton interpreter, ``TRITON_INTERPRET=1`` set before triton is imported).
    """
    check_choice(backend, "backend", BACKENDS)
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_reason(device) is None else "torch"
    reason = _triton_reason(device)
    if reason is not None:
        raise RuntimeError(f"backend='triton' cannot run on {device}: {reason}")
    return "triton"


def layer_losses(
    features: Sequence[torch.Tensor],
    positions: Sequence[torch.Tensor],
    neighbourhoods: Sequence[torch.Tensor],
    variant: str,
    time_reduction: str,
    backend: str,
    check_inputs: bool = False,
    names: Optional[Sequence[str]] = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Per-layer mean losses, (L,) float32 (float64 when every input is float64), for validated inputs.

    Every layer's sampled units are gathered into a small (B, K·M, T) tensor first (``gather.py``: the gradient
    goes back into the activation's own gradient at those units only); ``backend`` (resolved: "torch" or
    "triton") computes the losses from them, the Triton path all layers in one launch per pass. With
    ``check_inputs`` the gathered units are checked for NaN/inf (a host sync on CUDA; the error names
    ``names[l]``). ``gather_distributed``: the gathered units of all ranks are concatenated along the batch (with
    gradients; the rows sampled are the same on every rank), when a process group of more than one rank is
    initialised. Inside ``torch.compile`` the plain reference is traced instead (and ``check_inputs`` is skipped:
    a data-dependent branch cannot be captured).
    """
    if gather._compiling():
        values = reference.layer_losses(features, positions, neighbourhoods, variant, time_reduction)
    else:
        units, unit_positions = gather.gather_layers(features, positions, neighbourhoods)
        if gather_distributed:
            units = [_all_gather_batch(u) for u in units]
        if check_inputs:
            for l, u in enumerate(units):
                check_finite_units(u, f"features[{names[l]!r}]" if names else "features")
        if backend == "triton":
            from .triton_ops import fused_unit_losses

            return fused_unit_losses(units, unit_positions, variant, time_reduction)
        values = batched.layer_losses(units, unit_positions, variant, time_reduction)
    out_dtype = torch.float64 if all(v.dtype == torch.float64 for v in values) else torch.float32
    return torch.stack([v.to(out_dtype) for v in values])


def _all_gather_batch(units: torch.Tensor) -> torch.Tensor:
    """The (B, U, T) units of every rank concatenated along the batch, with gradients (no-op on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return units
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(units.contiguous()), dim=0)


def spatial_correlation_loss(
    features: torch.Tensor,
    positions: torch.Tensor,
    neighbourhoods: torch.Tensor,
    variant: str = "rel",
    time_reduction: str = "mean",
    backend: str = "auto",
    check_inputs: bool = True,
) -> torch.Tensor:
    """The TDANN spatial correlation loss of one layer (DESIGN §3), averaged over neighbourhoods.

    Args:
        features: activations (B, N), tokens (B, L, D), (B, C, H, W) or (B, C, T, H, W); units are flattened in
            ``torch.flatten`` order (C·H·W; L·D for tokens).
        positions: (N, 2) unit positions in mm.
        neighbourhoods: (M,) or (K, M) unit indices; the result is the mean over the K rows.
        variant: ``"rel"`` (TDANN, (1 - Pearson(R, S)) / 2) or ``"abs"`` (Lee et al. 2020, mean |R - S|).
        time_reduction: for 5-D inputs, ``"mean"`` (time-mean response), ``"flatten"`` (B·T observations) or
            ``"dual"`` (the mean of both; this package's definition of a long+short time-scale loss).
        backend: ``"auto"`` (Triton on CUDA, batched PyTorch on CPU), ``"torch"`` or ``"triton"``.
        check_inputs: check index ranges and finiteness of the sampled activations (a host sync on CUDA; turn
            off for CUDA-graph capture or the last microseconds).

    Returns:
        A 0-d tensor (float32; float64 for float64 inputs), differentiable with respect to ``features``.
    """
    check_choice(variant, "variant", VARIANTS)
    check_choice(time_reduction, "time_reduction", TIME_REDUCTIONS)
    b, c, t, hw = feature_geometry(features, "features")
    n = c * hw
    positions = check_positions(positions, "positions", num_units=n)
    check_rows(features, time_reduction, "features")
    neighbourhoods = check_neighbourhoods(neighbourhoods, n, "neighbourhoods", check_range=check_inputs)
    if positions.device != features.device or neighbourhoods.device != features.device:
        raise ValueError(
            f"features ({features.device}), positions ({positions.device}) and neighbourhoods "
            f"({neighbourhoods.device}) must be on the same device"
        )
    resolved = resolve_backend(backend, features.device)
    return layer_losses([features], [positions], [neighbourhoods], variant, time_reduction, resolved,
                        check_inputs=check_inputs)[0]


def check_finite_units(units: torch.Tensor, name: str) -> None:
    """Raise when gathered units hold a non-finite activation (a host sync on CUDA)."""
    if not bool(torch.isfinite(units.detach()).all()):
        raise ValueError(f"{name} holds non-finite activations (NaN or inf) in the sampled units")
