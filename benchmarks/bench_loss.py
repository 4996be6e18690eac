"""Spatial-loss throughput, forward + backward, on the 8-layer r3d18_mt preset.

Providers:

* ``tdann_eager``    -- the TDANN reference formulation, written here: a Python loop over layers and sampled
                        neighbourhoods; per neighbourhood a corrcoef-style correlation matrix, a tril index gather,
                        the similarity matrix from ``cdist`` and a Pearson correlation (same dead-unit rule);
* ``tdann_compile``  -- the same per-neighbourhood function under ``torch.compile``;
* ``torch_batched``  -- this package's batched PyTorch path for all layers (``layer_losses(..., backend="torch")``,
                        what ``SpatialLoss`` runs on a CPU);
* ``triton``         -- this package's fused kernels (CUDA only; on CPU they exist only in the slow interpreter).

CPU times: ``torch.utils.benchmark`` medians, in ``--rounds`` interleaved rounds (ratios: medians of per-round
ratios); GPU: ``triton.testing.do_bench`` medians plus the peak extra memory of
one step and the fraction of the physical floor reached (floor = 2 launches + the sampled activations read twice and
their gradient written once, over the measured copy bandwidth). Results: a table with ratios to ``tdann_eager`` and
``benchmarks/results/<device>.json``.

    python benchmarks/bench_loss.py            # GPU: B in {32, 128} x K in {1, 8, 32}; CPU: K in {1, 8} (--full: 32)
    python benchmarks/bench_loss.py --quick    # small grid
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, peak_extra_mb, print_table, r3d18_preset, time_ms, write_results  # noqa: E402

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
}


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
    providers = [p for p in args.providers.split(",") if p]
    if device.type != "cuda" and "triton" in providers:
        providers.remove("triton")
        print("[bench_loss] Triton provider skipped: no CUDA device (the CPU interpreter is not a benchmark)")
    batches = [32] if args.quick else [32, 128]
    ks = [1, 8] if args.quick else [1, 8, 32]
    if device.type == "cpu" and not (args.quick or args.full):
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
            nbytes = sampled_bytes(feats, neighbourhoods)
            values, steps, samples = {}, {}, {name: [] for name in providers}
            for name in providers:
                fn_total = PROVIDERS[name]

                def step(fn_total=fn_total):
                    loss = fn_total(feats, positions, neighbourhoods)
                    grads = torch.autograd.grad(loss, feats)
                    return loss, grads

                loss, _ = step()
                values[name] = float(loss.detach())
                steps[name] = step
            # Rounds interleave the providers (rotating the order), so that slow phases of a shared machine hit
            # every provider alike; ratios are medians of the per-round ratios.
            for r in range(args.rounds):
                order = providers[r % len(providers):] + providers[:r % len(providers)]
                for name in order:
                    samples[name].append(time_ms(steps[name], device, min_run_time=args.min_run_time))
            for name in providers:
                ms = statistics.median(samples[name])
                mem = peak_extra_mb(steps[name], device)
                grad_mb = sum(f.numel() * f.element_size() for f in feats) / 2**20
                ratio = ""
                if "tdann_eager" in samples:
                    ratio = round(statistics.median(e / x for e, x in zip(samples["tdann_eager"], samples[name])), 2)
                row = {"provider": name, "B": batch, "K": k, "ms": round(ms, 3), "vs_eager": ratio,
                       "loss": round(values[name], 6), "rounds_ms": [round(x, 2) for x in samples[name]]}
                if mem is not None:
                    row["peak_extra_MiB"] = round(mem, 1)
                    row["workspace_MiB"] = round(mem - grad_mb, 1)  # beyond the returned feature gradients
                if floor is not None:
                    floor_ms = 2 * floor["launch_ms"] + 3 * nbytes / (floor["bandwidth_GBps"] * 1e9) * 1e3
                    row["floor_ms"] = round(floor_ms, 4)
                    row["floor_fraction"] = round(floor_ms / ms, 3)
                rows.append(row)
                print(f"  {name:14s} B={batch:4d} K={k:3d}: {ms:10.3f} ms  x{ratio} vs eager  loss={values[name]:.6f}",
                      flush=True)
            ref = values.get("tdann_eager")
            if ref is not None:
                for name, v in values.items():
                    if abs(v - ref) > 1e-3 * max(1.0, abs(ref)):
                        print(f"  WARNING: {name} loss {v} differs from tdann_eager {ref}")
            del feats, positions, neighbourhoods
    columns = ["provider", "B", "K", "ms", "vs_eager", "loss"]
    if device.type == "cuda":
        columns += ["peak_extra_MiB", "workspace_MiB", "floor_ms", "floor_fraction"]
    print()
    print_table(rows, columns)
    payload = {"workload": {"preset": "r3d18_mt", "layers": 8, "dtype": args.dtype, "frames": args.frames,
                            "variant": "rel", "time_reduction": "mean", "pass": "forward+backward",
                            "timer": "triton.testing.do_bench median" if device.type == "cuda"
                            else "torch.utils.benchmark median"},
               "rounds": args.rounds, "min_run_time_s": args.min_run_time, "floor": floor, "rows": rows}
    out = write_results(device, f"bench_loss_{args.dtype}", payload, args.output)
    print(f"\nwrote {out}")
    return payload


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--frames", type=int, default=1, help="T of the activations (1: 4-D (B,C,H,W) inputs)")
    ap.add_argument("--providers", default="tdann_eager,tdann_compile,torch_batched,triton")
    ap.add_argument("--batches", default="", help="comma list overriding the batch sizes")
    ap.add_argument("--ks", default="", help="comma list overriding the neighbourhoods per layer")
    ap.add_argument("--quick", action="store_true", help="small grid (B=32, K in {1, 8})")
    ap.add_argument("--full", action="store_true", help="CPU: the full grid including K = 32 (slow)")
    ap.add_argument("--min-run-time", type=float, default=0.5, help="CPU: seconds per measurement")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved measurements per provider (default: 5 on CPU, 1 on GPU); medians reported")
    ap.add_argument("--output", default=None, help="JSON path (default benchmarks/results/<device>.json)")
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if torch.device(args.device).type == "cuda" else 5
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    print(environment(torch.device(args.device)))
    run(args)


if __name__ == "__main__":
    main()
