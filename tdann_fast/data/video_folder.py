"""`VideoFolder`: a recursive folder of videos (UCF101 layout works) with a cached frame-count index."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .decode import count_frames, read_all_frames, read_frames

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")
INDEX_NAME = ".tdann_fast_index.json"


class VideoReadError(RuntimeError):
    """A video could not be decoded (the dataset skips it and counts it)."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tdann_fast"


class VideoFolder:
    """Videos found recursively under ``root`` (or an explicit list of ``files``), decoded with PyAV.

    A frame-count index is built once and cached as JSON (``<root>/.tdann_fast_index.json``, or in
    ``~/.cache/tdann_fast`` when the folder is read-only); entries are keyed by relative path, size and mtime.
    Files that cannot be opened or hold no frames are skipped with a warning and counted in ``skipped``;
    failures while reading a clip later raise :class:`VideoReadError` and are counted in ``read_failures``.

    Args:
        root: folder to scan (``None`` when ``files`` is given).
        side: clips come out square ``side`` x ``side`` (short side resized, centre crop); ``None`` keeps the size,
            which then must be the same for every video of a batch.
        extensions: file suffixes to accept (case-insensitive).
        files: explicit list of video files instead of a scan.
        cache_in_memory: decode each video once (at ``side``) and keep its frames in RAM.
        index_path: where to cache the frame index (default: see above); ``False`` disables caching.
    """

    def __init__(self, root: str | Path | None = None, side: int | None = None,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS, files: Iterable[str | Path] | None = None,
                 cache_in_memory: bool = False, index_path: str | Path | bool | None = None,
                 max_frames_in_memory: int | None = None):
        if root is None and files is None:
            raise ValueError("VideoFolder: give root (a folder of videos) or files (a list of video paths)")
        if side is not None and int(side) < 1:
            raise ValueError(f"side: expected a positive integer or None, got {side!r}")
        self.side = None if side is None else int(side)
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if files is not None:
            paths = [Path(f) for f in files]
            self.root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
        else:
            self.root = Path(root)
            if not self.root.is_dir():
                raise ValueError(f"root: {str(root)!r} is not a directory")
            paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in self.extensions)
        self.cache_in_memory = bool(cache_in_memory)
        self.max_frames_in_memory = max_frames_in_memory
        self.skipped: list[tuple[str, str]] = []
        self.read_failures = 0
        self._index_path = self._choose_index_path(index_path)
        counts = self._build_index(paths)
        self.paths: list[Path] = []
        self.frame_counts: list[int] = []
        for p in paths:
            n = counts.get(str(p), 0)
            if n > 0:
                self.paths.append(p)
                self.frame_counts.append(n)
        if self.skipped:
            warnings.warn(f"VideoFolder: skipped {len(self.skipped)} unreadable video(s) under {self.root}: "
                          + ", ".join(Path(p).name for p, _ in self.skipped[:5])
                          + (" ..." if len(self.skipped) > 5 else ""), RuntimeWarning, stacklevel=2)
        self._memory: dict[int, np.ndarray] = {}

    # -- index ---------------------------------------------------------------------------------------------
    def _choose_index_path(self, index_path) -> Path | None:
        if index_path is False:
            return None
        if index_path not in (None, True):
            return Path(index_path)
        cand = self.root / INDEX_NAME
        if os.access(self.root, os.W_OK):
            return cand
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]
        return _cache_dir() / f"index-{digest}.json"

    def _build_index(self, paths: list[Path]) -> dict[str, int]:
        cached: dict = {}
        if self._index_path is not None and self._index_path.is_file():
            try:
                cached = json.loads(self._index_path.read_text())
            except (OSError, ValueError):
                cached = {}
        out: dict[str, int] = {}
        changed = False
        for p in paths:
            try:
                st = p.stat()
            except OSError as exc:
                self.skipped.append((str(p), str(exc)))
                continue
            key = str(p.resolve())
            entry = cached.get(key)
            if entry and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime:
                n, err = int(entry.get("frames", 0)), entry.get("error")
            else:
                try:
                    n, err = count_frames(p), None
                except Exception as exc:  # any decoder error: skip the file, never crash
                    n, err = 0, f"{type(exc).__name__}: {exc}"
                cached[key] = {"size": st.st_size, "mtime": st.st_mtime, "frames": n, "error": err}
                changed = True
            if n <= 0:
                self.skipped.append((str(p), err or "no frames"))
            out[str(p)] = n
        if changed and self._index_path is not None:
            try:
                self._index_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._index_path.with_name(self._index_path.name + f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(cached))
                os.replace(tmp, self._index_path)
            except OSError:
                pass
        return out

    # -- access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def num_frames(self, i: int) -> int:
        return self.frame_counts[i]

    def name(self, i: int) -> str:
        return str(self.paths[i])

    def read_clip(self, i: int, indices) -> np.ndarray:
        """Frames ``indices`` of video ``i`` as uint8 (T, H, W, 3); raises :class:`VideoReadError` on failure."""
        indices = np.asarray(indices, dtype=np.int64) % max(1, self.frame_counts[i])
        try:
            if self.cache_in_memory:
                frames = self._memory.get(i)
                if frames is None:
                    frames = read_all_frames(self.paths[i], self.side, self.max_frames_in_memory)
                    self._memory[i] = frames
                    self.frame_counts[i] = len(frames)
                return frames[indices % len(frames)]
            return read_frames(self.paths[i], indices, self.side)
        except Exception as exc:
            self.read_failures += 1
            warnings.warn(f"VideoFolder: cannot read {self.paths[i]}: {exc}", RuntimeWarning, stacklevel=2)
            raise VideoReadError(str(self.paths[i])) from exc


class ConcatSource:
    """Several clip sources (VideoFolder, SyntheticMotion, ...) seen as one."""

    def __init__(self, sources: Sequence):
        self.sources = [s for s in sources if len(s) > 0]
        if not self.sources:
            raise ValueError("ConcatSource: every source is empty")
        self._offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"video index {i} out of range [0, {len(self)})")
        s = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self.sources[s], i - int(self._offsets[s])

    def num_frames(self, i: int) -> int:
        src, j = self._locate(i)
        return src.num_frames(j)

    def name(self, i: int) -> str:
        src, j = self._locate(i)
        return src.name(j)

    def read_clip(self, i: int, indices) -> np.ndarray:
        src, j = self._locate(i)
        return src.read_clip(j, indices)

    @property
    def skipped(self) -> list:
        return [x for s in self.sources for x in getattr(s, "skipped", [])]

    @property
    def read_failures(self) -> int:
        return sum(getattr(s, "read_failures", 0) for s in self.sources)
