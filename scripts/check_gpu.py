#!/usr/bin/env python3
"""Check a GPU node in one command: environment, GPU tests, benchmarks and a short six-stage ``mt_gpu`` run.

    python3 scripts/check_gpu.py --out DIR [--only a,b | --skip a,b] [--force] [--force-run] [--time-scale F]
    python3 scripts/check_gpu.py --list

Every step is a subprocess of this interpreter (``sys.executable``, no virtualenv assumed), started in the repository
root in a session of its own, with its own time limit: past the limit its whole process group gets SIGTERM, then
SIGKILL after :data:`GRACE_S` seconds. A step that fails or times out is recorded and the next step runs. The steps
and their limits are :func:`plan_steps` (``--list`` prints them); the limits plus the grace periods add up to at most
20 minutes, so the whole check ends within 20 minutes on any machine.

Everything goes to the ``--out`` folder (refused when it exists and is not empty, unless ``--force``, which moves the
old contents into ``DIR/previous-<UTC time>/``; nothing is deleted):

* ``check_gpu.json`` -- one record per step (name, command, status ``pending | running | ok | failed | timed_out |
  skipped``, return code, seconds, limit, output files, stdout/stderr tails, a short reason, a summary of the
  step's results: test counts, benchmark medians, stage timings), the environment and the totals. It is rewritten
  atomically (temporary file, fsync, rename, fsync of the folder) before and after every step, so a crash or a kill
  of this script loses nothing that had finished;
* ``environment.json`` (versions, nvidia-smi, CUDA device, swap extension status), ``logs/<step>.stdout.txt`` and
  ``.stderr.txt`` (complete outputs), the JUnit XML of the test steps, one JSON per benchmark, the training run
  directory ``mt_gpu_run/`` and its analysis ``mt_gpu_analysis/``.

A step is ``ok`` when its command exits with status 0 and wrote the files it must write. Without a CUDA device
(as the environment step finds it) the GPU steps are recorded as ``skipped`` ("no CUDA device") unless
``--force-run``. Exit status: 0 when every step that ran is ok, 1 otherwise, 2 for a usage error, 130 when
interrupted (SIGINT, SIGTERM or SIGHUP: the running step is killed and recorded as failed).

Only the standard library is imported at the top level: the script starts, and writes its JSON, even when torch
cannot be imported (the environment step then fails and says why).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
PROG = "check_gpu"
RECORD = "check_gpu.json"
GRACE_S = 5.0            # SIGTERM -> SIGKILL delay for a step past its limit
BUDGET_S = 1200.0        # every limit plus every grace period: the most the whole check can take
EXTRA_LIMIT_S = 30.0     # limit of a hidden --extra-step (tests)
TAIL_LINES, TAIL_CHARS = 40, 4000

# The short mt_gpu run: the config's model, clip shape, batch, alpha and sheets, with few steps per stage, a small
# probe set and a smaller swap (all six stages), on SyntheticMotion videos (no network, no PyAV/scikit-video needed).
MT_GPU_OVERRIDES = (
    "data.source=synthetic", "data.num_workers=12", "progress=false", "log_every=5",
    "pretrain.steps=40", "pretrain.warmup_steps=5",
    "finetune.steps=20", "finetune.warmup_steps=2",
    "full.steps=20", "full.warmup_steps=2",
    "swap.steps=200000", "swap.probe_clips=32",
)


class UsageError(Exception):
    """A bad option or --out folder: one line on stderr, exit status 2."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP received (SIGINT arrives as KeyboardInterrupt); the argument names the signal."""


# ----------------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    name: str
    about: str
    limit_s: float
    command: List[str]
    gpu: bool = True                                        # skipped without a CUDA device (unless --force-run)
    outputs: Dict[str, str] = field(default_factory=dict)   # label -> path relative to --out, must exist for ok
    summarize: Optional[Callable[[Path], dict]] = None      # out folder -> summary of the step's results
    needs: Optional[str] = None                             # a step that must be ok before this one can run


