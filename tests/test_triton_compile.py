"""Compile-only check: every fused-loss Triton kernel is built for Hopper (sm_90) by the real compiler, down to a
cubin, without a GPU. Errors that only the real compiler sees (tl.dot shapes, types of the pointer select, layout
conversions) fail CI this way, although the numerical tests run in the interpreter.

The compile runs in a subprocess with TRITON_INTERPRET unset (conftest sets it for this process) and a fresh
TRITON_CACHE_DIR, so a cached result cannot hide a failure.
"""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time

import pytest


def _jobs():
    """(kernel name, pointer dtype of the activations / gradients (None: fp32), constexprs): every kernel, both time
    modes, both variants, the three input dtypes, default tile sizes plus one small configuration."""
    jobs = [
        ("_stats_kernel", "bf16", dict(MODE=0, BLOCK_M=64, BLOCK_R=32)),
        ("_stats_kernel", "fp16", dict(MODE=1, BLOCK_M=64, BLOCK_R=32)),
        ("_stats_kernel", "fp32", dict(MODE=0, BLOCK_M=32, BLOCK_R=16)),
        ("_tile_fwd_kernel", None, dict(BLOCK_M=64, BLOCK_R=32)),
        ("_tile_fwd_kernel", None, dict(BLOCK_M=32, BLOCK_R=16)),
        ("_merge_kernel", None, dict(VARIANT=0, BLOCK_T=64)),
        ("_merge_kernel", None, dict(VARIANT=1, BLOCK_T=16)),
        ("_bwd_dz_kernel", None, dict(VARIANT=0, BLOCK_M=64, BLOCK_R=32)),
        ("_bwd_dz_kernel", None, dict(VARIANT=1, BLOCK_M=64, BLOCK_R=32)),
        ("_bwd_scatter_kernel", None, dict(MODE=0, BLOCK_M=64, BLOCK_R=16)),
        ("_bwd_scatter_kernel", None, dict(MODE=1, BLOCK_M=64, BLOCK_R=16)),
        ("_bwd_scatter_kernel", "bf16", dict(MODE=0, BLOCK_M=64, BLOCK_R=16)),  # gradient written in bf16 (K = 1)
    ]
    return jobs


def _signature(fn, xdt, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "desc_ptr" or (name[0] == "i" and name[1:].isdigit()):
            sig[name] = "*i64"
        elif name[0] in "xg" and name[1:].isdigit() and xdt is not None:
            sig[name] = f"*{xdt}"  # activations (x) or the feature gradients (g) in the activations' dtype
        elif name.endswith("_ptr") or (name[0] in "pg" and name[1:].isdigit()):
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_all(arch: int = 90) -> int:
    """Compile every job for ``sm_<arch>``; prints one line per kernel; returns the number compiled."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tdann_fast.loss import triton_kernels as tk

    target = GPUTarget("cuda", arch, 32)
    count = 0
    for name, xdt, const in _jobs():
        fn = getattr(tk, name)
        if type(fn).__name__ == "InterpretedFunction":
            raise RuntimeError("kernels were built for the interpreter; unset TRITON_INTERPRET")
        t0 = time.time()
        sig = _signature(fn, xdt, const)
        if "constexprs" in inspect.signature(ASTSource).parameters:
            src = ASTSource(fn=fn, signature=sig, constexprs=const)
        else:  # triton 3.0 (the oldest supported): constants=, and a signature of the runtime arguments only
            src = ASTSource(fn=fn, signature={k: v for k, v in sig.items() if v != "constexpr"}, constants=const)
        warps = 8 if name in ("_tile_fwd_kernel", "_bwd_dz_kernel") else 4  # as launched by triton_ops
        kernel = triton.compile(src, target=target, options={"num_warps": warps})
        if not kernel.asm.get("cubin"):
            raise RuntimeError(f"{name}: no cubin produced")
        count += 1
        print(f"ok {name} x={xdt} {const} {time.time() - t0:.1f}s", flush=True)
    return count


def test_all_kernels_compile_for_hopper(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"compile failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert f"compiled {len(_jobs())} kernels" in proc.stdout, proc.stdout


if __name__ == "__main__":
    n = compile_all()
    print(f"compiled {n} kernels for sm_90")
