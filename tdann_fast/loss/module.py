"""``SpatialLoss``: the drop-in ``nn.Module`` that sums the spatial loss over the tapped layers of a network.

Each layer's positions and neighbourhood table live in a submodule under the key :func:`_buffer_key` (the layer name
with "." replaced by "__", as module names may not hold dots); saved state_dicts use these keys. Two layer names
with the same key (e.g. "x.y" and "x__y") are refused.

They are *replicated state*, not buffers (:class:`_Replicated`): identical on every rank by construction (the same
preset and seed, or the same checkpoint), so DistributedDataParallel must not broadcast them at every step (483 MB
for the r3d18_mt preset), and DDP sends only what ``named_buffers()`` lists. They still follow ``.to()``/``.cuda()``
(keeping their dtypes) and are saved and loaded by ``state_dict()``/``load_state_dict()`` like buffers. The same
holds for ``alpha`` and the sampler's step counter.

Neighbourhood rows are drawn by a counter-based hash of (seed, layer, step, row) computed on the tables' device: no
``torch.Generator`` (which ``torch.compile`` cannot trace), no host synchronisation, the same rows on every rank,
and resuming from a state_dict continues the sequence.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from .._validation import BACKENDS, TIME_REDUCTIONS, VARIANTS, check_choice, check_rows, feature_geometry
from ..sheet import CorticalSheet, check_positions_inside
from .functional import layer_losses, resolve_backend
from .gather import _compiling

__all__ = ["SpatialLoss"]


def _buffer_key(layer_name: str) -> str:
    return layer_name.replace(".", "__")


class _Replicated(nn.Module):
    """A module whose tensors named in ``_replicated`` are state like buffers (``.to()``, ``state_dict``) but not
    buffers: ``named_buffers()`` does not list them, so DistributedDataParallel neither broadcasts nor checks them.
    ``.to(dtype)``/``.half()`` move them but keep their dtypes. Names in ``_optional`` may be missing from a loaded
    state_dict (states saved before they existed)."""

    _replicated: Tuple[str, ...] = ()
    _optional: Tuple[str, ...] = ()
    _counters: Tuple[str, ...] = ()  # changed in place at every step: saved as copies

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        for name in self._replicated:
            value = getattr(self, name)
            moved = fn(value)
            setattr(self, name, moved if moved.dtype == value.dtype else moved.to(value.dtype))
        return module

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self._replicated:
            value = getattr(self, name)
            if name in self._counters:
                value = value.clone()
            destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for name in self._replicated:
            key = prefix + name
            if key in unexpected_keys:
                unexpected_keys.remove(key)
            saved = state_dict.get(key)
            if saved is None:
                if strict and name not in self._optional:
                    missing_keys.append(key)
                continue
            current = getattr(self, name)
            if not isinstance(saved, torch.Tensor) or saved.dtype.is_floating_point != current.dtype.is_floating_point:
                error_msgs.append(f"{key}: expected a {current.dtype} tensor, got {getattr(saved, 'dtype', saved)!r}")
                continue
            # After the swap stage the neighbourhood table may have another K or M: adopt the saved shapes.
            setattr(self, name, saved.detach().to(device=current.device, dtype=current.dtype).clone())
        self._after_load(prefix, state_dict, error_msgs)

    def _after_load(self, prefix, state_dict, error_msgs) -> None:
        pass


class _SheetBuffers(_Replicated):
    """One layer's positions (float32) and neighbourhood table (int64): replicated state (:class:`_Replicated`)."""

    _replicated = ("positions", "neighbourhoods")

    def __init__(self, sheet: CorticalSheet, name: str):
        super().__init__()
        check_positions_inside(sheet.positions, sheet.side_mm, f"sheets[{name!r}].positions")
        self.side_mm = sheet.side_mm
        self.neighbourhood_width_mm = sheet.neighbourhood_width_mm
        self.shape = sheet.shape
        self.positions = sheet.positions.detach().clone().to(torch.float32)
        self.neighbourhoods = sheet.neighbourhoods.detach().clone().to(torch.int64)

    def _after_load(self, prefix, state_dict, error_msgs) -> None:
        if prefix + "positions" in state_dict:  # loaded positions must lie on the (loaded) sheet
            try:
                check_positions_inside(self.positions, self.side_mm, f"{prefix}positions")
            except ValueError as exc:
                error_msgs.append(str(exc))

    def get_extra_state(self):
        return {"side_mm": self.side_mm, "neighbourhood_width_mm": self.neighbourhood_width_mm, "shape": self.shape}

    def set_extra_state(self, state):
        self.side_mm = state["side_mm"]
        self.neighbourhood_width_mm = state["neighbourhood_width_mm"]
        self.shape = tuple(state["shape"]) if state["shape"] is not None else None

    def sheet(self) -> CorticalSheet:
        return CorticalSheet(
            self.positions, self.side_mm, self.neighbourhood_width_mm, self.neighbourhoods, shape=self.shape
        )


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2^32 for int64 tensors x in [0, 2^32) without leaving int64 (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply, "lowbias32"), on int64 tensors in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def draw_rows(seed: int, layer: int, step: torch.Tensor, k: int, num_rows: int) -> torch.Tensor:
    """``k`` row indices in [0, num_rows) for (seed, layer, step): a pure function on ``step``'s device."""
    key = _mix32(torch.full_like(step, (seed ^ (seed >> 32)) & _MASK32))
    key = _mix32(key ^ (_mix32(torch.full_like(step, layer + 1)) + (step & _MASK32)) & _MASK32)
    key = _mix32((key + (step >> 32)) & _MASK32)
    counters = torch.arange(1, k + 1, device=step.device, dtype=torch.int64)
    u = _mix32((key + _mul32(counters, 0x9E3779B9)) & _MASK32)
    return (u * num_rows) >> 32


