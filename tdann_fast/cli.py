"""The ``tdann-fast`` command.

    tdann-fast train --config FILE [key=value ...] [--resume [--fallback] | --from-stage N] [--stop-after N]
    tdann-fast swap CHECKPOINT [--out DIR] [key=value ...]       # stage 3 alone
    tdann-fast demo [key=value ...]                               # the demo config: alpha and alpha-0 runs, analysed
    tdann-fast sweep --config FILE --alphas 0,0.5 --seeds 0,1 [--out DIR] [--no-spatial-only] [--no-analysis]
                     [key=value ...]                              # alpha x seed sweep from one stage-4 checkpoint

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
    """The demo is a small sweep of the demo config (:func:`tdann_fast.sweep.run_sweep`): stages 1-4 once, then
    stages 5-6 at the config's alpha and at alpha 0 from the same stage-4 checkpoint; each run is analysed beside a
    random-init network and the alpha-0 control, and the verdicts are printed. Always resumable: a second call goes
    on where the first stopped."""
    from tdann_fast.train.config import load_config

    cfg = load_config(args.config, args.overrides)  # every value checked here, before torch is imported
    alpha = cfg.spatial.alpha
    if isinstance(alpha, dict):
        raise ConfigError(f"spatial.alpha: got {alpha!r}; the demo compares one alpha with alpha 0, give one number")
    if args.resume and not Path(cfg.run_dir).exists():
        raise ConfigError(f"--resume: run_dir {cfg.run_dir} does not exist, so there is no demo to continue (leave "
                          f"out --resume to start one)")
    alphas = [0.0] + ([float(alpha)] if float(alpha) > 0 else [])
    seed = cfg.finetune_seed if cfg.finetune_seed is not None else 0
    from tdann_fast.sweep import run_sweep

    t0 = time.perf_counter()
    manifest = run_sweep(args.config, alphas, [seed], out_dir=cfg.run_dir, spatial_only=False, random_init=True,
                         timeline=True, analyze=cfg.analysis.enabled, overrides=args.overrides)
    total = time.perf_counter() - t0
    if cfg.analysis.enabled:
        print(f"\n== demo verdicts ({cfg.analysis.layer}) ==")
        for run in sorted(manifest["runs"], key=lambda r: -r["alpha"]):
            label = f"alpha {run['alpha']:g}" + (" (contrastive only)" if run["alpha"] == 0 else "")
            print(f"{label:<28}: {_verdict_of(run.get('analysis_dir'))}")
        print(f"{'random init':<28}: {_verdict_of(manifest['controls'].get('random_init'))}")
        for entry in manifest["controls"].get("timeline", []):
            print(f"{'stage ' + str(entry['stage']) + ' (' + entry['label'] + ')':<28}: "
                  f"{_verdict_of(entry.get('analysis_dir'))}")
        cat_runs = [r for r in manifest["runs"] if r.get("categories_dir")]
        if cat_runs:
            print("\n== category patches (layer4.1, embedded fLoc-like probe: not the fLoc set, no bodies) ==")
            for run in sorted(cat_runs, key=lambda r: -r["alpha"]):
                label = f"alpha {run['alpha']:g}" + (" (contrastive only)" if run["alpha"] == 0 else "")
                print(f"{label:<28}: {_verdict_of(run['categories_dir'])}")
            print(f"{'random init (same sheet)':<28}: "
                  f"{_verdict_of(manifest['controls'].get('random_init_categories'))}")
        print(f"report            : {Path(cfg.run_dir) / 'report' / 'sweep_report.md'} (and "
              f"{Path(cfg.run_dir) / 'analysis'}/<run>/report.md)")
    print(f"total             : {total:8.1f} s (run dirs under {cfg.run_dir}/runs, shared stages 1-4 in "
          f"{cfg.run_dir}/shared)")
    return 0


def _verdict_of(analysis_dir) -> str:
    if not analysis_dir:
        return "not analysed"
    path = Path(analysis_dir) / "metrics.json"
    if not path.is_file():
        return f"no metrics.json in {analysis_dir}"
    return json.loads(path.read_text(encoding="utf-8")).get("verdict", "no verdict recorded")


def _analysis_kwargs(cfg) -> dict:
    """``analyze_checkpoint`` keyword arguments from ``analysis.*`` (:func:`tdann_fast.sweep.analysis_kwargs`)."""
    from tdann_fast.sweep import analysis_kwargs

    return analysis_kwargs(cfg)


# ------------------------------------------------------------------------------------------------------ sweep
def _cmd_sweep(args) -> int:
    from tdann_fast.sweep import check_sweep_args, parse_values, run_sweep

    alphas, seeds = check_sweep_args(parse_values(args.alphas, "--alphas", float),
                                     parse_values(args.seeds, "--seeds", int))
    t0 = time.perf_counter()
    result = run_sweep(args.config, alphas, seeds, out_dir=args.out, spatial_only=not args.no_spatial_only,
                       random_init=not args.no_random_init, timeline=not args.no_timeline,
                       analyze=not args.no_analysis, overrides=args.overrides)
    done = sum(r["complete"] for r in result["runs"])
    print(f"sweep: {done}/{len(result['runs'])} runs complete in {time.perf_counter() - t0:.1f} s; manifest "
          f"{result['manifest']}")
    return 0


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

    p = sub.add_parser("demo", help="the demo config on the embedded videos: stages 1-4 once, stages 5-6 at its alpha "
                                    "and at alpha 0, each analysed beside a random-init network; verdicts printed")
    p.add_argument("--config", default="demo", help="config to use (default: the shipped demo.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted demo (an error when run_dir does not exist); without it the demo "
                        "also continues where an earlier call stopped")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("sweep", help="alpha x seed sweep: stages 1-4 once, stages 5-6 per (alpha, seed), the "
                                     "spatial-only run, the analyses and the controls (resumable as a whole)")
    p.add_argument("--config", required=True, help="YAML file or shipped config name (smoke, demo, mt_gpu, mt_full)")
    p.add_argument("--alphas", required=True, help="comma-separated spatial weights, e.g. 0,0.1,0.25,0.5,1.25,2.5 "
                                                   "(0: the contrastive-only control)")
    p.add_argument("--seeds", required=True, help="comma-separated fine-tuning seeds (finetune_seed), e.g. 0,1,2")
    p.add_argument("--out", default=None, help="the sweep directory (default: the config's run_dir + '_sweep')")
    p.add_argument("--no-spatial-only", action="store_true",
                   help="leave out the spatial-only run (moco.weight=0 at the reference alpha, first seed)")
    p.add_argument("--no-analysis", action="store_true", help="train only: no analyses, controls or report")
    p.add_argument("--no-random-init", action="store_true", help="leave out the random-init control analysis")
    p.add_argument("--no-timeline", action="store_true",
                   help="leave out the analyses of the shared stage-2 and stage-3 checkpoints")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    p.set_defaults(func=_cmd_sweep)

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
