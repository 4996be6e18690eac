"""`SyntheticMotion`: a seeded generator of natural-image motion.

Each video is a scikit-image sample photograph seen through a moving camera (pan in any direction, zoom in or
out, rotation either way) with a few textured objects (discs and squares cut from other photographs) moving over
it in their own directions. Frames are rendered on demand (``read_clip``), so any frame of any video costs one
``grid_sample`` per layer; video ``i`` is a pure function of ``(seed, i)`` (and the constructor's sizes).

Definitions (directions on screen: x right, y up, counter-clockwise, as the grating stimuli):

* A video's *kind* is pan, zoom, rotate or mixed (pan + zoom + rotation), drawn with probabilities
  0.4/0.2/0.2/0.2. Pan and mixed videos are *translating*; zoom and rotate videos drift slowly.
* The *background velocity* of a video at frame t is the on-screen velocity (pixels per frame) of the photograph's
  content at the centre of the frame, after the horizontal flip that half of the videos get; zoom and rotation are
  about the frame centre, so this is the global translation of the background. Its direction at the *reference
  frame* ``(num_frames - 1) / 2`` is the video's *motion direction*.
* Directions are spread evenly over videos by the golden-ratio sequence ``2π·frac(c + r·g)`` with
  ``g = (√5 - 1) / 2``, ``c`` drawn from the seed, ``r`` the video's rank among the earlier translating videos
  (or among the slow ones; each group has its own ``c``), plus a jitter of at most ±0.01 turn drawn per video.
  For a translating video this is its motion direction (for a mixed video the camera direction that gives it
  is solved numerically; where no camera direction gives it exactly, the nearest reachable one); for a slow video
  it is the direction of its slow pan. Objects, counted over all videos in order, take the same sequence with a
  third ``c`` (``r`` the object's rank) as their on-screen direction.
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


_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_JITTER_TURNS = 0.01          # largest jitter of an evenly spread direction, in turns
_KINDS = ["pan", "zoom", "rotate", "mixed"]
_KIND_P = [0.4, 0.2, 0.2, 0.2]
_TRANSLATING = ("pan", "mixed")
_SOLVE_STEPS = 3600           # camera directions tried when solving a mixed video's motion direction


def _even_direction(offset: float, rank: int, u: float) -> float:
    """``2π·frac(offset + rank·g)`` plus a jitter of ``(u - 0.5)·2·0.01`` turn, ``u`` in [0, 1), in [0, 2π)."""
    turns = (offset + rank * _GOLDEN) % 1.0 + (2.0 * u - 1.0) * _JITTER_TURNS
    return (2 * math.pi * turns) % (2 * math.pi)


class SyntheticMotion:
    """A seeded set of ``num_videos`` synthetic motion videos of ``num_frames`` frames, ``side`` x ``side``.

    Same interface as :class:`~tdann_fast.data.VideoFolder`: ``len``, ``num_frames(i)``, ``read_clip(i, indices)``
    -> uint8 (T, side, side, 3). The motion directions of the videos (and of their objects) cover all directions
    evenly for any number of videos (see the module docstring); :meth:`motion_direction` gives a video's.
    """

    def __init__(self, num_videos: int = 64, num_frames: int = 64, side: int = 128, seed: int = 0,
                 max_objects: int = 3):
        for name, v in (("num_videos", num_videos), ("num_frames", num_frames), ("side", side)):
            if int(v) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if int(max_objects) < 0:
            raise ValueError(f"max_objects: expected an integer >= 0, got {max_objects!r}")
        self.num_videos, self.frames, self.side = int(num_videos), int(num_frames), int(side)
        self.seed, self.max_objects = int(seed), int(max_objects)
        self.skipped: list = []
        self.read_failures = 0
        # per video j: (kind, number of objects, rank in its group, objects of the videos before j), extended on
        # demand (ranks need the kinds and object counts of the earlier videos)
        self._headers: list[tuple[str, int, int, int]] = []
        self._counts = (0, 0, 0)     # translating videos, slow videos, objects in self._headers

    def __len__(self) -> int:
        return self.num_videos

    def num_frames(self, i: int) -> int:
        return self.frames

    def name(self, i: int) -> str:
        return f"synthetic_motion/{self.seed}/{i}"

    # -- parameters ----------------------------------------------------------------------------------------
    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(i), 77])

    def _draw_header(self, rng: np.random.Generator) -> dict:
        """The first draws of a video: kind, direction jitter, pan speed, zoom and rotation rates, object count."""
        kind = str(rng.choice(_KINDS, p=_KIND_P))
        u_dir = float(rng.uniform(0, 2 * math.pi)) / (2 * math.pi)
        speed = rng.uniform(0.005, 0.03) if kind in _TRANSLATING else rng.uniform(0.0, 0.004)
        zoom_rate = rng.choice([-1, 1]) * rng.uniform(0.004, 0.015) if kind in ("zoom", "mixed") else 0.0
        rot_rate = rng.choice([-1, 1]) * rng.uniform(0.005, 0.03) if kind in ("rotate", "mixed") else 0.0
        n_objects = int(rng.integers(0, self.max_objects + 1))
        return dict(kind=kind, u_dir=u_dir, speed=float(speed), zoom_rate=float(zoom_rate),
                    rot_rate=float(rot_rate), n_objects=n_objects)

    def _ranks(self, i: int) -> tuple[int, int]:
        """(rank of video i in its group (translating or slow), number of objects of the videos before i).

        The first call for a video draws the first parameters of every earlier video once (about 0.1 ms each)."""
        if len(self._headers) < i + 1:
            headers, counts = list(self._headers), list(self._counts)
            for j in range(len(headers), i + 1):
                h = self._draw_header(self._rng(j))
                group = 0 if h["kind"] in _TRANSLATING else 1
                headers.append((h["kind"], h["n_objects"], counts[group], counts[2]))
                counts[group] += 1
                counts[2] += h["n_objects"]
            self._headers, self._counts = headers, tuple(counts)
        _, _, rank, before = self._headers[i]
        return rank, before

    def _offsets(self) -> np.ndarray:
        """The sequences' offsets ``c``: (translating videos, slow videos, objects)."""
        return np.random.default_rng([self.seed, 78]).random(3)

    def _params(self, i: int) -> dict:
        rng = self._rng(i)
        photos = _load_photos()
        h = self._draw_header(rng)
        objects = []
        for _ in range(h["n_objects"]):
            objects.append(dict(
                photo=int(rng.integers(len(photos))), radius=float(rng.uniform(0.1, 0.3)),
                square=bool(rng.random() < 0.5), pos=rng.uniform(-0.6, 0.6, size=2),
                speed=float(rng.uniform(0.01, 0.04)), u_dir=float(rng.uniform(0, 2 * math.pi)) / (2 * math.pi),
                tex_scale=float(rng.uniform(0.2, 0.5)), tex_offset=rng.uniform(-0.5, 0.5, size=2)))
        p = dict(photo=int(rng.integers(len(photos))), kind=h["kind"], speed=h["speed"],
                 zoom0=float(rng.uniform(0.45, 0.7)), zoom_rate=h["zoom_rate"], rot0=float(rng.uniform(0, 2 * math.pi)),
                 rot_rate=h["rot_rate"], start=rng.uniform(-0.2, 0.2, size=2), objects=objects,
                 flip=bool(rng.random() < 0.5))
        # Even directions on screen (module docstring), then the camera / object parameters that give them.
        rank, first_object = self._ranks(i)
        c_translating, c_slow, c_objects = self._offsets()
        translating = p["kind"] in _TRANSLATING
        target = _even_direction(c_translating if translating else c_slow, rank, h["u_dir"])
        p["target_direction"] = target
        p["direction"] = self._camera_direction(p, target)
        for k, obj in enumerate(objects):
            screen = _even_direction(c_objects, first_object + k, obj.pop("u_dir"))
            # objects move in output-grid coordinates (y down), then the frame may be flipped
            a = (screen - math.pi) if p["flip"] else -screen
            obj["vel"] = obj.pop("speed") * np.array([math.cos(a), math.sin(a)])
        return p

    def _reference_frame(self) -> float:
        return (self.frames - 1) / 2.0

    def _velocity(self, p: dict, t: float, phi) -> tuple[np.ndarray, np.ndarray]:
        """Background velocity on screen (pixels per frame, x right, y up) at frame ``t`` for camera pan
        direction(s) ``phi`` (radians in the output grid's coordinates, y down); see ``read_clip``."""
        phi = np.asarray(phi, dtype=np.float64)
        u = np.stack([np.cos(phi), np.sin(phi)], -1)                              # (..., 2)
        s = p["zoom0"] * math.exp(p["zoom_rate"] * t)
        k, kdot = (1.0 - s, -p["zoom_rate"] * s) if s < 1.0 else (0.0, 0.0)
        raw = np.asarray(p["start"], dtype=np.float64) + p["speed"] * t * u
        wrapped = (raw + 1) % 2 - 1
        dshift = p["speed"] * k * u + kdot * wrapped                             # d(shift)/dt
        a = p["rot0"] + p["rot_rate"] * t
        # content at the frame centre moves by -R(-a) dshift / s (grid units, y down)
        gx = -(math.cos(a) * dshift[..., 0] + math.sin(a) * dshift[..., 1]) / s
        gy = -(-math.sin(a) * dshift[..., 0] + math.cos(a) * dshift[..., 1]) / s
        vx, vy = gx * self.side / 2, -gy * self.side / 2
        return (-vx if p["flip"] else vx), vy

    def _pan_direction(self, p: dict, phi: float, t: float) -> float:
        """On-screen direction of the pan component alone (the content moves against the camera)."""
        a = p["rot0"] + p["rot_rate"] * t
        return ((phi - a) if p["flip"] else (a - phi - math.pi)) % (2 * math.pi)

    def _camera_direction(self, p: dict, target: float) -> float:
        """The camera pan direction (grid coordinates) that gives the on-screen direction ``target``."""
        t = self._reference_frame()
        a = p["rot0"] + p["rot_rate"] * t
        phi = ((target + a) if p["flip"] else (a - math.pi - target)) % (2 * math.pi)
        if p["kind"] != "mixed":
            return phi   # no zoom: the background moves with the pan component alone
        phis = np.linspace(0, 2 * math.pi, _SOLVE_STEPS, endpoint=False)
        vx, vy = self._velocity(p, t, phis)
        if float(np.max(np.hypot(vx, vy))) <= 1e-9:
            return phi   # zoomed past the photo at the reference frame: no pan there
        err = np.abs((np.arctan2(vy, vx) - target + math.pi) % (2 * math.pi) - math.pi)
        return float(phis[int(np.argmin(err))])

    # -- motion --------------------------------------------------------------------------------------------
    def _check_index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"i: expected a video index (int), got {type(i).__name__}")
        if not 0 <= int(i) < self.num_videos:
            raise IndexError(f"i: video index {i} out of range [0, {self.num_videos})")
        return int(i)

    def _frame(self, frame) -> float:
        """``frame`` modulo the video length (as ``read_clip`` takes it), the reference frame for ``None``."""
        if frame is None:
            return self._reference_frame()
        if isinstance(frame, bool) or not isinstance(frame, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(frame)):
            raise TypeError(f"frame: expected a finite number or None, got {frame!r}")
        return float(frame) % self.frames

    def motion_velocity(self, i: int, frame: float | None = None) -> tuple[float, float]:
        """Video ``i``'s background velocity ``(vx, vy)`` on screen at ``frame`` (default: the reference frame),
        pixels per frame, x right, y up (module docstring), for every kind of video."""
        p = self._params(self._check_index(i))
        t = self._frame(frame)
        vx, vy = self._velocity(p, t, p["direction"])
        return float(vx), float(vy)

    def motion_direction(self, i: int, frame: float | None = None) -> float | None:
        """The on-screen direction (radians in [0, 2π), x right, y up, counter-clockwise) in which video ``i``'s
        background moves at ``frame`` (default: the reference frame ``(num_frames - 1) / 2``, where these
        directions are spread evenly over the translating videos); ``None`` for zoom and rotate videos. For a
        mixed video zoomed past the photo's size at that frame (the pan stops there), the pan's direction."""
        p = self._params(self._check_index(i))
        if p["kind"] not in _TRANSLATING:
            return None
        t = self._frame(frame)
        vx, vy = self._velocity(p, t, p["direction"])
        if math.hypot(float(vx), float(vy)) <= 1e-9:
            return self._pan_direction(p, p["direction"], t)
        return float(math.atan2(float(vy), float(vx)) % (2 * math.pi))

    def kind(self, i: int) -> str:
        """Video ``i``'s kind: ``"pan"``, ``"zoom"``, ``"rotate"`` or ``"mixed"``."""
        return self._params(self._check_index(i))["kind"]

    def read_clip(self, i: int, indices) -> np.ndarray:
        if not 0 <= int(i) < self.num_videos:
            raise IndexError(f"i: video index {i} out of range [0, {self.num_videos})")
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
