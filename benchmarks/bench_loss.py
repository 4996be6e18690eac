"""Spatial-loss throughput, forward + backward, on the 8-layer r3d18_mt preset: alone, or as a training step pays
for it.

Providers:

* ``tdann_eager``    -- the TDANN reference formulation, written here: a Python loop over layers and sampled
                        neighbourhoods; per neighbourhood a corrcoef-style correlation matrix, a tril index gather,
                        the similarity matrix from ``cdist`` and a Pearson correlation (same dead-unit rule);
* ``tdann_compile``  -- the same per-neighbourhood function under ``torch.compile``;
* ``torch_batched``  -- this package's batched PyTorch path for all layers (``layer_losses(..., backend="torch")``,
                        what ``SpatialLoss`` runs on a CPU);
* ``triton``         -- this package's fused kernels (CUDA only; on CPU they exist only in the slow interpreter);
* ``torch_batched_dense``, ``triton_dense`` -- the same two inside ``tdann_fast.loss.gather.dense_gradient()``: the
                        loss hands autograd a dense activation-sized gradient per layer instead of adding its gradient
                        in place at the sampled units (sparse injection). Only ``--path step`` tells them apart: on
                        leaf features (``--path grad``) the package's gradient is dense anyway.

Two paths (``--path``):

* ``grad`` (default) -- the loss alone: ``torch.autograd.grad(loss, feats)`` on leaf feature tensors, so every
  provider materialises the dense activation-sized gradients (as it must: nothing else gives the features one);
* ``step`` -- what a training step pays for the loss. The features are non-leaf, ``h = relu(x)`` of the leaves ``x``
  (a task-like op: a block's output is a ReLU's; equal to ``x``, which is non-negative, so every provider gives the
  same loss value as in ``grad`` mode), passed through ``tdann_fast.loss.gather.tap`` as ``FeatureTaps`` does with
  every capture (the identity node through which the package injects its gradient sparsely); a "task" loss
  ``sum_l (h_l * w_l).sum()`` with fixed random ``w_l`` gives every feature a dense gradient, and the provider's loss
  is added to it; ``autograd.grad`` of the total with respect to the leaves. A ``task_only`` row times the same step
  without the spatial loss (and without the tap), in the same interleaved rounds; a provider's reported time is the median over rounds of (task + loss step) - (task-only step) of the same
  round (``step_ms``: the whole step's median), and its ratio to ``tdann_eager`` the median of the per-round ratios
  of those differences. ``tdann_eager`` / ``tdann_compile`` index the features themselves, so their backward is
  dense by nature; the package's providers inject sparsely unless ``_dense``. On a GPU, ``extra_over_task_MiB`` is
  the step's peak extra memory minus the task-only step's.

CPU times: ``torch.utils.benchmark`` medians, in ``--rounds`` interleaved rounds (ratios: medians of per-round
ratios); GPU: ``triton.testing.do_bench`` medians plus the peak extra memory of
one step and the fraction of the physical floor reached (floor = 2 launches + the sampled activations read twice and
their gradient written once, over the measured copy bandwidth). Results: a table with ratios to ``tdann_eager``; with
``--output PATH`` also the JSON section ``bench_loss_<dtype>`` (``bench_loss_step_<dtype>`` for ``--path step``)
merged into PATH. Without ``--output`` nothing is written.

    python benchmarks/bench_loss.py            # GPU: B in {32, 128} x K in {1, 8, 32}; CPU: K in {1, 8} (--full: 32)
    python benchmarks/bench_loss.py --quick    # small grid
    python benchmarks/bench_loss.py --path step --output OUT.json   # the training-step path, results saved
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

from tdann_fast.loss.gather import dense_gradient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    environment,
    peak_extra_mb,
    print_table,
    r3d18_preset,
    report_written,
    time_ms,
    write_results,
)

DEAD_STD_RELATIVE = 1e-6


# ------------------------------------------------------------------------------ the TDANN formulation (baseline)

def tdann_neighbourhood_loss(x2d: torch.Tensor, positions: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """SL_rel of one neighbourhood, the way the TDANN reference code computes it (corrcoef, tril gather, Pearson)."""
    x = x2d[:, idx].float()
    m = x.shape[1]
    xc = x - x.mean(dim=0, keepdim=True)
    cov = xc.t() @ xc / (x.shape[0] - 1)
    var = torch.diagonal(cov)
    mean = x.mean(dim=0)
    dead = (var <= (DEAD_STD_RELATIVE * mean) ** 2).detach()
    std = torch.where(dead, torch.ones_like(var), var).sqrt()
    corr = (cov / std[:, None] / std[None, :]).clamp(-1.0, 1.0)
    tril = torch.tril_indices(m, m, offset=-1, device=x.device)
    r = corr[tril[0], tril[1]]
    p = positions[idx]
    s_full = 1.0 / (torch.cdist(p, p) + 1.0)
    s = s_full[tril[0], tril[1]]
    rc = r - r.mean()
    sc = s - s.mean()
    pearson = (rc * sc).sum() / ((rc * rc).sum() * (sc * sc).sum()).clamp_min(1e-30).sqrt()
    return (1.0 - pearson) / 2.0


def tdann_total(feats, positions, neighbourhoods, per_neighbourhood=tdann_neighbourhood_loss) -> torch.Tensor:
    total = 0.0
    for f, p, nbs in zip(feats, positions, neighbourhoods):
        x2d = (f.mean(dim=2) if f.dim() == 5 else f).flatten(1)
        total = total + torch.stack([per_neighbourhood(x2d, p, nbs[k]) for k in range(nbs.shape[0])]).mean()
    return total


_COMPILED = {}


def compiled_total(feats, positions, neighbourhoods):
    if "fn" not in _COMPILED:
        # one specialisation per (layer, batch) shape: 8 layers x 2 batch sizes exceed the default recompile limit
        # (8), after which dynamo would silently run the rest eagerly
        cfg = torch._dynamo.config
        limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # torch 2.4: old name
        setattr(cfg, limit, max(getattr(cfg, limit), 64))
        _COMPILED["fn"] = torch.compile(tdann_neighbourhood_loss, dynamic=False)
    return tdann_total(feats, positions, neighbourhoods, _COMPILED["fn"])


def batched_total(feats, positions, neighbourhoods):
    """All layers at once, as ``SpatialLoss`` computes them (layers with equal M share one batched call)."""
    from tdann_fast.loss.functional import layer_losses

    return layer_losses(feats, positions, neighbourhoods, "rel", "mean", "torch").sum()


def triton_total(feats, positions, neighbourhoods):
    from tdann_fast.loss.triton_ops import fused_spatial_loss

    return fused_spatial_loss(feats, positions, neighbourhoods, "rel", "mean").sum()


PROVIDERS: Dict[str, Callable] = {
    "tdann_eager": tdann_total,
    "tdann_compile": compiled_total,
    "torch_batched": batched_total,
    "triton": triton_total,
    "torch_batched_dense": batched_total,  # run inside dense_gradient() (DENSE)
    "triton_dense": triton_total,
}
DENSE = {"torch_batched_dense", "triton_dense"}
TRITON = {"triton", "triton_dense"}
DEFAULT_PROVIDERS = {"grad": "tdann_eager,tdann_compile,torch_batched,triton",
                     "step": "tdann_eager,tdann_compile,torch_batched,torch_batched_dense,triton,triton_dense"}
TASK_ONLY = "task_only"


# ---------------------------------------------------------------------------------------------------- workload

def make_workload(batch: int, k: int, device: torch.device, dtype: torch.dtype, frames: int, seed: int = 0):
    sheets = r3d18_preset()
    g = torch.Generator(device="cpu").manual_seed(seed)
    feats, positions, neighbourhoods = [], [], []
    for sheet in sheets.values():
        c, h, w = sheet.shape
        shape = (batch, c, frames, h, w) if frames > 1 else (batch, c, h, w)
        x = torch.randn(shape, generator=g).relu_().to(device=device, dtype=dtype)
        feats.append(x.requires_grad_())
        positions.append(sheet.positions.to(device))
        table = sheet.neighbourhoods
        rows = torch.randint(0, table.shape[0], (k,), generator=g)
        neighbourhoods.append(table[rows].to(device))
    return feats, positions, neighbourhoods


def make_task_weights(feats, seed: int = 1):
    """Fixed random weights of the task loss sum_l (h_l * w_l).sum() (--path step): a dense gradient w_l for every
    feature."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(f.shape, generator=g).to(device=f.device, dtype=f.dtype) for f in feats]


