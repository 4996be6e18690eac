"""Video decoding: PyAV (bundles FFmpeg), torchcodec when it imports and passes a one-frame probe.

All readers return uint8 numpy arrays (T, H, W, 3), RGB; frame ``i`` is the ``i``-th frame (0-based) that the
decoder gives when it decodes the file from the start.

Definitions:

* A video is *truncated* when fewer frames decode than a reader needs (the container's header, and so the frame
  index, claimed more: a file cut short by a failed copy or download). Readers never invent the missing frames:
  they raise :class:`TruncatedVideoError`, whose ``frames`` is the number of frames that really decode.
* A video is *unreadable* when it does not open or no frame decodes: :class:`VideoReadError`.
* The *torchcodec probe*: torchcodec is trusted only after it has decoded frame 0 of the first video this process
  reads as an array of the shape (1, H, W, 3) and dtype (uint8) that PyAV gives for that frame, with a mean
  absolute difference to PyAV's frame of at most ``PROBE_TOLERANCE`` levels. When the probe fails, the whole
  process uses PyAV, and one warning says why (none when torchcodec is simply not installed).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

PROBE_TOLERANCE = 24.0  # mean |torchcodec - PyAV| of the probe frame, in uint8 levels (both wrap FFmpeg)

# torchcodec for this process: None until probed, "" once trusted, else the reason it is not used.
_TORCHCODEC_STATE: str | None = None
_NOT_INSTALLED = "not installed"  # the one reason that is not worth a warning


class VideoReadError(RuntimeError):
    """A video could not be decoded; ``path`` names it and ``detail`` says why (one line, without the path)."""

    def __init__(self, path, detail: str):
        self.path, self.detail = str(path), str(detail)
        super().__init__(f"{self.path}: {self.detail}")


class TruncatedVideoError(VideoReadError):
    """Fewer frames decode than were claimed: only ``frames`` frames (>= 1) of ``path`` decode, ``claimed`` were
    expected (by the container's header or the frame index)."""

    def __init__(self, path, frames: int, claimed: int):
        self.frames, self.claimed = int(frames), int(claimed)
        super().__init__(path, f"fewer frames decode than claimed; {self.frames} of {self.claimed} decode")


def _av():
    """The PyAV module, or a MissingDependencyError naming the ``[video]`` extra."""
    from .._deps import require

    av = require("av", "decoding video files")
    # torchvision <= 0.19 sets PyAV's log level on import; with a log callback installed, freeing a decoder that
    # runs threads can deadlock (the decoder threads wait for the interpreter lock the freeing thread holds)
    if getattr(av, "logging", None) is not None and av.logging.get_level() is not None:
        av.logging.set_level(None)
    return av


def _error_detail(exc: BaseException, path) -> str:
    """Why ``exc`` happened, in one line and without the file's path (so that equal reasons group together)."""
    if isinstance(exc, VideoReadError):
        return exc.detail
    text = str(getattr(exc, "strerror", None) or exc).strip()
    text = text.splitlines()[0] if text else ""
    for form in (f"{path}: ", f": '{path}'", f"'{path}'", str(path)):
        text = text.replace(form, "")
    return f"{type(exc).__name__}: {text.strip() or 'no message'}"


def count_frames(path: str | Path) -> int:
    """Number of frames the container claims (stream metadata when present, else a full decode count)."""
    av = _av()

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n > 0:
            return n
        return sum(1 for _ in container.decode(video=0))


def _decode(path: str, last: int | None, keep, side: int | None):
    """Decode ``path`` from the start up to frame ``last`` (``None``: to the end), keeping the frames whose number
    is in ``keep`` (``None``: all) as RGB. Returns ``(kept frames by number, frames decoded, frames the header
    claims or 0, why decoding stopped early or None)``; a decoder error ends the video there.

    Every PyAV object dies when this returns, the decoder's threads with it: none is left alive in a traceback,
    where a later fork (DataLoader workers) would copy it without its threads and hang or crash the worker when
    it is freed there.
    """
    av = _av()

    out, decoded, claimed, error = {}, 0, 0, None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return out, 0, 0, "no video stream"
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            claimed = int(stream.frames or 0)
            for frame in container.decode(stream):
                if keep is None or decoded in keep:
                    out[decoded] = _to_rgb(frame, side)
                decoded += 1
                if last is not None and decoded > last:
                    break
    except Exception as exc:  # reported to the caller as a reason
        error = _error_detail(exc, path)
    return out, decoded, claimed, error


def _pyav_frames(path: str, indices: np.ndarray, side: int | None) -> np.ndarray:
    """Frames ``indices`` with PyAV; :class:`TruncatedVideoError` when the video ends before the last of them,
    :class:`VideoReadError` when no frame decodes."""
    last = int(indices.max())
    out, decoded, claimed, error = _decode(path, last, set(int(i) for i in indices), side)
    if decoded == 0:
        raise VideoReadError(path, error or "no frame decodes")
    if decoded <= last:
        raise TruncatedVideoError(path, decoded, max(claimed, last + 1))
    return np.stack([out[int(i)] for i in indices])


def _to_rgb(frame, side: int | None) -> np.ndarray:
    """Decode an av.VideoFrame to RGB; with ``side``, scale the short side to ``side`` and centre-crop a square.

    The conversion runs on the calling thread (``threads=1``): a thread pool made for every frame costs more than
    it saves on clip-sized frames (DataLoader workers decode in parallel already)."""
    if side is None:
        return frame.to_ndarray(format="rgb24", threads=1)
    w, h = frame.width, frame.height
    scale = side / min(w, h)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    arr = frame.reformat(width=nw, height=nh, format="rgb24", threads=1).to_ndarray()
    y0, x0 = (nh - side) // 2, (nw - side) // 2
    return np.ascontiguousarray(arr[y0:y0 + side, x0:x0 + side])


def read_frames(path: str | Path, indices, side: int | None = None) -> np.ndarray:
    """Frames at ``indices`` (0-based) of a video as uint8 (T, H, W, 3).

    With ``side`` the frames are resized (short side) and centre-cropped to ``side`` x ``side``. Raises
    :class:`TruncatedVideoError` when the video ends before the last frame asked for (its ``frames`` says how many
    decode) and :class:`VideoReadError` when no frame decodes.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0 or indices.min() < 0:
        raise ValueError(f"indices: expected a non-empty 1-D array of frame numbers >= 0, got {indices!r}")
    path = str(path)
    if _torchcodec_trusted(path):
        try:
            return _torchcodec_frames(path, indices, side)
        except Exception as exc:  # fall back to PyAV for anything torchcodec cannot do
            warnings.warn(f"torchcodec failed on {path} ({exc}); using PyAV", RuntimeWarning, stacklevel=2)
    return _pyav_frames(path, indices, side)


def _torchcodec_trusted(path: str) -> bool:
    """Whether to decode with torchcodec; the first call probes it on ``path`` (see the module docstring)."""
    global _TORCHCODEC_STATE
    if _TORCHCODEC_STATE is None:
        reason = _probe_torchcodec(path)
        if reason is None:  # PyAV cannot read this video either: probe again on the next one
            return False
        _TORCHCODEC_STATE = reason
        if reason and reason != _NOT_INSTALLED:
            warnings.warn(f"torchcodec is not used in this process, PyAV decodes every video: {reason}",
                          RuntimeWarning, stacklevel=3)
    return _TORCHCODEC_STATE == ""


def _probe_torchcodec(path: str) -> str | None:
    """"" when torchcodec decodes frame 0 of ``path`` like PyAV does, else why not; None when PyAV cannot
    decode that frame either (the probe says nothing then)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "torchcodec":
            return _NOT_INSTALLED
        return f"importing it failed ({type(exc).__name__}: {exc})"
    except Exception as exc:
        return f"importing it failed ({type(exc).__name__}: {exc})"
    first = np.zeros(1, dtype=np.int64)
    try:
        reference = _pyav_frames(path, first, None)
    except Exception:
        return None
    try:
        frame = np.asarray(_torchcodec_frames(path, first, None))
    except Exception as exc:
        return f"it failed to decode frame 0 of {path} ({type(exc).__name__}: {exc})"
    if frame.dtype != np.uint8 or frame.shape != reference.shape:
        return (f"it decoded frame 0 of {path} as {frame.dtype} {tuple(frame.shape[1:])}, PyAV as uint8 "
                f"{tuple(reference.shape[1:])} (H, W, 3)")
    diff = float(np.abs(frame.astype(np.int16) - reference.astype(np.int16)).mean())
    if diff > PROBE_TOLERANCE:
        return f"its frame 0 of {path} differs from PyAV's by {diff:.1f} levels on average (> {PROBE_TOLERANCE})"
    return ""


def _torchcodec_frames(path: str, indices: np.ndarray, side: int | None) -> np.ndarray:
    import torch
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(path)
    batch = dec.get_frames_at(indices=[int(i) for i in indices]).data  # (T, 3, H, W) uint8
    if side is not None:
        h, w = batch.shape[-2:]
        scale = side / min(h, w)
        nh, nw = max(side, round(h * scale)), max(side, round(w * scale))
        batch = torch.nn.functional.interpolate(batch.float(), size=(nh, nw), mode="bilinear",
                                                antialias=True, align_corners=False)
        y0, x0 = (nh - side) // 2, (nw - side) // 2
        batch = batch[..., y0:y0 + side, x0:x0 + side].round().clamp(0, 255).to(torch.uint8)
    return batch.permute(0, 2, 3, 1).contiguous().numpy()


def read_all_frames(path: str | Path, side: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """Every frame that decodes (at most ``max_frames``; optionally resized/cropped to ``side``) as uint8
    (T, H, W, 3). A decoder error ends the video; :class:`VideoReadError` when no frame decodes."""
    last = None if max_frames is None else int(max_frames) - 1
    out, decoded, _, error = _decode(str(path), last, None, side)
    if decoded == 0:
        raise VideoReadError(path, error or "no frame decodes")
    return np.stack([out[i] for i in range(decoded)])
