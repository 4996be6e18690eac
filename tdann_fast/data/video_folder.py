"""`VideoFolder`: a recursive folder of videos (UCF101 layout works) with a cached frame-count index, and the
records of the video faults met while indexing and reading.

Definitions:

* A :class:`VideoFault` is one fault met with one file: ``kind`` is ``"skipped"`` (the file could not be indexed:
  it does not open, has no video stream or no frame), ``"unreadable"`` (a read failed; the sample used another
  video) or ``"truncated"`` (fewer frames decode than the index claimed; the clip was drawn again within the
  frames that decode); ``detail`` says why, in one line.
* The *reason* of a fault is the start of its detail, up to the first ``"; "`` (what follows are numbers of that
  file), with the file's path taken out, at most 80 characters. Faults are counted per kind and per (kind, reason).
* A data folder is *read-only* when ``os.access`` says so or its mode has no write bit at all (``os.access`` says
  every folder is writable to root). The index then goes to the cache folder (``$XDG_CACHE_HOME/tdann_fast``, else
  ``~/.cache/tdann_fast``), and so does it when writing it into the data folder fails; when both fail, the folder
  is used without a cached index and one warning says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .decode import (TruncatedVideoError, VideoReadError, _error_detail, count_frames, read_all_frames,
                     read_frames)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")
INDEX_NAME = ".tdann_fast_index.json"
MAX_EXAMPLES = 3     # example file names kept per reason
MAX_REASON_CHARS = 80


class VideoFault(NamedTuple):
    """One fault met with one video file (see the module docstring for the kinds)."""
    path: str
    kind: str
    detail: str


def _fault_reason(fault: VideoFault) -> str:
    """The reason of a fault: its detail up to the first ``"; "``, without the file's path, at most 80 chars."""
    text = fault.detail.splitlines()[0] if fault.detail.strip() else "no detail"
    text = text.split("; ", 1)[0].replace(fault.path, "<file>").strip()
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def summarize_faults(records: Iterable[VideoFault] | Mapping[VideoFault, int]) -> dict:
    """Counts of fault records, JSON-serialisable.

    ``records`` is an iterable of :class:`VideoFault`, or a mapping record -> number of times it was met (a
    ``collections.Counter`` of records keeps a long run's log small). Returns ``{"total": n, "by_kind": {kind:
    n}, "reasons": [{"kind", "reason", "count", "files", "examples"}, ...]}`` where ``files`` is the number of
    distinct files and ``examples`` up to 3 of their names; reasons are sorted by count, most frequent first.
    """
    counts = records if isinstance(records, Mapping) else Counter(records)
    by_kind: Counter = Counter()
    groups: dict[tuple[str, str], dict] = {}
    for fault, n in counts.items():
        if not isinstance(fault, VideoFault):
            raise TypeError(f"records: expected VideoFault records, got {type(fault).__name__}")
        n = int(n)
        by_kind[fault.kind] += n
        group = groups.setdefault((fault.kind, _fault_reason(fault)), {"count": 0, "paths": set()})
        group["count"] += n
        group["paths"].add(fault.path)
    reasons = [{"kind": kind, "reason": reason, "count": g["count"], "files": len(g["paths"]),
                "examples": [Path(p).name for p in sorted(g["paths"])[:MAX_EXAMPLES]]}
               for (kind, reason), g in groups.items()]
    reasons.sort(key=lambda r: (-r["count"], r["kind"], r["reason"]))
    return {"total": sum(by_kind.values()), "by_kind": dict(sorted(by_kind.items())), "reasons": reasons}


