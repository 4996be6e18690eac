"""Batched SimCLR image augmentation on the tensor's device: uint8 images (B, H, W, 3) → normalised (B, 3, S, S).

SimCLR recipe: random resized crop, horizontal flip, colour jitter (brightness, contrast, saturation, hue; applied
with probability ``p_jitter``), random grayscale, Gaussian blur, then per-channel normalisation. An image is a
one-frame clip, so everything but the blur is :class:`~tdann_fast.data.augment.ClipAugment` on (B, 1, H, W, 3);
the blur is applied to its (already normalised) output. That equals SimCLR's order (blur, then normalise): the
normalisation ``(x - mean_c) / std_c`` is affine per channel, the blur is a per-channel convolution whose kernel
sums to 1, and the reflect padding only copies pixel values, so blur(normalise(x)) = normalise(blur(x)).

The blur: with probability ``p_blur`` per image, a separable Gaussian of standard deviation sigma, drawn uniformly
in ``blur_sigma`` and measured in pixels of the output (size × size) image, with an odd kernel about 10% of the
output side (:func:`blur_kernel_size`), as in SimCLR (sigma in [0.1, 2.0] on 224-pixel crops, 23-tap kernel).

Random parameters are drawn on the CPU ``torch.Generator`` the caller passes (the crop/flip/jitter/grayscale draws
of ``ClipAugment`` first, then the blur draws), so a run is reproducible whatever the device.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .augment import AugmentParams, ClipAugment
from .normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ImageAugment", "blur_kernel_size", "gaussian_blur"]


def blur_kernel_size(size: int) -> int:
    """SimCLR's blur kernel for a ``size``-pixel side: ``int(0.1·size)`` made odd (23 for 224, 11 for 112), at
    least 3 and at most ``2·size - 1`` (the reflect padding needs a radius below the side; 1 for a 1-pixel side)."""
    k = int(0.1 * size)
    k = k + 1 if k % 2 == 0 else k
    return min(max(k, 3), 2 * int(size) - 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur every channel of every image of ``x`` (B, C, H, W), float, with a separable Gaussian of its own
    ``sigma`` (B,) (pixels; > 0), ``kernel_size`` taps (odd), normalised to sum 1, reflect padding."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x: expected a float (B, C, H, W) tensor, got "
                         f"{(x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__}")
    B, C, H, W = x.shape
    if not isinstance(sigma, torch.Tensor) or sigma.shape != (B,):
        raise ValueError(f"sigma: expected a ({B},) tensor, got "
                         f"{tuple(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd positive integer, got {kernel_size!r}")
    r = kernel_size // 2
    if r >= min(H, W):
        raise ValueError(f"kernel_size: expected a radius below the image side {min(H, W)}, got {kernel_size}")
    if r == 0:
        return x
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(device=x.device, dtype=x.dtype).view(B, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B·C, K): one kernel per (image, channel)
    y = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(B * C, 1, 1, kernel_size), groups=B * C)   # along W
    y = F.conv2d(y, k.view(B * C, 1, kernel_size, 1), groups=B * C)   # along H
    return y.view(B, C, H, W)


class ImageAugment:
    """Augment a batch of uint8 images (B, H, W, 3) into normalised float images (B, 3, size, size).

    Args:
        size: output side. scale, ratio: random resized crop (area fraction, aspect ratio ranges).
        brightness, contrast, saturation, hue: colour jitter strengths, applied together with probability
        ``p_jitter``. p_grayscale, p_flip: probabilities of grayscale and horizontal flip.
        p_blur: probability of the Gaussian blur; blur_sigma: (min, max) of its sigma, in output pixels.
        mean, std: per-channel normalisation (default ImageNet's).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1,
                 p_jitter: float = 0.8, p_grayscale: float = 0.2, p_flip: float = 0.5, p_blur: float = 0.5,
                 blur_sigma: tuple[float, float] = (0.1, 2.0),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if not 0 <= p_blur <= 1:
            raise ValueError(f"p_blur: expected a probability in [0, 1], got {p_blur!r}")
        if (len(blur_sigma) != 2 or not all(math.isfinite(s) for s in blur_sigma)
                or not 0 < blur_sigma[0] <= blur_sigma[1]):
            raise ValueError(f"blur_sigma: expected finite 0 < min <= max, got {blur_sigma!r}")
        if len(mean) != 3:
            raise ValueError(f"mean: expected 3 values (R, G, B), got {mean!r}")
        if len(std) != 3 or not all(s > 0 for s in std):
            raise ValueError(f"std: expected 3 values > 0 (R, G, B), got {std!r}")
        self.clip = ClipAugment(size, scale=scale, ratio=ratio, brightness=brightness, contrast=contrast,
                                saturation=saturation, hue=hue, p_jitter=p_jitter, p_grayscale=p_grayscale,
                                p_flip=p_flip, mean=mean, std=std)  # checks size, scale, ratio, the probabilities
        self.size = self.clip.size
        self.p_blur = float(p_blur)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.kernel_size = blur_kernel_size(self.size)

    @classmethod
    def from_config(cls, size: int, aug, mean, std) -> "ImageAugment":
        """From an :class:`~tdann_fast.train.config.AugmentConfig` (``p_blur``, ``blur_sigma_min``,
        ``blur_sigma_max`` default to 0.5, 0.1, 2.0 where the config has no such field)."""
        return cls(size, scale=(aug.scale_min, 1.0), ratio=(aug.ratio_min, aug.ratio_max),
                   brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation, hue=aug.hue,
                   p_jitter=aug.p_jitter, p_grayscale=aug.p_grayscale, p_flip=aug.p_flip,
                   p_blur=getattr(aug, "p_blur", 0.5),
                   blur_sigma=(getattr(aug, "blur_sigma_min", 0.1), getattr(aug, "blur_sigma_max", 2.0)),
                   mean=mean, std=std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self._check(images)
        B = x.shape[0]
        out = self.clip(x[:, None], generator).squeeze(2)  # (B, 3, S, S), normalised
        blur = torch.rand(B, generator=generator) < self.p_blur  # drawn after ClipAugment's parameters
        lo, hi = self.blur_sigma
        sigma = lo + (hi - lo) * torch.rand(B, generator=generator)
        if self.p_blur == 0:
            return out
        blurred = gaussian_blur(out, sigma.to(out.device), self.kernel_size)  # = normalise(blur(.)), docstring
        return torch.where(blur.to(out.device).view(B, 1, 1, 1), blurred, out)

    def center(self, images: torch.Tensor) -> torch.Tensor:
        """Evaluation transform: the largest centred square of each image resized to ``size`` (bilinear),
        normalised; no randomness. For square images this is ``ClipAugment.center``."""
        x = self._check(images)
        B, H, W, _ = x.shape
        side = min(H, W)
        dev = x.device
        crop = torch.tensor([0.5, 0.5, side / W, side / H], device=dev).expand(B, 4)
        no = torch.zeros(B, dtype=torch.bool, device=dev)
        one = torch.ones(B, device=dev)
        params = AugmentParams(crop=crop, flip=no, jitter=no, brightness=one, contrast=one, saturation=one,
                               hue=torch.zeros(B, device=dev), grayscale=no)
        return self.clip(x[:, None], params=params).squeeze(2)

    @staticmethod
    def _check(images: torch.Tensor) -> torch.Tensor:
        if (not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4
                or images.shape[-1] != 3):
            got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                   else type(images).__name__)
            raise ValueError(f"images: expected a uint8 (B, H, W, 3) tensor, got {got}")
        return images
