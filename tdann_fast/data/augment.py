"""Batched clip augmentation, identical across the frames of each clip (runs on the training device).

MoCo v2 recipe for video: random resized crop, colour jitter (brightness, contrast, saturation, hue),
random grayscale, horizontal flip -- parameters drawn once per clip and applied to all of its frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .normalization import KINETICS_MEAN, KINETICS_STD

_GRAY = (0.299, 0.587, 0.114)


@dataclass
class AugmentParams:
    """Per-clip parameters, each a tensor with a leading batch dimension B."""

    crop: torch.Tensor        # (B, 4): centre x, centre y, width, height as fractions of the source side
    flip: torch.Tensor        # (B,) bool
    jitter: torch.Tensor      # (B,) bool: apply colour jitter
    brightness: torch.Tensor  # (B,) factor
    contrast: torch.Tensor    # (B,) factor
    saturation: torch.Tensor  # (B,) factor
    hue: torch.Tensor         # (B,) shift in turns, [-hue, hue]
    grayscale: torch.Tensor   # (B,) bool


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 1, 3, 1, 1)
    return (x * w).sum(2, keepdim=True)


class ClipAugment:
    """Augment a batch of uint8 clips (B, T, H, W, 3) into normalised float clips (B, 3, T, size, size)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1,
                 p_jitter: float = 0.8, p_grayscale: float = 0.2, p_flip: float = 0.5,
                 mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD):
        if int(size) < 1:
            raise ValueError(f"size: expected a positive integer, got {size!r}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale: expected 0 < min <= max <= 1, got {scale!r}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio: expected 0 < min <= max, got {ratio!r}")
        for name, p in (("p_jitter", p_jitter), ("p_grayscale", p_grayscale), ("p_flip", p_flip)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
        self.size = int(size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.p_jitter, self.p_grayscale, self.p_flip = p_jitter, p_grayscale, p_flip
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_config(cls, size: int, aug, mean, std) -> "ClipAugment":
        return cls(size, scale=(aug.scale_min, 1.0), ratio=(aug.ratio_min, aug.ratio_max),
                   brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation, hue=aug.hue,
                   p_jitter=aug.p_jitter, p_grayscale=aug.p_grayscale, p_flip=aug.p_flip, mean=mean, std=std)

    # -- parameters ----------------------------------------------------------------------------------------
    def sample_params(self, batch: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> AugmentParams:
        """Draw the parameters of ``batch`` clips (on the CPU generator, then moved to ``device``)."""
        def u(lo, hi):
            return lo + (hi - lo) * torch.rand(batch, generator=generator)
        area = u(*self.scale)
        log_r = u(math.log(self.ratio[0]), math.log(self.ratio[1]))
        r = torch.exp(log_r)
        w = torch.sqrt(area * r).clamp(max=1.0)
        h = torch.sqrt(area / r).clamp(max=1.0)
        cx = w / 2 + (1 - w) * torch.rand(batch, generator=generator)
        cy = h / 2 + (1 - h) * torch.rand(batch, generator=generator)
        p = AugmentParams(
            crop=torch.stack([cx, cy, w, h], 1),
            flip=torch.rand(batch, generator=generator) < self.p_flip,
            jitter=torch.rand(batch, generator=generator) < self.p_jitter,
            brightness=u(max(0.0, 1 - self.brightness), 1 + self.brightness),
            contrast=u(max(0.0, 1 - self.contrast), 1 + self.contrast),
            saturation=u(max(0.0, 1 - self.saturation), 1 + self.saturation),
            hue=u(-self.hue, self.hue),
            grayscale=torch.rand(batch, generator=generator) < self.p_grayscale,
        )
        return AugmentParams(**{k: v.to(device) for k, v in vars(p).items()})

    # -- application ---------------------------------------------------------------------------------------
    def __call__(self, clips: torch.Tensor, generator: torch.Generator | None = None,
                 params: AugmentParams | None = None) -> torch.Tensor:
        x = self._check(clips)
        B = x.shape[0]
        if params is None:
            params = self.sample_params(B, generator, device=x.device)
        x = self._crop(x, params.crop, params.flip)          # (B, T, 3, S, S) float in [0, 1]
        x = self._jitter(x, params)
        x = torch.where(params.grayscale.view(B, 1, 1, 1, 1), _gray(x).expand_as(x), x)
        return self._normalise(x)

    def center(self, clips: torch.Tensor) -> torch.Tensor:
        """Evaluation transform: the whole (square) frame resized to ``size``, normalised."""
        x = self._check(clips)
        B = x.shape[0]
        crop = torch.tensor([0.5, 0.5, 1.0, 1.0], device=x.device).expand(B, 4)
        return self._normalise(self._crop(x, crop, torch.zeros(B, dtype=torch.bool, device=x.device)))

    def _check(self, clips: torch.Tensor) -> torch.Tensor:
        if not isinstance(clips, torch.Tensor) or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"clips: expected a (B, T, H, W, 3) tensor, got "
                             f"{tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__}")
        return clips

    def _crop(self, clips: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        B, T, H, W, _ = clips.shape
        x = clips.permute(0, 1, 4, 2, 3).reshape(B * T, 3, H, W)
        x = x.float() / 255.0 if clips.dtype == torch.uint8 else x.float()
        cx, cy, w, h = crop.float().unbind(1)
        sx = torch.where(flip, -w, w)
        zero = torch.zeros_like(w)
        theta = torch.stack([torch.stack([sx, zero, 2 * cx - 1], 1), torch.stack([zero, h, 2 * cy - 1], 1)], 1)
        theta = theta.repeat_interleave(T, dim=0)  # the same crop/flip for every frame of a clip
        grid = F.affine_grid(theta, (B * T, 3, self.size, self.size), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.view(B, T, 3, self.size, self.size)

    def _jitter(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        B = x.shape[0]
        v = lambda t: t.view(B, 1, 1, 1, 1).to(x.dtype)  # noqa: E731
        y = (x * v(p.brightness)).clamp(0, 1)
        m = _gray(y).mean(dim=(1, 2, 3, 4), keepdim=True)  # one mean per clip (all frames)
        y = ((y - m) * v(p.contrast) + m).clamp(0, 1)
        g = _gray(y)
        y = ((y - g) * v(p.saturation) + g).clamp(0, 1)
        y = self._hue(y, p.hue).clamp(0, 1)
        return torch.where(p.jitter.view(B, 1, 1, 1, 1), y, x)

    @staticmethod
    def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Rotate the chroma plane (YIQ) by ``shift`` turns."""
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                              dtype=x.dtype, device=x.device)
        from_yiq = torch.linalg.inv(to_yiq)
        a = 2 * math.pi * shift.to(x.dtype)
        c, s = torch.cos(a), torch.sin(a)
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, c, -s], -1),
                           torch.stack([zero, s, c], -1)], -2)  # (B, 3, 3)
        m = from_yiq @ rot @ to_yiq  # (B, 3, 3)
        return torch.einsum("bij,btjhw->btihw", m, x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 1, 3, 1, 1)
        return ((x - mean) / std).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, S, S)
