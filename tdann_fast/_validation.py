"""Argument checks shared by the public API: each raises a clear exception naming the argument."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ._options import LOSS_BACKENDS as BACKENDS
from ._options import LOSS_VARIANTS as VARIANTS
from ._options import TIME_REDUCTIONS


def check_not_complex(value, name: str):
    """Raise a TypeError naming ``name`` when ``value`` (a tensor, a NumPy array or scalar, a Python complex or a
    nested sequence of numbers) holds complex numbers, which every cast to a real dtype would silently truncate to
    their real part. Returns ``value`` unchanged. The one place where user data is checked for complex values."""
    if isinstance(value, torch.Tensor):
        is_complex = value.is_complex()
    else:
        try:
            is_complex = bool(np.iscomplexobj(value))
        except Exception:  # not array-like: the caller's own checks say what is wrong with it
            is_complex = False
    if is_complex:
        dtype = getattr(value, "dtype", type(value).__name__)
        raise TypeError(
            f"{name} must hold real numbers, got complex values ({dtype}); pass the real part or the magnitude "
            "explicitly"
        )
    return value


def check_positive(value, name: str) -> float:
    """A finite number > 0."""
    check_not_complex(value, name)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_positions(positions, name: str = "positions", num_units: Optional[int] = None) -> torch.Tensor:
    """A floating (N, 2) tensor of finite values; N == num_units when given."""
    if not isinstance(positions, torch.Tensor):
        try:
            positions = torch.as_tensor(positions)
        except Exception:
            raise TypeError(f"{name} must be a tensor or array of shape (N, 2)") from None
    check_not_complex(positions, name)
    if positions.dim() != 2 or positions.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {tuple(positions.shape)}")
    if positions.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one unit")
    if not positions.is_floating_point():
        positions = positions.to(torch.float32)
    if num_units is not None and positions.shape[0] != num_units:
        raise ValueError(f"{name} has {positions.shape[0]} rows but the layer has {num_units} units")
    if not bool(torch.isfinite(positions).all()):
        raise ValueError(f"{name} holds non-finite values")
    return positions


def feature_geometry(features: torch.Tensor, name: str = "features"):
    """(B, C, T, HW) view geometry of an activation tensor; its units are the values after the batch axis in
    ``torch.flatten`` order, unit ``u = c·HW + p`` (time is a separate axis of 5-D tensors):

    * (B, N): a fully connected layer, (B, N, 1, 1);
    * (B, L, D): tokens (e.g. a vision transformer), unit ``u = l·D + d``, (B, L, 1, D);
    * (B, C, H, W): (B, C, 1, H·W);
    * (B, C, T, H, W): (B, C, T, H·W).
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    check_not_complex(features, name)
    if not features.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {features.dtype}")
    if features.dim() == 2:
        b, n = features.shape
        return b, n, 1, 1
    if features.dim() == 3:
        b, tokens, dim = features.shape
        return b, tokens, 1, dim
    if features.dim() == 4:
        b, c, h, w = features.shape
        return b, c, 1, h * w
    if features.dim() == 5:
        b, c, t, h, w = features.shape
        return b, c, t, h * w
    raise ValueError(
        f"{name} must have shape (B, N), (B, L, D), (B, C, H, W) or (B, C, T, H, W); got {features.dim()} dims "
        f"{tuple(features.shape)}"
    )


def check_rows(features: torch.Tensor, time_reduction: str, name: str = "features") -> None:
    """Pearson correlations need at least 3 observations (rows) per unit."""
    b, _, t, _ = feature_geometry(features, name)
    rows = b * t if time_reduction == "flatten" else b
    if rows < 3:
        raise ValueError(
            f"{name} has {rows} observation(s) per unit (batch {b}, time_reduction={time_reduction!r}); "
            "the spatial loss needs at least 3 samples in a batch"
        )


def check_neighbourhoods(neighbourhoods, num_units: int, name: str = "neighbourhoods", check_range: bool = True):
    """An integer (M,) or (K, M) index tensor with M >= 2 and indices in [0, num_units); returned as (K, M)."""
    if not isinstance(neighbourhoods, torch.Tensor):
        neighbourhoods = torch.as_tensor(neighbourhoods)
    if neighbourhoods.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor of unit indices, got dtype {neighbourhoods.dtype}")
    if neighbourhoods.dim() == 1:
        neighbourhoods = neighbourhoods.unsqueeze(0)
    if neighbourhoods.dim() != 2 or neighbourhoods.shape[0] < 1:
        raise ValueError(f"{name} must have shape (M,) or (K, M) with K >= 1, got {tuple(neighbourhoods.shape)}")
    if neighbourhoods.shape[1] < 2:
        raise ValueError(f"{name} rows must hold at least M = 2 units, got M = {neighbourhoods.shape[1]}")
    if check_range:
        lo, hi = int(neighbourhoods.min()), int(neighbourhoods.max())
        if lo < 0 or hi >= num_units:
            raise ValueError(
                f"{name} holds unit indices in [{lo}, {hi}], but the layer has {num_units} units (valid: 0..{num_units - 1})"
            )
    return neighbourhoods.to(torch.int64)
