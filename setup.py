"""Build script: the pure-Python package plus the ``tdann_fast._C`` extension.

The extension sources live in ``csrc/`` (``csrc/cpu`` always, ``csrc/cuda`` only when a GPU is present or
``FORCE_CUDA=1``).  See ``tdann_fast/swap/backend.py`` for the loader that reports which backends were built.
"""
import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    """Return (ext_modules, cmdclass); empty when there are no C++ sources yet."""
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + sorted(
        glob.glob(os.path.join("csrc", "*.cpp"))
    )
    if not cpu_sources:
        return [], {}
    import torch

    # -ffp-contract=off: no fused multiply-add, so the swap decisions match the NumPy reference bit for bit.
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    # csrc/cuda: device code in *.cu (nvcc), its ATen host side in *.cpp (C++ compiler); only with CUDA
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
    )
    with_cuda = bool(cuda_sources) and (torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1")
    if with_cuda:  # before importing cpp_extension, which reads CUDA_HOME at import
        os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    if not with_cuda:
        ext = CppExtension(
            "tdann_fast._C",
            cpu_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
        return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}
    from torch.utils.cpp_extension import CUDAExtension

    site = os.path.dirname(os.path.dirname(torch.__file__))
    include_dirs = sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))  # cusparse.h of the wheels
    ext = CUDAExtension(
        "tdann_fast._C",
        cpu_sources + cuda_sources,
        include_dirs=include_dirs,
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--fmad=false", "-DWITH_CUDA", "-Xcompiler", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