def plan_steps(out: Path, python: str = sys.executable) -> List[Step]:
    """The steps of the check, in order, for the output folder ``out`` (absolute)."""
    run_dir, analysis_dir = out / "mt_gpu_run", out / "mt_gpu_analysis"

    def pytest(name: str, about: str, limit: float, *selection: str) -> Step:
        junit = f"{name}.junit.xml"
        return Step(name, about, limit, [python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                         f"--junitxml={out / junit}", *selection],
                    outputs={"junit": junit}, summarize=lambda o: summarize_junit(o / junit))

    def bench_loss(dtype: str, limit: float, *extra: str) -> Step:
        name = f"bench_loss_{dtype}"
        about = f"spatial loss fwd+bwd on the r3d18_mt preset, {dtype}" + (" (no torch.compile)" if extra else "")
        return Step(name, about, limit, [python, "benchmarks/bench_loss.py", "--device", "cuda", "--dtype", dtype,
                            "--output", str(out / f"{name}.json"), *extra],
                    outputs={"json": f"{name}.json"}, summarize=lambda o: summarize_bench_loss(o / f"{name}.json"))

    return [
        Step("environment", "versions, nvidia-smi, CUDA device, swap extension, a small CUDA matmul", 40,
             [python, str(Path(__file__).resolve()), "--probe-environment", str(out / "environment.json")],
             gpu=False, outputs={"json": "environment.json"},
             summarize=lambda o: summarize_environment(o / "environment.json")),
        pytest("gpu_tests", "the tests marked gpu", 180, "-m", "gpu", "tests"),
        pytest("triton_tests", "the compiled Triton loss vs float64 references (test_triton_loss.py)", 120,
               "-m", "not gpu", "tests/test_triton_loss.py"),
        bench_loss("fp32", 200),
        bench_loss("bf16", 105, "--providers", "tdann_eager,torch_batched,triton"),
        Step("bench_step", "r3d_18 MoCo-like training step without SpatialLoss, with it (sparse gradient injection) "
                           "and with it dense (batch 64, 16x112x112, bf16)",
             90, [python, "benchmarks/bench_step.py", "--output", str(out / "bench_step.json")],
             outputs={"json": "bench_step.json"}, summarize=lambda o: summarize_bench_step(o / "bench_step.json")),
        Step("bench_swap_gpu", "position swaps on the MT layer: 50M trials on CUDA, a 500k-trial share on the C++ "
                               "backend", 120,
             [python, "benchmarks/bench_swap.py", "--gpu", "--out", str(out / "bench_swap_gpu.json")],
             outputs={"json": "bench_swap_gpu.json"},
             summarize=lambda o: summarize_bench_swap(o / "bench_swap_gpu.json")),
        Step("train_mt_gpu", "all six stages of configs mt_gpu, shortened (synthetic videos)", 225,
             [python, "-m", "tdann_fast.cli", "train", "--config", "mt_gpu", f"run_dir={run_dir}",
              *MT_GPU_OVERRIDES],
             outputs={"summary": "mt_gpu_run/summary.json", "final_checkpoint": "mt_gpu_run/stage6_*/checkpoint.pt"},
             summarize=lambda o: summarize_train(run_dir)),
        Step("analyze_mt_gpu", "MT analysis (drifting gratings, layer3.1) of the run's final checkpoint", 60,
             [python, "-m", "tdann_fast.cli", "analyze", str(run_dir), "--out", str(analysis_dir), "--device", "cuda",
              "--batch-size", "32", "--no-progress"],
             outputs={"metrics": "mt_gpu_analysis/metrics.json"},
             summarize=lambda o: summarize_analysis(analysis_dir / "metrics.json"), needs="train_mt_gpu"),
    ]


def extra_step(spec: str, python: str = sys.executable) -> Step:
    """A hidden ``--extra-step NAME=CODE`` (tests): ``python -c CODE``, no GPU needed, limit EXTRA_LIMIT_S."""
    name, sep, code = spec.partition("=")
    if not sep or not name.strip() or not name.replace("_", "").isalnum():
        raise UsageError(f"--extra-step: got {spec!r}; expected NAME=PYTHON_CODE with NAME of letters, digits and _")
    return Step(name.strip(), "extra step", EXTRA_LIMIT_S, [python, "-c", code], gpu=False)


