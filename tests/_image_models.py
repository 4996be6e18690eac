"""Shared by the analysis tests of image models: a two-block image network and jittered grid positions."""
import numpy as np
from torch import nn


class TinyImageNet(nn.Module):
    """Two strided conv blocks; ``layer2`` outputs (B, 16, size/4, size/4)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        return self.layer2(self.stem(x))


def grid_positions(c, h, w, side, rng):
    """(c·h·w, 2) positions in the C·H·W flatten order: the h × w grid on a ``side`` mm sheet, jittered by up to half
    a cell."""
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    x = np.broadcast_to(xx, (c, h, w)).reshape(-1) + rng.uniform(-0.5, 0.5, c * h * w) / w
    y = np.broadcast_to(yy, (c, h, w)).reshape(-1) + rng.uniform(-0.5, 0.5, c * h * w) / h
    return np.clip(np.stack([x, y], 1) * side, 0, side)
