"""Full-field drifting sine gratings (the stage-3 probe set; the analysis package has its own richer stimuli)."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def drifting_gratings(size: int, frames: int, directions: int = 16, spatial_freqs: Sequence[float] = (0.04, 0.08),
                      temporal_freqs: Sequence[float] = (2.0,), phases: int = 2, contrast: float = 1.0,
                      mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25)
                      ) -> tuple[torch.Tensor, dict]:
    """Gratings drifting in ``directions`` equally spaced directions.

    Args:
        size: clip side in pixels. frames: clip length.
        spatial_freqs: cycles per pixel. temporal_freqs: cycles per clip. phases: starting phases per condition.

    Returns:
        (clips, meta): clips float32 (S, 3, frames, size, size), normalised with ``mean``/``std``; meta holds
        per-stimulus ``direction_deg``, ``spatial_freq``, ``temporal_freq``, ``phase`` tensors.
    """
    if directions < 1 or phases < 1 or size < 1 or frames < 1:
        raise ValueError("drifting_gratings: size, frames, directions and phases must be positive")
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    t = torch.arange(frames, dtype=torch.float32)
    clips, meta = [], {"direction_deg": [], "spatial_freq": [], "temporal_freq": [], "phase": []}
    for d in range(directions):
        theta = 2 * math.pi * d / directions
        proj = xs * math.cos(theta) - ys * math.sin(theta)  # image y points down: direction is counter-clockwise
        for sf in spatial_freqs:
            for tf in temporal_freqs:
                for ph in range(phases):
                    phi0 = 2 * math.pi * ph / phases
                    arg = 2 * math.pi * sf * proj[None] - 2 * math.pi * tf * t[:, None, None] / frames + phi0
                    lum = 0.5 + 0.5 * contrast * torch.sin(arg)  # (T, H, W)
                    clips.append(lum)
                    meta["direction_deg"].append(360.0 * d / directions)
                    meta["spatial_freq"].append(float(sf))
                    meta["temporal_freq"].append(float(tf))
                    meta["phase"].append(phi0)
    lum = torch.stack(clips)[:, None].expand(-1, 3, -1, -1, -1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return ((lum - m) / s).contiguous(), {k: torch.tensor(v) for k, v in meta.items()}
