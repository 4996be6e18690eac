"""Grating stimuli, the package's one generator: drifting sine gratings (video models) and static gratings (image
models), DESIGN §7. The analysis measures tuning with them; the stage-3 swap uses them as its probe set only when
asked (``swap.probe: gratings | both``).

Units and geometry: x runs to the right along image columns, y runs **up** (against the row index), so a direction
θ is counter-clockwise on screen: θ = 0 moves rightwards, θ = 90° upwards. Spatial frequencies are in **cycles per
image width** (so a stimulus set means the same at 64 and 112 pixels); temporal frequencies in **cycles per
frame**. A drifting grating of direction θ is ``0.5 + 0.5·c·sin(2π(f·(x cosθ + y sinθ) - tf·t) + φ)`` in [0, 1]
(x, y in image widths, measured at pixel centres; t in frames), then normalised per channel with the model's
``mean`` and ``std`` (grey, identical in all three channels).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from .normalization import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD

__all__ = ["DriftingGratings", "StaticGratings", "static_spatial_freqs"]

#: Periods (pixels) of the default static-grating SFs: five octave steps, 64 px down to 4 px per cycle.
STATIC_PERIODS_PX = (64.0, 32.0, 16.0, 8.0, 4.0)


def static_spatial_freqs(size: int) -> Tuple[float, ...]:
    """Default spatial frequencies (cycles per image width) of :class:`StaticGratings` for a ``size``-pixel image:
    five octave-spaced SFs whose periods are 64, 32, 16, 8 and 4 pixels (``size/64 · (1, 2, 4, 8, 16)``: 1-16
    cycles per image at 64 px, 1.75-28 at 112, 3.5-56 at 224). A unit's receptive field is fixed in pixels, so the
    range is fixed in cycles per pixel; the highest SF stays at half the Nyquist frequency (4 px per cycle: no
    aliasing at any orientation), the lowest puts at least one cycle across the image (SFs below 1 cycle per image
    are dropped)."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    sfs = tuple(float(size) / p for p in STATIC_PERIODS_PX if float(size) / p >= 1.0)
    return sfs or (1.0,)


def _check_triple(v, name):
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{name} must hold 3 numbers (one per RGB channel), got {v!r}")
    if name == "std" and any(x <= 0 for x in t):
        raise ValueError(f"std must be positive, got {v!r}")
    return t


def _check_positive_list(v, name):
    t = tuple(float(x) for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v]))
    if not t or any(not (x > 0 and math.isfinite(x)) for x in t):
        raise ValueError(f"{name} must be a non-empty list of positive numbers, got {v!r}")
    return t


def _check_fields(g, int_names, count_name):
    """The checks both stimulus sets share: positive integers ``int_names``, an even ``count_name`` >= 4 (the
    number of directions or orientations), ``spatial_freqs``, ``contrast`` in (0, 1], and ``mean``/``std``
    (normalised in place to tuples)."""
    for name in int_names:
        v = getattr(g, name)
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    count = getattr(g, count_name)
    if count < 4 or count % 2:
        raise ValueError(f"{count_name} must be an even integer >= 4, got {count}")
    g.spatial_freqs = _check_positive_list(g.spatial_freqs, "spatial_freqs")
    if not (0 < float(g.contrast) <= 1):
        raise ValueError(f"contrast must be in (0, 1], got {g.contrast!r}")
    g.mean = _check_triple(g.mean, "mean")
    g.std = _check_triple(g.std, "std")


