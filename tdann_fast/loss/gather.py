"""Reading the sampled units of an activation, and adding their gradient back into the activation's own gradient.

The spatial loss reads a few hundred units of a layer's ~10^5 per sampled neighbourhood. :func:`gather_units`
copies them into a small (B, U, T) tensor, reading them in place whatever the activation's strides (contiguous,
channels_last, sliced; no copy of the activation). Its gradient goes back in one of two ways:

* **sparse injection**, for activations that went through :func:`tap` (every :class:`~tdann_fast.models.taps.
  FeatureTaps` capture does; call it on your own activations): ``tap`` puts an identity node T between the
  activation and everything that uses it (its output is the same storage, so in-place ops after the tap behave
  as without it). The gather's backward hands its (B, U, T) gradient to T's slot instead of returning an
  activation-sized one. It is added into the activation's gradient at the sampled units, with one ``index_add_``,
  by a hook on the tapped tensor, which autograd calls once every consumer of the activation has delivered its
  part (the gather is one of them, so its backward has run); where nothing but the loss reaches the activation,
  autograd passes no gradient and T's own backward creates it (zeros + the units). The loss allocates and clears
  no activation-sized tensor: it writes into the task's gradient, which the step needs anyway. The hook (rather
  than T's backward) does the add so that ``retain_grad()`` and ``torch.autograd.grad`` with respect to the tapped
  activation see the whole gradient; when only such a capture is asked and T does not run, the gather returns the
  dense gradient instead. (One case is left: ``torch.autograd.grad`` with respect to a tapped activation that
  nothing but the loss uses *and* to something before it; autograd then reports the activation as unused.)
* **dense** (untapped tensors, ``torch.compile`` tracing, double backward, or inside :func:`dense_gradient`): an
  activation-sized zero gradient with the units added, the way autograd's own indexing does it.

The hook adds in place only into a gradient that nothing else holds: autograd may hand the same tensor to two
branches (``a + b`` gives both the same gradient), so the hook compares the tensor's reference counts with those
of a gradient known to be private (measured once per device type with a tiny backward, as they differ between
torch versions); a shared, non-dense or subclassed gradient is copied first (correct, one activation-sized copy).

Unit ``u`` of a layer is ``c·HW + p`` in C·H·W order (``torch.flatten`` order; for tokens (B, L, D) ``l·D + d``);
every rank is viewed as (B, C, T, H, W) by :func:`as_5d`.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Dict, List, Optional, Tuple

import torch

from .._validation import feature_geometry

__all__ = ["as_5d", "dense_gradient", "gather_layers", "gather_units", "read_units", "sparse_injection_enabled",
           "tap", "unit_offsets"]

_STATE = threading.local()


@contextlib.contextmanager
def dense_gradient():
    """Within this block, :func:`gather_units` gives activations an activation-sized gradient (autograd's own way)
    instead of injecting the loss's gradient at the sampled units. For benchmarks and tests; results are equal."""
    previous = getattr(_STATE, "dense", False)
    _STATE.dense = True
    try:
        yield
    finally:
        _STATE.dense = previous


def sparse_injection_enabled() -> bool:
    return not getattr(_STATE, "dense", False)


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def as_5d(features: torch.Tensor) -> torch.Tensor:
    """A (B, C, T, H, W) view of a (B, N), (B, L, D), (B, C, H, W) or (B, C, T, H, W) tensor (same storage)."""
    d = features.dim()
    if d == 2:
        return features[:, :, None, None, None]
    if d == 3:  # tokens: unit l·D + d is (c = l, w = d)
        return features[:, :, None, None, :]
    if d == 4:
        return features[:, :, None]
    if d == 5:
        return features
    feature_geometry(features)  # raises the error that names the accepted shapes
    raise AssertionError("unreachable")


def unit_offsets(units: torch.Tensor, shape: Tuple[int, ...], strides: Tuple[int, ...]) -> torch.Tensor:
    """Element offsets, relative to a sample's first element, of every (unit, frame): (U,) → (U·T,), unit-major.

    ``shape`` and ``strides`` are those of the (B, C, T, H, W) view; unit ``u = c·H·W + h·W + w``.
    """
    _, _, t, h, w = shape
    _, sc, st, sh, sw = strides
    hw = h * w
    c = torch.div(units, hw, rounding_mode="floor")
    p = units - c * hw
    y = torch.div(p, w, rounding_mode="floor")
    base = c * sc + y * sh + (p - y * w) * sw
    if t == 1:
        return base
    frames = torch.arange(t, device=units.device, dtype=units.dtype) * st
    return (base[:, None] + frames[None, :]).reshape(-1)


def _rows_view(x5: torch.Tensor) -> torch.Tensor:
    """(B, span) strided view over the storage of ``x5`` such that element ``offset`` of row b is x5's element at
    that offset from sample b's first element (span from shapes and strides only: no device read)."""
    b = x5.shape[0]
    span = 1 + sum((n - 1) * s for n, s in zip(x5.shape[1:], x5.stride()[1:]))
    return x5.as_strided((b, span), (x5.stride(0), 1), x5.storage_offset())


def read_units(features: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The responses of ``units`` (U,) at every frame, (B, U, T), read in place (no autograd)."""
    x5 = as_5d(features.detach())
    offsets = unit_offsets(units, tuple(x5.shape), x5.stride())
    return _rows_view(x5).index_select(1, offsets).view(x5.shape[0], units.numel(), x5.shape[2])


# ------------------------------------------------------------------------------------------------ injection

_PRIVATE_COUNTS: Dict[str, Tuple[int, int]] = {}


def _reference_counts(grad: torch.Tensor) -> Tuple[int, int]:
    return grad._use_count(), torch._C._storage_Use_Count(grad.untyped_storage()._cdata)


def _private_counts(device_type: str) -> Optional[Tuple[int, int]]:
    """Reference counts of a gradient that nothing else holds, as a tensor hook sees it on this torch (None when
    the counts cannot be read: then every gradient is treated as shared)."""
    if not hasattr(torch.Tensor, "_use_count") or not hasattr(torch._C, "_storage_Use_Count"):
        return None
    if device_type not in _PRIVATE_COUNTS:
        seen = []
        with torch.enable_grad():
            x = torch.zeros(4, device=device_type, requires_grad=True)
            y = x * 2.0
            y.register_hook(lambda g: seen.append(_reference_counts(g)))
            (y * 3.0).sum().backward()  # MulBackward hands y a fresh gradient that only autograd holds
        _PRIVATE_COUNTS[device_type] = seen[0]
    return _PRIVATE_COUNTS[device_type]


def _is_dense(x: torch.Tensor) -> bool:
    if x.is_contiguous():
        return True
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def _writable(grad: torch.Tensor) -> bool:
    """Whether the hook may add into ``grad`` in place: a plain, dense tensor without a graph that nothing but
    autograd's buffer holds."""
    if type(grad) is not torch.Tensor or grad.requires_grad or grad.is_sparse or not _is_dense(grad):
        return False
    if getattr(grad, "_is_zerotensor", lambda: False)():
        return False
    private = _private_counts(grad.device.type)
    if private is None:
        return False
    uses, storage_uses = _reference_counts(grad)
    return uses <= private[0] and storage_uses <= private[1]


class _Slot:
    """The loss gradients waiting to be added into one tapped activation: [(units (U,), values (B, U, T)), ...]."""

    def __init__(self, like: Tuple[torch.Size, torch.dtype, torch.device]):
        self.pending: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.like = like

    def add_into(self, grad: Optional[torch.Tensor], in_hook: bool) -> torch.Tensor:
        """``grad`` (or zeros when None) with every pending gradient added at its units; empties the slot. Only a
        tensor hook (``in_hook``, where the reference counts were measured) may add into ``grad`` in place."""
        pending, self.pending = self.pending, []
        if grad is None:
            shape, dtype, device = self.like
            grad = torch.zeros(shape, dtype=dtype, device=device)
        elif not (in_hook and _writable(grad)):
            grad = grad.clone(memory_format=torch.contiguous_format)
        x5 = as_5d(grad)
        rows = _rows_view(x5)
        b = x5.shape[0]
        with torch.no_grad():
            for units, values in pending:
                offsets = unit_offsets(units, tuple(x5.shape), x5.stride())
                rows.index_add_(1, offsets, values.reshape(b, -1).to(grad.dtype))
        return grad


class _Tap(torch.autograd.Function):
    """Identity whose output shares the input's storage (not a view: in-place ops on it are allowed); its backward
    adds what is still pending in its slot (only when autograd passed no gradient; else the tensor hook did)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.set_materialize_grads(False)
        ctx.tap_slot = _Slot((x.shape, x.dtype, x.device))
        return x.detach()

    @staticmethod
    def backward(ctx, grad: Optional[torch.Tensor]):
        slot = ctx.tap_slot
        if slot.pending:
            grad = slot.add_into(grad, in_hook=False)
        return grad


def tap(x: torch.Tensor) -> torch.Tensor:
    """``x`` through an identity node so that the spatial loss adds its gradient into ``x``'s own gradient at the
    sampled units only (module docstring). Use the result in place of ``x`` (in the model's forward and in the loss);
    :class:`~tdann_fast.models.taps.FeatureTaps` does this for every capture. Returns ``x`` itself when it needs no
    gradient or inside ``torch.compile``."""
    if not (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()) or _compiling():
        return x
    return _Tap.apply(x)


def _hook(slot: _Slot, grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Tensor hook on a tapped activation: add the pending gradients into its gradient."""
    if grad is None or not slot.pending:
        return None  # nothing to add, or no gradient to add into (then the tap's backward creates it)
    return slot.add_into(grad, in_hook=True)


def _tap_will_run(node) -> bool:
    """Whether this backward runs the tap ``node`` (not merely captures the gradient of its output, as
    ``torch.autograd.grad(loss, tapped)`` does): it does iff it runs the node before it (the only edge of a tap)."""
    before = node.next_functions[0][0]
    if before is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(before))
    except (AttributeError, RuntimeError):  # an older torch: assume a plain backward
        return True


class _GatherUnits(torch.autograd.Function):
    """``features`` → its units (B, U, T); backward: to the tap's slot (sparse) or an activation-sized gradient."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, units: torch.Tensor, tap_node):
        ctx.save_for_backward(units)
        ctx.tap_node = tap_node
        ctx.shape = features.shape
        return read_units(features, units)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (units,) = ctx.saved_tensors
        node = ctx.tap_node
        if node is not None and not torch.is_grad_enabled() and _tap_will_run(node):
            node.tap_slot.pending.append((units, grad))  # the tap adds it (module docstring)
            return None, None, None
        return _dense_gradient(grad, units, ctx.shape), None, None


def _contiguous_offsets(units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """:func:`unit_offsets` in a contiguous tensor of ``shape``, i.e. in its (B, -1) flattening."""
    x5 = as_5d(torch.empty(shape, device="meta"))
    return unit_offsets(units, tuple(x5.shape), x5.stride())


def _dense_gradient(grad: torch.Tensor, units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Activation-sized gradient of a contiguous tensor of ``shape``, zero but at ``units`` (differentiable)."""
    offsets = _contiguous_offsets(units, shape)
    b = shape[0]
    full = torch.zeros((b, math.prod(shape[1:])), dtype=grad.dtype, device=grad.device)
    if torch.is_grad_enabled():  # create_graph=True: differentiable with respect to grad
        return full.index_add(1, offsets, grad.reshape(b, -1)).view(shape)
    return full.index_add_(1, offsets, grad.reshape(b, -1)).view(shape)


def gather_layers(features, positions, neighbourhoods):
    """For every layer: its sampled units (B, K·M, T) (:func:`gather_units` of the (K, M) rows) and their positions
    (K, M, 2). The first step of every backend."""
    units = [gather_units(f, nb.reshape(-1)) for f, nb in zip(features, neighbourhoods)]
    return units, [p[nb] for p, nb in zip(positions, neighbourhoods)]


def gather_units(features: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Responses of ``units`` ((U,) int64 indices in C·H·W order) at every frame: (B, U, T), the dtype of
    ``features``, differentiable with respect to ``features`` (module docstring: sparse or dense backward)."""
    needs_grad = features.requires_grad and torch.is_grad_enabled()
    if not needs_grad:
        return read_units(features, units)
    if _compiling():  # a plain, traceable gather (dense backward)
        b = features.shape[0]
        flat = features.reshape(b, -1)
        frames = as_5d(features).shape[2]
        return flat.index_select(1, _contiguous_offsets(units, features.shape)).view(b, units.numel(), frames)
    node = features.grad_fn
    if getattr(node, "tap_slot", None) is None or not sparse_injection_enabled():
        node = None  # not (or no longer: changed in place since) the output of a tap: dense
    else:
        features.register_hook(functools.partial(_hook, node.tap_slot))
    return _GatherUnits.apply(features, units, node)