class SpatialLoss(_Replicated):
    """Weighted sum over layers of the TDANN spatial correlation loss (DESIGN §3).

    ``total = sum_l alpha_l * mean_k SL(layer l, neighbourhood k)``, with ``neighbourhoods_per_step`` rows drawn
    per layer and step from the layer's precomputed table (on the device of the activations: no host sync).

    Args:
        sheets: ``{layer_name: CorticalSheet}``, e.g. :func:`tdann_fast.presets.r3d18_mt`.
        alpha: one weight for every layer, or ``{layer_name: weight}`` covering every layer.
        variant: ``"rel"`` (TDANN) or ``"abs"`` (Lee et al. 2020).
        neighbourhoods_per_step: rows drawn per layer and step.
        time_reduction: ``"mean"``, ``"flatten"`` or ``"dual"`` for 5-D activations.
        seed: seed of the neighbourhood sampler (its state is saved in the ``state_dict``).
        gather_distributed: all-gather the sampled units across ranks (with gradients; only those, never whole
            activations) so correlations use the global batch; off by default (TDANN correlates over the local batch). No collective is called unless this is
            set and a process group is initialised.
        backend: ``"auto"`` (Triton for CUDA tensors, batched PyTorch otherwise), ``"torch"`` or ``"triton"``.
        check_inputs: check the sampled activations for NaN/inf (a host sync on CUDA; turn off for CUDA graphs).

    Positions are state, never parameters, and not buffers either: DDP does not broadcast them (module docstring).
    They may be replaced (:meth:`set_sheet`) until :meth:`freeze`. After every forward, :attr:`last_layer_losses`
    holds the detached per-layer values (unweighted) for logging.

    Gradients: for activations produced by autograd (e.g. :class:`~tdann_fast.models.taps.FeatureTaps` captures) the
    loss adds its gradient into the activation's own gradient at the sampled units only (``gather.py``); second
    derivatives (``create_graph=True``, e.g. a gradient penalty) are exact on every backend. A warning is given
    once when grad is enabled and a feature has no grad (e.g. a no-grad teacher's activations).
    """

    _replicated = ("alpha", "sampler_step")
    _optional = ("sampler_step",)
    _counters = ("sampler_step",)

    def __init__(
        self,
        sheets: Mapping[str, CorticalSheet],
        alpha: Union[float, Mapping[str, float]] = 1.0,
        variant: str = "rel",
        neighbourhoods_per_step: int = 1,
        time_reduction: str = "mean",
        seed: int = 0,
        gather_distributed: bool = False,
        backend: str = "auto",
        check_inputs: bool = True,
    ):
        super().__init__()
        if not isinstance(sheets, Mapping) or len(sheets) == 0:
            raise ValueError("sheets must be a non-empty mapping {layer_name: CorticalSheet}")
        for name, sheet in sheets.items():
            if not isinstance(sheet, CorticalSheet):
                raise TypeError(f"sheets[{name!r}] must be a CorticalSheet, got {type(sheet).__name__}")
        self.variant = check_choice(variant, "variant", VARIANTS)
        self.time_reduction = check_choice(time_reduction, "time_reduction", TIME_REDUCTIONS)
        self.backend = check_choice(backend, "backend", BACKENDS)
        if not isinstance(neighbourhoods_per_step, int) or neighbourhoods_per_step < 1:
            raise ValueError(f"neighbourhoods_per_step must be a positive integer, got {neighbourhoods_per_step!r}")
        self.neighbourhoods_per_step = neighbourhoods_per_step
        self.gather_distributed = bool(gather_distributed)
        self.check_inputs = bool(check_inputs)
        self.seed = int(seed)
        self._names: List[str] = list(sheets)
        owners: Dict[str, str] = {}
        for name in self._names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"sheets keys must be non-empty layer names (str), got {name!r}")
            key = _buffer_key(name)
            if key in owners:
                raise ValueError(
                    f"sheets: layer names {owners[key]!r} and {name!r} both map to the buffer key {key!r} ('.' is "
                    "stored as '__'); rename one of the layers"
                )
            owners[key] = name
        self.sheets = nn.ModuleDict({_buffer_key(n): _SheetBuffers(s, n) for n, s in sheets.items()})
        self.alpha = self._alpha_vector(alpha)
        self.sampler_step = torch.zeros((), dtype=torch.int64)  # forwards so far: the sampler's counter
        self._frozen = False
        self._warned_no_grad = False
        self.last_layer_losses: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------------ config
    def _alpha_vector(self, alpha) -> torch.Tensor:
        if isinstance(alpha, Mapping):
            unknown = sorted(set(alpha) - set(self._names))
            missing = [n for n in self._names if n not in alpha]
            if unknown:
                raise KeyError(f"alpha names unknown layers {unknown}; layers are {self._names}")
            if missing:
                raise KeyError(f"alpha has no weight for layers {missing}")
            values = [alpha[n] for n in self._names]
        else:
            values = [alpha] * len(self._names)
        for name, v in zip(self._names, values):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"alpha for layer {name!r} must be a finite number >= 0, got {v!r}")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    def set_alpha(self, alpha: Union[float, Mapping[str, float]]) -> None:
        """Change the layer weights (e.g. between training stages)."""
        self.alpha.copy_(self._alpha_vector(alpha).to(self.alpha.device))

    @property
    def layer_names(self) -> List[str]:
        return list(self._names)

    def _layer(self, name: str) -> _SheetBuffers:
        if name not in self._names:
            raise KeyError(f"unknown layer name {name!r}; layers are {self._names}")
        return self.sheets[_buffer_key(name)]

    def positions(self, name: str) -> torch.Tensor:
        return self._layer(name).positions

    def neighbourhoods(self, name: str) -> torch.Tensor:
        return self._layer(name).neighbourhoods

    def sheet(self, name: str) -> CorticalSheet:
        """The layer's current sheet (positions + neighbourhoods) as a :class:`CorticalSheet`."""
        return self._layer(name).sheet()

    def sheets_dict(self) -> Dict[str, CorticalSheet]:
        return {n: self.sheet(n) for n in self._names}

    # ----------------------------------------------------------------------------------------------- freezing
    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Freeze positions and neighbourhoods for good (stage 4 of the schedule)."""
        self._frozen = True

    def set_sheet(self, name: str, sheet: CorticalSheet) -> None:
        """Replace a layer's positions and neighbourhoods (e.g. after the swap stage); not allowed once frozen."""
        if self._frozen:
            raise RuntimeError(f"positions are frozen; cannot change layer {name!r}")
        layer = self._layer(name)
        if not isinstance(sheet, CorticalSheet):
            raise TypeError(f"sheet must be a CorticalSheet, got {type(sheet).__name__}")
        if sheet.num_units != layer.positions.shape[0]:
            raise ValueError(f"sheet has {sheet.num_units} units but layer {name!r} has {layer.positions.shape[0]}")
        check_positions_inside(sheet.positions, sheet.side_mm, "sheet.positions")  # it may have been edited
        device = layer.positions.device
        layer.positions = sheet.positions.detach().clone().to(device, torch.float32)
        layer.neighbourhoods = sheet.neighbourhoods.detach().clone().to(device, torch.int64)
        layer.side_mm, layer.neighbourhood_width_mm = sheet.side_mm, sheet.neighbourhood_width_mm

    def set_positions(self, name: str, positions, **neighbourhood_kwargs) -> None:
        """Replace a layer's positions; its neighbourhoods are recomputed. Not allowed once frozen."""
        self.set_sheet(name, self.sheet(name).with_positions(positions, **neighbourhood_kwargs))

    def get_extra_state(self):
        return {"frozen": self._frozen, "names": list(self._names), "seed": self.seed}

    def set_extra_state(self, state):
        if list(state.get("names", self._names)) != self._names:
            raise ValueError(f"state_dict is for layers {state.get('names')}, this SpatialLoss has {self._names}")
        self._frozen = bool(state["frozen"])
        self.seed = int(state.get("seed", self.seed))
        # (states saved before the counter-based sampler also hold "generator_states": the sampler restarts at the
        # saved sampler_step, or at 0 without one)

    # ---------------------------------------------------------------------------------------------- sampling
    def sample_neighbourhoods(self, name: str) -> torch.Tensor:
        """The ``neighbourhoods_per_step`` rows of the layer's table drawn at the current step: (k, M) int64 on the
        table's device (a function of seed, layer, :attr:`sampler_step`; the step advances after each forward)."""
        table = self._layer(name).neighbourhoods
        step = self.sampler_step.to(table.device)
        rows = draw_rows(self.seed, self._names.index(name), step, self.neighbourhoods_per_step, table.shape[0])
        return table.index_select(0, rows)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(features, Mapping):
            raise TypeError("features must be a mapping {layer_name: activation tensor}")
        missing = [n for n in self._names if n not in features]
        unknown = sorted(set(features) - set(self._names))
        if missing or unknown:
            raise KeyError(
                f"features must hold exactly the layers {self._names}; missing {missing}, unknown {unknown}"
            )
        feats, positions, rows = [], [], []
        ranks = self._ranks_gathered()
        for name in self._names:
            f = features[name]
            layer = self._layer(name)
            b, c, t, hw = feature_geometry(f, f"features[{name!r}]")
            if c * hw != layer.positions.shape[0]:
                raise ValueError(
                    f"features[{name!r}] has {c * hw} units (shape {tuple(f.shape)}) but its sheet has "
                    f"{layer.positions.shape[0]} positions"
                )
            if f.device != layer.positions.device:
                raise ValueError(
                    f"features[{name!r}] is on {f.device} but the SpatialLoss buffers are on "
                    f"{layer.positions.device}; call .to(device) on the loss"
                )
            if ranks == 1:  # (with gather_distributed the global batch counts: checked below)
                check_rows(f, self.time_reduction, f"features[{name!r}]")
            elif b * ranks < 3:
                raise ValueError(f"features[{name!r}]: the global batch holds {b * ranks} samples; "
                                 "the spatial loss needs at least 3")
            feats.append(f)
            positions.append(layer.positions)
            rows.append(self.sample_neighbourhoods(name))
        self._warn_without_grad(feats)
        with torch.no_grad():
            self.sampler_step.add_(1)
        backend = resolve_backend(self.backend, feats[0].device) if not _compiling() else "torch"
        values = layer_losses(feats, positions, rows, self.variant, self.time_reduction, backend,
                              check_inputs=self.check_inputs, names=self._names,
                              gather_distributed=self.gather_distributed)
        self.last_layer_losses = {n: v.detach() for n, v in zip(self._names, values)}
        return (self.alpha.to(values.dtype) * values).sum()

    def _warn_without_grad(self, feats) -> None:
        if self._warned_no_grad or not torch.is_grad_enabled() or _compiling():
            return
        without = [n for n, f in zip(self._names, feats) if not f.requires_grad]
        if without:
            self._warned_no_grad = True
            warnings.warn(
                f"SpatialLoss: grad is enabled but features {without} do not require grad, so the spatial loss "
                "trains nothing through them (activations captured under torch.no_grad(), detached, or from a "
                "teacher/averaged copy of the model?); this warning is given once",
                RuntimeWarning,
                stacklevel=2,
            )

    def _ranks_gathered(self) -> int:
        """How many ranks' units the loss correlates over: the world size with ``gather_distributed``, else 1."""
        if not self.gather_distributed:
            return 1
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def extra_repr(self) -> str:
        return (
            f"layers={self._names}, variant={self.variant!r}, time_reduction={self.time_reduction!r}, "
            f"neighbourhoods_per_step={self.neighbourhoods_per_step}, backend={self.backend!r}, frozen={self._frozen}"
        )
