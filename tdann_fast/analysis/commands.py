"""``tdann-fast analyze`` and ``tdann-fast sweep-report``: call :func:`register` on the CLI's subparsers.

Each subcommand sets ``func`` (``args.func(args) -> int`` exit status) with ``parser.set_defaults``.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run_analyze", "run_sweep_report"]


def _floats(text: str):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers) -> None:
    """Add the ``analyze`` and ``sweep-report`` subcommands to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "analyze", help="grating analysis of a checkpoint (and category patches of image models): metrics.json, "
                        "PNG figures, report.md",
        description="The model family comes from the checkpoint. Video (r3d_18): drifting gratings (16 "
                    "directions) through the analysed layer, direction map. Images (resnet18): static gratings, "
                    "orientation map, spatial-frequency map, cardinal bias at the V1 layer, then category patches "
                    "of the last block (OUT/categories/) on an fLoc folder (--floc) or the embedded fLoc-like "
                    "probe. Each beside a random-init network on the same sheet. Use --random-init for an "
                    "untrained r3d_18 (or resnet18) baseline.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint file or run directory (omit with --random-init)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layer", default=None, help="analysed layer (default layer3.1; layer2.1 for resnet18)")
    p.add_argument("--it-layer", default="layer4.1",
                   help="layer of the category-patch analysis of image models (default layer4.1)")
    p.add_argument("--floc", default=None, metavar="DIR",
                   help="category stimuli in fLoc layout (one sub-folder per category); default: the embedded "
                        "fLoc-like probe")
    p.add_argument("--no-categories", action="store_true", help="image models: skip the category-patch analysis")
    p.add_argument("--device", default="cpu")
    p.add_argument("--random-init", action="store_true", help="analyse a randomly initialised model")
    p.add_argument("--arch", default="r3d_18", choices=["r3d_18", "resnet18"], help="model for --random-init")
    p.add_argument("--frames", type=int, default=8, help="clip length for --random-init (default 8)")
    p.add_argument("--size", type=int, default=None, help="clip side for --random-init (default 64; 224 resnet18)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sigma-mm", type=float, default=None,
                   help="pinwheel-counting width (default Λ/4 when Λ is resolved, else 3/sqrt(unit density))")
    p.add_argument("--margin-mm", type=float, default=None,
                   help="border band left out of the map statistics (default: one grid cell of the layer)")
    p.add_argument("--shuffles", type=int, default=20, help="position-shuffled null maps (default 20)")
    p.add_argument("--control", action="append", default=[], metavar="LABEL=DIR",
                   help="another analysis to show beside this one, e.g. 'alpha 0=runs/a0/analysis' (repeatable)")
    p.add_argument("--no-random-init-control", action="store_true",
                   help="do not analyse a random-init network on the same sheet as a control")
    p.add_argument("--selective-threshold", type=float, default=0.5, help="DSI threshold (default 0.5)")
    p.add_argument("--directions", type=int, default=None, help="number of directions (default 16)")
    p.add_argument("--spatial-freqs", type=_floats, default=None, help="cycles/image, e.g. 2,4,8")
    p.add_argument("--temporal-freqs", type=_floats, default=None, help="cycles/frame, e.g. 0.0625,0.125")
    p.add_argument("--phases", type=int, default=None, help="phases per condition (default 2)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_analyze)

    s = subparsers.add_parser(
        "sweep-report", help="alpha-sweep figures and report from a sweep manifest (or analysed runs)",
        description="Read a sweep manifest (sweep.json written by `tdann-fast sweep`, or the folder holding it) "
                    "and write seed 001's Figs 2-6 (tuning, bandwidths, objectives, pinwheels, PTCs and maps "
                    "against alpha), the map timeline, sweep_rows.json and sweep_report.md. The older form "
                    "RUN_DIR RUN_DIR... reads each analysed run's metrics.json instead.")
    s.add_argument("run_dirs", nargs="+", metavar="SWEEP_JSON|RUN_DIR",
                   help="sweep.json (or its folder), or analysed run directories")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--alphas", type=_floats, default=None,
                   help="alpha of each RUN_DIR (default: from metrics.json); not with a manifest")
    s.set_defaults(func=run_sweep_report)