def _normalise(lum: torch.Tensor, mean, std) -> torch.Tensor:
    """Grey luminance ``lum`` (B, *spatial) in [0, 1] to normalised RGB (B, 3, *spatial)."""
    shape = (1, 3) + (1,) * (lum.dim() - 1)
    return (lum.unsqueeze(1) - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


@dataclass
class DriftingGratings:
    """Full-field drifting sine gratings: ``directions`` × ``spatial_freqs`` × ``temporal_freqs`` × ``phases``.

    Stimulus ``i`` enumerates (direction, sf, tf, phase) in C order (see :meth:`conditions`). Clips are made on
    demand in batches (:meth:`batches`), shape (B, 3, frames, size, size), float32, normalised.
    """

    frames: int = 16
    size: int = 112
    num_directions: int = 16
    spatial_freqs: Sequence[float] = (2.0, 4.0, 8.0)    # cycles per image width
    temporal_freqs: Sequence[float] = (0.0625, 0.125)   # cycles per frame
    num_phases: int = 2
    contrast: float = 1.0
    mean: Sequence[float] = KINETICS_MEAN
    std: Sequence[float] = KINETICS_STD

    def __post_init__(self):
        _check_fields(self, ("frames", "size", "num_directions", "num_phases"), "num_directions")
        self.temporal_freqs = _check_positive_list(self.temporal_freqs, "temporal_freqs")

    period = 2 * math.pi

    @property
    def directions(self) -> np.ndarray:
        """Directions of motion in radians, ``2π k / num_directions``."""
        return np.arange(self.num_directions) * (2 * math.pi / self.num_directions)

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """(directions, spatial freqs, temporal freqs, phases)."""
        return (self.num_directions, len(self.spatial_freqs), len(self.temporal_freqs), self.num_phases)

    def __len__(self) -> int:
        return int(np.prod(self.shape))

    def conditions(self) -> np.ndarray:
        """(len, 4) array of (direction rad, sf, tf, phase rad) in stimulus order."""
        phases = np.arange(self.num_phases) * (2 * math.pi / self.num_phases)
        return np.array(list(itertools.product(self.directions, self.spatial_freqs, self.temporal_freqs, phases)))

    def clips(self, indices: Sequence[int]) -> torch.Tensor:
        cond = torch.as_tensor(self.conditions()[np.asarray(indices)], dtype=torch.float32)
        th, sf, tf, ph = (cond[:, i].view(-1, 1, 1, 1) for i in range(4))
        coords = (torch.arange(self.size, dtype=torch.float32) + 0.5) / self.size  # image widths
        x = coords.view(1, 1, 1, -1)
        y = (1.0 - coords).view(1, 1, -1, 1)  # y up
        t = torch.arange(self.frames, dtype=torch.float32).view(1, -1, 1, 1)
        arg = 2 * math.pi * (sf * (x * torch.cos(th) + y * torch.sin(th)) - tf * t) + ph
        lum = 0.5 + 0.5 * float(self.contrast) * torch.sin(arg)  # (B, T, H, W)
        return _normalise(lum, self.mean, self.std)

    def batches(self, batch_size: int = 16) -> Iterator[torch.Tensor]:
        for s in range(0, len(self), batch_size):
            yield self.clips(range(s, min(s + batch_size, len(self))))


@dataclass
class StaticGratings:
    """Static sine gratings for image models: ``orientations`` × ``spatial_freqs`` × ``phases``.

    Orientation θ in [0, π) is the direction of the grating's wave vector (the bars run perpendicular to it).
    Images (B, 3, size, size), float32, normalised. ``spatial_freqs=None`` (the default) takes
    :func:`static_spatial_freqs` of ``size``: five octave-spaced SFs, periods 64 to 4 pixels.
    """

    size: int = 224
    num_orientations: int = 8
    spatial_freqs: Optional[Sequence[float]] = None   # cycles per image width; None: static_spatial_freqs(size)
    num_phases: int = 4
    contrast: float = 1.0
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self):
        if self.spatial_freqs is None:
            if not isinstance(self.size, (int, np.integer)) or self.size < 1:
                raise ValueError(f"size must be a positive integer, got {self.size!r}")
            self.spatial_freqs = static_spatial_freqs(int(self.size))
        _check_fields(self, ("size", "num_orientations", "num_phases"), "num_orientations")

    period = math.pi

    @property
    def directions(self) -> np.ndarray:
        """Orientations in radians, ``π k / num_orientations``."""
        return np.arange(self.num_orientations) * (math.pi / self.num_orientations)

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """(orientations, spatial freqs, 1, phases) -- the same layout as drifting gratings (one 'tf')."""
        return (self.num_orientations, len(self.spatial_freqs), 1, self.num_phases)

    def __len__(self) -> int:
        return int(np.prod(self.shape))

    def conditions(self) -> np.ndarray:
        phases = np.arange(self.num_phases) * (2 * math.pi / self.num_phases)
        return np.array(list(itertools.product(self.directions, self.spatial_freqs, [0.0], phases)))

    def clips(self, indices: Sequence[int]) -> torch.Tensor:
        cond = torch.as_tensor(self.conditions()[np.asarray(indices)], dtype=torch.float32)
        th, sf, _, ph = (cond[:, i].view(-1, 1, 1) for i in range(4))
        coords = (torch.arange(self.size, dtype=torch.float32) + 0.5) / self.size
        x = coords.view(1, 1, -1)
        y = (1.0 - coords).view(1, -1, 1)
        arg = 2 * math.pi * sf * (x * torch.cos(th) + y * torch.sin(th)) + ph
        lum = 0.5 + 0.5 * float(self.contrast) * torch.sin(arg)  # (B, H, W)
        return _normalise(lum, self.mean, self.std)

    def batches(self, batch_size: int = 32) -> Iterator[torch.Tensor]:
        for s in range(0, len(self), batch_size):
            yield self.clips(range(s, min(s + batch_size, len(self))))
