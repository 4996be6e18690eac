"""Video decoding: PyAV (bundles FFmpeg), torchcodec when it imports and decodes.

All readers return uint8 numpy arrays (T, H, W, 3), RGB.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

_TORCHCODEC_OK: bool | None = None


def _torchcodec_available() -> bool:
    global _TORCHCODEC_OK
    if _TORCHCODEC_OK is None:
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401
            _TORCHCODEC_OK = True
        except Exception:
            _TORCHCODEC_OK = False
    return _TORCHCODEC_OK


def count_frames(path: str | Path) -> int:
    """Number of decodable frames (stream metadata when present, else a full decode count)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n > 0:
            return n
        return sum(1 for _ in container.decode(video=0))




def _pyav_frames(path: str, indices: np.ndarray, side: int | None) -> np.ndarray:
    import av

    wanted = {int(i): [] for i in np.unique(indices)}
    last = int(indices.max())
    out = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = _to_rgb(frame, side)
            if i >= last:
                break
    if len(out) < len(wanted):
        if not out:
            raise ValueError(f"{path}: no frames decoded")
        # Metadata over-counted the frames: use the nearest earlier decoded frame.
        keys = sorted(out)
        for i in wanted:
            if i not in out:
                out[i] = out[max([k for k in keys if k <= i] or keys[:1])]
    return np.stack([out[int(i)] for i in indices])


def _to_rgb(frame, side: int | None) -> np.ndarray:
    """Decode an av.VideoFrame to RGB; with ``side``, scale the short side to ``side`` and centre-crop a square."""
    if side is None:
        return frame.to_ndarray(format="rgb24")
    w, h = frame.width, frame.height
    scale = side / min(w, h)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    arr = frame.reformat(width=nw, height=nh, format="rgb24").to_ndarray()
    y0, x0 = (nh - side) // 2, (nw - side) // 2
    return np.ascontiguousarray(arr[y0:y0 + side, x0:x0 + side])


def read_frames(path: str | Path, indices, side: int | None = None) -> np.ndarray:
    """Frames at ``indices`` (0-based) of a video as uint8 (T, H, W, 3).

    With ``side`` the frames are resized (short side) and centre-cropped to ``side`` x ``side``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0 or indices.min() < 0:
        raise ValueError(f"indices: expected a non-empty 1-D array of frame numbers >= 0, got {indices!r}")
    path = str(path)
    if _torchcodec_available():
        try:
            return _torchcodec_frames(path, indices, side)
        except Exception as exc:  # fall back to PyAV for anything torchcodec cannot do
            warnings.warn(f"torchcodec failed on {path} ({exc}); using PyAV", RuntimeWarning, stacklevel=2)
    return _pyav_frames(path, indices, side)


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
    """Every frame of a video (optionally resized/cropped to ``side``) as uint8 (T, H, W, 3)."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(_to_rgb(frame, side))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(frames)