# ------------------------------------------------------------------------------------------------- summaries
def summarize_junit(path: Path) -> dict:
    """Counts of a pytest JUnit XML file and the ids of the tests that failed or errored."""
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing, seconds = [], 0.0
    for suite in ET.parse(path).getroot().iter("testsuite"):
        seconds += float(suite.get("time") or 0.0)
        for case in suite.iter("testcase"):
            kinds = {child.tag for child in case}
            kind = next((k for k in ("failure", "error", "skipped") if k in kinds), None)
            counts["tests"] += 1
            counts[{"failure": "failed", "error": "errors", "skipped": "skipped", None: "passed"}[kind]] += 1
            if kind in ("failure", "error"):
                node = case.find(kind)
                message = (node.get("message") or "").strip().splitlines()
                failing.append({"id": f"{case.get('classname')}::{case.get('name')}", "kind": kind,
                                "message": message[0][:300] if message else ""})
    return {**counts, "seconds": round(seconds, 2), "failing": failing}


def summarize_environment(path: Path) -> dict:
    """The facts of environment.json that decide what the other steps can do (the whole file is the record's
    ``environment``)."""
    env = json.loads(path.read_text())
    cuda, pkg = env.get("cuda") or {}, env.get("tdann_fast") or {}
    return {"cuda_available": env.get("cuda_available"), "device": cuda.get("name"),
            "capability": cuda.get("capability"), "torch": (env.get("torch") or {}).get("version"),
            "triton": (env.get("versions") or {}).get("triton"), "swap_backends": pkg.get("swap_backends"),
            "problems": env.get("problems")}


def _bench_meta(data: dict) -> dict:
    return {k: data.get(k) for k in ("device", "torch", "triton", "python", "timestamp") if k in data}


def summarize_bench_loss(path: Path) -> dict:
    """Median ms per provider and (B, K) from a bench_loss.py JSON (its ``bench_loss_<dtype>`` section; a
    ``bench_loss_step_<dtype>`` section, from ``--path step``, only when there is no other)."""
    data = json.loads(path.read_text())
    sections = sorted((k.startswith("bench_loss_step_"), k) for k in data if k.startswith("bench_loss_"))
    section = data[sections[0][1]]
    keep = ("provider", "B", "K", "ms", "vs_eager", "step_ms", "peak_extra_MiB", "extra_over_task_MiB",
            "floor_fraction")
    return {**_bench_meta(data), "floor": section.get("floor"),
            "rows": [{k: row[k] for k in keep if k in row} for row in section["rows"]]}


def summarize_bench_step(path: Path) -> dict:
    """Median step ms per configuration, the loss's overhead (sparse: the package default; dense: the old
    activation-sized gradients), its marginal ms and extra peak memory, from a bench_step.py JSON."""
    data = json.loads(path.read_text())
    section = data["bench_step"]
    extra = {k: section[k] for k in ("overhead_fraction_dense", "marginal_ms", "extra_peak_MiB") if k in section}
    return {**_bench_meta(data), "ms": section["ms"], "overhead_fraction": section["overhead_fraction"], **extra}


def summarize_bench_swap(path: Path) -> dict:
    data = json.loads(path.read_text())
    res, meta = data["results"], data["meta"]
    out = {"device": meta.get("device"), "backends": meta.get("backends"), "cpu_count": meta.get("cpu_count")}
    out.update({k: res[k] for k in ("units", "windows", "cuda_seconds", "cuda_trials", "cpp_seconds_for_share",
                                    "cpp_trials_share", "cpp_threads", "mean_objective_before_after") if k in res})
    if res.get("cuda_seconds"):
        out["cuda_trials_per_s"] = res["cuda_trials"] / res["cuda_seconds"]
    if res.get("cpp_seconds_for_share"):
        out["cpp_trials_per_s"] = res["cpp_trials_share"] / res["cpp_seconds_for_share"]
    return out