def format_fault_table(summary: dict, title: str = "video faults") -> str:
    """A short text table of a :func:`summarize_faults` result: the ``title`` line, a header, then one row per
    (kind, reason) with its count, the number of distinct files and up to 3 example file names (``...`` when there
    are more). Returns ``""`` when there is no fault."""
    if not isinstance(summary, dict) or "reasons" not in summary:
        raise TypeError("summary: expected the dict that summarize_faults returns")
    if not summary["reasons"]:
        return ""
    rows = [("count", "files", "kind", "reason", "examples")]
    for r in summary["reasons"]:
        more = ", ..." if r["files"] > len(r["examples"]) else ""
        rows.append((str(r["count"]), str(r["files"]), r["kind"], r["reason"], ", ".join(r["examples"]) + more))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = [title]
    for row in rows:
        lines.append(f"  {row[0]:>{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  "
                     f"{row[3]:<{widths[3]}}  {row[4]}".rstrip())
    return "\n".join(lines)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tdann_fast"


def _is_read_only(folder: Path) -> bool:
    """See the module docstring: ``os.access`` says so, or the mode has no write bit (true for root too)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return True
    return not os.access(folder, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


class VideoFolder:
    """Videos found recursively under ``root`` (or an explicit list of ``files``), decoded with PyAV.

    A frame-count index is built once and cached as JSON (``<root>/.tdann_fast_index.json``, or in the cache
    folder when the data folder is read-only: see the module docstring); entries are keyed by path, size and
    mtime. Files that cannot be indexed are skipped and listed in ``skipped`` as ``(path, reason)``; one warning
    per VideoFolder shows their reasons as a table (:meth:`skip_table`).

    :meth:`read_clip` raises :class:`VideoReadError` when a video does not decode, and
    :class:`TruncatedVideoError` when fewer frames decode than the index claimed, after correcting the video's
    frame count in this process (``num_frames`` then gives the real count). ``read_failures`` counts both in
    this process only: DataLoader workers' counts never reach the main process, which sees the faults through
    the samples of :class:`~tdann_fast.data.ClipPairDataset` instead.

    Args:
        root: folder to scan (``None`` when ``files`` is given).
        side: clips come out square ``side`` x ``side`` (short side resized, centre crop); ``None`` keeps the size,
            which then must be the same for every video of a batch.
        extensions: file suffixes to accept (case-insensitive).
        files: explicit list of video files instead of a scan.
        cache_in_memory: decode each video once (at ``side``) and keep its frames in RAM.
        index_path: where to cache the frame index (default: see above); ``False`` disables caching.
        max_frames_in_memory: with ``cache_in_memory``, keep at most this many frames of each video.
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
            warnings.warn(self.skip_table(), RuntimeWarning, stacklevel=2)
        self._memory: dict[int, np.ndarray] = {}

    # -- index ---------------------------------------------------------------------------------------------
    def _cache_index_path(self) -> Path:
        digest = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]
        return _cache_dir() / f"index-{digest}.json"

    def _choose_index_path(self, index_path) -> Path | None:
        if index_path is False:
            return None
        if index_path not in (None, True):
            return Path(index_path)
        if _is_read_only(self.root):
            return self._cache_index_path()
        return self.root / INDEX_NAME

    def _read_index(self) -> dict:
        """The cached index: the chosen file, else the cache folder's copy (written when the first failed)."""
        candidates = [self._index_path]
        if self._index_path == self.root / INDEX_NAME:
            candidates.append(self._cache_index_path())
        for path in candidates:
            if path.is_file():
                try:
                    return json.loads(path.read_text())
                except (OSError, ValueError):
                    pass
        return {}

    def _write_index(self, index: dict) -> None:
        targets = [self._index_path]
        if self._index_path == self.root / INDEX_NAME:
            targets.append(self._cache_index_path())
        errors = []
        for path in targets:
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(index))
                os.replace(tmp, path)
                self._index_path = path
                return
            except OSError as exc:
                errors.append(f"{path}: {type(exc).__name__}: {exc.strerror or exc}")
                try:
                    tmp.unlink()
                except OSError:
                    pass
        warnings.warn(f"VideoFolder: the frame index of {self.root} is not cached (it is rebuilt next time); "
                      + "; ".join(errors), RuntimeWarning, stacklevel=4)

    def _build_index(self, paths: list[Path]) -> dict[str, int]:
        cached = self._read_index() if self._index_path is not None else {}
        out: dict[str, int] = {}
        changed = False
        for p in paths:
            try:
                st = p.stat()
            except OSError as exc:
                self.skipped.append((str(p), _error_detail(exc, p)))
                continue
            key = str(p.resolve())
            entry = cached.get(key)
            if entry and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime:
                n, err = int(entry.get("frames", 0)), entry.get("error")
            else:
                try:
                    n, err = count_frames(p), None
                except Exception as exc:  # any decoder error: skip the file, never crash
                    n, err = 0, _error_detail(exc, p)
                cached[key] = {"size": st.st_size, "mtime": st.st_mtime, "frames": n, "error": err}
                changed = True
            if n <= 0:
                self.skipped.append((str(p), err or "no frames"))
            out[str(p)] = n
        if changed and self._index_path is not None:
            self._write_index(cached)
        return out

    # -- faults --------------------------------------------------------------------------------------------
    def skip_faults(self) -> list[VideoFault]:
        """The files skipped at index time, as ``"skipped"`` fault records."""
        return [VideoFault(p, "skipped", reason) for p, reason in self.skipped]

    def skip_table(self) -> str:
        """The reasons of the skipped files as a text table (``""`` when none was skipped)."""
        title = f"VideoFolder: skipped {len(self.skipped)} unreadable video(s) under {self.root}"
        return format_fault_table(summarize_faults(self.skip_faults()), title=title)

    # -- access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def num_frames(self, i: int) -> int:
        return self.frame_counts[i]

    def name(self, i: int) -> str:
        return str(self.paths[i])

    def _all_frames(self, i: int) -> np.ndarray:
        """Video ``i`` decoded once and kept; its frame count becomes the number of frames kept."""
        frames = self._memory.get(i)
        if frames is None:
            frames = read_all_frames(self.paths[i], self.side, self.max_frames_in_memory)
            self._memory[i] = frames
            claimed = self.frame_counts[i]
            if self.max_frames_in_memory is not None:
                claimed = min(claimed, int(self.max_frames_in_memory))
            self.frame_counts[i] = len(frames)
            if len(frames) < claimed:
                raise TruncatedVideoError(self.paths[i], len(frames), claimed)
        return frames

    def read_clip(self, i: int, indices) -> np.ndarray:
        """Frames ``indices`` (taken modulo the frame count) of video ``i`` as uint8 (T, H, W, 3).

        Raises :class:`TruncatedVideoError` (after setting the video's frame count to the frames that decode)
        or :class:`VideoReadError`; see the class docstring.
        """
        claimed = max(1, self.frame_counts[i])
        indices = np.asarray(indices, dtype=np.int64) % claimed
        path = self.paths[i]
        try:
            if self.cache_in_memory:
                frames = self._all_frames(i)
                return frames[indices % len(frames)]
            return read_frames(path, indices, self.side)
        except TruncatedVideoError as exc:
            self.read_failures += 1
            self.frame_counts[i] = exc.frames
            warnings.warn(f"VideoFolder: {path} is truncated: {exc.frames} of the {claimed} frames of the index "
                          "decode; clips are drawn from those", RuntimeWarning, stacklevel=2)
            raise TruncatedVideoError(path, exc.frames, claimed) from exc
        except Exception as exc:
            self.read_failures += 1
            warnings.warn(f"VideoFolder: cannot read {path}: {exc}", RuntimeWarning, stacklevel=2)
            raise VideoReadError(path, _error_detail(exc, path)) from exc


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

    def skip_faults(self) -> list[VideoFault]:
        """The files every source skipped at index time, as ``"skipped"`` fault records."""
        return [f for s in self.sources for f in getattr(s, "skip_faults", list)()]

    @property
    def read_failures(self) -> int:
        return sum(getattr(s, "read_failures", 0) for s in self.sources)
