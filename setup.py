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
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext = CppExtension(
        "tdann_fast._C",
        cpu_sources,
        extra_compile_args={"cxx": ["-O3", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
