"""Layer tables: which layers get a cortical sheet, how large the sheet is and how wide its neighbourhoods are.

* :func:`r3d18_mt` -- torchvision ``r3d_18`` mapped to the dorsal stream (arXiv 2605.11718, seed 000 table);
* :func:`resnet18_tdann` -- torchvision ``resnet18`` mapped to the ventral stream (Margalit et al. 2024).

Each returns ``{layer_name: CorticalSheet}`` in network order, built with retinotopic initial positions
(:meth:`CorticalSheet.retinotopic`) for the layer's output shape at the given input size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Tuple, Union

if TYPE_CHECKING:  # the sheet module (and torch) are imported when sheets are built, not to read the tables
    from .sheet import CorticalSheet

__all__ = ["LayerSpec", "MT_LAYER", "V1_LAYERS", "r3d18_mt", "resnet18_tdann", "r3d18_layer_shapes",
           "resnet18_layer_shapes", "build_sheets"]

MT_LAYER = "layer3.1"
V1_LAYERS = ("layer2.0", "layer2.1")


@dataclass(frozen=True)
class LayerSpec:
    """One row of a layer table: sheet side and neighbourhood width in mm, and the cortical area it maps to."""

    side_mm: float
    neighbourhood_width_mm: float
    area: str


# arXiv 2605.11718 (seed 000): area in mm² (side = sqrt(area)) and neighbourhood width in mm.
_R3D18_MT_TABLE = {
    "layer1.0": (5.7, 0.047, "retina"),
    "layer1.1": (5.7, 0.047, "retina"),
    "layer2.0": (1180.0, 2.7, "V1"),
    "layer2.1": (1180.0, 2.7, "V1"),
    "layer3.0": (940.0, 4.2, "V2"),
    "layer3.1": (50.0, 2.1, "MT"),
    "layer4.0": (56.0, 2.7, "LIP"),
    "layer4.1": (56.0, 2.7, "LIP"),
}

# Reference TDANN code's analysis sizes (side mm, neighbourhood mm), and the macaque-like sides the published
# models were trained at (neighbourhood widths scaled with the side).
_RESNET18_ANALYSIS = {
    "layer1": (2.4, 0.0475, "retina"),
    "layer2": (36.75, 1.626, "V1"),
    "layer3.0": (35.0, 3.977, "V2"),
    "layer3.1": (22.4, 2.545, "V4"),
    "layer4": (70.0, 31.818, "VTC"),
}
_RESNET18_TRAINED_SIDE = {"layer1": 4.0, "layer2": 24.5, "layer3.0": 20.0, "layer3.1": 16.0, "layer4": 10.0}

_BLOCKS = ("layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1")
_CHANNELS = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_size(value, name: str, minimum: int) -> int:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def r3d18_layer_shapes(input_size: int = 112) -> Dict[str, Tuple[int, int, int]]:
    """(C, H, W) of every residual block of torchvision ``r3d_18`` for a square input of side ``input_size``."""
    s = _conv_out(_check_size(input_size, "input_size", 8), 7, 2, 3)  # stem: (3,7,7) conv, stride (1,2,2)
    sizes = {"layer1": s}
    for layer in ("layer2", "layer3", "layer4"):
        s = _conv_out(s, 3, 2, 1)
        sizes[layer] = s
    return {b: (_CHANNELS[b[:6]], sizes[b[:6]], sizes[b[:6]]) for b in _BLOCKS}


def resnet18_layer_shapes(input_size: int = 224) -> Dict[str, Tuple[int, int, int]]:
    """(C, H, W) of every residual block of torchvision ``resnet18`` for a square input of side ``input_size``."""
    s = _conv_out(_conv_out(_check_size(input_size, "input_size", 16), 7, 2, 3), 3, 2, 1)  # conv1 + maxpool
    sizes = {"layer1": s}
    for layer in ("layer2", "layer3", "layer4"):
        s = _conv_out(s, 3, 2, 1)
        sizes[layer] = s
    return {b: (_CHANNELS[b[:6]], sizes[b[:6]], sizes[b[:6]]) for b in _BLOCKS}


def build_sheets(
    shapes: Mapping[str, Tuple[int, int, int]],
    specs: Mapping[str, LayerSpec],
    seed: int = 0,
    num_neighbourhoods: int = 20000,
    max_units: int = 500,
    min_units: int = 25,
    percentile: float = 5.0,
    overlap: float = 1.0,
    jitter: float = 0.1,
    min_expected_units: int = 50,
) -> Dict[str, CorticalSheet]:
    """Retinotopic sheets for every layer of ``specs``.

    When the model runs at a smaller input than the table was made for, a layer has fewer units on the same
    cortical area; if a window of the table's width would then hold on average fewer than
    ``min_expected_units`` units, the width is widened just enough to hold that many (the table's width is kept
    otherwise; at the paper's input sizes no layer is widened).
    """
    from .sheet import CorticalSheet

    sheets = {}
    for i, (name, spec) in enumerate(specs.items()):
        c, h, w = shapes[name]
        n = c * h * w
        width = spec.neighbourhood_width_mm
        expected = n * width ** 2 / spec.side_mm ** 2
        if expected < min_expected_units:
            width = min(spec.side_mm, math.sqrt(min_expected_units * spec.side_mm ** 2 / n))
        sheets[name] = CorticalSheet.retinotopic(
            c, h, w, spec.side_mm, width, overlap=overlap, jitter=jitter, seed=seed + i,
            num_neighbourhoods=num_neighbourhoods, max_units=max_units, min_units=min_units, percentile=percentile,
        )
    return sheets


def r3d18_mt_specs() -> Dict[str, LayerSpec]:
    return {n: LayerSpec(math.sqrt(a), w, area) for n, (a, w, area) in _R3D18_MT_TABLE.items()}


def r3d18_mt(input_size: int = 112, frames: int = 16, seed: int = 0, num_neighbourhoods: int = 20000,
             **kwargs) -> Dict[str, CorticalSheet]:
    """Sheets for the eight residual blocks of ``r3d_18`` (the MT paper's table; square sheets, side = √area).

    Units per block are channels × spatial size of its output at an ``input_size``² input (the time axis is
    reduced by the loss): 200,704 / 100,352 / 50,176 / 50,176 / 25,088 at 112. ``layer3.1`` maps to MT.
    ``frames`` does not change the unit count; it is checked for plausibility only. Extra keyword arguments go to
    :func:`build_sheets` (``max_units``, ``min_units``, ``overlap``, ``jitter``, ...).
    """
    _check_size(frames, "frames", 1)
    return build_sheets(r3d18_layer_shapes(input_size), r3d18_mt_specs(), seed=seed,
                        num_neighbourhoods=num_neighbourhoods, **kwargs)


def resnet18_tdann_specs(sizes: Union[str, Mapping[str, float]] = "analysis") -> Dict[str, LayerSpec]:
    """Layer table for ``resnet18``: ``sizes="analysis"`` (reference code's analysis sizes), ``"trained"``
    (the macaque-like sides the published models were trained at, widths scaled with the side), or a mapping
    ``{group: side_mm}`` over the groups layer1, layer2, layer3.0, layer3.1, layer4 (widths scaled likewise)."""
    if isinstance(sizes, str):
        if sizes == "analysis":
            sides = {g: v[0] for g, v in _RESNET18_ANALYSIS.items()}
        elif sizes == "trained":
            sides = dict(_RESNET18_TRAINED_SIDE)
        else:
            raise ValueError(f"sizes must be 'analysis', 'trained' or a mapping of sides; got {sizes!r}")
    elif isinstance(sizes, Mapping):
        unknown = sorted(set(sizes) - set(_RESNET18_ANALYSIS))
        if unknown:
            raise KeyError(f"sizes names unknown groups {unknown}; groups are {list(_RESNET18_ANALYSIS)}")
        sides = {g: float(sizes.get(g, v[0])) for g, v in _RESNET18_ANALYSIS.items()}
    else:
        raise TypeError(f"sizes must be a string or a mapping, got {type(sizes).__name__}")
    specs = {}
    for block in _BLOCKS:
        group = block if block.startswith("layer3") else block[:6]
        side0, width0, area = _RESNET18_ANALYSIS[group]
        side = sides[group]
        specs[block] = LayerSpec(side, width0 * side / side0, area)
    return specs


def resnet18_tdann(input_size: int = 224, sizes: Union[str, Mapping[str, float]] = "analysis", seed: int = 0,
                   num_neighbourhoods: int = 20000, **kwargs) -> Dict[str, CorticalSheet]:
    """Sheets for the eight residual blocks of ``resnet18`` (ventral TDANN; layer2.x ↔ V1, layer4.x ↔ VTC)."""
    return build_sheets(resnet18_layer_shapes(input_size), resnet18_tdann_specs(sizes), seed=seed,
                        num_neighbourhoods=num_neighbourhoods, **kwargs)
