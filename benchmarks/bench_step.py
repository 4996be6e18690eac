"""Training-step cost of the spatial loss: an r3d_18 MoCo-like step without ``SpatialLoss``, with it as the package
runs it (sparse gradient injection), and with it in the old dense formulation. ``--model resnet18`` measures the
ventral TDANN's network instead: the same step on images (B, 3, size, size) with ``resnet18_tdann(input_size=size,
sizes="trained")`` sheets on its eight blocks (``--frames`` is then unused).

Step = query encoder forward + backward, key encoder forward (no grad) and momentum update, InfoNCE over the batch,
SGD update. Three configurations:

* ``without`` -- no spatial loss;
* ``sparse``  -- ``FeatureTaps`` on the 8 residual blocks and ``SpatialLoss(r3d18_mt(...), alpha=0.5,
  check_inputs=False)`` added (no host sync). The package default: the loss adds its gradient in place into each
  activation's incoming gradient, at the sampled units only;
* ``dense``   -- the same inside ``tdann_fast.loss.gather.dense_gradient()``: the loss hands autograd a dense
  activation-sized gradient per layer (zero except at the sampled units), which autograd then adds to the task's
  gradient (the formulation before sparse injection, and what autograd's own indexing does).

Reported per configuration: the median step time; for ``sparse`` and ``dense`` the loss's marginal ms and the
overhead (with - without) / without, both medians over rounds of the values paired within a round (a slow phase of a
shared machine hits both members of a pair); and the extra peak memory over ``without`` (likewise paired).

* CUDA (the default when a CUDA device is present): bf16 autocast, batch 64, clips 16x112x112 (the paper's
  setting), one process. Every configuration runs a few steps first (compilation, autotuning); then ``--rounds``
  rounds run the configurations in turn (the order rotated every round), each with ``--warmup`` steps, one step for
  memory (``torch.cuda.max_memory_allocated`` over the step minus what was allocated before it) and ``--steps``
  timed steps (CUDA events around every step, no host sync between them). Step time of a round: the median of its
  timed steps.
* CPU: fp32 (bf16 3-D convolutions are very slow on most CPUs), batch 8, clips 4x112x112 by default (about 5 s a
  step on 2 cores; the whole script takes about 4-5 minutes there). A CPU has no allocator statistic, so every
  configuration runs in a fresh subprocess of this script (hidden ``--worker CONFIG``) that does the warm-up and
  timed steps (``time.perf_counter``) and reports as JSON its step times and its peak resident memory
  (``getrusage`` ``ru_maxrss``); extra peak memory of a configuration = its worker's peak RSS - the ``without``
  worker's of the same round (imports, models and inputs are alike in every worker and cancel). The workers run in
  ``--rounds`` interleaved rounds. Every worker starts from the same seed, so ``sparse`` and ``dense`` train the same
  way and their last losses (reported) should agree.

The SpatialLoss preset is built for the clip size used (``r3d18_mt(input_size=--size, frames=--frames)``); the loss
needs a batch of at least 3. Results: a table; with ``--output PATH`` also the JSON section ``bench_step``
(``bench_step_cpu_small`` for ``--cpu-small``) merged into PATH: ``ms`` {without_loss, with_loss (sparse),
with_loss_dense}, ``overhead_fraction`` (sparse), ``overhead_fraction_dense``, ``marginal_ms``, ``extra_peak_MiB``
and ``configs`` (everything per configuration, per-round values included). Without ``--output`` nothing is written.

    python benchmarks/bench_step.py --output OUT.json         # CUDA if present (as scripts/check_gpu.py), else CPU
    python benchmarks/bench_step.py --device cpu              # CPU default size; prints the table, writes nothing
    python benchmarks/bench_step.py --cpu-small               # smoke test: CPU, batch 3, 2 frames, 1 round, 1 step
    python benchmarks/bench_step.py --configs without,sparse  # leave a configuration out
    python benchmarks/bench_step.py --model resnet18 --size 224 --output OUT.json   # the ventral TDANN's step
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

from tdann_fast.loss.gather import dense_gradient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    environment,
    paired_median,
    peak_extra_mb,
    peak_rss_mib,
    print_table,
    r3d18_preset,
    report_written,
    step_times_ms,
    write_results,
)

PROG = "bench_step"
BLOCKS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]
CONFIGS = ("without", "sparse", "dense")
ALPHA = 0.5
WORKER_MARK = "@@bench_step_worker "
# per device: batch, frames, size, rounds, warm-up steps, timed steps (CPU: per worker; CUDA: per round)
DEFAULTS = {"cuda": dict(batch=64, frames=16, size=112, rounds=3, warmup=1, steps=5),
            "cpu": dict(batch=8, frames=4, size=112, rounds=3, warmup=1, steps=4),
            "cpu_small": dict(batch=3, frames=2, size=112, rounds=1, warmup=1, steps=1)}
CUDA_FIRST_STEPS = 2  # per configuration before the rounds (Triton compilation, cuDNN and allocator warm-up)


# ------------------------------------------------------------------------------------------------------- step

def build(device: torch.device, args):
    """Query and key encoders, SGD, the SpatialLoss for the clip size, and the two input batches (seeded)."""
    from torchvision.models import resnet18
    from torchvision.models.video import r3d_18

    from tdann_fast.loss import SpatialLoss
    from tdann_fast.presets import resnet18_tdann

    torch.manual_seed(args.seed)
    image = args.model == "resnet18"
    enc_q = (resnet18 if image else r3d_18)(num_classes=128).to(device)
    enc_k = copy.deepcopy(enc_q).requires_grad_(False)
    opt = torch.optim.SGD(enc_q.parameters(), lr=0.01, momentum=0.9)
    if image:
        sheets = resnet18_tdann(input_size=args.size, sizes="trained", num_neighbourhoods=args.neighbourhoods)
    else:
        sheets = r3d18_preset(num_neighbourhoods=args.neighbourhoods, input_size=args.size, frames=args.frames)
    loss_mod = SpatialLoss(sheets, alpha=ALPHA, neighbourhoods_per_step=args.k, backend=args.backend,
                           check_inputs=False).to(device)
    shape = (args.batch, 3, args.size, args.size) if image else (args.batch, 3, args.frames, args.size, args.size)
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    im_q = torch.randn(shape, generator=g).to(device)
    im_k = torch.randn(shape, generator=g).to(device)
    return enc_q, enc_k, opt, loss_mod, im_q, im_k


def make_step(enc_q, enc_k, opt, loss_mod, im_q, im_k, config: str, autocast_dtype):
    """One training step of ``config``; returns ``(step, taps, last)``: ``taps`` (None for ``without``) must be
    removed when the configuration is done, ``last["loss"]`` holds the last step's loss (a detached tensor)."""
    from tdann_fast.models.taps import FeatureTaps

    with_loss = config != "without"
    taps = FeatureTaps(enc_q, BLOCKS) if with_loss else None
    device_type = im_q.device.type
    k_params = list(enc_k.parameters())
    q_params = [p.detach() for p in enc_q.parameters()]
    last: Dict[str, torch.Tensor] = {}

    def step():
        # dense: the whole step (forward and backward) inside the package's switch
        with dense_gradient() if config == "dense" else contextlib.nullcontext():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device_type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                q = F.normalize(enc_q(im_q), dim=1)
                with torch.no_grad():
                    k = F.normalize(enc_k(im_k), dim=1)
                logits = q @ k.t() / 0.07
                loss = F.cross_entropy(logits.float(), torch.arange(q.shape[0], device=q.device))
                if with_loss:
                    loss = loss + loss_mod(taps.features)
            loss.backward()
            opt.step()
            with torch.no_grad():  # momentum update of the key encoder
                torch._foreach_mul_(k_params, 0.999)
                torch._foreach_add_(k_params, q_params, alpha=0.001)
            if taps is not None:
                taps.clear()
            last["loss"] = loss.detach()

    return step, taps, last


