"""Gathering the sampled units of an activation tensor, with a sparse-aware backward.

The spatial loss reads only the units of the sampled neighbourhoods (a few hundred of the ~10^5 units of a layer),
but the gradient autograd hands back must have the shape of the whole activation. PyTorch's own indexing backward
allocates that gradient with ``torch.zeros`` and scatters into it; on a CPU, clearing freshly mapped memory (page
faults plus a memset, then unmapping it again when the gradient is freed) is the largest cost of the whole loss:
measured ~60 % of a forward+backward step of the 8-layer r3d_18 preset at B=128.

:class:`GatherUnits` instead

* gathers with one ``index_select`` on the flat (B, C·T·HW) view (no copy of the activations when they are
  viewable that way, which covers contiguous tensors);
* takes the gradient from :func:`zeros_for_gradient`: large CPU blocks are recycled (see :class:`CpuBlockCache`),
  so clearing them is a memset of memory that is already mapped, or, for a new block, ``calloc`` memory that the
  kernel hands out already zero. The result is an ordinary contiguous tensor equal to ``torch.zeros``;
* scatters with ``index_add_`` (repeated units, e.g. overlapping neighbourhoods, accumulate).

Double backward (``create_graph=True``) takes a plain differentiable path.
"""
from __future__ import annotations

import ctypes
import os
import threading
import weakref
from typing import Dict, List, Tuple

import numpy as np
import torch

__all__ = [
    "CpuBlockCache",
    "GatherUnits",
    "MIN_CACHED_BYTES",
    "empty_cache",
    "gather_units_flat",
    "unit_offsets",
    "zeros_for_gradient",
]

_NUMPY_DTYPES = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: np.uint16,  # same width; +0.0 is all-zero bits in both
}

# Large blocks are mapped fresh from the kernel by malloc on every allocation and unmapped on every free (always
# above 32 MiB; above a threshold that depends on the allocation history below that), so they are cached here.
MIN_CACHED_BYTES = 4 << 20
# Reused blocks of at least this size are cleared with the C library's memset (non-temporal stores, no read of the
# old contents: measured 4.4 ms for 100 MB against 7 ms for torch's two-thread zero_ on the 2-core CI machine);
# smaller ones, which may still be in the last-level cache, with torch's zero_.
MEMSET_MIN_BYTES = 32 << 20
_DEFAULT_LIMIT_MB = 2048
CACHE_LIMIT_ENV = "TDANN_FAST_CPU_GRAD_CACHE_MB"


