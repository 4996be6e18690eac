"""The ``tdann-fast`` command.

    tdann-fast train --config FILE [key=value ...] [--resume] [--from-stage N] [--stop-after N]
    tdann-fast swap CHECKPOINT [--out DIR] [key=value ...]       # stage 3 alone
    tdann-fast demo [key=value ...]                               # configs/demo.yaml, then the MT analysis

The analysis package registers its own subcommands (``analyze``, ``sweep-report``) through
``tdann_fast.analysis.commands.register(subparsers)`` when that module is importable.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _cmd_train(args) -> int:
    from tdann_fast.train.config import load_config
    from tdann_fast.train.trainer import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume, from_stage=args.from_stage, stop_after=args.stop_after)
    if _is_main():
        _print_summary(summary)
    return 0


def _is_main() -> bool:
    import os
    return int(os.environ.get("RANK", "0")) == 0


def _print_summary(summary: dict) -> None:
    print("\n== tdann-fast run summary ==")
    print(f"run dir           : {summary['run_dir']}")
    for k, v in summary.get("timings_s", {}).items():
        rate = summary.get("steps_per_s", {}).get(k)
        print(f"{k:<18}: {v:8.1f} s" + (f"   ({rate:.3f} steps/s)" if rate else ""))
    print(f"latest checkpoint : {summary.get('latest_checkpoint')}")
    if summary.get("skipped_videos"):
        print(f"skipped videos    : {summary['skipped_videos']}")


def _cmd_swap(args) -> int:
    """Stage 3 alone: swap-optimise the positions of a checkpoint on its encoder's probe responses."""
    import torch

    from tdann_fast.train.checkpoint import load_checkpoint, sheets_from_state, stage_dir
    from tdann_fast.train.config import config_from_dict
    from tdann_fast.train.trainer import Trainer

    ckpt = load_checkpoint(args.checkpoint)
    cfg_dict = dict(ckpt.get("config") or {})
    if args.out:
        cfg_dict["run_dir"] = args.out
    cfg = config_from_dict(cfg_dict, args.overrides)
    if not args.out and Path(cfg.run_dir).resolve() != Path(ckpt["path"]).resolve().parents[1]:
        cfg.run_dir = str(Path(ckpt["path"]).resolve().parents[1])
    tr = Trainer(cfg)
    tr._setup()
    tr._model_ref = None
    tr.moco.load_state_dict(ckpt["model"])
    tr.sheets = sheets_from_state(ckpt.get("sheets"))
    if not tr.sheets:
        tr._stage_retinotopic()
    tr.data_state = dict(ckpt.get("data_state", tr.data_state))
    t0 = time.perf_counter()
    with torch.no_grad():
        tr._stage_swap()
    out = stage_dir(cfg.run_dir, 3)
    print(f"stage 3 (swap) done in {time.perf_counter() - t0:.1f} s; sheets and checkpoint in {out}")
    return 0


def _cmd_demo(args) -> int:
    from tdann_fast.train.config import load_config
    from tdann_fast.train.checkpoint import latest_checkpoint
    from tdann_fast.train.trainer import train

    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides)
    run_dir = Path(cfg.run_dir)
    resume = args.resume or latest_checkpoint(run_dir) is not None
    if resume and not args.resume:
        print(f"{run_dir} already holds checkpoints: resuming (pass run_dir=... for a fresh run)")
    t0 = time.perf_counter()
    summary = train(cfg, resume=resume)
    _print_summary(summary)
    report = None
    if cfg.analysis.enabled:
        try:
            from tdann_fast.analysis import analyze_checkpoint
        except ImportError as exc:
            print(f"analysis skipped: tdann_fast.analysis.analyze_checkpoint is unavailable ({exc})")
        else:
            t1 = time.perf_counter()
            out_dir = run_dir / "analysis"
            analyze_checkpoint(summary["latest_checkpoint"], out_dir, **_analysis_kwargs(cfg))
            summary["timings_s"]["analysis"] = time.perf_counter() - t1
            print(f"analysis          : {summary['timings_s']['analysis']:8.1f} s -> {out_dir}")
            report = next((str(p) for p in (out_dir / "report.md", out_dir / "README.md") if p.is_file()),
                          str(out_dir))
    total = time.perf_counter() - t0
    summary["total_s"] = total
    with (run_dir / "summary.json").open("w") as fh:
        json.dump(summary, fh, indent=2, default=str)
    print(f"total             : {total:8.1f} s")
    print(f"outputs           : checkpoints {run_dir}/stage*/checkpoint.pt, positions {run_dir}/stage*/sheets/, "
          f"CSV {run_dir}/stage*/metrics.csv, TensorBoard {run_dir}/stage*/tensorboard"
          + (f", report {report}" if report else ""))
    return 0


def _analysis_kwargs(cfg) -> dict:
    import torch

    kwargs = dict(cfg.analysis.kwargs or {})
    kwargs.setdefault("layer", cfg.analysis.layer)
    kwargs.setdefault("progress", cfg.progress)
    if cfg.device != "cpu" and torch.cuda.is_available():
        kwargs.setdefault("device", "cuda")
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdann-fast", description="Topographic deep networks (TDANN) in PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="run (or resume) the six-stage training of a config")
    p.add_argument("--config", required=True, help="YAML file or shipped config name (smoke, demo, mt_gpu, mt_full)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run_dir")
    p.add_argument("--from-stage", type=int, default=None, choices=range(1, 7),
                   help="(re)run from this stage, starting from the completed previous stage")
    p.add_argument("--stop-after", type=int, default=6, choices=range(1, 7), help="stop after this stage")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, nested keys with dots")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("swap", help="stage 3 alone: swap-optimise the positions of a checkpoint")
    p.add_argument("checkpoint", help="checkpoint file or run directory (its latest checkpoint)")
    p.add_argument("--out", default=None, help="run directory to write stage3_swap/ into (default: the checkpoint's)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. swap.steps=20000)")
    p.set_defaults(func=_cmd_swap)

    p = sub.add_parser("demo", help="train configs/demo.yaml on the embedded videos, then analyse the MT layer")
    p.add_argument("--config", default="demo", help="config to use (default: the shipped demo.yaml)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_demo)

    try:
        from tdann_fast.analysis import commands as analysis_commands
    except ImportError:
        analysis_commands = None
    if analysis_commands is not None and hasattr(analysis_commands, "register"):
        analysis_commands.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides placed after options (argparse leaves them over)
        bad = [e for e in extra if "=" not in e or e.startswith("-")]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = list(args.overrides or []) + extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
