"""Files the package writes and reads back: atomic saves with the user's umask, and loads that never run code.

* :func:`atomic_save` writes to a temporary file in the target folder, fsyncs it, renames it over the target and
  fsyncs the folder: a reader sees the old file or the complete new one, never a partial write. The file gets the
  permissions of any new file (``0o666`` less the umask), not the ``0o600`` of a temporary file.
* :func:`safe_load` opens a ``torch.save`` file with ``weights_only=True`` (tensors, numbers, strings, lists,
  tuples and dicts only: a crafted file cannot run code) and turns every failure into a
  :class:`~tdann_fast.errors.DamagedFileError` that names the file and says what is wrong with it.
* :func:`link_or_copy` shares an unchanged file between two folders (a hard link, a copy where links fail).
* :func:`jsonable` turns results (dicts, lists, numpy and torch numbers, paths) into what ``json.dumps`` writes,
  with NaN and infinities as ``null``.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DamagedFileError

__all__ = ["atomic_save", "atomic_write_text", "safe_load", "link_or_copy", "new_file_mode", "fsync_dir", "jsonable"]


def new_file_mode() -> int:
    """Permission bits of a file created now: ``0o666`` less the process umask."""
    try:  # Linux: read the umask without changing it (no window in which another thread sees umask 0)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist a rename or a new entry in ``folder`` (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), new_file_mode())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see the module docstring); creates the parent folder."""
    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (YAML, JSON) atomically, like :func:`atomic_save`."""
    return _atomic_write(path, lambda fh: fh.write(text.encode()))


def safe_load(path: str | os.PathLike, what: str = "file", map_location="cpu") -> Any:
    """Load a ``torch.save`` file without running code; every failure names ``path`` (``what`` says what it
    should have been, e.g. "checkpoint")."""
    path = Path(path)
    if not path.exists():
        raise DamagedFileError(path, f"{what} not found")
    if path.is_dir():
        raise DamagedFileError(path, f"is a directory, not a {what} file")
    size = path.stat().st_size
    if size == 0:
        raise DamagedFileError(path, f"empty {what} file (0 bytes): it was never written completely")
    if not zipfile.is_zipfile(path):
        raise DamagedFileError(path, f"not a {what} file: {size} bytes that are not a torch.save archive "
                                     "(truncated, or another kind of file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DamagedFileError(
            path, f"refused to open: the {what} holds Python objects other than tensors, numbers, strings, lists "
                  f"and dicts, and loading them could run code ({_blocked_global(str(exc))})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        reason = (str(exc).strip().split(". ")[0] or type(exc).__name__).splitlines()[0]
        raise DamagedFileError(path, f"damaged {what} file ({size} bytes): {reason}") from None


def _blocked_global(message: str) -> str:
    """The object the weights-only unpickler refused, from its message."""
    for pattern in (r"unsupported GLOBAL (\S+)", r"Unsupported global: GLOBAL (\S+)", r"Unsupported operand (\S+)"):
        found = re.search(pattern, message)
        if found:
            return f"found {found.group(1)}"
    return message.strip().splitlines()[0] if message.strip() else "not a weights-only file"


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Make ``dst`` a hard link to ``src`` (no extra disk space; later atomic replacements of ``src`` do not
    change ``dst``), or a copy where the file system has no hard links. Returns "link" or "copy"."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def jsonable(x):
    """``x`` with dicts (keys as strings), lists and tuples walked, numpy/Python floats as floats (NaN and
    infinities as None), numpy integers and bools as Python ones, paths as strings, tensors as nested lists; any
    other object as its ``str``."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if not math.isfinite(v) else v
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return jsonable(x.tolist())
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)
