"""Build script: the pure-Python package plus the optional ``tdann_fast._C`` extension (the fast swap backends).

Build it against the torch you run with, offline if need be::

    pip install --no-build-isolation .          # or -e . ; add --no-index on a machine without a network

The extension sources live in ``csrc/`` (``csrc/cpu`` always, ``csrc/cuda`` only with CUDA). What is built:

* no torch importable at build time (an isolated build, say): no extension; the package installs without it;
* the CUDA backend when torch is a CUDA build and a GPU is visible or ``FORCE_CUDA=1``, and a CUDA toolkit is
  found: ``CUDA_HOME`` (or ``CUDA_PATH``), else ``nvcc`` on ``PATH``, else the nvcc of torch's own nvidia wheels,
  else ``/usr/local/cuda``. Architectures: ``TORCH_CUDA_ARCH_LIST``, else those of the visible GPUs, else 9.0;
* otherwise the CPU backend alone.

If the CUDA build fails, the CPU backend alone is built; if that fails too, the package installs without the
extension and the swap optimiser uses its Python backend (``tdann_fast.swap.available_backends()`` says which;
the first swap says so once). Environment switches: ``TDANN_FAST_BUILD_EXT=0`` skips the extension,
``TDANN_FAST_REQUIRE_EXT=1`` makes a failed extension build fail the install (CI uses it).
``tdann_fast/swap/backend.py`` is the loader that reports which backends were built.
"""
import glob
import os
import shutil
import sys

import setuptools
from setuptools import setup

MIN_SETUPTOOLS = (64, 0)  # PEP 660 editable installs and the [project] table with a dynamic licence
DEFAULT_ARCH = "9.0"  # Hopper, when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset


def say(message):
    print(f"tdann_fast setup: {message}", file=sys.stderr, flush=True)


def version_tuple(text):
    out = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def env_flag(environ, name, default="0"):
    return environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def is_toolkit(root):
    """A CUDA toolkit root has the compiler and the runtime headers (a wrapper script's folder has not)."""
    return os.path.isfile(os.path.join(root, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def find_cuda_home(environ, which=shutil.which, torch_dir=None, default_roots=("/usr/local/cuda",)):
    """``(toolkit root or None, how it was found or why none was)``, in the order the module docstring gives;
    each candidate must hold ``bin/nvcc`` and ``include/cuda_runtime.h``."""
    tried = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = environ.get(var)
        if root:
            if is_toolkit(root):
                return root, f"{var}={root}"
            tried.append(f"{var}={root} holds no bin/nvcc and include/cuda_runtime.h")
    nvcc = which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if is_toolkit(root):
            return root, f"nvcc on PATH ({nvcc})"
        tried.append(f"nvcc on PATH ({nvcc}) is not inside a toolkit")
    else:
        tried.append("no nvcc on PATH")
    if torch_dir:
        site = os.path.dirname(torch_dir)
        for pattern in ("nvidia/cu*/bin/nvcc", "nvidia/cuda_nvcc/bin/nvcc"):
            for found in sorted(glob.glob(os.path.join(site, pattern))):
                root = os.path.dirname(os.path.dirname(found))
                if is_toolkit(root):
                    return root, f"torch's nvidia wheels ({found})"
        tried.append("no toolkit in torch's nvidia wheels")
    for root in default_roots:
        if is_toolkit(root):
            return root, root
        tried.append(f"no toolkit at {root}")
    return None, "; ".join(tried)


def cuda_arch_list(environ, capabilities):
    """``TORCH_CUDA_ARCH_LIST`` when set, else the visible GPUs' ``major.minor`` (sorted, distinct), else 9.0."""
    given = environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given, "TORCH_CUDA_ARCH_LIST"
    archs = sorted({f"{major}.{minor}" for major, minor in capabilities}, key=version_tuple)
    if archs:
        return ";".join(archs), "the visible GPUs"
    return DEFAULT_ARCH, "the default (no GPU visible)"


def wheel_include_dirs(cuda_home, torch_dir):
    """Header folders of torch's nvidia wheels, needed only when the toolkit lacks ``cusparse.h`` (torch's CUDA
    headers include it); never mixed with a toolkit that has its own."""
    if cuda_home and os.path.isfile(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    site = os.path.dirname(torch_dir)
    dirs = sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    dirs += sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "include")) if d not in dirs)
    return dirs


def _sources():
    cpu = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    return cpu, cuda


