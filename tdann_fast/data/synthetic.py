"""`SyntheticMotion`: a seeded generator of natural-image motion.

Each video is a scikit-image sample photograph seen through a moving camera (pan in any direction, zoom in or
out, rotation either way) with a few textured objects (discs and squares cut from other photographs) moving over
it in their own directions. Frames are rendered on demand (``read_clip``), so any frame of any video costs one
``grid_sample`` per layer; video ``i`` is a pure function of ``(seed, i)``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

PHOTO_NAMES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "brick", "grass",
               "gravel", "hubble_deep_field", "immunohistochemistry", "page", "text", "cell", "colorwheel")
_PHOTOS: list[torch.Tensor] | None = None


def _load_photos(side: int = 256) -> list[torch.Tensor]:
    """scikit-image sample photographs as float (3, side, side) tensors in [0, 1] (cached per process)."""
    global _PHOTOS
    if _PHOTOS is None:
        import skimage.data

        photos = []
        for name in PHOTO_NAMES:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    img = np.asarray(getattr(skimage.data, name)())
            except Exception:
                continue
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            img = img[..., :3].astype(np.float32)
            if img.max() > 1.5:
                img /= 255.0
            t = torch.from_numpy(img).permute(2, 0, 1)[None]
            h, w = t.shape[-2:]
            s = min(h, w)
            t = t[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            photos.append(F.interpolate(t, size=(side, side), mode="bilinear", antialias=True,
                                        align_corners=False)[0].clamp(0, 1))
        if not photos:
            raise RuntimeError("SyntheticMotion: no scikit-image sample photograph could be loaded")
        _PHOTOS = photos
    return _PHOTOS


class SyntheticMotion:
    """A seeded set of ``num_videos`` synthetic motion videos of ``num_frames`` frames, ``side`` x ``side``.

    Same interface as :class:`~tdann_fast.data.VideoFolder`: ``len``, ``num_frames(i)``, ``read_clip(i, indices)``
    -> uint8 (T, side, side, 3).
    """

    def __init__(self, num_videos: int = 64, num_frames: int = 64, side: int = 128, seed: int = 0,
                 max_objects: int = 3):
        for name, v in (("num_videos", num_videos), ("num_frames", num_frames), ("side", side)):
            if int(v) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        self.num_videos, self.frames, self.side = int(num_videos), int(num_frames), int(side)
        self.seed, self.max_objects = int(seed), int(max_objects)
        self.skipped: list = []
        self.read_failures = 0

    def __len__(self) -> int:
        return self.num_videos

    def num_frames(self, i: int) -> int:
        return self.frames

    def name(self, i: int) -> str:
        return f"synthetic_motion/{self.seed}/{i}"

    def _params(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i), 77])
        photos = _load_photos()
        kind = rng.choice(["pan", "zoom", "rotate", "mixed"], p=[0.4, 0.2, 0.2, 0.2])
        direction = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.005, 0.03) if kind in ("pan", "mixed") else rng.uniform(0.0, 0.004)
        zoom_rate = rng.choice([-1, 1]) * rng.uniform(0.004, 0.015) if kind in ("zoom", "mixed") else 0.0
        rot_rate = rng.choice([-1, 1]) * rng.uniform(0.005, 0.03) if kind in ("rotate", "mixed") else 0.0
        objects = []
        for _ in range(int(rng.integers(0, self.max_objects + 1))):
            objects.append(dict(
                photo=int(rng.integers(len(photos))), radius=float(rng.uniform(0.1, 0.3)),
                square=bool(rng.random() < 0.5), pos=rng.uniform(-0.6, 0.6, size=2),
                vel=float(rng.uniform(0.01, 0.04)) * np.array([math.cos(a := rng.uniform(0, 2 * math.pi)),
                                                                math.sin(a)]),
                tex_scale=float(rng.uniform(0.2, 0.5)), tex_offset=rng.uniform(-0.5, 0.5, size=2)))
        return dict(photo=int(rng.integers(len(photos))), kind=str(kind), direction=direction, speed=speed,
                    zoom0=float(rng.uniform(0.45, 0.7)), zoom_rate=zoom_rate, rot0=float(rng.uniform(0, 2 * math.pi)),
                    rot_rate=rot_rate, start=rng.uniform(-0.2, 0.2, size=2), objects=objects,
                    flip=bool(rng.random() < 0.5))

    def read_clip(self, i: int, indices) -> np.ndarray:
        if not 0 <= int(i) < self.num_videos:
            raise IndexError(f"video index {i} out of range [0, {self.num_videos})")
        t = torch.as_tensor(np.asarray(indices, dtype=np.float32) % self.frames)  # (T,)
        p = self._params(int(i))
        photos = _load_photos()
        T = t.numel()
        # Camera: the output grid maps to photo coordinates through rotation, zoom (scale) and translation.
        scale = p["zoom0"] * torch.exp(torch.as_tensor(p["zoom_rate"]) * t)
        ang = p["rot0"] + p["rot_rate"] * t
        shift = torch.as_tensor(p["start"], dtype=torch.float32)[None] + p["speed"] * t[:, None] * torch.tensor(
            [math.cos(p["direction"]), math.sin(p["direction"])], dtype=torch.float32)[None]
        # keep the view inside the photo (reflect-like wrap of the camera centre)
        shift = (shift + 1) % 2 - 1
        shift = shift * (1 - scale[:, None]).clamp(min=0)
        cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
        grid = F.affine_grid(theta, (T, 3, self.side, self.side), align_corners=False)
        bg = photos[p["photo"]][None].expand(T, -1, -1, -1)
        frames = F.grid_sample(bg, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Objects: textured discs/squares moving over the background.
        base = F.affine_grid(torch.eye(2, 3)[None].expand(T, -1, -1), (T, 3, self.side, self.side),
                             align_corners=False)  # (T, H, W, 2) in [-1, 1]
        for obj in p["objects"]:
            centre = torch.as_tensor(obj["pos"], dtype=torch.float32)[None] + t[:, None] * torch.as_tensor(
                obj["vel"], dtype=torch.float32)[None]
            centre = (centre + 1.3) % 2.6 - 1.3  # wrap around the frame
            rel = base - centre[:, None, None, :]
            if obj["square"]:
                mask = (rel.abs().amax(-1) < obj["radius"]).float()
            else:
                mask = (rel.norm(dim=-1) < obj["radius"]).float()
            tex_grid = rel * obj["tex_scale"] / max(obj["radius"], 1e-3) + torch.as_tensor(
                obj["tex_offset"], dtype=torch.float32)
            tex = F.grid_sample(photos[obj["photo"]][None].expand(T, -1, -1, -1), tex_grid, mode="bilinear",
                                padding_mode="reflection", align_corners=False)
            frames = frames * (1 - mask[:, None]) + tex * mask[:, None]
        if p["flip"]:
            frames = frames.flip(-1)
        out = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return out.numpy()