class CpuBlockCache:
    """Recycles large CPU gradient blocks between steps, like a caching allocator.

    A block goes back to the free list only when the last tensor (or NumPy array) using it has been freed, so a
    handed-out gradient is never aliased. Reused blocks are already mapped and are cleared in place (see
    :data:`MEMSET_MIN_BYTES`); new blocks come from ``calloc`` (zero pages from the kernel). At most
    ``limit_bytes`` are kept on the free lists (default 2048 MiB, environment variable
    ``TDANN_FAST_CPU_GRAD_CACHE_MB``; 0 disables the reuse); :func:`empty_cache` drops them.
    """

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        self._free: Dict[int, List[np.ndarray]] = {}
        self._free_bytes = 0
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    def _release(self, block: np.ndarray) -> None:
        with self._lock:
            if self._free_bytes + block.nbytes <= self.limit_bytes:
                self._free.setdefault(block.nbytes, []).append(block)
                self._free_bytes += block.nbytes

    def zeros(self, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        np_dtype = np.dtype(_NUMPY_DTYPES[dtype])
        nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
        with self._lock:
            blocks = self._free.get(nbytes)
            block = blocks.pop() if blocks else None
            reused = block is not None
            if reused:
                self._free_bytes -= nbytes
                self.reused += 1
            else:
                self.allocated += 1
        if not reused:
            block = np.zeros(nbytes, dtype=np.uint8)  # calloc: zero pages from the kernel, no memset
        array = block.view(np_dtype).reshape(shape)  # a new array object; the block stays its base
        weakref.finalize(array, self._release, block)
        tensor = torch.from_numpy(array)
        if dtype == torch.bfloat16:
            tensor = tensor.view(torch.bfloat16)
        if reused:
            if nbytes >= MEMSET_MIN_BYTES:
                ctypes.memset(block.ctypes.data, 0, nbytes)  # releases the GIL
            else:
                tensor.zero_()
        return tensor

    def empty(self) -> None:
        with self._lock:
            self._free.clear()
            self._free_bytes = 0


_CACHE_LOCK = threading.Lock()
_CACHE: List[CpuBlockCache] = []


def _cache() -> CpuBlockCache:
    if not _CACHE:
        with _CACHE_LOCK:
            if not _CACHE:
                raw = os.environ.get(CACHE_LIMIT_ENV, str(_DEFAULT_LIMIT_MB))
                try:
                    limit_mb = float(raw)
                except ValueError:
                    raise ValueError(f"{CACHE_LIMIT_ENV} must be a number of MiB, got {raw!r}") from None
                _CACHE.append(CpuBlockCache(int(max(limit_mb, 0.0) * 2**20)))
    return _CACHE[0]


def empty_cache() -> None:
    """Free the CPU gradient blocks kept for reuse (they are re-created on the next large backward)."""
    if _CACHE:
        _CACHE[0].empty()


def zeros_for_gradient(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A contiguous zero tensor, equal to ``torch.zeros(shape, dtype=dtype, device=device)``.

    CPU blocks of at least :data:`MIN_CACHED_BYTES` come from the process's :class:`CpuBlockCache`; everything else
    (CUDA, small blocks, other dtypes) from ``torch.zeros``.
    """
    device = torch.device(device)
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes >= MIN_CACHED_BYTES:
            return _cache().zeros(tuple(shape), dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


def unit_offsets(units: torch.Tensor, channels: int, frames: int, hw: int) -> torch.Tensor:
    """Offsets in the flat C·T·HW axis of every (unit, frame): (U,) unit indices in C·HW order → (U·T,).

    Unit ``u = c·HW + p`` at frame ``t`` lives at ``c·T·HW + t·HW + p``; offsets of one unit are consecutive in
    the result (unit-major, then frame).
    """
    c = torch.div(units, hw, rounding_mode="floor")
    p = units - c * hw
    base = c * (frames * hw) + p
    if frames == 1:
        return base
    t = torch.arange(frames, device=units.device, dtype=units.dtype) * hw
    return (base[:, None] + t[None, :]).reshape(-1)


class GatherUnits(torch.autograd.Function):
    """``flat[:, offsets]`` for the (B, L) view of an activation; the gradient is scattered into a block from
    :func:`zeros_for_gradient`."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        flat = _flat_view(features)
        ctx.save_for_backward(offsets)
        ctx.features_shape = features.shape
        return flat.index_select(1, offsets)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (offsets,) = ctx.saved_tensors
        shape = ctx.features_shape
        b = shape[0]
        length = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if torch.is_grad_enabled():  # create_graph=True: a differentiable scatter
            full = torch.zeros((b, length), dtype=grad.dtype, device=grad.device).index_add(1, offsets, grad)
        else:
            full = zeros_for_gradient((b, length), grad.dtype, grad.device)
            full.index_add_(1, offsets, grad.contiguous())
        return full.view(shape), None


def _flat_view(features: torch.Tensor) -> torch.Tensor:
    """(B, C·T·HW) view of the activations; a copy only when the strides do not allow a view."""
    b = features.shape[0]
    try:
        return features.view(b, -1)
    except RuntimeError:  # e.g. channels_last: not viewable as (B, C·T·HW) without reordering
        return features.reshape(b, -1)


def gather_units_flat(features: torch.Tensor, units: torch.Tensor, channels: int, frames: int, hw: int) -> torch.Tensor:
    """Responses of ``units`` (U,) at every frame: (B, U, T) in the dtype of ``features``."""
    offsets = unit_offsets(units, channels, frames, hw)
    b = features.shape[0]
    if features.requires_grad and torch.is_grad_enabled():
        out = GatherUnits.apply(features, offsets)
    else:
        out = _flat_view(features).index_select(1, offsets)
    return out.view(b, units.numel(), frames)