def _stimulus_kw(args, video: bool) -> dict:
    kw = {}
    if args.directions is not None:
        kw["num_directions" if video else "num_orientations"] = args.directions
    if args.spatial_freqs:
        kw["spatial_freqs"] = tuple(args.spatial_freqs)
    if args.temporal_freqs and video:
        kw["temporal_freqs"] = tuple(args.temporal_freqs)
    if args.phases is not None:
        kw["num_phases"] = args.phases
    return kw


def _print_summary(m) -> None:
    t = m["tuning"]
    print(m.get("verdict", ""))
    print(f"{m['model']} {m['layer']}: {t['num_units']} units, selective {t['selective_fraction']:.3f}, "
          f"median {'DSI' if m['kind'] == 'direction' else 'OSI'} {t['median_dsi']:.3f}, median CV "
          f"{t['median_circular_variance']:.3f}, median FWHM {t['median_fwhm_deg']:.1f} deg "
          f"({m['timing_s']['total']:.1f} s)")
    for label, c in (m.get("controls") or {}).items():
        print(f"control {label}: {c.get('verdict')}")
    print(f"report: {m['files']['report']}")


def run_analyze(args) -> int:
    from tdann_fast._deps import check
    from tdann_fast.errors import ConfigError

    check("tdann-fast analyze (PNG figures)", "matplotlib")

    from .analyze import analyze_checkpoint, analyze_random_init

    common = dict(batch_size=args.batch_size, sigma_mm=args.sigma_mm, selective_threshold=args.selective_threshold,
                  margin_mm=args.margin_mm, num_shuffles=args.shuffles)
    controls = {}
    for item in args.control:
        label, sep, path = item.partition("=")
        if not sep or not label.strip() or not path.strip():
            raise ConfigError(f"--control: got {item!r}; expected LABEL=DIR (an analysis directory)")
        controls[label.strip()] = path.strip()
    if args.random_init:
        if args.checkpoint:
            raise ConfigError("analyze: give either a CHECKPOINT or --random-init, not both")
        video = args.arch == "r3d_18"
        size = args.size or (64 if video else 224)
        m = analyze_random_init(args.out, arch=args.arch, frames=args.frames, size=size, layer=args.layer,
                                seed=args.seed, device=args.device, progress=not args.no_progress,
                                controls=controls or None, **common, **_stimulus_kw(args, video))
    else:
        if not args.checkpoint:
            raise ConfigError("analyze: needs a CHECKPOINT (file or run directory) or --random-init")
        from tdann_fast.train.checkpoint import load_for_analysis

        arch = load_for_analysis(args.checkpoint).arch
        video = arch == "r3d_18"
        m = analyze_checkpoint(args.checkpoint, args.out, layer=args.layer, device=args.device,
                               progress=not args.no_progress, controls=controls or None,
                               random_init_control=not args.no_random_init_control, **common,
                               **_stimulus_kw(args, video))
        if not video and not args.no_categories:
            _print_summary(m)
            from pathlib import Path

            from .categories import analyze_checkpoint_categories, category_report_lines

            cat = analyze_checkpoint_categories(args.checkpoint, Path(args.out) / "categories", layer=args.it_layer,
                                                floc_root=args.floc, device=args.device,
                                                progress=not args.no_progress,
                                                random_init_control=not args.no_random_init_control)
            print()
            print("\n".join(category_report_lines(cat)))
            print(f"report: {cat['files']['report']}")
            return 0
    _print_summary(m)
    return 0


def _is_manifest(arg) -> bool:
    from pathlib import Path

    p = Path(arg)
    if p.is_dir():
        return (p / "sweep.json").is_file() and not (p / "metrics.json").is_file()
    return p.suffix == ".json" and p.name != "metrics.json"


def run_sweep_report(args) -> int:
    from tdann_fast.errors import ConfigError

    from .sweep import sweep_report

    if len(args.run_dirs) == 1 and _is_manifest(args.run_dirs[0]):
        if args.alphas is not None:
            raise ConfigError("--alphas: only for RUN_DIR lists; a sweep manifest carries each run's alpha")
        res = sweep_report(args.run_dirs[0], args.out)
    else:
        res = sweep_report(args.run_dirs, args.out, alphas=args.alphas)
    for v in res["verdicts"]:
        print(v)
    for note in res["skipped"]:
        print(f"note: {note}")
    print(f"sweep report: {res['files']['report']}")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience when cli.py is absent
    parser = argparse.ArgumentParser(prog="tdann-fast")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
