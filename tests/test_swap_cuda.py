"""Position swap optimisation, CUDA backend: compiles with nvcc (no GPU needed); on a GPU, agrees with C++."""
import glob
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from tdann_fast.swap import backend as swap_backend
from tdann_fast.swap import optimize_positions

ROOT = Path(__file__).resolve().parents[1]


def _nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cand = os.path.join(home, "bin", "nvcc")
    return cand if os.path.exists(cand) else shutil.which("nvcc")


def _includes():
    from torch.utils.cpp_extension import include_paths

    site = os.path.dirname(os.path.dirname(torch.__file__))
    home = os.path.dirname(os.path.dirname(_nvcc()))
    incs = include_paths("cuda") + [sysconfig.get_paths()["include"], os.path.join(home, "include")]
    return incs + sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_cuda_kernels_compile(tmp_path):
    """Compile-only check of the device code (csrc/cuda/*.cu) for sm_90 with the flags setup.py uses."""
    for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        out = tmp_path / (src.stem + ".o")
        cmd = [_nvcc(), "-c", str(src), "-o", str(out), "-std=c++17", "-arch=sm_90", "-O3", "--fmad=false",
               "-DWITH_CUDA", "-Xcompiler", "-fPIC"] + [f"-I{d}" for d in _includes()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert out.stat().st_size > 0


@pytest.mark.skipif(_nvcc() is None or shutil.which("c++") is None, reason="nvcc or c++ not found")
def test_cuda_host_code_compiles():
    """Syntax/type check of the ATen host side of the CUDA backend (csrc/cuda/*.cpp) with -DWITH_CUDA."""
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    for src in sorted((ROOT / "csrc" / "cuda").glob("*.cpp")):
        cmd = ["c++", "-fsyntax-only", "-std=c++20", "-fopenmp", "-DWITH_CUDA", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
               str(src)] + [f"-I{d}" for d in _includes()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize("objective", ["tdann", "exact"])
def test_cuda_matches_cpp(rng, objective):
    if "cuda" not in swap_backend.available_backends():
        pytest.skip("extension built without CUDA (rebuild with FORCE_CUDA=1)")
    n, side = 6000, 20.0
    pos = rng.uniform(0, side, size=(n, 2)).astype(np.float32)
    resp = np.cos(pos[:, 0] / 2.0)[None, :] * rng.normal(size=(200, 1)) + rng.normal(size=(200, n))
    kw = dict(steps_per_neighbourhood=500, max_units=500, objective=objective, seed=int(rng.integers(2**63)),
              progress=False)
    p_cpp, s_cpp = optimize_positions(resp, pos, 4.0, 100_000, backend="cpp", **kw)
    p_gpu, s_gpu = optimize_positions(resp, pos, 4.0, 100_000, backend="cuda", **kw)
    np.testing.assert_array_equal(s_gpu.units, s_cpp.units)
    ok = ~s_cpp.skipped
    # identical decisions except at gains within rounding of zero: in practice identical
    same = np.mean(s_gpu.accepted[ok] == s_cpp.accepted[ok])
    assert same >= 0.99, same
    np.testing.assert_allclose(s_gpu.objective_before[ok], s_cpp.objective_before[ok], atol=1e-6)
    np.testing.assert_allclose(np.mean(s_gpu.objective_after[ok]), np.mean(s_cpp.objective_after[ok]), atol=1e-4)
    assert np.mean(np.all(p_gpu == p_cpp, axis=1)) >= 0.99
    assert sorted(map(tuple, p_gpu.tolist())) == sorted(map(tuple, pos.tolist()))
