"""Training-step overhead of the spatial loss: an r3d_18 MoCo-like step with and without ``SpatialLoss``.

Step = query encoder forward + backward, key encoder forward (no grad), InfoNCE over the batch, SGD update,
bf16 autocast; batch 64, clips 16×112×112 (the paper's setting). With the loss, ``FeatureTaps`` capture the 8
residual blocks and ``SpatialLoss(r3d18_mt(), alpha=0.5)`` is added (``check_inputs=False``: no host sync).
GPU times: ``triton.testing.do_bench`` medians; the overhead (with - without) / without is reported and written to
``benchmarks/results/<device>.json`` (section ``bench_step``).

    python benchmarks/bench_step.py                 # needs CUDA; prints a message and exits 0 on CPU
    python benchmarks/bench_step.py --cpu-small     # tiny CPU run of the same code (fp32, batch 3, 2 frames)
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, print_table, r3d18_preset, time_ms, write_results  # noqa: E402

BLOCKS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]


def build(device: torch.device, backend: str, neighbourhoods_per_step: int):
    from torchvision.models.video import r3d_18

    from tdann_fast.loss import SpatialLoss

    enc_q = r3d_18(num_classes=128).to(device)
    enc_k = copy.deepcopy(enc_q).requires_grad_(False)
    opt = torch.optim.SGD(enc_q.parameters(), lr=0.01, momentum=0.9)
    loss_mod = SpatialLoss(r3d18_preset(), alpha=0.5, neighbourhoods_per_step=neighbourhoods_per_step,
                           backend=backend, check_inputs=False).to(device)
    return enc_q, enc_k, opt, loss_mod


def make_step(enc_q, enc_k, opt, loss_mod, im_q, im_k, with_loss: bool, autocast_dtype):
    from tdann_fast.models.taps import FeatureTaps

    taps = FeatureTaps(enc_q, BLOCKS) if with_loss else None
    device_type = im_q.device.type
    k_params = list(enc_k.parameters())
    q_params = [p.detach() for p in enc_q.parameters()]

    def step():
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
        return loss

    return step, taps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--k", type=int, default=1, help="neighbourhoods per layer and step")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    ap.add_argument("--cpu-small", action="store_true", help="run a tiny version on the CPU (fp32, batch 3, 2 frames)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)

    if torch.cuda.is_available() and not args.cpu_small:
        device, dtype = torch.device("cuda"), torch.bfloat16
    elif args.cpu_small:  # fp32 (bf16 convolutions are very slow on most CPUs); the loss needs B >= 3
        device, dtype = torch.device("cpu"), None
        args.batch, args.frames = min(args.batch, 3), min(args.frames, 2)
    else:
        print("[bench_step] no CUDA device: skipped (use --cpu-small for a tiny CPU run of the same code)")
        return 0
    print(environment(device))
    torch.manual_seed(0)
    enc_q, enc_k, opt, loss_mod = build(device, args.backend, args.k)
    shape = (args.batch, 3, args.frames, args.size, args.size)
    im_q = torch.randn(shape, device=device)
    im_k = torch.randn(shape, device=device)
    rows = []
    results = {}
    for with_loss in (False, True):
        step, taps = make_step(enc_q, enc_k, opt, loss_mod, im_q, im_k, with_loss, dtype)
        for _ in range(2):
            step()
        ms = time_ms(step, device, min_run_time=1.0)
        if taps is not None:
            taps.remove()
        results["with_loss" if with_loss else "without_loss"] = ms
        rows.append({"step": "with SpatialLoss" if with_loss else "without", "ms": round(ms, 2)})
        print(f"  {'with' if with_loss else 'without'} loss: {ms:.2f} ms", flush=True)
    overhead = (results["with_loss"] - results["without_loss"]) / results["without_loss"]
    rows[-1]["overhead_%"] = round(100 * overhead, 2)
    print()
    print_table(rows, ["step", "ms", "overhead_%"])
    payload = {"workload": {"model": "torchvision r3d_18 (MoCo-like: q fwd+bwd, k fwd)", "batch": args.batch,
                            "clip": [args.frames, args.size, args.size], "autocast": str(dtype) if dtype else "off",
                            "spatial_loss": {"preset": "r3d18_mt", "layers": 8, "alpha": 0.5,
                                             "neighbourhoods_per_step": args.k, "backend": args.backend}},
               "ms": results, "overhead_fraction": overhead}
    out = write_results(device, "bench_step" if not args.cpu_small else "bench_step_cpu_small", payload, args.output)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
