"""Benchmark of the position swap optimisation (issue 4).

CPU mode (default): windows of 500 units, 500 trials each, 1,000 stimuli.
* trial loop only (µs per trial, trials/s): a TDANN-style NumPy loop (what the reference TDANN code does per trial:
  distances of the two rows, similarity, Pearson of the two rows before and after the swap), this package's NumPy
  reference (``tdann_fast.swap.reference``), the C++ backend on 1 thread and on 2 threads (2 windows at once);
* whole windows including the window's correlation matrix (ms per window): the same four, the C++ ones through
  the round driver that ``optimize_positions`` uses (windows found by the slot grid, correlation as a float32 ATen GEMM).

GPU mode (``--gpu``): the MT layer of the r3d18_mt preset (50,176 units, 2.1 mm windows), 1,000 stimuli, 50 million
trials through ``optimize_positions(backend="cuda")``; the C++ backend on the same layer for a small share of the
work is reported for comparison.

Writes JSON to benchmarks/results/ (device name, versions, numbers) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

from tdann_fast.swap import backend as swap_backend
from tdann_fast.swap import optimize_positions, reference, windows

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tdann_style_window(c: np.ndarray, pos: np.ndarray, trials: int, rng: np.random.Generator) -> int:
    """Per-trial work of the reference TDANN code: full two-row objective before and after each swap."""

    def rows_loss(p, a, b):
        rows = np.array([a, b])
        d = np.sqrt(((p[rows, None, :] - p[None, :, :]) ** 2).sum(-1))
        s = 1.0 / (d + 1.0)
        r = np.corrcoef(c[rows].ravel(), s.ravel())[0, 1]
        return (1.0 - r) / 2.0

    p = pos.copy()
    accepted = 0
    for _ in range(trials):
        a, b = rng.choice(c.shape[0], size=2, replace=False)
        before = rows_loss(p, a, b)
        p[[a, b]] = p[[b, a]]
        if rows_loss(p, a, b) < before:
            accepted += 1
        else:
            p[[a, b]] = p[[b, a]]
    return accepted


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_layer(rng, n_units: int, side: float, stimuli: int):
    pos = rng.uniform(0.0, side, size=(n_units, 2))
    freq = rng.normal(size=(2, 8)) / side * 6
    basis = np.cos(pos @ freq + rng.uniform(0, 6.3, size=8))  # (N, 8) smooth maps
    resp = rng.normal(size=(stimuli, 8)) @ basis.T + rng.normal(size=(stimuli, n_units))
    return resp, pos


def bench_cpu(args) -> dict:
    rng = np.random.default_rng(0)
    m, trials, stimuli = 500, args.trials, args.stimuli
    ext = swap_backend.extension()
    z = reference.standardize(rng.normal(size=(stimuli, m)) + rng.normal(size=(stimuli, 1)))
    c = reference.window_correlation(z, np.arange(m))
    pos = rng.uniform(0.0, 2.0, size=(m, 2))
    res = {"trial_loop_us_per_trial": {}, "whole_window_ms": {}}
    tl = res["trial_loop_us_per_trial"]
    n_tdann = max(50, trials // 5)
    tl["tdann_style_numpy"] = best_of(lambda: tdann_style_window(c, pos, n_tdann, rng), 2) / n_tdann * 1e6
    # trial loop only: time(trials) - time(0 trials) removes the per-window set-up (objective sums, S matrix)
    ref_setup = best_of(lambda: reference.optimize_window(c, pos, 1, 0, 0), 3)
    tl["reference_numpy"] = (best_of(lambda: reference.optimize_window(c, pos, 1, 0, trials), 3) - ref_setup) \
        / trials * 1e6
    if ext is not None:
        ct, pt = torch.from_numpy(c), torch.from_numpy(pos)

        def cpp(n_windows, n_trials):
            th = [threading.Thread(target=ext.swap_window_cpu, args=(ct, pt, 1, w, n_trials, False))
                  for w in range(n_windows)]
            [t.start() for t in th]
            [t.join() for t in th]

        long = 20 * trials  # a long trial loop per window, so the set-up subtraction is negligible noise
        for nt, key in ((1, "cpp_1_thread"), (2, "cpp_2_threads")):
            setup = best_of(lambda: cpp(nt, 0), 10)
            tl[key] = (best_of(lambda: cpp(nt, long), 10) - setup) / (nt * long) * 1e6

    # whole windows: a layer where every window holds > 500 units (subsampled to 500)
    side, width = 12.0, 2.0
    n_units = int(600 / (width / side) ** 2)
    resp, lpos = make_layer(rng, n_units, side, stimuli)
    zl = reference.standardize(resp)
    extent = (0.0, 0.0, side, side)
    n_win = args.windows
    rects = windows.window_rects(3, n_win, width, extent)
    tpw = np.full(n_win, trials, dtype=np.int64)
    rounds = windows.schedule_rounds(rects)
    wl = res["whole_window_ms"]
    n_ref = min(3, n_win)

    def tdann_whole():
        for w in range(n_ref):
            slots = windows.window_slots(lpos, rects[w], 3, w, m)
            cc = np.nan_to_num(np.corrcoef(resp[:, slots].T)).astype(np.float32)
            tdann_style_window(cc, lpos[slots], n_tdann, rng)

    t = best_of(tdann_whole, 1)
    # the TDANN-style trial loop ran n_tdann trials per window: scale its trial part to `trials`
    corr_t = best_of(lambda: [np.corrcoef(resp[:, windows.window_slots(lpos, rects[w], 3, w, m)].T)
                              for w in range(n_ref)], 1)
    wl["tdann_style_numpy"] = (corr_t + (t - corr_t) * trials / n_tdann) / n_ref * 1e3
    uas = np.arange(n_units, dtype=np.int64)
    ids0 = np.arange(n_ref, dtype=np.int64)
    wl["reference_numpy"] = best_of(
        lambda: reference.run_round(zl, lpos, uas.copy(), rects, ids0, tpw, 3, m, "tdann"), 1) / n_ref * 1e3
    if ext is not None:
        start, order, params = windows.slot_grid(lpos, extent, width / 2)
        targs = [torch.from_numpy(a) for a in (zl, lpos, start, order, params)]

        def run_cpp(threads):
            u = torch.arange(n_units)
            for ids in rounds:
                ext.swap_round_cpu(*targs, u, torch.from_numpy(rects), torch.from_numpy(ids), torch.from_numpy(tpw),
                                   3, m, False, threads)

        saved = torch.get_num_threads()
        try:
            torch.set_num_threads(1)  # as optimize_positions does: BLAS single-threaded inside the window threads
            wl["cpp_1_thread"] = best_of(lambda: run_cpp(1), 3) / n_win * 1e3
            wl["cpp_2_threads"] = best_of(lambda: run_cpp(2), 3) / n_win * 1e3
        finally:
            torch.set_num_threads(saved)
        res["rounds"] = len(rounds)
    res["windows"] = n_win
    speed = {}
    for key, table in (("trial_loop", tl), ("whole_window", wl)):
        for base in ("tdann_style_numpy", "reference_numpy"):
            for impl in ("cpp_1_thread", "cpp_2_threads"):
                if impl in table:
                    speed[f"{key}:{impl}_vs_{base}"] = table[base] / table[impl]
    res["speedup"] = speed
    res["config"] = {"units_per_window": m, "trials_per_window": trials, "stimuli": stimuli}
    return res


def bench_gpu(args) -> dict:
    from tdann_fast import presets

    sheets = presets.r3d18_mt(num_neighbourhoods=100)
    sheet = sheets[presets.MT_LAYER]
    n = sheet.num_units
    rng = np.random.default_rng(0)
    pos = sheet.positions.numpy().astype(np.float64)
    freq = rng.normal(size=(2, 8)) / sheet.side_mm * 6
    basis = np.cos(pos @ freq + rng.uniform(0, 6.3, size=8)).astype(np.float32)
    resp = torch.from_numpy(rng.normal(size=(args.stimuli, 8)).astype(np.float32)) @ torch.from_numpy(basis).T
    resp += torch.randn(args.stimuli, n)
    kw = dict(progress=False, side_mm=sheet.side_mm, seed=0)
    out = {"layer": presets.MT_LAYER, "units": n, "side_mm": sheet.side_mm,
           "neighbourhood_width_mm": sheet.neighbourhood_width_mm, "stimuli": args.stimuli}
    # warm-up (CUDA context, cuBLAS handles)
    optimize_positions(resp, sheet.positions, sheet.neighbourhood_width_mm, 5000, backend="cuda", **kw)
    torch.cuda.synchronize()
    t = time.perf_counter()
    _, stats = optimize_positions(resp, sheet.positions, sheet.neighbourhood_width_mm, args.gpu_trials,
                                  backend="cuda", **kw)
    torch.cuda.synchronize()
    out["cuda_seconds"] = time.perf_counter() - t
    out["cuda_trials"] = stats.total_trials
    out["cuda_rounds"] = stats.rounds
    out["windows"] = stats.num_windows
    out["accepted"] = stats.total_accepted
    ok = ~stats.skipped
    out["mean_objective_before_after"] = [float(stats.objective_before[ok].mean()),
                                          float(stats.objective_after[ok].mean())]
    share = args.gpu_cpu_trials
    t = time.perf_counter()
    _, cstats = optimize_positions(resp, sheet.positions, sheet.neighbourhood_width_mm, share, backend="cpp", **kw)
    out["cpp_seconds_for_share"] = time.perf_counter() - t
    out["cpp_trials_share"] = cstats.total_trials
    out["cpp_threads"] = cstats.threads
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="run the GPU benchmark (MT layer, 50M trials)")
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--stimuli", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--gpu-trials", type=int, default=50_000_000)
    ap.add_argument("--gpu-cpu-trials", type=int, default=500_000)
    ap.add_argument("--out", type=str, default=None)
    args = ap.parse_args(argv)
    meta = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "backends": swap_backend.available_backends(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if args.gpu:
        if "cuda" not in swap_backend.available_backends():
            raise SystemExit(f"cuda backend not available (backends: {swap_backend.available_backends()}); build with "
                             "FORCE_CUDA=1 or on a GPU machine")
        meta["device"] = torch.cuda.get_device_name()
        res = bench_gpu(args)
        name = "bench_swap_gpu.json"
        print(f"{'device':<30}{meta['device']}")
        for k, v in res.items():
            print(f"{k:<30}{v}")
    else:
        meta["device"] = meta["cpu"]
        res = bench_cpu(args)
        name = "bench_swap_cpu.json"
        print(f"device: {meta['device']}  ({meta['cpu_count']} cores)")
        print(f"{'implementation':<22}{'trial loop µs/trial':>22}{'trials/s':>14}{'whole window ms':>18}")
        for impl in ("tdann_style_numpy", "reference_numpy", "cpp_1_thread", "cpp_2_threads"):
            tl = res["trial_loop_us_per_trial"].get(impl)
            wl = res["whole_window_ms"].get(impl)
            if tl is None:
                continue
            print(f"{impl:<22}{tl:>22.2f}{1e6 / tl:>14.0f}{wl:>18.2f}")
        for k, v in res["speedup"].items():
            print(f"  speed-up {k}: {v:.1f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / name
    path.write_text(json.dumps({"meta": meta, "results": res}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
