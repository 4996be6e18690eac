"""Layer tables: which layers get a cortical sheet, how large the sheet is and how wide its neighbourhoods are.

* :func:`r3d18_mt` -- torchvision ``r3d_18`` mapped to the dorsal stream (arXiv 2605.11718, seed 000 table);
* :func:`resnet18_tdann` -- torchvision ``resnet18`` mapped to the ventral stream (Margalit et al. 2024);
* :func:`vit_b_16` -- the twelve encoder blocks of torchvision ``vit_b_16``, (B, L, D) token outputs
  (:meth:`CorticalSheet.tokens`); sheet side and neighbourhood width are this package's choice
  (:data:`VIT_SIDE_MM`, :data:`VIT_NEIGHBOURHOOD_WIDTH_MM`), not a published table;
* :func:`linear_sheets` -- fully connected layers, (B, N) outputs (:meth:`CorticalSheet.linear`), at a side and
  width the caller gives.

The convolutional presets return ``{layer_name: CorticalSheet}`` in network order, built with retinotopic initial
positions (:meth:`CorticalSheet.retinotopic`) for the layer's output shape at the given input size; shapes come from
:func:`r3d18_layer_shapes`, :func:`resnet18_layer_shapes` and :func:`vit_token_shapes`, so no one computes them by
hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # the sheet module (and torch) are imported when sheets are built, not to read the tables
    from .sheet import CorticalSheet

__all__ = ["LayerSpec", "MT_LAYER", "V1_LAYERS", "VIT_B_16_LAYERS", "VIT_SIDE_MM", "VIT_NEIGHBOURHOOD_WIDTH_MM",
           "r3d18_mt", "resnet18_tdann", "vit_b_16", "linear_sheets", "r3d18_layer_shapes", "resnet18_layer_shapes",
           "vit_token_shapes", "build_sheets"]

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

# torchvision vit_b_16: the outputs of its encoder blocks, (B, L, D), named as torchvision names the modules.
VIT_B_16_LAYERS = tuple(f"encoder.layers.encoder_layer_{i}" for i in range(12))
_VIT_B_16 = {"patch_size": 16, "hidden_dim": 768}
# No published ViT-TDANN table: this package's choice. At 224² a block has 197 tokens × 768 = 151,296 units; a
# 1.5 mm window on a 32 mm sheet then holds ~330 of them on average (a few hundred, as in the ResNet tables), and the
# 14×14 patch anchors lie 32/14 ≈ 2.3 mm apart, so a window spans the channels of one to four neighbouring patches.
VIT_SIDE_MM = 32.0
VIT_NEIGHBOURHOOD_WIDTH_MM = 1.5

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


def vit_token_shapes(image_size: int = 224, patch_size: int = 16, hidden_dim: int = 768,
                     class_tokens: int = 1) -> Tuple[int, int, int, int]:
    """(grid_h, grid_w, dim, L) of the (B, L, D) token outputs of a vision transformer (torchvision's
    ``VisionTransformer``) for a square ``image_size``² input: a grid of (image_size / patch_size)² patch tokens
    plus ``class_tokens`` class/register tokens, L = class_tokens + grid_h·grid_w, D = dim = hidden_dim."""
    _check_size(patch_size, "patch_size", 1)
    _check_size(image_size, "image_size", patch_size)
    _check_size(hidden_dim, "hidden_dim", 1)
    _check_size(class_tokens, "class_tokens", 0)
    if image_size % patch_size:
        raise ValueError(
            f"image_size ({image_size}) must be a multiple of patch_size ({patch_size}), as torchvision's "
            "VisionTransformer requires"
        )
    grid = image_size // patch_size
    return grid, grid, hidden_dim, class_tokens + grid * grid


def _widened_width(num_units: int, side_mm: float, width_mm: float, min_expected_units: int) -> float:
    """``width_mm``, or the width at which a window holds ``min_expected_units`` units on average when a window of
    ``width_mm`` would hold fewer (never wider than the sheet)."""
    if num_units * width_mm ** 2 / side_mm ** 2 < min_expected_units:
        return min(side_mm, math.sqrt(min_expected_units * side_mm ** 2 / num_units))
    return width_mm


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
        width = _widened_width(c * h * w, spec.side_mm, spec.neighbourhood_width_mm, min_expected_units)
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


def vit_b_16(
    image_size: int = 224,
    layers: Optional[Sequence[str]] = None,
    side_mm: float = VIT_SIDE_MM,
    neighbourhood_width_mm: float = VIT_NEIGHBOURHOOD_WIDTH_MM,
    seed: int = 0,
    num_neighbourhoods: int = 20000,
    max_units: int = 500,
    min_units: int = 25,
    percentile: float = 5.0,
    overlap: float = 1.0,
    jitter: float = 0.1,
    min_expected_units: int = 50,
) -> Dict[str, CorticalSheet]:
    """Sheets for the encoder blocks of torchvision ``vit_b_16(image_size=image_size)`` (:data:`VIT_B_16_LAYERS`,
    ``encoder.layers.encoder_layer_0`` ... ``encoder_layer_11``; ``layers=None``: all twelve), in network order.

    A block's output is (B, L, D) with L = 1 + (image_size / 16)² tokens (the class token first) and D = 768
    (:func:`vit_token_shapes`); its sheet comes from :meth:`CorticalSheet.tokens` (class-token channels uniform on
    the sheet, patch-token channels around retinotopic anchors), with seed ``seed + block index`` (a subset of
    ``layers`` gets the same sheets as the full preset).

    The default side (:data:`VIT_SIDE_MM`, 32 mm) and neighbourhood width (:data:`VIT_NEIGHBOURHOOD_WIDTH_MM`,
    1.5 mm) are this package's choice: there is no published ViT-TDANN table. They give a window ~330 units on
    average at 224² (a few hundred, as in the ResNet tables); pass other values to choose your own. As in
    :func:`build_sheets`, a smaller ``image_size`` puts fewer tokens on the same sheet: when a window of the given
    width would hold on average fewer than ``min_expected_units`` units, the width is widened just enough to hold
    that many (e.g. ~2 mm at 64²; no widening at 112² and above with the defaults; ``min_expected_units=0`` keeps
    the given width).
    """
    from ._validation import check_positive
    from .sheet import CorticalSheet

    if layers is None:
        layers = VIT_B_16_LAYERS
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    unknown = [n for n in layers if n not in VIT_B_16_LAYERS]
    if unknown:
        raise KeyError(f"layers names unknown vit_b_16 blocks {unknown}; blocks are {list(VIT_B_16_LAYERS)}")
    if not layers:
        raise ValueError("layers must name at least one vit_b_16 block (or be None for all twelve)")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers has duplicates: {layers}")
    grid_h, grid_w, dim, tokens = vit_token_shapes(image_size, **_VIT_B_16, class_tokens=1)
    side_mm = check_positive(side_mm, "side_mm")
    width = check_positive(neighbourhood_width_mm, "neighbourhood_width_mm")
    width = _widened_width(tokens * dim, side_mm, width, min_expected_units)
    return {
        name: CorticalSheet.tokens(
            grid_h, grid_w, dim, side_mm, width, class_tokens=1, overlap=overlap, jitter=jitter,
            seed=seed + VIT_B_16_LAYERS.index(name), num_neighbourhoods=num_neighbourhoods, max_units=max_units,
            min_units=min_units, percentile=percentile,
        )
        for name in VIT_B_16_LAYERS if name in layers
    }


def linear_sheets(
    num_units: Mapping[str, int],
    side_mm: float,
    neighbourhood_width_mm: float,
    seed: int = 0,
    num_neighbourhoods: int = 20000,
    max_units: int = 500,
    min_units: int = 25,
    percentile: float = 5.0,
) -> Dict[str, CorticalSheet]:
    """Sheets for fully connected layers with (B, N) outputs, e.g. ``{"fc1": 512}`` for ``nn.Linear(..., 512)``
    named ``fc1``: uniform initial positions (:meth:`CorticalSheet.linear`), the i-th layer with seed ``seed + i``,
    in the mapping's order, all on one sheet size.

    The width is used as given: a linear layer's unit count does not depend on the input size, so there is no
    table made at another size to adapt (the widening of :func:`build_sheets` does not apply). Choose it so that a
    window holds a few dozen units or more, ``N · width² / side² >= min_units``; otherwise building the sheet
    raises and says so.
    """
    from .sheet import CorticalSheet

    if not isinstance(num_units, Mapping) or not num_units:
        raise ValueError("num_units must be a non-empty mapping {layer_name: number of output units}")
    sheets = {}
    for i, (name, n) in enumerate(num_units.items()):
        if not isinstance(name, str) or not name:
            raise TypeError(f"num_units keys must be non-empty layer names (str), got {name!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"num_units[{name!r}] must be an integer >= 2, got {n!r}")
        sheets[name] = CorticalSheet.linear(
            n, side_mm, neighbourhood_width_mm, seed=seed + i, num_neighbourhoods=num_neighbourhoods,
            max_units=max_units, min_units=min_units, percentile=percentile,
        )
    return sheets
