"""Helpers shared by the benchmarks: device description, timing (CPU: torch.utils.benchmark, GPU:
triton.testing.do_bench medians), peak extra GPU memory, the cached r3d18_mt preset and JSON results."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
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


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


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


def r3d18_preset(num_neighbourhoods: int = 256, seed: int = 0) -> dict:
    """The r3d18_mt sheets (built once per process: a few seconds)."""
    key = (num_neighbourhoods, seed)
    if key not in _PRESET_CACHE:
        from tdann_fast.presets import r3d18_mt

        _PRESET_CACHE[key] = r3d18_mt(num_neighbourhoods=num_neighbourhoods, seed=seed)
    return _PRESET_CACHE[key]


def write_results(device: torch.device, section: str, payload: dict, path: Optional[str] = None) -> Path:
    """Merge ``{section: payload}`` into benchmarks/results/<device>.json (other sections are kept)."""
    out = Path(path) if path else RESULTS_DIR / f"{device_slug(device)}.json"
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


def print_table(rows, columns) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