def summarize_train(run_dir: Path) -> dict:
    """Stage timings and rates (summary.json), the stages with a checkpoint, the swap statistics and the last
    logged metrics of each training stage."""
    import csv

    out: dict = {"run_dir": str(run_dir)}
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        out.update({k: s.get(k) for k in ("timings_s", "steps_per_s", "latest_checkpoint")})
        out["video_fault_counts"] = (s.get("video_faults") or {}).get("counts")
    out["stages_with_checkpoint"] = sorted(p.parent.name for p in run_dir.glob("stage*/checkpoint.pt"))
    swap = next(iter(run_dir.glob("stage3_*/swap_stats.json")), None)
    if swap is not None:
        out["swap"] = json.loads(swap.read_text())
    last = {}
    for metrics in sorted(run_dir.glob("stage*/metrics.csv")):
        with open(metrics, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows:
            last[metrics.parent.name] = rows[-1]
    out["last_metrics"] = last
    return out


def summarize_analysis(path: Path) -> dict:
    m = json.loads(path.read_text())
    tuning, pinwheels = m.get("tuning", {}), m.get("pinwheels", {})
    return {"layer": m.get("layer"), "stage": m.get("stage"), "alpha": m.get("alpha"),
            "num_units": tuning.get("num_units"), "selective_fraction": tuning.get("selective_fraction"),
            "median_dsi": tuning.get("median_dsi"), "pinwheel_density_per_mm2": pinwheels.get("density_per_mm2"),
            "seconds": (m.get("timing_s") or {}).get("total")}


# ----------------------------------------------------------------------------------------- environment probe
def probe_environment(path: Path) -> int:
    """Runs in the environment step's subprocess: writes ``path`` (JSON) after every part, so that what was
    learnt survives a part that hangs or crashes. Exit status 1 when torch or tdann_fast cannot be imported or the
    CUDA device does not compute."""
    import importlib.metadata as md

    info: dict = {"cuda_available": False, "problems": []}

    def save():
        _atomic_write(path, json.dumps(info, indent=2, default=str))

    info["host"] = {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "memory_gib": _meminfo_gib(), "load_average": list(os.getloadavg()),
                    "disk_free_gib_out": round(shutil.disk_usage(path.parent).free / 2**30, 1)}
    info["python"] = {"version": platform.python_version(), "executable": sys.executable, "prefix": sys.prefix}
    versions = {}
    for dist in ("torch", "triton", "torchvision", "numpy", "scipy", "PyYAML", "matplotlib", "scikit-image",
                 "pytest", "pytest-timeout", "ninja", "av", "scikit-video", "tdann_fast"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    info["versions"] = versions
    info["env"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_HOME", "TORCH_CUDA_ARCH_LIST",
                                                   "TRITON_INTERPRET", "TRITON_CACHE_DIR", "PYTHONPATH")}
    info["nvidia_smi"] = _nvidia_smi()
    save()

    try:
        import torch
    except BaseException as exc:  # noqa: BLE001 - any failure to import torch is the finding
        info["problems"].append(f"torch cannot be imported: {type(exc).__name__}: {exc}")
        save()
        print(f"problem: {info['problems'][-1]}", file=sys.stderr)
        return 1
    t = {"version": torch.__version__, "file": torch.__file__, "cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "threads": torch.get_num_threads()}
    cuda: dict = {"available": torch.cuda.is_available()}
    try:
        t["arch_list"] = torch.cuda.get_arch_list()
    except Exception as exc:  # noqa: BLE001
        t["arch_list"] = f"error: {exc}"
    info["torch"], info["cuda"] = t, cuda
    save()
    status = 0
    if cuda["available"]:
        try:
            cuda["device_count"] = torch.cuda.device_count()
            props = torch.cuda.get_device_properties(0)
            major, minor = torch.cuda.get_device_capability(0)
            free, total = torch.cuda.mem_get_info(0)
            cuda.update(name=props.name, capability=f"{major}.{minor}", multiprocessors=props.multi_processor_count,
                        memory_gib=round(total / 2**30, 2), free_memory_gib=round(free / 2**30, 2))
            if isinstance(t["arch_list"], list) and not any(a.startswith(f"sm_{major}{minor}") for a in t["arch_list"]):
                info["problems"].append(f"torch was not built for sm_{major}{minor} (arch list {t['arch_list']})")
            a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
            (a @ a).sum().item()  # warm-up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                c = a @ a
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / 10
            x = torch.randn(512, 512, dtype=torch.float64)
            err = float(((x.cuda() @ x.cuda()).cpu() - x @ x).abs().max() / (x @ x).abs().max())
            cuda["matmul_bf16_4096"] = {"ms": round(ms, 4), "tflops": round(2 * 4096**3 / (ms * 1e-3) / 1e12, 1),
                                        "finite": bool(torch.isfinite(c.float()).all())}
            cuda["matmul_fp64_512_rel_error_vs_cpu"] = err
            info["cuda_available"] = cuda["matmul_bf16_4096"]["finite"] and err < 1e-9
            if not info["cuda_available"]:
                info["problems"].append(f"matmuls on the CUDA device are wrong (bf16 finite: "
                                        f"{cuda['matmul_bf16_4096']['finite']}, fp64 error vs CPU {err:.3g})")
                status = 1
        except Exception as exc:  # noqa: BLE001
            info["problems"].append(f"the CUDA device does not work: {type(exc).__name__}: {exc}")
            status = 1
    save()

    try:
        import tdann_fast
        from tdann_fast.loss.triton_ops import triton_unavailable_reason
        from tdann_fast.swap import available_backends
        from tdann_fast.swap import backend as swap_backend

        info["tdann_fast"] = {
            "file": tdann_fast.__file__,
            "swap_backends": available_backends(),
            "swap_extension_error": swap_backend.extension_error(),
            "swap_extension_with_cuda": swap_backend.cuda_compiled(),
            "triton_kernels_unavailable": triton_unavailable_reason(torch.device("cuda" if cuda["available"]
                                                                                 else "cpu")),
        }
        if cuda["available"] and "cuda" not in info["tdann_fast"]["swap_backends"]:
            info["problems"].append("the swap extension has no CUDA backend: "
                                    + (swap_backend.extension_error() or "built without CUDA"))
    except BaseException as exc:  # noqa: BLE001
        info["tdann_fast"] = {"error": f"{type(exc).__name__}: {exc}"}
        info["problems"].append(f"tdann_fast cannot be imported: {type(exc).__name__}: {exc}")
        status = 1
    save()
    for problem in info["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    print(json.dumps({k: info.get(k) for k in ("cuda_available", "cuda", "tdann_fast")}, default=str))
    return status


def _meminfo_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found"}
    out: dict = {}
    for fields in ("name,driver_version,compute_cap,memory.total,memory.used,temperature.gpu,power.draw,power.limit,"
                   "clocks.sm,clocks.max.sm,pstate,persistence_mode,mig.mode.current",
                   "name,driver_version,memory.total,memory.used"):
        try:
            res = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": f"nvidia-smi: {exc}"}
        if res.returncode == 0:
            keys = fields.split(",")
            out["gpus"] = [dict(zip(keys, (v.strip() for v in line.split(","))))
                           for line in res.stdout.splitlines() if line.strip()]
            break
        out["error"] = (res.stderr or res.stdout).strip()[-500:]
    try:
        res = subprocess.run([exe, "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        out["compute_apps"] = [line.strip() for line in res.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


# ---------------------------------------------------------------------------------------------------- files
def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync it, rename it over ``path``, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(path: Path, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The end of a log: progress-bar redraws (``\\r``) reduced to their last state."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16 * chars))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept[-lines:])[-chars:]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _prepare_out(out: Path, force: bool) -> Optional[Path]:
    """Create ``out``; a non-empty one is refused, or with ``force`` its contents are moved into
    ``out/previous-<UTC time>/`` (returned)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    entries = sorted(p for p in out.iterdir() if not p.name.startswith("previous-")) if out.is_dir() else []
    if entries and not force:
        held = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
        raise UsageError(f"--out {out}: exists and is not empty ({held}); choose a new folder, or pass --force to "
                         f"move its contents into {out}/previous-<time>/")
    out.mkdir(parents=True, exist_ok=True)
    if not entries:
        return None
    previous = out / f"previous-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"
    previous.mkdir()
    for p in entries:
        os.replace(p, previous / p.name)
    return previous


# ------------------------------------------------------------------------------------------------------ run
def _utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git() -> dict:
    try:
        res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if res.returncode != 0:
        return {"error": _last_line(res.stderr)}
    return {"commit": res.stdout.strip(), "modified_files": len(dirty.stdout.splitlines())}


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Check:
    """The record (``check_gpu.json``) and the loop over the steps."""

    def __init__(self, out: Path, steps: List[Step], selected: List[str], args, previous: Optional[Path]):
        self.out, self.steps, self.args = out, steps, args
        self.t0 = time.monotonic()
        self.record = {
            "tool": "scripts/check_gpu.py", "status": "running", "started_utc": _utc(), "finished_utc": None,
            "out": str(out), "host": socket.gethostname(), "python": sys.executable,
            "python_version": platform.python_version(), "repo": str(REPO), "git": _git(), "argv": sys.argv[1:],
            "options": {"time_scale": args.time_scale, "force_run": args.force_run, "only": args.only,
                        "skip": args.skip, "previous_contents_moved_to": str(previous) if previous else None},
            "cuda": None, "environment": None, "steps": [], "totals": {},
        }
        for s in steps:
            rec = {"name": s.name, "about": s.about, "gpu": s.gpu, "command": s.command,
                   "command_line": shlex.join(s.command),
                   "limit_s": round(s.limit_s * args.time_scale, 3), "status": "pending", "returncode": None,
                   "seconds": None, "outputs": s.outputs, "reason": None, "summary": None}
            if s.name not in selected:
                rec.update(status="skipped", reason="not selected (--only/--skip)")
            self.record["steps"].append(rec)
        self.save()

    def save(self) -> None:
        counts = {k: 0 for k in ("ok", "failed", "timed_out", "skipped", "pending", "running")}
        for rec in self.record["steps"]:
            counts[rec["status"]] += 1
        counts["seconds"] = round(time.monotonic() - self.t0, 1)
        counts["limit_s_of_steps_run"] = round(sum(r["limit_s"] for r in self.record["steps"]
                                                   if r["seconds"] is not None), 1)
        self.record["totals"] = counts
        _atomic_write(self.out / RECORD, json.dumps(self.record, indent=2, default=str))

    def _status(self, name: str) -> str:
        return next(r["status"] for r in self.record["steps"] if r["name"] == name)

    def run(self) -> int:
        todo = [(s, r) for s, r in zip(self.steps, self.record["steps"]) if r["status"] == "pending"]
        print(f"{PROG}: {len(todo)} steps, at most {sum(r['limit_s'] for _, r in todo):.0f} s -> {self.out / RECORD}",
              flush=True)
        try:
            for i, (step, rec) in enumerate(todo, 1):
                why = self._skip_reason(step)
                if why:
                    rec.update(status="skipped", reason=why)
                else:
                    self._run_step(step, rec)
                self.save()
                line = f"{PROG}: [{i}/{len(todo)}] {step.name:<16} {rec['status']:<9}"
                if rec["seconds"] is not None:
                    line += f" {rec['seconds']:7.1f} s / {rec['limit_s']:g} s"
                print(line + (f"  -- {rec['reason']}" if rec["reason"] and rec["status"] != "ok" else ""), flush=True)
        except (KeyboardInterrupt, Interrupted) as exc:
            for rec in self.record["steps"]:
                if rec["status"] == "pending":
                    rec.update(status="skipped", reason="not run: the check was interrupted")
                elif rec["status"] == "running":  # interrupted between the end of its process and its record
                    rec.pop("pid", None)
                    rec.update(status="failed", reason="interrupted: the check was stopped during this step")
            self.record.update(status="interrupted", finished_utc=_utc())
            self.save()
            print(f"{PROG}: interrupted ({'SIGINT' if isinstance(exc, KeyboardInterrupt) else exc.args[0]}); "
                  f"record in {self.out / RECORD}", file=sys.stderr, flush=True)
            return 130
        bad = [r["name"] for r in self.record["steps"] if r["status"] in ("failed", "timed_out")]
        self.record.update(status="failed" if bad else "ok", finished_utc=_utc())
        self.save()
        t = self.record["totals"]
        print(f"{PROG}: {t['ok']} ok, {t['failed']} failed, {t['timed_out']} timed out, {t['skipped']} skipped in "
              f"{t['seconds']:.0f} s" + (f"; not ok: {', '.join(bad)}" if bad else ""), flush=True)
        return 1 if bad else 0

    def _skip_reason(self, step: Step) -> Optional[str]:
        if step.gpu and not self.args.force_run and not self.record["cuda"]:
            env = self._status("environment")
            return "no CUDA device" + ("" if env == "ok" else f" (CUDA unknown: the environment step {env})")
        if step.needs and self._status(step.needs) != "ok":
            return f"needs {step.needs}, which is {self._status(step.needs)}"
        return None

    def _run_step(self, step: Step, rec: dict) -> None:
        """Run one step in its own session; fill ``rec`` (status, return code, seconds, tails, reason, summary)."""
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        out_log, err_log = logs / f"{step.name}.stdout.txt", logs / f"{step.name}.stderr.txt"
        rec["logs"] = {"stdout": f"logs/{out_log.name}", "stderr": f"logs/{err_log.name}"}
        limit, timed_out = rec["limit_s"], False
        t0 = time.monotonic()
        with open(out_log, "wb") as fo, open(err_log, "wb") as fe:
            proc = subprocess.Popen(step.command, cwd=REPO, env=_child_env(), stdin=subprocess.DEVNULL, stdout=fo,
                                    stderr=fe, start_new_session=True)
            rec.update(status="running", started_utc=_utc(), pid=proc.pid)
            self.save()
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            except BaseException:  # interrupted: the step goes down with the check
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
                self._finish(step, rec, proc.returncode, time.monotonic() - t0, out_log, err_log,
                             "failed", "interrupted: the check was stopped during this step")
                raise
            finally:
                _kill_group(proc.pid, signal.SIGKILL)  # what the step left behind (workers, grandchildren)
                proc.wait()
        rc = proc.returncode
        if timed_out:
            status, reason = "timed_out", f"killed after its {limit:g} s limit"
        elif rc != 0:
            status, reason = "failed", None  # the reason is taken from the output below
        else:
            missing = [rel for rel in step.outputs.values() if not list(self.out.glob(rel))]
            status, reason = ("failed", f"exit status 0 but wrote no {', '.join(missing)}") if missing else ("ok", None)
        self._finish(step, rec, rc, time.monotonic() - t0, out_log, err_log, status, reason)

    def _finish(self, step: Step, rec: dict, rc: int, seconds: float, out_log: Path, err_log: Path, status: str,
                reason: Optional[str]) -> None:
        rec.pop("pid", None)
        rec.update(status=status, returncode=rc, seconds=round(seconds, 2), stdout_tail=_tail(out_log),
                   stderr_tail=_tail(err_log))
        if step.summarize is not None:
            try:
                rec["summary"] = step.summarize(self.out)
            except FileNotFoundError:
                rec["summary"] = None  # the step wrote nothing to summarise
            except Exception as exc:  # noqa: BLE001 - a summary that cannot be read is recorded, not fatal
                rec["summary"] = {"error": f"{type(exc).__name__}: {exc}"}
        summary = rec["summary"] or {}
        if status == "failed" and reason is None:
            if summary.get("failing"):  # a test step: name the failing tests
                ids = [f["id"] for f in summary["failing"]]
                reason = (f"{summary['failed']} failed, {summary['errors']} errors: " + ", ".join(ids[:3])
                          + (f" and {len(ids) - 3} more" if len(ids) > 3 else ""))
            else:
                try:
                    what = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
                except ValueError:
                    what = f"exit status {rc}"
                last = _last_line(rec["stderr_tail"]) or _last_line(rec["stdout_tail"])
                reason = f"{what}: {last}" if last else what
        rec["reason"] = reason
        if step.name == "environment":
            try:
                self.record["environment"] = json.loads((self.out / "environment.json").read_text())
            except (OSError, ValueError):
                self.record["environment"] = None
            self.record["cuda"] = (self.record["environment"] or {}).get("cuda_available") is True


# ------------------------------------------------------------------------------------------------------- cli
def _names(text: Optional[str], known: List[str], option: str) -> List[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"{option}: unknown step(s) {', '.join(unknown)}; the steps are {', '.join(known)}")
    return names


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="check_gpu.py", allow_abbrev=False,
                                 description=__doc__.split("\n\n")[0],
                                 epilog="Steps (--list for their commands): " + ", ".join(
                                     s.name for s in plan_steps(Path("OUT"))))
    ap.add_argument("--out", help="output folder (new, or empty; see --force)")
    ap.add_argument("--force", action="store_true", help="accept a non-empty --out: its contents are moved into "
                                                         "OUT/previous-<time>/ first")
    ap.add_argument("--only", default=None, metavar="A,B", help="run only these steps (the environment step runs "
                                                                "too unless --skip environment)")
    ap.add_argument("--skip", default=None, metavar="A,B", help="leave these steps out")
    ap.add_argument("--force-run", action="store_true", help="run the GPU steps even without a CUDA device")
    ap.add_argument("--time-scale", type=float, default=1.0, metavar="F", help="multiply every step's time limit")
    ap.add_argument("--list", action="store_true", help="print the steps, their limits and commands, and exit")
    ap.add_argument("--extra-step", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--probe-environment", default=None, help=argparse.SUPPRESS)
    return ap


def _list(steps: List[Step], scale: float) -> None:
    width = max(len(s.name) for s in steps)
    for s in steps:
        print(f"{s.name:<{width}}  {s.limit_s * scale:6.0f} s  {'GPU' if s.gpu else '   '}  {s.about}")
        print(f"{'':<{width}}    $ {shlex.join(s.command)}")
    total = sum(s.limit_s for s in steps) * scale
    print(f"sum of the limits {total:.0f} s; with {GRACE_S:g} s of grace per step at most "
          f"{total + GRACE_S * len(steps):.0f} s (budget {BUDGET_S * scale:.0f} s)")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.probe_environment:
        return probe_environment(Path(args.probe_environment).resolve())
    try:
        if not args.time_scale > 0:
            raise UsageError(f"--time-scale: got {args.time_scale}; expected a number > 0")
        out = Path(args.out).expanduser().resolve() if args.out else Path("OUT")
        steps = plan_steps(out) + [extra_step(spec) for spec in args.extra_step]
        known = [s.name for s in steps]
        if len(set(known)) != len(known):
            raise UsageError(f"--extra-step: a step name is used twice ({', '.join(known)})")
        only, skip = _names(args.only, known, "--only"), _names(args.skip, known, "--skip")
        if args.list:
            _list(steps, args.time_scale)
            return 0
        if not args.out:
            raise UsageError("--out: required (the folder for check_gpu.json and the step outputs)")
        selected = [n for n in known if (not only or n in only or n == "environment") and n not in skip]
        previous = _prepare_out(out, args.force)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if previous is not None:
        print(f"{PROG}: --force: the earlier contents of {out} moved into {previous}", flush=True)

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    return Check(out, steps, selected, args, previous).run()


if __name__ == "__main__":
    sys.exit(main())