# ------------------------------------------------------------------------------------------------------- CPU

def worker(args) -> int:
    """A CPU configuration in this fresh process: warm-up and timed steps, then one JSON line on stdout."""
    device = torch.device("cpu")
    config = args.worker
    enc_q, enc_k, opt, loss_mod, im_q, im_k = build(device, args)
    step, taps, last = make_step(enc_q, enc_k, opt, loss_mod, im_q, im_k, config, None)
    for _ in range(args.warmup):
        step()
    times = step_times_ms(step, device, args.steps)
    if taps is not None:
        taps.remove()
    result = {"config": config, "times_ms": times, "peak_rss_MiB": peak_rss_mib(),
              "loss_last": float(last["loss"]), "threads": torch.get_num_threads()}
    print(WORKER_MARK + json.dumps(result), flush=True)
    return 0


def _worker_argv(args, config: str) -> List[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--device", "cpu",
            "--batch", str(args.batch), "--frames", str(args.frames), "--size", str(args.size), "--k", str(args.k),
            "--backend", args.backend, "--neighbourhoods", str(args.neighbourhoods), "--seed", str(args.seed),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--model", args.model]


def run_worker(args, config: str) -> dict:
    proc = subprocess.run(_worker_argv(args, config), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(WORKER_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"[{PROG}] the {config!r} worker failed (exit status {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(WORKER_MARK):])


def measure_cpu(args, configs: List[str]) -> dict:
    """Per configuration: per-round median step ms, peak RSS (MiB) and last loss, from fresh worker processes."""
    out = {c: {"rounds_ms": [], "rounds_peak_MiB": [], "rounds_loss_last": []} for c in configs}
    t0 = time.monotonic()
    for r in range(args.rounds):
        for config in configs[r % len(configs):] + configs[:r % len(configs)]:
            res = run_worker(args, config)
            ms = statistics.median(res["times_ms"])
            out[config]["rounds_ms"].append(ms)
            out[config]["rounds_peak_MiB"].append(res["peak_rss_MiB"])
            out[config]["rounds_loss_last"].append(res["loss_last"])
            print(f"[{PROG}] round {r + 1}/{args.rounds} {config:8s} {ms:9.1f} ms/step (median of {args.steps}), "
                  f"peak RSS {res['peak_rss_MiB']:8.1f} MiB  [{time.monotonic() - t0:.0f} s]", flush=True)
    return out


# ------------------------------------------------------------------------------------------------------ CUDA

def measure_cuda(args, configs: List[str], device: torch.device = torch.device("cuda"),
                 autocast_dtype=torch.bfloat16) -> dict:
    """Per configuration: per-round median step ms and peak step memory (MiB), in this process."""
    enc_q, enc_k, opt, loss_mod, im_q, im_k = build(device, args)
    out = {c: {"rounds_ms": [], "rounds_peak_MiB": []} for c in configs}
    t0 = time.monotonic()

    def segment(config: str, warmup: int, measure: bool) -> None:
        step, taps, _ = make_step(enc_q, enc_k, opt, loss_mod, im_q, im_k, config, autocast_dtype)
        try:
            for _ in range(warmup):
                step()
            if measure:
                out[config]["rounds_peak_MiB"].append(peak_extra_mb(step, device))
                out[config]["rounds_ms"].append(statistics.median(step_times_ms(step, device, args.steps)))
        finally:
            if taps is not None:
                taps.remove()

    for config in configs:
        segment(config, CUDA_FIRST_STEPS, measure=False)
    print(f"[{PROG}] first steps of every configuration done [{time.monotonic() - t0:.0f} s]", flush=True)
    for r in range(args.rounds):
        for config in configs[r % len(configs):] + configs[:r % len(configs)]:
            segment(config, args.warmup, measure=True)
            print(f"[{PROG}] round {r + 1}/{args.rounds} {config:8s} {out[config]['rounds_ms'][-1]:9.2f} ms/step "
                  f"(median of {args.steps}), step peak {out[config]['rounds_peak_MiB'][-1]:9.1f} MiB  "
                  f"[{time.monotonic() - t0:.0f} s]", flush=True)
    return out


# ------------------------------------------------------------------------------------------------------ main

def summarise(measured: dict, configs: List[str]) -> Dict[str, dict]:
    base = measured["without"]
    summary = {}
    for config in configs:
        m = measured[config]
        row = {"ms": statistics.median(m["rounds_ms"]), "peak_MiB": statistics.median(m["rounds_peak_MiB"]),
               "rounds_ms": m["rounds_ms"], "rounds_peak_MiB": m["rounds_peak_MiB"]}
        if config != "without":
            row["marginal_ms"] = paired_median(m["rounds_ms"], base["rounds_ms"])
            row["overhead_fraction"] = paired_median(m["rounds_ms"], base["rounds_ms"], relative=True)
            row["extra_peak_MiB"] = paired_median(m["rounds_peak_MiB"], base["rounds_peak_MiB"])
        if "rounds_loss_last" in m:
            row["loss_last"] = statistics.median(m["rounds_loss_last"])
            row["rounds_loss_last"] = m["rounds_loss_last"]
        summary[config] = row
    return summary


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["r3d_18", "resnet18"], default="r3d_18",
                    help="r3d_18 on clips (the MT paper, default) or resnet18 on images (the ventral TDANN)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="default: cuda when available, else cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 8 on CPU (the loss needs >= 3)")
    ap.add_argument("--frames", type=int, default=None, help="default: 16 on CUDA, 4 on CPU")
    ap.add_argument("--size", type=int, default=None, help="clip height and width (default 112)")
    ap.add_argument("--k", type=int, default=1, help="neighbourhoods per layer and step")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    ap.add_argument("--neighbourhoods", type=int, default=256,
                    help="rows of each layer's neighbourhood table (the preset's num_neighbourhoods)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma list from {', '.join(CONFIGS)}; must include without (default: all)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps before the timed ones (CPU: per worker; CUDA: per round; default 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (CPU: per worker, default 4; CUDA: per "
                                                            "round, default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-small", action="store_true",
                    help="smoke test on the CPU: fp32, batch 3, 2 frames, 1 round, 1 warm-up and 1 timed step")
    ap.add_argument("--output", default=None, help="JSON file to merge the results into (default: write nothing)")
    ap.add_argument("--worker", choices=CONFIGS, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.cpu_small:
        if args.device == "cuda":
            ap.error("--cpu-small runs on the CPU; leave out --device cuda")
        args.device, preset = "cpu", "cpu_small"
    else:
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        preset = args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    for key, value in DEFAULTS[preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch < 3:
        ap.error(f"--batch must be >= 3 (the loss correlates units over the batch), got {args.batch}")
    for key, minimum in (("frames", 1), ("size", 32), ("k", 1), ("rounds", 1), ("warmup", 0), ("steps", 1),
                         ("neighbourhoods", 1)):
        if getattr(args, key) < minimum:
            ap.error(f"--{key} must be >= {minimum}, got {getattr(args, key)}")
    if args.worker is not None:
        return worker(args)

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or "without" not in configs or len(set(configs)) != len(configs):
        ap.error(f"--configs: got {args.configs!r}; expected distinct names from {', '.join(CONFIGS)}, "
                 "including without (the baseline)")
    configs = [c for c in CONFIGS if c in configs]

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    print(environment(device), flush=True)
    shown = (f"{args.model} images {args.size}x{args.size}" if args.model == "resnet18"
             else f"clips {args.frames}x{args.size}x{args.size}")
    print(f"[{PROG}] {args.device}: batch {args.batch}, {shown}, "
          f"{'bf16 autocast' if dtype else 'fp32'}; configurations {', '.join(configs)}; {args.rounds} rounds of "
          f"{args.warmup} warm-up + {args.steps} timed steps" + (" (one worker process each)" if dtype is None else ""),
          flush=True)
    measured = measure_cuda(args, configs) if device.type == "cuda" else measure_cpu(args, configs)
    summary = summarise(measured, configs)

    rows = []
    for config in configs:
        s = summary[config]
        row = {"config": config, "ms": round(s["ms"], 2), "peak_MiB": round(s["peak_MiB"], 1),
               "rounds_ms": " ".join(f"{x:.1f}" for x in s["rounds_ms"])}
        if config != "without":
            row.update({"marginal_ms": round(s["marginal_ms"], 2), "overhead_%": round(100 * s["overhead_fraction"], 2),
                        "extra_peak_MiB": round(s["extra_peak_MiB"], 1)})
        if "loss_last" in s:
            row["loss_last"] = round(s["loss_last"], 6)
        rows.append(row)
    print()
    print_table(rows, ["config", "ms", "marginal_ms", "overhead_%", "extra_peak_MiB", "peak_MiB", "rounds_ms"]
                + (["loss_last"] if device.type == "cpu" else []))
    print("peak_MiB: " + ("peak memory allocated during one step beyond what was allocated before it (CUDA)"
                          if device.type == "cuda" else "peak resident memory of the configuration's worker process")
          + "; marginal_ms, overhead_% and extra_peak_MiB: medians over rounds of the value minus without's value "
            "of the same round")
    if "sparse" in summary and "dense" in summary and device.type == "cpu":
        a, b = summary["sparse"]["loss_last"], summary["dense"]["loss_last"]
        if abs(a - b) > 1e-3 * max(1.0, abs(a)):
            print(f"[{PROG}] WARNING: last loss of sparse ({a}) and dense ({b}) differ: the two formulations should "
                  "train alike")

    with_loss = {"sparse": "with_loss", "dense": "with_loss_dense"}
    payload = {
        "workload": {"model": f"torchvision {args.model} (MoCo-like: q fwd+bwd, k fwd, InfoNCE, SGD)",
                     "batch": args.batch,
                     "clip" if args.model == "r3d_18" else "image":
                         [args.frames, args.size, args.size] if args.model == "r3d_18" else [args.size, args.size],
                     "autocast": str(dtype) if dtype else "off", "device": args.device,
                     "spatial_loss": {"preset": "r3d18_mt" if args.model == "r3d_18" else "resnet18_tdann (trained)",
                                      "input_size": args.size,
                                      "frames": args.frames if args.model == "r3d_18" else None,
                                      "num_neighbourhoods": args.neighbourhoods, "layers": len(BLOCKS),
                                      "alpha": ALPHA, "neighbourhoods_per_step": args.k, "backend": args.backend,
                                      "check_inputs": False},
                     "configs": {"without": "no spatial loss",
                                 "sparse": "SpatialLoss, package default (gradient added in place at the sampled "
                                           "units)",
                                 "dense": "SpatialLoss inside tdann_fast.loss.gather.dense_gradient() (dense "
                                          "activation-sized gradient per layer)"},
                     "rounds": args.rounds, "warmup_steps": args.warmup, "timed_steps": args.steps,
                     "timer": ("CUDA events per step, median per round" if device.type == "cuda"
                               else "time.perf_counter per step in a fresh worker process, median per round"),
                     "memory": ("torch.cuda.max_memory_allocated over one step minus memory_allocated before it"
                                if device.type == "cuda" else "ru_maxrss of the configuration's worker process"),
                     "paired": "marginal_ms, overhead_fraction and extra_peak_MiB are medians over rounds of the "
                               "difference to without in the same round"},
        "ms": {with_loss.get(c, "without_loss"): summary[c]["ms"] for c in configs},
        "overhead_fraction": summary["sparse"]["overhead_fraction"] if "sparse" in summary else None,
        "overhead_fraction_dense": summary["dense"]["overhead_fraction"] if "dense" in summary else None,
        "marginal_ms": {c: summary[c]["marginal_ms"] for c in configs if c != "without"},
        "extra_peak_MiB": {c: summary[c]["extra_peak_MiB"] for c in configs if c != "without"},
        "configs": summary,
    }
    section = "bench_step_cpu_small" if args.cpu_small else "bench_step"
    out = write_results(device, section + ("_resnet18" if args.model == "resnet18" else ""), payload, args.output)
    report_written(out, PROG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
