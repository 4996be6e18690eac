"""Loader of the compiled ``tdann_fast._C`` extension and the list of available swap backends.

``reference`` (NumPy) is always available; ``cpp`` needs the extension built (``setup.py build_ext`` or
``pip install -e .``); ``cuda`` needs an extension built with CUDA (a GPU present or ``FORCE_CUDA=1`` at build
time) and a CUDA device at run time. When ``"auto"`` has to settle for less than the machine could run (no
extension: the NumPy reference; a GPU but an extension built without CUDA: the C++ backend), one warning per
process says so and why.
"""
from __future__ import annotations

import functools
from typing import Optional

from .._deps import warn_once
from .._options import SWAP_BACKENDS as BACKENDS


@functools.lru_cache(maxsize=1)
def _load():
    try:
        from tdann_fast import _C  # type: ignore[attr-defined]
    except ImportError as exc:  # not built, or built against another torch
        return None, f"{type(exc).__name__}: {exc}"
    return _C, None


def extension():
    """The ``tdann_fast._C`` module, or None when it cannot be imported."""
    return _load()[0]


def extension_error() -> Optional[str]:
    """Why the extension could not be imported (None when it was)."""
    return _load()[1]


def cuda_compiled() -> bool:
    ext = extension()
    return bool(ext is not None and getattr(ext, "with_cuda", False))


def available_backends() -> list:
    """Backends usable in this process, fastest last: ``["reference", "cpp", "cuda"]`` at most."""
    out = ["reference"]
    if extension() is not None:
        out.append("cpp")
        if cuda_compiled():
            import torch

            if torch.cuda.is_available():
                out.append("cuda")
    return out


_REBUILD = "reinstall with `pip install --no-build-isolation -e .` in this environment (README: Install)"


def fallback_reason() -> Optional[str]:
    """Why ``"auto"`` cannot use the fastest backend this machine could run, or None when it can."""
    if extension() is None:
        return (f"the C++ extension tdann_fast._C is not available ({extension_error()}); the swap optimiser "
                f"uses its Python (NumPy) backend, which is much slower; {_REBUILD}")
    if not cuda_compiled():
        import torch

        if torch.cuda.is_available():
            return ("tdann_fast._C was built without CUDA although a GPU is present; the swap optimiser uses "
                    f"its CPU backend; {_REBUILD} (a GPU visible or FORCE_CUDA=1 at build time)")
    return None


def resolve(backend: str) -> str:
    """Map "auto" to the fastest available backend (saying once when that is less than the machine could run);
    raise a clear error for an unavailable one."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    avail = available_backends()
    if backend == "auto":
        why = fallback_reason()
        if why is not None:
            warn_once("swap-backend-fallback", why)
        return avail[-1]
    if backend not in avail:
        if backend == "cpp":
            why = f"the extension tdann_fast._C could not be imported ({extension_error()}); build it with " \
                  "`python setup.py build_ext --inplace` or `pip install --no-build-isolation -e .`"
        elif extension() is None:
            why = f"the extension tdann_fast._C could not be imported ({extension_error()})"
        elif not cuda_compiled():
            why = "tdann_fast._C was built without CUDA (rebuild with a GPU present or FORCE_CUDA=1)"
        else:
            why = "no CUDA device is available"
        raise RuntimeError(f"swap backend {backend!r} is not available: {why}. Available: {avail}")
    return backend
