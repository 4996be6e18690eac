"""Helpers shared by the benchmarks: device description, timing (CPU: torch.utils.benchmark, GPU:
triton.testing.do_bench medians; per-call times for long steps), peak extra GPU memory, the peak resident memory of
a process, the cached r3d18_mt preset and JSON results.

Results are written only where a benchmark's ``--output PATH`` says: nothing has a default path, so a run never
overwrites the committed files under ``benchmarks/results/``."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

_PRESET_CACHE: Dict[tuple, dict] = {}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    proc = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    proc = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu {proc} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # pragma: no cover
        triton_version = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": sys.version.split()[0],
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def time_ms(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.5) -> float:
    """Median milliseconds per call: do_bench on CUDA, torch.utils.benchmark.Timer on CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    import torch.utils.benchmark as tb

    fn()  # warm-up (caches, lazy compilation)
    m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    return float(m.median * 1e3)


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak GPU memory allocated by one call beyond what was allocated before it (MiB); None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def step_times_ms(fn: Callable[[], object], device: torch.device, n: int) -> List[float]:
    """Milliseconds of each of ``n`` consecutive calls (for calls long enough to time one by one, e.g. a training
    step): CUDA events around every call and one synchronisation at the end (no host sync between calls); on a CPU,
    ``time.perf_counter``."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        torch.cuda.synchronize(device)
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [float(start.elapsed_time(end)) for start, end in events]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (``getrusage`` ``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def paired_median(values: Sequence[float], base: Sequence[float], relative: bool = False) -> float:
    """Median over rounds of ``value - base`` (``relative``: of ``(value - base) / base``), pairing the measurements
    of the same round so that a slow phase of a shared machine cancels."""
    if len(values) != len(base) or not values:
        raise ValueError(f"paired_median: got {len(values)} values and {len(base)} bases; expected equal, >= 1")
    return float(statistics.median((v - b) / b if relative else v - b for v, b in zip(values, base)))


def r3d18_preset(num_neighbourhoods: int = 256, seed: int = 0, input_size: int = 112, frames: int = 16) -> dict:
    """The r3d18_mt sheets for ``input_size``² clips of ``frames`` frames (built once per process: a few
    seconds)."""
    key = (num_neighbourhoods, seed, input_size, frames)
    if key not in _PRESET_CACHE:
        from tdann_fast.presets import r3d18_mt

        _PRESET_CACHE[key] = r3d18_mt(input_size=input_size, frames=frames, num_neighbourhoods=num_neighbourhoods,
                                      seed=seed)
    return _PRESET_CACHE[key]


def write_results(device: torch.device, section: str, payload: dict, path: Optional[str]) -> Optional[Path]:
    """Merge ``{section: payload}`` and the environment into the JSON file ``path`` (other sections are kept);
    ``path`` None: nothing is written (returns None; there is no default path)."""
    if not path:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    if out.exists():
        try:
            data = json.loads(out.read_text())
        except (OSError, ValueError):
            data = {}
    data.update(environment(device))
    data[section] = payload
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, out)
    return out


def report_written(out: Optional[Path], prog: str) -> None:
    print(f"\nwrote {out}" if out is not None else f"\n[{prog}] results not written: pass --output PATH to save them")


def print_table(rows, columns) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