def _tap():
    """``tdann_fast.loss.gather.tap``: what ``FeatureTaps`` applies to every capture (an identity node through which
    the package's loss adds its gradient at the sampled units only); the identity where this tdann_fast has none."""
    try:
        from tdann_fast.loss.gather import tap
    except ImportError:
        return lambda x: x
    return tap


def make_step(path: str, fn_total, feats, positions, neighbourhoods, weights, dense: bool):
    """One measured call, returning (loss, grads): ``grad``: the loss alone on the leaf features; ``step``: the task
    loss plus the provider's loss (``fn_total`` None: the task alone, loss None) on non-leaf ``relu(leaf)``
    features, tapped as ``FeatureTaps`` taps a capture when there is a loss (the task and the loss both use the
    tapped tensor, as the rest of a model does), gradients with respect to the leaves."""
    tap = _tap() if fn_total is not None else (lambda x: x)

    def step():
        with dense_gradient() if dense else contextlib.nullcontext():
            if path == "grad":
                loss = fn_total(feats, positions, neighbourhoods)
                return loss, torch.autograd.grad(loss, feats)
            hs = [tap(torch.relu(x)) for x in feats]  # non-leaf activations, equal to the (non-negative) leaves
            total = torch.stack([(h * w).sum() for h, w in zip(hs, weights)]).float().sum()
            loss = None
            if fn_total is not None:
                loss = fn_total(hs, positions, neighbourhoods)
                total = total + loss
            return loss, torch.autograd.grad(total, feats)

    return step


