"""``SpatialLoss``: the drop-in ``nn.Module`` that sums the spatial loss over the tapped layers of a network.

Each layer's positions and neighbourhood table are buffers of a submodule under the key :func:`_buffer_key` (the
layer name with "." replaced by "__", as module names may not hold dots); saved state_dicts use these keys. Two layer
names with the same key (e.g. "x.y" and "x__y") are refused.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .._validation import BACKENDS, TIME_REDUCTIONS, VARIANTS, check_choice, check_rows, feature_geometry
from ..sheet import CorticalSheet, check_positions_inside
from .functional import check_finite_units, layer_losses, resolve_backend

__all__ = ["SpatialLoss"]


def _buffer_key(layer_name: str) -> str:
    return layer_name.replace(".", "__")


class _SheetBuffers(nn.Module):
    """One layer's positions and neighbourhood table as buffers (they follow ``.to()`` and the state_dict)."""

    def __init__(self, sheet: CorticalSheet, name: str):
        super().__init__()
        check_positions_inside(sheet.positions, sheet.side_mm, f"sheets[{name!r}].positions")
        self.side_mm = sheet.side_mm
        self.neighbourhood_width_mm = sheet.neighbourhood_width_mm
        self.shape = sheet.shape
        self.register_buffer("positions", sheet.positions.detach().clone().to(torch.float32))
        self.register_buffer("neighbourhoods", sheet.neighbourhoods.detach().clone().to(torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # After the swap stage the neighbourhood table may have another K or M: adopt the saved shapes.
        for name in ("positions", "neighbourhoods"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
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


class SpatialLoss(nn.Module):
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
        gather_distributed: all-gather activations across ranks (with gradients) so correlations use the global
            batch; off by default (TDANN correlates over the local batch). No collective is called unless this is
            set and a process group is initialised.
        backend: ``"auto"`` (Triton for CUDA tensors, batched PyTorch otherwise), ``"torch"`` or ``"triton"``.
        check_inputs: check the sampled activations for NaN/inf (a host sync on CUDA; turn off for CUDA graphs).

    Positions are buffers, never parameters. They may be replaced (:meth:`set_sheet`) until :meth:`freeze`.
    After every forward, :attr:`last_layer_losses` holds the detached per-layer values (unweighted) for logging.
    """

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
        self.register_buffer("alpha", self._alpha_vector(alpha), persistent=True)
        self._frozen = False
        self._generators: Dict[str, torch.Generator] = {}
        self._generator_states: Dict[str, torch.Tensor] = {}
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
        states = {k: g.get_state() for k, g in self._generators.items()}
        states.update({k: v for k, v in self._generator_states.items() if k not in states})
        return {"frozen": self._frozen, "generator_states": states, "names": list(self._names)}

    def set_extra_state(self, state):
        if list(state.get("names", self._names)) != self._names:
            raise ValueError(f"state_dict is for layers {state.get('names')}, this SpatialLoss has {self._names}")
        self._frozen = bool(state["frozen"])
        self._generators = {}
        self._generator_states = dict(state.get("generator_states", {}))

    # ---------------------------------------------------------------------------------------------- sampling
    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if key in self._generator_states:
                gen.set_state(self._generator_states.pop(key))
            self._generators[key] = gen
        return gen

    def sample_neighbourhoods(self, name: str) -> torch.Tensor:
        """Draw ``neighbourhoods_per_step`` rows of the layer's table: (k, M) int64 on the table's device."""
        table = self._layer(name).neighbourhoods
        rows = torch.randint(
            table.shape[0], (self.neighbourhoods_per_step,), generator=self._generator(table.device), device=table.device
        )
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
            f = self._maybe_gather(f)
            check_rows(f, self.time_reduction, f"features[{name!r}]")
            sampled = self.sample_neighbourhoods(name)
            if self.check_inputs:
                check_finite_units(f, sampled, f"features[{name!r}]")
            feats.append(f)
            positions.append(layer.positions)
            rows.append(sampled)
        backend = resolve_backend(self.backend, feats[0].device)
        values = layer_losses(feats, positions, rows, self.variant, self.time_reduction, backend)
        self.last_layer_losses = {n: v.detach() for n, v in zip(self._names, values)}
        return (self.alpha.to(values.dtype) * values).sum()

    def _maybe_gather(self, f: torch.Tensor) -> torch.Tensor:
        if not self.gather_distributed:
            return f
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return f
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(f.contiguous()), dim=0)

    def extra_repr(self) -> str:
        return (
            f"layers={self._names}, variant={self.variant!r}, time_reduction={self.time_reduction!r}, "
            f"neighbourhoods_per_step={self.neighbourhoods_per_step}, backend={self.backend!r}, frozen={self._frozen}"
        )