def _extensions():
    """Return (ext_modules, cmdclass): empty when the extension is skipped."""
    cpu_sources, cuda_sources = _sources()
    if not cpu_sources:
        return [], {}
    if not env_flag(os.environ, "TDANN_FAST_BUILD_EXT", "1"):
        say("TDANN_FAST_BUILD_EXT=0: the C++ extension is skipped; the swap will use its Python backend")
        return [], {}
    try:
        import torch
    except ImportError as exc:
        if env_flag(os.environ, "TDANN_FAST_REQUIRE_EXT"):
            raise SystemExit(f"tdann_fast setup: TDANN_FAST_REQUIRE_EXT=1 but torch cannot be imported ({exc})")
        say(f"torch cannot be imported at build time ({exc}); installing without the C++ extension (build with "
            "`pip install --no-build-isolation .` in the environment that has torch to get it)")
        return [], {}
    torch_dir = os.path.dirname(torch.__file__)

    with_cuda = False
    if cuda_sources and (env_flag(os.environ, "FORCE_CUDA") or torch.cuda.is_available()):
        if torch.version.cuda is None:
            say(f"torch {torch.__version__} is not a CUDA build: building the CPU backend only")
        else:
            cuda_home, how = find_cuda_home(os.environ, torch_dir=torch_dir)
            if cuda_home is None:
                say(f"no CUDA toolkit found ({how}): building the CPU backend only; set CUDA_HOME to build the "
                    "CUDA backend")
            else:
                os.environ["CUDA_HOME"] = cuda_home  # before importing cpp_extension, which reads it at import
                caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())] \
                    if torch.cuda.is_available() else []
                archs, arch_how = cuda_arch_list(os.environ, caps)
                os.environ["TORCH_CUDA_ARCH_LIST"] = archs
                say(f"building the CUDA backend with the toolkit of {how}, for architectures {archs} ({arch_how})")
                with_cuda = True

    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # -ffp-contract=off: no fused multiply-add, so the swap decisions match the NumPy reference bit for bit.
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]

    def cpu_extension():
        return CppExtension("tdann_fast._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=["-fopenmp"])

    if with_cuda:
        from torch.utils.cpp_extension import CUDAExtension

        ext = CUDAExtension(
            "tdann_fast._C",
            cpu_sources + cuda_sources,
            include_dirs=wheel_include_dirs(os.environ["CUDA_HOME"], torch_dir),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags,
                                "nvcc": ["-O3", "--fmad=false", "-DWITH_CUDA", "-Xcompiler", "-fopenmp"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpu_extension()

    class TolerantBuildExt(BuildExtension.with_options(use_ninja=True)):
        """A failed CUDA build falls back to the CPU backend, a failed CPU build to no extension at all (unless
        ``TDANN_FAST_REQUIRE_EXT=1``), so that the package always installs."""

        def run(self):
            attempts = [("CUDA and CPU backends", None), ("CPU backend", cpu_extension)] if with_cuda else \
                [("CPU backend", None)]
            for what, make in attempts:
                if make is not None:
                    self.extensions = self.distribution.ext_modules = [make()]
                try:
                    super().run()
                    return
                except Exception as exc:  # a compiler or toolkit problem of this machine
                    if env_flag(os.environ, "TDANN_FAST_REQUIRE_EXT"):
                        raise
                    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                    say(f"building the {what} failed ({type(exc).__name__}: {reason})")
            # a library left by an earlier build (maybe against another torch) must not be installed in its place
            stale = self.get_ext_fullpath("tdann_fast._C")
            if os.path.exists(stale):
                os.remove(stale)
                say(f"removed {stale}, left by an earlier build")
            self.extensions = self.distribution.ext_modules = []
            say("installing WITHOUT the C++ extension: the swap optimiser will use its (slower) Python backend")

    return [ext], {"build_ext": TolerantBuildExt}


if __name__ == "__main__":
    if version_tuple(setuptools.__version__) < MIN_SETUPTOOLS:
        raise SystemExit(f"tdann_fast needs setuptools >= {'.'.join(map(str, MIN_SETUPTOOLS))} to build; this "
                         f"environment has {setuptools.__version__} (offline: pip install --no-index "
                         "path/to/setuptools-*.whl)")
    # `license = "MIT"` in pyproject.toml needs setuptools >= 77, where the older table form is deprecated
    licence = {"license_expression": "MIT"} if version_tuple(setuptools.__version__) >= (77, 0) else \
        {"license": "MIT"}
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass, **licence)
