"""The directions of global motion in video clips: phase correlation per clip, and histograms over a video set.

Definitions:

* Geometry is that of the grating stimuli (:mod:`tdann_fast.analysis.stimuli`): x runs right along image columns,
  y runs **up** (against the row index), and a direction θ is counter-clockwise on screen (0 moves right, π/2 up).
* The *displacement* between two frames ``a`` and ``b`` is the translation ``d`` (pixels, x right, y up) with
  ``b(p) ≈ a(p - d)``: the content of ``a`` moved by ``d``. It is found by phase correlation: both frames
  (luminance, mean removed) are multiplied by a radial Hann window ``½(1 + cos(πρ))`` (ρ the distance from the
  frame centre in half the shorter side, the window 0 beyond ρ = 1; radial, so that the top of a grating's
  correlation ridge lies along its wave vector), the cross-power spectrum ``C = FFT(b)·conj(FFT(a))`` is
  whitened to ``S = C / (|C| + ε·max|C|)`` with ``ε = 1e-3`` (frequencies without energy are not amplified),
  and the maximum of ``real(IFFT(S))`` is located to the pixel, then to 1/100 pixel by a local upsampled DFT.
  The *peak height* is that maximum divided by ``mean(|C| / (|C| + ε·max|C|))``, the value a whole-frame
  circular shift gives: at most 1 (content entering and leaving, noise, zoom, rotation, several motions lower
  it; unrelated noise frames of 80 x 80 give about 0.07).
* The motion of a clip of T frames is the peak-height-weighted mean of its T - 1 consecutive displacements (a
  vector mean: pairs across a cut, which correlate poorly, weigh little); its *direction* is that vector's angle
  in [0, 2π), its *speed* the vector's length in pixels per frame of the clip, its *confidence* the mean peak
  height over the pairs.
* The *Rayleigh test* of n angles θ_k: mean resultant length ``R̄ = |Σ exp(iθ_k)| / n``, ``z = n R̄²``,
  ``p ≈ exp(-z)·(1 + (2z - z²)/(4n) - (24z - 132z² + 76z³ - 9z⁴)/(288n²))`` (clipped to [0, 1]): the
  probability of a resultant at least that long if the directions were uniform. Small p: the directions are not uniform.
* The *mode* of a direction histogram is the centre of its fullest bin (the first one on ties); the *fraction near
  the mode* is the share of the histogram's angles within ±45° of it (about 0.25 for uniform directions, a little
  more because the fullest bin is chosen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["clip_motion", "frame_displacement", "rayleigh_test", "motion_direction_histogram", "MotionDirections"]

_LUMA = np.array([0.299, 0.587, 0.114])


def _luminance(frames, name: str = "frames") -> np.ndarray:
    """(T, H, W) float64 luminance of a (T, H, W) or (T, H, W, 3) clip (uint8 values stay in 0..255)."""
    arr = np.asarray(frames)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[-1] == 3:
        arr = arr.astype(np.float64) @ _LUMA
    elif arr.ndim != 3:
        raise ValueError(f"{name}: expected shape (T, H, W) or (T, H, W, 3), got {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if arr.shape[1] < 4 or arr.shape[2] < 4:
        raise ValueError(f"{name}: frames must be at least 4 x 4 pixels, got {arr.shape[1]} x {arr.shape[2]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: holds NaN or infinite values")
    return arr


_WHITEN_EPS = 1e-3


def _hann2d(h: int, w: int) -> np.ndarray:
    """The radial Hann window of the module docstring, (h, w)."""
    half = min(h, w) / 2
    y = (np.arange(h) - (h - 1) / 2) / half
    x = (np.arange(w) - (w - 1) / 2) / half
    rho = np.minimum(np.hypot(y[:, None], x[None, :]), 1.0)
    return 0.5 * (1 + np.cos(np.pi * rho))


def _upsampled_peak(spec: np.ndarray, centre: tuple[float, float], half: float, n: int):
    """The real part of the inverse DFT of ``spec`` on an n x n grid of half-width ``half`` around ``centre``
    (row, col, in signed pixels); returns (row, col, value) of its maximum."""
    h, w = spec.shape
    ky = np.fft.fftfreq(h) * h
    kx = np.fft.fftfreq(w) * w
    ys = centre[0] + np.linspace(-half, half, n)
    xs = centre[1] + np.linspace(-half, half, n)
    ey = np.exp(2j * np.pi * np.outer(ys, ky) / h)          # (n, h)
    ex = np.exp(2j * np.pi * np.outer(kx, xs) / w)          # (w, n)
    r = (ey @ spec @ ex).real / (h * w)
    iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
    return ys[iy], xs[ix], float(r[iy, ix])


def _displacement(a: np.ndarray, b: np.ndarray, window: np.ndarray):
    """(dx, dy_up, peak) from frame ``a`` to ``b`` (2-D float arrays); see the module docstring."""
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    mag = np.abs(cross)
    top = float(mag.max())
    if top <= 0:               # a flat frame: nothing to correlate
        return 0.0, 0.0, 0.0
    denom = mag + _WHITEN_EPS * top
    spec = cross / denom
    full = float((mag / denom).mean())    # the peak of a whole-frame circular shift
    r = np.fft.ifft2(spec).real
    h, w = r.shape
    py, px = np.unravel_index(int(np.argmax(r)), r.shape)
    py = py - h if py > h // 2 else py
    px = px - w if px > w // 2 else px
    y, x, _ = _upsampled_peak(spec, (float(py), float(px)), 1.0, 21)      # 0.1 px steps
    y, x, peak = _upsampled_peak(spec, (y, x), 0.1, 21)                   # 0.01 px steps
    return float(x), float(-y), float(peak / full)


def frame_displacement(a, b) -> tuple[float, float, float]:
    """The displacement ``(dx, dy, peak_height)`` from frame ``a`` to frame ``b`` (x right, y up, pixels); see the
    module docstring. ``a`` and ``b`` are (H, W) or (H, W, 3) arrays of one size."""
    la = _luminance(np.asarray(a)[None], "a")[0]
    lb = _luminance(np.asarray(b)[None], "b")[0]
    if la.shape != lb.shape:
        raise ValueError(f"b: expected the shape of a {la.shape}, got {lb.shape}")
    return _displacement(la, lb, _hann2d(*la.shape))


def clip_motion(frames) -> tuple[float, float, float]:
    """The global motion of a clip: ``(direction_rad, speed_px_per_frame, confidence)``.

    ``frames`` is a (T, H, W, 3) clip (uint8 RGB as :meth:`~tdann_fast.data.VideoFolder.read_clip` gives, or any
    numeric type) or a (T, H, W) luminance clip, T >= 2. Direction in [0, 2π) with x right and y up,
    counter-clockwise (the gratings' convention); speed in pixels per frame of this clip; confidence the mean
    phase-correlation peak height in [0, 1]. All three are defined in the module docstring. A clip with no
    motion at all returns direction 0.0 and speed 0.0.
    """
    lum = _luminance(frames)
    if lum.shape[0] < 2:
        raise ValueError(f"frames: expected at least 2 frames, got {lum.shape[0]}")
    window = _hann2d(*lum.shape[1:])
    d = np.array([_displacement(lum[t], lum[t + 1], window) for t in range(lum.shape[0] - 1)])  # (T-1, 3)
    peaks = np.clip(d[:, 2], 0.0, None)
    weights = peaks if peaks.sum() > 0 else np.ones_like(peaks)
    vx, vy = (weights[:, None] * d[:, :2]).sum(0) / weights.sum()
    speed = math.hypot(vx, vy)
    direction = math.atan2(vy, vx) % (2 * math.pi) if speed > 0 else 0.0
    return float(direction), float(speed), float(d[:, 2].mean())


def rayleigh_test(angles) -> tuple[float, float, float]:
    """``(mean_resultant_length, z, p)`` of the Rayleigh test of uniformity for ``angles`` (radians); see the
    module docstring. NaNs for no angles."""
    a = np.asarray(angles, dtype=np.float64).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError("angles: holds NaN or infinite values")
    n = a.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rbar = float(abs(np.exp(1j * a).mean()))
    z = n * rbar ** 2
    p = math.exp(-z) * (1 + (2 * z - z ** 2) / (4 * n)
                        - (24 * z - 132 * z ** 2 + 76 * z ** 3 - 9 * z ** 4) / (288 * n ** 2))
    return rbar, float(z), float(min(max(p, 0.0), 1.0))


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {value!r}")
    return int(value)


def _bin_edges_deg(bins: int) -> np.ndarray:
    """``bins`` equal bins of [0, 360) centred on ``k·360/bins`` (the first straddles 0)."""
    width = 360.0 / bins
    return (np.arange(bins + 1) - 0.5) * width


def _histogram(angles: np.ndarray, bins: int) -> np.ndarray:
    width = 360.0 / bins
    idx = np.floor((np.degrees(angles) % 360.0 + width / 2) / width).astype(int) % bins
    return np.bincount(idx, minlength=bins)


@dataclass
class MotionDirections:
    """Global motion of clips sampled from a video source (see :func:`motion_direction_histogram`).

    Per clip: ``angles`` (radians, x right, y up, counter-clockwise), ``speeds`` (pixels per *source* frame),
    ``confidences`` (mean peak height), ``names`` (the video's name), ``starts`` (first frame), ``included``
    (speed >= ``min_speed`` and confidence >= ``min_confidence``). ``hist`` counts the included clips' directions
    in the bins ``bin_edges_deg`` (centred on ``k·360/bins`` degrees). Statistics (module docstring definitions)
    are of the included clips; clips of one video are not independent, so with several clips per video the
    Rayleigh p is smaller than the number of videos (``summary()["videos_included"]``) warrants.
    """

    angles: np.ndarray
    speeds: np.ndarray
    confidences: np.ndarray
    names: list
    starts: np.ndarray
    included: np.ndarray
    hist: np.ndarray
    bin_edges_deg: np.ndarray
    frames: int = 8
    stride: int = 2
    min_speed: float = 0.2
    min_confidence: float = 0.1
    unreadable: list = field(default_factory=list)

    @property
    def n_clips(self) -> int:
        return int(self.angles.size)

    @property
    def n_included(self) -> int:
        return int(self.included.sum())

    @property
    def n_slow(self) -> int:
        """Clips excluded for speed < ``min_speed``."""
        return int((self.speeds < self.min_speed).sum())

    @property
    def n_low_confidence(self) -> int:
        """Clips excluded for confidence < ``min_confidence`` (fast enough)."""
        return int(((self.speeds >= self.min_speed) & (self.confidences < self.min_confidence)).sum())

    def rayleigh(self) -> tuple[float, float, float]:
        """``(mean_resultant_length, z, p)`` of the included clips' directions."""
        return rayleigh_test(self.angles[self.included])

    @property
    def mean_direction_deg(self) -> float:
        a = self.angles[self.included]
        return float(np.degrees(np.angle(np.exp(1j * a).mean())) % 360.0) if a.size else float("nan")

    @property
    def mode_deg(self) -> float:
        """The centre of the fullest bin (degrees)."""
        return float(int(np.argmax(self.hist)) * 360.0 / self.hist.size) if self.hist.sum() else float("nan")

    @property
    def fraction_near_mode(self) -> float:
        """Share of the included directions within ±45° of :attr:`mode_deg`."""
        a = np.degrees(self.angles[self.included])
        if a.size == 0:
            return float("nan")
        diff = (a - self.mode_deg + 180.0) % 360.0 - 180.0
        return float((np.abs(diff) <= 45.0).mean())

    def summary(self) -> dict:
        """The numbers as a JSON-serialisable dict."""
        rbar, z, p = self.rayleigh()
        inc = self.included
        return {
            "clips": self.n_clips, "included": self.n_included,
            "videos_included": len({n for n, keep in zip(self.names, inc) if keep}),
            "excluded_slow": self.n_slow,
            "excluded_low_confidence": self.n_low_confidence, "unreadable": len(self.unreadable),
            "frames": self.frames, "stride": self.stride, "min_speed": self.min_speed,
            "min_confidence": self.min_confidence,
            "bin_centres_deg": [round(float(c), 3) for c in (self.bin_edges_deg[:-1] + self.bin_edges_deg[1:]) / 2],
            "hist": [int(c) for c in self.hist],
            "mean_resultant_length": rbar, "rayleigh_z": z, "rayleigh_p": p,
            "mean_direction_deg": self.mean_direction_deg, "mode_deg": self.mode_deg,
            "fraction_within_45_of_mode": self.fraction_near_mode,
            "median_speed_px_per_frame": float(np.median(self.speeds[inc])) if inc.any() else float("nan"),
            "median_confidence": float(np.median(self.confidences[inc])) if inc.any() else float("nan"),
        }

    def plot(self, path, title: str | None = None):
        """Draw the direction histogram as a polar bar chart to the PNG ``path``; returns the path."""
        from .._deps import require

        matplotlib = require("matplotlib", "MotionDirections.plot")
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        bins = self.hist.size
        centres = np.radians(np.arange(bins) * 360.0 / bins)
        fig = plt.figure(figsize=(4.5, 4.8))
        try:
            ax = fig.add_subplot(projection="polar")
            ax.bar(centres, self.hist, width=2 * math.pi / bins * 0.9, color="tab:blue", edgecolor="k")
            if self.n_included:
                uniform = self.n_included / bins
                ax.plot(np.append(centres, centres[0]), np.full(bins + 1, uniform), "r--", lw=1, label="uniform")
            rbar, _, p = self.rayleigh()
            ax.set_title((title + "\n" if title else "")
                         + f"{self.n_included}/{self.n_clips} clips, R={rbar:.2f}, Rayleigh p={p:.2g}, "
                         f"±45° of mode {self.fraction_near_mode:.2f}", fontsize=8)
            fig.savefig(str(path), dpi=100)
        finally:
            plt.close(fig)
        return path


def _clip_plan(source, num_clips: int | None, span: int, seed: int):
    """(video, start) per clip: clip j comes from video ``j % len(source)``; the clips of one video have starts
    spread evenly along it (stratified, with a seeded jitter)."""
    n = len(source)
    total = n if num_clips is None else num_clips
    rng = np.random.default_rng([int(seed), 5])
    jitter = rng.random(total)
    plan = []
    for j in range(total):
        v = j % n
        k, m = j // n, total // n + (1 if v < total % n else 0)
        room = max(1, int(source.num_frames(v)) - span + 1)
        plan.append((v, int(min(room - 1, math.floor((k + jitter[j]) / m * room)))))
    return plan


def motion_direction_histogram(source, num_clips: int | None = None, frames: int = 8, stride: int = 2,
                               bins: int = 16, seed: int = 0, min_speed: float = 0.2,
                               min_confidence: float = 0.1, progress: bool = True) -> MotionDirections:
    """Histogram of the global motion directions of clips sampled from ``source``.

    ``source`` has ``len``, ``num_frames(i)``, ``read_clip(i, indices)`` and ``name(i)`` (SyntheticMotion,
    VideoFolder, ConcatSource). ``num_clips`` clips (default: one per video) of ``frames`` frames taken every
    ``stride`` source frames (as training samples them) are measured with :func:`clip_motion`; clip j comes from
    video ``j % len(source)``, the clips of one video start evenly spread along it (seeded by ``seed``). Speeds
    are reported per source frame. Clips slower than ``min_speed`` pixels per source frame or with confidence
    below ``min_confidence`` are left out of the histogram of ``bins`` bins (and counted); clips that fail to
    read are listed in ``unreadable`` as ``(name, start, error)``.
    """
    for attr in ("__len__", "num_frames", "read_clip", "name"):
        if not hasattr(source, attr):
            raise TypeError(f"source: expected a clip source with len, num_frames, read_clip and name; "
                            f"{type(source).__name__} has no {attr}")
    if len(source) == 0:
        raise ValueError("source: holds no video")
    frames = _check_int("frames", frames, 2)
    stride = _check_int("stride", stride, 1)
    bins = _check_int("bins", bins, 2)
    if num_clips is not None:
        num_clips = _check_int("num_clips", num_clips, 1)
    for name, v in (("min_speed", min_speed), ("min_confidence", min_confidence)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not v >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
    span = (frames - 1) * stride + 1
    plan = _clip_plan(source, num_clips, span, seed)
    it = plan
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(plan, desc="clip motion", unit="clip")
    angles, speeds, confs, names, starts, unreadable = [], [], [], [], [], []
    for v, start in it:
        try:
            clip = source.read_clip(v, start + stride * np.arange(frames))
        except Exception as exc:  # a damaged video: count it, go on
            unreadable.append((str(source.name(v)), start, f"{type(exc).__name__}: {exc}"))
            continue
        direction, speed, conf = clip_motion(clip)
        angles.append(direction)
        speeds.append(speed / stride)
        confs.append(conf)
        names.append(str(source.name(v)))
        starts.append(start)
    angles, speeds, confs = (np.asarray(x, dtype=np.float64) for x in (angles, speeds, confs))
    included = (speeds >= float(min_speed)) & (confs >= float(min_confidence))
    return MotionDirections(angles=angles, speeds=speeds, confidences=confs, names=names,
                            starts=np.asarray(starts, dtype=np.int64), included=included,
                            hist=_histogram(angles[included], bins), bin_edges_deg=_bin_edges_deg(bins),
                            frames=frames, stride=stride, min_speed=float(min_speed),
                            min_confidence=float(min_confidence), unreadable=unreadable)