def sampled_bytes(feats, neighbourhoods) -> int:
    total = 0
    for f, nb in zip(feats, neighbourhoods):
        t = f.shape[2] if f.dim() == 5 else 1
        total += nb.numel() * f.shape[0] * t * f.element_size()
    return total


def measure_floor(device: torch.device) -> dict:
    """Launch latency (an empty-ish kernel) and copy bandwidth (1 GiB device copy) measured with do_bench."""
    import triton.testing

    small = torch.empty(1, device=device)
    launch_ms = float(triton.testing.do_bench(lambda: small.add_(0), warmup=25, rep=100, return_mode="median"))
    big = torch.empty(2**28, device=device)  # 1 GiB fp32
    dst = torch.empty_like(big)
    copy_ms = float(triton.testing.do_bench(lambda: dst.copy_(big), warmup=10, rep=50, return_mode="median"))
    bandwidth = 2 * big.numel() * 4 / (copy_ms * 1e-3)  # read + write bytes per second
    del big, dst
    return {"launch_ms": launch_ms, "bandwidth_GBps": bandwidth / 1e9}


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    providers = [p.strip() for p in (args.providers or DEFAULT_PROVIDERS[args.path]).split(",") if p.strip()]
    unknown = [p for p in providers if p not in PROVIDERS]
    if unknown or not providers or len(set(providers)) != len(providers):
        raise SystemExit(f"[bench_loss] --providers: got {args.providers!r}; expected distinct names from "
                         f"{', '.join(PROVIDERS)}")
    skipped = [p for p in providers if p in TRITON and device.type != "cuda"]
    if skipped:
        providers = [p for p in providers if p not in skipped]
        print(f"[bench_loss] {', '.join(skipped)} skipped: no CUDA device (the CPU interpreter is not a benchmark)")
    step_path = args.path == "step"
    batches = [32] if args.quick else [32, 128]
    ks = [1, 8] if args.quick else [1, 8, 32]
    if device.type == "cpu" and not (args.quick or args.full or args.ks):
        ks = [1, 8]  # K = 32 with the eager loop takes many minutes per measurement on a small CPU
        print("[bench_loss] CPU: K in {1, 8} (use --full for K = 32 as well)")
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    if args.ks:
        ks = [int(k) for k in args.ks.split(",")]
    floor = measure_floor(device) if device.type == "cuda" else None
    rows: List[dict] = []
    for batch in batches:
        for k in ks:
            feats, positions, neighbourhoods = make_workload(batch, k, device, dtype, args.frames)
            weights = make_task_weights(feats) if step_path else None
            nbytes = sampled_bytes(feats, neighbourhoods)
            measured = ([TASK_ONLY] if step_path else []) + providers
            values, steps, samples = {}, {}, {name: [] for name in measured}
            for name in measured:
                step = make_step(args.path, PROVIDERS.get(name), feats, positions, neighbourhoods, weights,
                                 dense=name in DENSE)
                loss, _ = step()
                if loss is not None:
                    values[name] = float(loss.detach())
                steps[name] = step
            # Rounds interleave the providers (rotating the order), so that slow phases of a shared machine hit
            # every provider alike; ratios are medians of the per-round ratios.
            for r in range(args.rounds):
                order = measured[r % len(measured):] + measured[:r % len(measured)]
                for name in order:
                    samples[name].append(time_ms(steps[name], device, min_run_time=args.min_run_time))
            # the loss's time per round: the whole call (grad), or the step minus the task-only step (step)
            cost = {name: ([x - t for x, t in zip(samples[name], samples[TASK_ONLY])] if step_path else samples[name])
                    for name in providers}
            grad_mb = sum(f.numel() * f.element_size() for f in feats) / 2**20
            task_mem = peak_extra_mb(steps[TASK_ONLY], device) if step_path else None
            if step_path:
                ms = statistics.median(samples[TASK_ONLY])
                row = {"provider": TASK_ONLY, "B": batch, "K": k, "ms": round(ms, 3), "step_ms": round(ms, 3),
                       "rounds_ms": [round(x, 2) for x in samples[TASK_ONLY]]}
                if task_mem is not None:
                    row["peak_extra_MiB"] = round(task_mem, 1)
                rows.append(row)
                print(f"  {TASK_ONLY:19s} B={batch:4d} K={k:3d}: {ms:10.3f} ms  (the task's step without the loss)",
                      flush=True)
            for name in providers:
                ms = statistics.median(cost[name])
                mem = peak_extra_mb(steps[name], device)
                ratio = ""
                if "tdann_eager" in cost:
                    pairs = [e / x for e, x in zip(cost["tdann_eager"], cost[name]) if x > 0]
                    ratio = round(statistics.median(pairs), 2) if pairs else None
                row = {"provider": name, "B": batch, "K": k, "ms": round(ms, 3), "vs_eager": ratio,
                       "loss": round(values[name], 6), "rounds_ms": [round(x, 2) for x in cost[name]]}
                if step_path:
                    row["step_ms"] = round(statistics.median(samples[name]), 3)
                if mem is not None:
                    row["peak_extra_MiB"] = round(mem, 1)
                    if step_path:
                        row["extra_over_task_MiB"] = round(mem - task_mem, 1)
                    else:
                        row["workspace_MiB"] = round(mem - grad_mb, 1)  # beyond the returned feature gradients
                if floor is not None:
                    floor_ms = 2 * floor["launch_ms"] + 3 * nbytes / (floor["bandwidth_GBps"] * 1e9) * 1e3
                    row["floor_ms"] = round(floor_ms, 4)
                    row["floor_fraction"] = round(floor_ms / ms, 3) if ms > 0 else None
                rows.append(row)
                print(f"  {name:19s} B={batch:4d} K={k:3d}: {ms:10.3f} ms  x{ratio} vs eager  loss={values[name]:.6f}",
                      flush=True)
            ref = values.get("tdann_eager")
            if ref is not None:
                for name, v in values.items():
                    if abs(v - ref) > 1e-3 * max(1.0, abs(ref)):
                        print(f"  WARNING: {name} loss {v} differs from tdann_eager {ref}")
            del feats, positions, neighbourhoods, weights
    columns = ["provider", "B", "K", "ms", "vs_eager", "loss"] + (["step_ms"] if step_path else [])
    if device.type == "cuda":
        columns += ["peak_extra_MiB", "extra_over_task_MiB" if step_path else "workspace_MiB", "floor_ms",
                    "floor_fraction"]
    print()
    print_table(rows, columns)
    if step_path:
        print("ms: the loss's share of a training step, median over rounds of (task + loss step) - (task-only step) "
              "in the same round; step_ms: the whole step's median")
    workload = {"preset": "r3d18_mt", "layers": 8, "dtype": args.dtype, "frames": args.frames, "variant": "rel",
                "time_reduction": "mean", "path": args.path,
                "pass": "forward+backward" if not step_path else
                "training-step marginal: (task + loss step) - (task-only step), paired per round",
                "timer": "triton.testing.do_bench median" if device.type == "cuda" else "torch.utils.benchmark median"}
    if step_path:
        workload["task"] = ("features h_l = tap(relu(x_l)) of leaves x_l >= 0 (non-leaf, equal to x_l; tap as "
                            "FeatureTaps applies it, not in task_only); task loss sum_l (h_l * w_l).sum() with fixed "
                            "random w_l; grad of task (+ loss) w.r.t. the leaves")
        workload["dense_providers"] = sorted(DENSE)
    payload = {"workload": workload, "rounds": args.rounds, "min_run_time_s": args.min_run_time, "floor": floor,
               "rows": rows}
    section = f"bench_loss_{args.dtype}" if not step_path else f"bench_loss_step_{args.dtype}"
    out = write_results(device, section, payload, args.output)
    report_written(out, "bench_loss")
    return payload


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--frames", type=int, default=1, help="T of the activations (1: 4-D (B,C,H,W) inputs)")
    ap.add_argument("--path", default="grad", choices=["grad", "step"],
                    help="grad: the loss alone on leaf features (default); step: its share of a training step "
                         "(non-leaf features, a task loss, task-only subtracted)")
    ap.add_argument("--providers", default=None,
                    help=f"comma list from {', '.join(PROVIDERS)} (default: {DEFAULT_PROVIDERS['grad']}; "
                         f"--path step: {DEFAULT_PROVIDERS['step']})")
    ap.add_argument("--batches", default="", help="comma list overriding the batch sizes")
    ap.add_argument("--ks", default="", help="comma list overriding the neighbourhoods per layer")
    ap.add_argument("--quick", action="store_true", help="small grid (B=32, K in {1, 8})")
    ap.add_argument("--full", action="store_true", help="CPU: the full grid including K = 32 (slow)")
    ap.add_argument("--min-run-time", type=float, default=0.5, help="CPU: seconds per measurement")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved measurements per provider (default: 5 on CPU, 1 on GPU); medians reported")
    ap.add_argument("--output", default=None, help="JSON file to merge the results into (default: write nothing)")
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if torch.device(args.device).type == "cuda" else 5
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    print(environment(torch.device(args.device)))
    run(args)


if __name__ == "__main__":
    main()
