"""The ``tdann-fast`` command.

    tdann-fast train --config FILE [key=value ...] [--resume [--fallback] | --from-stage N] [--stop-after N]
    tdann-fast swap CHECKPOINT [--out DIR] [key=value ...]       # stage 3 alone
    tdann-fast demo [key=value ...]                               # the shipped demo config, then the MT analysis

The analysis package registers its own subcommands (``analyze``, ``sweep-report``) through
``tdann_fast.analysis.commands.register(subparsers)``.

A mistake of the user (a bad option or config value, a damaged file, a run directory in use: any
:class:`tdann_fast.errors.UserError`) prints one line ``tdann-fast: error: ...`` and exits with status 2; the
config is checked before torch is imported, so such a mistake is reported at once. Any other exception is a bug
and keeps its traceback. Options must be spelled out (``--resum`` is refused, not read as ``--resume``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tdann_fast.errors import ConfigError, UserError

PROG = "tdann-fast"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``tdann-fast: error: ...``, exit 2) and no abbreviated options."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        hint = f" (see '{self.prog} --help')"
        _print_error(message + hint)
        sys.exit(2)


def _print_error(message: str) -> None:
    one_line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)


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
    faults = summary.get("video_faults", {})
    if faults.get("counts"):
        from tdann_fast.data import format_fault_table

        print(f"video faults      : {faults['counts']} over the run (details in summary.json)")
        table = format_fault_table(faults.get("seen_in_this_run", {}), "video faults seen while reading")
        if table:
            print(table)


# ------------------------------------------------------------------------------------------------------ train
def _cmd_train(args) -> int:
    from tdann_fast.train.config import load_config

    cfg = load_config(args.config, args.overrides)  # every value checked here, before torch is imported
    from tdann_fast.train.trainer import train

    summary = train(cfg, resume=args.resume, from_stage=args.from_stage, stop_after=args.stop_after,
                    fallback=args.fallback)
    if _is_main():
        _print_summary(summary)
    return 0


# ------------------------------------------------------------------------------------------------------- swap
def _cmd_swap(args) -> int:
    """Stage 3 alone. In place (no --out): rerun stage 3 of the checkpoint's run from its stage-2 checkpoint (the
    later stages are moved aside). With --out: a new run directory whose stage 3 swaps the checkpoint's sheets."""
    from tdann_fast.train.checkpoint import STAGES, load_checkpoint, stage_dir
    from tdann_fast.train.config import config_from_dict
    from tdann_fast.train.trainer import Trainer

    path = Path(args.checkpoint)
    ckpt = load_checkpoint(path)
    run_dir = Path(ckpt["path"]).resolve().parents[1]
    values = dict(ckpt.get("config") or {})
    if args.out:
        values["run_dir"] = args.out
        cfg = config_from_dict(values, args.overrides)
        start = 3 if ckpt.get("sheets") else 2
        trainer = Trainer(cfg, from_stage=start, stop_after=3, source=ckpt["path"])
    else:
        if not path.is_dir() and int(ckpt["stage"]) != 2:
            raise ConfigError(f"swap: {path} is the checkpoint of stage {ckpt['stage']} ({STAGES[ckpt['stage']]}); "
                              f"in place, stage 3 is rerun from stage 2 of {run_dir}: give that run directory, its "
                              f"stage-2 checkpoint, or --out DIR for a new run")
        values["run_dir"] = str(run_dir)
        cfg = config_from_dict(values, args.overrides)
        trainer = Trainer(cfg, from_stage=3, stop_after=3)
    t0 = time.perf_counter()
    trainer.run()
    print(f"stage 3 (swap) done in {time.perf_counter() - t0:.1f} s; sheets and checkpoint in "
          f"{stage_dir(cfg.run_dir, 3)}")
    return 0


# ------------------------------------------------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    from tdann_fast.train.config import load_config

    cfg = load_config(args.config, args.overrides)
    from tdann_fast.train.checkpoint import latest_checkpoint
    from tdann_fast.train.trainer import train

    analysis_kwargs = _analysis_kwargs(cfg) if cfg.analysis.enabled else None  # checked before training
    run_dir = Path(cfg.run_dir)
    resume = args.resume or latest_checkpoint(run_dir) is not None
    if resume and not args.resume:
        print(f"{run_dir} already holds checkpoints: resuming (pass run_dir=... for a fresh run)")
    t0 = time.perf_counter()
    summary = train(cfg, resume=resume)
    _print_summary(summary)
    report = None
    if analysis_kwargs is not None:
        from tdann_fast.analysis import analyze_checkpoint

        t1 = time.perf_counter()
        out_dir = run_dir / "analysis"
        analyze_checkpoint(summary["latest_checkpoint"], out_dir, **analysis_kwargs)
        summary["timings_s"]["analysis"] = time.perf_counter() - t1
        print(f"analysis          : {summary['timings_s']['analysis']:8.1f} s -> {out_dir}")
        report = next((str(p) for p in (out_dir / "report.md", out_dir / "README.md") if p.is_file()),
                      str(out_dir))
    total = time.perf_counter() - t0
    summary["total_s"] = total
    from tdann_fast._io import atomic_write_text

    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    print(f"total             : {total:8.1f} s")
    print(f"outputs           : checkpoints {run_dir}/stage*/checkpoint.pt, positions {run_dir}/stage*/sheets/, "
          f"CSV {run_dir}/stage*/metrics.csv, TensorBoard {run_dir}/stage*/tensorboard"
          + (f", report {report}" if report else ""))
    return 0


def _analysis_kwargs(cfg) -> dict:
    """Keyword arguments for ``analyze_checkpoint`` from ``analysis.*``; unknown keys are a ConfigError, a missing
    matplotlib a MissingDependencyError (both before any training)."""
    import inspect

    from tdann_fast._deps import check

    check("analysis.enabled=true (the analysis draws PNG figures; or set analysis.enabled=false)", "matplotlib")

    import torch

    from tdann_fast.analysis.analyze import analyze_model

    kwargs = dict(cfg.analysis.kwargs or {})
    known = {name for name, p in inspect.signature(analyze_model).parameters.items()
             if p.kind is not p.VAR_KEYWORD} - {"model", "sheet", "out_dir", "extra", "model_name"}
    known |= {"num_directions", "spatial_freqs", "temporal_freqs", "num_phases"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"analysis.kwargs: got unknown argument(s) {unknown}; expected some of {sorted(known)}")
    kwargs.setdefault("layer", cfg.analysis.layer)
    kwargs.setdefault("progress", cfg.progress)
    if cfg.device != "cpu" and torch.cuda.is_available():
        kwargs.setdefault("device", "cuda")
    return kwargs


# ----------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Topographic deep networks (TDANN) in PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="run (or resume) the six-stage training of a config")
    p.add_argument("--config", required=True, help="YAML file or shipped config name (smoke, demo, mt_gpu, mt_full)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run_dir")
    how.add_argument("--from-stage", type=int, default=None, choices=range(1, 7),
                     help="(re)run from this stage, starting from the finished previous stage; the stages it "
                          "replaces are moved to run_dir/previous/N/")
    p.add_argument("--fallback", action="store_true",
                   help="with --resume: when the newest checkpoint is damaged, resume from the newest intact one")
    p.add_argument("--stop-after", type=int, default=6, choices=range(1, 7), help="stop after this stage")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, nested keys with dots")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("swap", help="stage 3 alone: swap-optimise the positions of a checkpoint")
    p.add_argument("checkpoint", help="run directory or its stage-2 checkpoint (in place), or any checkpoint "
                                      "with --out")
    p.add_argument("--out", default=None, help="a new run directory for stage3_swap/ (default: rerun stage 3 of "
                                               "the checkpoint's run in place)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. swap.steps=20000)")
    p.set_defaults(func=_cmd_swap)

    p = sub.add_parser("demo", help="train the shipped demo config on the embedded videos, then analyse the MT layer")
    p.add_argument("--config", default="demo", help="config to use (default: the shipped demo.yaml)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_demo)

    from tdann_fast.analysis import commands as analysis_commands

    analysis_commands.register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv):
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides placed after options (argparse leaves them over)
        bad = [e for e in extra if "=" not in e or e.startswith("-")]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = list(args.overrides or []) + extra
    if getattr(args, "fallback", False) and not args.resume:
        parser.error("argument --fallback: only with --resume")
    if getattr(args, "from_stage", None) is not None and args.stop_after < args.from_stage:
        parser.error(f"argument --stop-after: {args.stop_after} is before --from-stage {args.from_stage}")
    return args


def main(argv=None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        _print_error(str(exc))
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # a path the user named; anything else from the OS keeps its traceback
        _print_error(f"{exc.filename or ''}: {exc.strerror or exc}" if exc.filename else str(exc))
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
