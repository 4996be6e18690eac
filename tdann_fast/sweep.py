"""One command for the paper's experiments: an α × seed sweep of fine-tunings from ONE stage-4 checkpoint, the
spatial-only and contrastive-only objectives (MT paper, Fig. 3B), and the controls the report sets beside them.

    tdann-fast sweep --config NAME --alphas 0,0.1,0.25,0.5,1.25,2.5 --seeds 0,1,2 [--out DIR] [--no-spatial-only]
                     [--no-analysis] [--no-random-init] [--no-timeline] [key=value ...]

Layout of the sweep directory (default: the config's ``run_dir`` + ``_sweep``)::

    sweep.json                         the manifest (rewritten atomically after every run and every analysis)
    shared/                            stages 1-4, run ONCE: pre-training, retinotopic positions, swap, freeze
    runs/alpha{a:g}_seed{s}/           stages 5-6 started from shared/'s stage-4 checkpoint with spatial.alpha = a
                                       and finetune_seed = s (alpha 0: the contrastive-only control)
    runs/spatial_only_alpha{a:g}_seed{s0}/   moco.weight = 0 (the spatial-only objective) at the reference alpha
                                       (0.5 when swept, else the largest non-zero alpha) and the first seed
    analysis/<run name>/               analyze_checkpoint of each run's stage-6 checkpoint
    analysis/random_init/              an untrained r3d_18 with retinotopic positions (analyze_random_init)
    analysis/timeline_stage2/          shared/'s stage-2 checkpoint: pre-trained weights, retinotopic positions
    analysis/timeline_stage3/          shared/'s stage-3 checkpoint: the same weights after the swap
    analysis/training_motion/          motion directions of the training clips (summary.json, motion_directions.png)
    report/                            tdann_fast.analysis.sweep.sweep_report(sweep.json, report/)

Resumable as a whole: a run directory whose stage-6 checkpoint is complete is skipped, one holding checkpoints is
resumed (``Trainer(resume=True)``), the shared run is skipped once its stage-4 checkpoint is complete, and an
analysis is skipped while its ``metrics.json`` is newer than the checkpoint it analysed (remove an analysis folder
to have it made again, e.g. after changing ``analysis.kwargs``). Rerunning the command after a crash goes on where
it stopped and never redoes a finished stage. Nothing is caught: an error stops the sweep, and the manifest already
records everything that finished before it. One sweep directory, one writer (``.lock``, like a run directory).

The sweep sets ``run_dir``, ``spatial.alpha`` and ``finetune_seed`` of every run (and ``moco.weight=0`` of the
spatial-only run); ``key=value`` overrides apply to everything else, for every run.

Everything is checked before any work: the ``--alphas`` and ``--seeds`` lists, the config with its overrides and
the config of every run (e.g. ``moco.weight=0`` with alpha 0 is refused), the analysis arguments, and that the
config agrees with the shared run already on disk.

Manifest (``sweep.json``; read by the report)::

    {"config": NAME_OR_PATH, "alphas": [...], "seeds": [...], "reference_alpha": 0.5 | null,
     "shared_run": DIR, "shared_stage4": CHECKPOINT,
     "runs": [{"name", "alpha", "seed", "objective": "joint" | "contrastive" | "spatial", "run_dir",
               "checkpoint": stage-6 checkpoint or null, "analysis_dir": DIR or null, "complete": bool,
               "categories_dir": DIR (image task: category patches of layer4.1)}],
     "controls": {"random_init": DIR or null, "training_motion": DIR or null (video task),
                  "random_init_categories": DIR (image task: category patches of a random-init network),
                  "timeline": [{"stage": 2, "label": ..., "analysis_dir": DIR or null}, {"stage": 3, ...}]},
     "timings_s": {"shared": s, "<run name>": s, "analysis/<name>": s, "report": s, "total": s}}
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tdann_fast.errors import ConfigError
from tdann_fast.train.config import (TrainConfig, active_layers, config_changes, config_from_dict, config_to_dict,
                                     key_rule, load_config)

__all__ = ["run_sweep", "training_motion", "parse_values", "check_sweep_args", "reference_alpha", "run_name", "analysis_kwargs",
           "MANIFEST_NAME", "TIMELINE_LABELS"]

MANIFEST_NAME = "sweep.json"
TIMELINE_LABELS = {2: "after pre-training (retinotopic positions)", 3: "after the swap"}


# ------------------------------------------------------------------------------------------------- arguments
def parse_values(text: str, option: str, kind=float) -> list:
    """``"0,0.1,2.5"`` -> ``[0.0, 0.1, 2.5]`` (``kind`` float or int); a ConfigError naming ``option`` otherwise."""
    items = [t.strip() for t in str(text).split(",")]
    if not text or any(not t for t in items):
        raise ConfigError(f"{option}: got {text!r}; expected a comma-separated list of numbers, e.g. 0,0.5,2.5")
    out = []
    for t in items:
        try:
            out.append(float(t) if kind is float else int(t))
        except ValueError:
            what = "numbers" if kind is float else "integers"
            raise ConfigError(f"{option}: got {text!r}; expected a comma-separated list of {what} ({t!r} is not "
                              f"one)") from None
    return out


def check_sweep_args(alphas: Sequence, seeds: Sequence) -> Tuple[List[float], List[int]]:
    """The checked α and seed lists: non-empty, α finite and >= 0, seeds integers >= 0, no duplicates."""
    def listed(values, option):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"{option}: got {values!r}; expected a non-empty list")
        return list(values)

    alphas, seeds = listed(alphas, "--alphas"), listed(seeds, "--seeds")
    out_a = []
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise ConfigError(f"--alphas: got {alphas!r}; expected numbers >= 0 ({a!r} is not)")
        out_a.append(float(a))
    out_s = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"--seeds: got {seeds!r}; expected integers >= 0 ({s!r} is not)")
        out_s.append(int(s))
    for option, values in (("--alphas", out_a), ("--seeds", out_s)):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(f"{option}: got {values}; expected distinct values "
                              f"({', '.join(f'{d:g}' for d in dupes)} repeated)")
    return out_a, out_s


def reference_alpha(alphas: Sequence[float]) -> Optional[float]:
    """The α of the spatial-only run: 0.5 when swept, else the largest non-zero α (None when every α is 0)."""
    if 0.5 in alphas:
        return 0.5
    nonzero = [a for a in alphas if a > 0]
    return max(nonzero) if nonzero else None


def run_name(alpha: float, seed: int, spatial_only: bool = False) -> str:
    return f"{'spatial_only_' if spatial_only else ''}alpha{alpha:g}_seed{seed}"


def analysis_kwargs(cfg: TrainConfig) -> dict:
    """Keyword arguments for ``analyze_checkpoint`` from ``analysis.*``; unknown keys are a ConfigError, a missing
    matplotlib a MissingDependencyError (both before any training)."""
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


# ------------------------------------------------------------------------------------------------- the plan
def _derive(values: dict, **changes) -> TrainConfig:
    """A checked config from the base config's values with dotted keys changed."""
    v = copy.deepcopy(values)
    for dotted, value in changes.items():
        node = v
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(v)


def _plan_runs(values: dict, runs_dir: Path, alphas, seeds, spatial_only: bool) -> Tuple[list, Optional[float]]:
    plan = []
    for a in sorted(alphas):  # alpha 0 first: its analysis is the control set beside the others
        for s in seeds:
            name = run_name(a, s)
            cfg = _derive(values, run_dir=str(runs_dir / name), **{"spatial.alpha": a, "finetune_seed": s})
            weight = cfg.simclr.weight if cfg.task == "image_simclr" else cfg.moco.weight
            objective = "contrastive" if a == 0 else ("spatial" if weight == 0 else "joint")
            plan.append({"name": name, "alpha": a, "seed": s, "objective": objective, "cfg": cfg})
    ref = reference_alpha(alphas)
    if spatial_only and ref is not None:
        name = run_name(ref, seeds[0], spatial_only=True)
        weight_key = "simclr.weight" if values.get("task") == "image_simclr" else "moco.weight"
        cfg = _derive(values, run_dir=str(runs_dir / name),
                      **{"spatial.alpha": ref, "finetune_seed": seeds[0], weight_key: 0.0})
        plan.append({"name": name, "alpha": ref, "seed": seeds[0], "objective": "spatial", "cfg": cfg})
    return plan, ref


def _check_shared(shared_cfg: TrainConfig, stage4: Path) -> None:
    """Refuse a config that differs from the one the shared stages on disk were made with, in a key they used."""
    from tdann_fast._io import safe_load

    recorded = (safe_load(stage4, "checkpoint") or {}).get("config", {})
    changes = config_changes(recorded, shared_cfg)
    refused = {k: v for k, v in changes.items() if key_rule(k)[0] == "fixed" and key_rule(k)[1] <= 4}
    if refused:
        listed = "; ".join(f"{k} (shared run used {o!r}, asked {n!r})" for k, (o, n) in refused.items())
        raise ConfigError(f"{listed}: every run of the sweep starts from the shared stages in {stage4.parents[1]}, "
                          f"made with the old value; use another --out (or move that directory away) to change it")


# ------------------------------------------------------------------------------------------------- helpers
def _fresh_analysis(directory: Path, source: Optional[Path] = None) -> bool:
    """An analysis that need not run again: a readable metrics.json, newer than ``source`` (when given)."""
    metrics = directory / "metrics.json"
    if not metrics.is_file():
        return False
    try:
        json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return source is None or metrics.stat().st_mtime_ns > source.stat().st_mtime_ns


def _complete(path: Path) -> bool:
    from tdann_fast.train.checkpoint import checkpoint_status

    status = checkpoint_status(path)
    return bool(status and status["complete"])


class _Manifest:
    """sweep.json, rewritten atomically after every change."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    def write(self) -> None:
        from tdann_fast._io import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")

    def time(self, key: str, seconds: float) -> None:
        self.data["timings_s"][key] = round(float(seconds), 3)


# ------------------------------------------------------------------------------------------------- the sweep
def training_motion(cfg: TrainConfig, out_dir, num_clips: int = 256) -> Dict[str, Any]:
    """Histogram of the motion directions of the training clips (phase correlation,
    :func:`tdann_fast.data.motion.motion_direction_histogram`): ``summary.json`` and ``motion_directions.png`` in
    ``out_dir``. A population bias of the model's preferred directions is only a property of the model when the
    data move evenly in all directions."""
    from tdann_fast._io import atomic_write_text
    from tdann_fast.data.motion import motion_direction_histogram
    from tdann_fast.train.tasks.video_moco import training_source

    source = training_source(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = motion_direction_histogram(source, num_clips=min(num_clips, 4 * len(source)), frames=cfg.data.frames,
                                    stride=cfg.data.stride, seed=cfg.seed, progress=False)
    summary = md.summary()
    md.plot(out / "motion_directions.png")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def run_sweep(config, alphas: Sequence[float], seeds: Sequence[int], out_dir=None, spatial_only: bool = True,
              random_init: bool = True, timeline: bool = True, analyze: bool = True, overrides: Sequence[str] = (),
              progress: bool = True) -> Dict[str, Any]:
    """Run (or continue) the sweep described in the module docstring; returns the manifest (as written to
    ``out_dir/sweep.json``) with ``"manifest"``: its path.

    Args:
        config: a YAML file or the name of a shipped config; ``overrides``: ``key=value`` strings applied to it.
        alphas, seeds: the spatial weights and fine-tuning seeds (every pair is one run of stages 5-6).
        out_dir: the sweep directory (default: the config's ``run_dir`` + ``_sweep``).
        spatial_only: add the spatial-only run (``moco.weight=0``) at the reference α and the first seed.
        random_init, timeline: add those controls to the analysis. analyze: analyse runs and controls, then call
            the sweep report. progress: print one line per run and analysis (the trainers follow the config's
            ``progress``).
    """
    t_total = time.perf_counter()
    alphas, seeds = check_sweep_args(alphas, seeds)
    base = load_config(config, overrides)  # every value checked, before torch is imported
    values = config_to_dict(base)
    out = Path(out_dir if out_dir is not None else base.run_dir + "_sweep").absolute()
    shared_dir, runs_dir, analysis_dir = out / "shared", out / "runs", out / "analysis"
    shared_cfg = _derive(values, run_dir=str(shared_dir))
    plan, ref = _plan_runs(values, runs_dir, alphas, seeds, spatial_only)
    kw = analysis_kwargs(base) if analyze else {}
    if analyze:
        if kw["layer"] not in active_layers(base):
            raise ConfigError(f"analysis.layer: got {kw['layer']!r}; expected a layer with a sheet, one of "
                              f"{active_layers(base)} (spatial.layers)")
        kw["progress"] = bool(kw.get("progress")) and progress

    from tdann_fast.train.checkpoint import checkpoint_path, existing_checkpoints
    from tdann_fast.train.rundir import RunLock
    from tdann_fast.train.trainer import Trainer

    stage4 = checkpoint_path(shared_dir, 4)
    shared_done = _complete(stage4)
    if shared_done:
        _check_shared(shared_cfg, stage4)

    def say(text: str, end: str = "\n") -> None:
        if progress:
            print(text, end=end, flush=True)

    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    lock.acquire()
    try:
        manifest_path = out / MANIFEST_NAME
        previous = {}
        if manifest_path.is_file():
            try:
                previous = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = {}
        m = _Manifest(manifest_path, {
            "config": str(config), "alphas": alphas, "seeds": seeds, "reference_alpha": ref,
            "shared_run": str(shared_dir), "shared_stage4": str(stage4),
            "runs": [{"name": r["name"], "alpha": r["alpha"], "seed": r["seed"], "objective": r["objective"],
                      "run_dir": r["cfg"].run_dir, "checkpoint": None, "analysis_dir": None, "complete": False}
                     for r in plan],
            "controls": {"random_init": None,
                         "timeline": [{"stage": s, "label": TIMELINE_LABELS[s], "analysis_dir": None}
                                      for s in (2, 3)] if timeline else []},
            "timings_s": dict(previous.get("timings_s") or {}) if isinstance(previous, dict) else {}})
        m.data["timings_s"].pop("total", None)
        m.write()
        if spatial_only and ref is None:
            say("note: every alpha is 0, so there is no spatial-only run")

        # ---- shared stages 1-4: once
        if shared_done:
            say(f"shared stages 1-4: complete ({stage4}), skipped")
        else:
            resume = bool(existing_checkpoints(shared_dir))
            say(f"shared stages 1-4{' (resuming)' if resume else ''} ...", end="")
            t0 = time.perf_counter()
            Trainer(shared_cfg, resume=resume, stop_after=4).run()
            m.time("shared", time.perf_counter() - t0)
            m.write()
            say(f" done in {time.perf_counter() - t0:.1f} s")

        def analyse(key: str, target: Path, source: Optional[Path], fn) -> Optional[str]:
            if _fresh_analysis(target, source):
                return str(target)
            if not analyze:
                return None
            say(f"analysis {key} ...", end="")
            t0 = time.perf_counter()
            fn(target)
            m.time(f"analysis/{key}", time.perf_counter() - t0)
            say(f" done in {time.perf_counter() - t0:.1f} s")
            return str(target)

        def analyse_checkpoint(key: str, ckpt: Path, controls: Dict[str, Optional[str]]) -> Optional[str]:
            from tdann_fast.analysis import analyze_checkpoint

            shown = {label: d for label, d in controls.items() if d}  # the report sets these beside the model
            return analyse(key, analysis_dir / key, ckpt,
                           lambda d: analyze_checkpoint(str(ckpt), d, controls=shown, random_init_control=False,
                                                        **kw))

        def analyse_categories(key: str, ckpt: Path, controls: Dict[str, Optional[str]]) -> Optional[str]:
            from tdann_fast.analysis.categories import analyze_checkpoint_categories

            shown = {label: d for label, d in controls.items() if d}
            return analyse(key, analysis_dir / key, ckpt,
                           lambda d: analyze_checkpoint_categories(str(ckpt), d, layer=it_layer, controls=shown,
                                                                   device=kw.get("device", "cpu"),
                                                                   progress=kw.get("progress", False)))

        from tdann_fast.analysis.categories import IT_LAYER as it_layer

        base_layers = active_layers(base)

        # ---- controls: an untrained network, where the map comes from (stages 2 and 3 of the shared run), and
        # the motion directions of the training data (a population bias of the model may come from there)
        if random_init:
            def random_analysis(d: Path):
                from tdann_fast.analysis import analyze_random_init

                image = base.task == "image_simclr"
                extra = {"arch": "resnet18", "sheet_sizes": base.spatial.sheet_sizes or "trained"} if image else {}
                analyze_random_init(d, frames=base.data.frames, size=base.data.size, seed=base.seed,
                                    mean=tuple(base.data.mean), std=tuple(base.data.std), **extra, **kw)

            m.data["controls"]["random_init"] = analyse("random_init", analysis_dir / "random_init", None,
                                                        random_analysis)
            m.write()
        ri = m.data["controls"]["random_init"]
        for entry in m.data["controls"]["timeline"]:
            key = f"timeline_stage{entry['stage']}"
            entry["analysis_dir"] = analyse_checkpoint(key, checkpoint_path(shared_dir, entry["stage"]),
                                                       {"random init": ri})
            m.write()
        if analyze and base.task == "video_moco":  # the motion of the training clips (images do not move)
            target = analysis_dir / "training_motion"
            if not (target / "summary.json").is_file():
                say("training data motion directions ...", end="")
                t0 = time.perf_counter()
                training_motion(base, target)
                m.time("analysis/training_motion", time.perf_counter() - t0)
                say(f" done in {time.perf_counter() - t0:.1f} s")
            m.data["controls"]["training_motion"] = str(target)
            m.write()
        after_swap = next((e["analysis_dir"] for e in m.data["controls"]["timeline"] if e["stage"] == 3), None)

        # ---- stages 5-6 of every (alpha, seed), then its analysis
        for r, entry in zip(plan, m.data["runs"]):
            cfg = r["cfg"]
            run_dir = Path(cfg.run_dir)
            final = checkpoint_path(run_dir, 6)
            label = (f"run alpha={r['alpha']:g} seed={r['seed']}"
                     + (" (spatial only)" if r["objective"] == "spatial" else ""))
            if _complete(final):
                say(f"{label}: complete, skipped")
            else:
                resume = bool(existing_checkpoints(run_dir))
                say(f"{label}: stages 5-6{' (resuming)' if resume else ''} ...", end="")
                t0 = time.perf_counter()
                if resume:
                    Trainer(cfg, resume=True).run()
                else:
                    Trainer(cfg, from_stage=5, source=stage4).run()
                m.time(r["name"], time.perf_counter() - t0)
                say(f" done in {time.perf_counter() - t0:.1f} s")
            entry.update(checkpoint=str(final), complete=True)
            m.write()
            zero = None
            if r["objective"] != "contrastive":  # the alpha = 0 run of the same seed (analysed before: alphas sorted)
                zero = next((e["analysis_dir"] for e in m.data["runs"]
                             if e["objective"] == "contrastive" and e["seed"] == r["seed"]), None)
            entry["analysis_dir"] = analyse_checkpoint(r["name"], final, {"random init": ri, "α = 0": zero,
                                                                          "after the swap": after_swap})
            m.write()
            if base.task == "image_simclr" and it_layer in base_layers:  # IT category patches of the last block
                zero_cat = None if zero is None else next(
                    (e.get("categories_dir") for e in m.data["runs"]
                     if e["objective"] == "contrastive" and e["seed"] == r["seed"]), None)
                # every run has the shared stage-4 (frozen) sheet: the first analysis makes the random-init
                # control on it (its controls/random_init), the others show that one
                cat_ri = m.data["controls"].get("random_init_categories")
                entry["categories_dir"] = analyse_categories(f"{r['name']}_categories", final,
                                                             {"random init": cat_ri, "α = 0": zero_cat})
                if cat_ri is None and entry["categories_dir"]:
                    m.data["controls"]["random_init_categories"] = str(Path(entry["categories_dir"]) / "controls"
                                                                       / "random_init")
                m.write()

        # ---- the report (tdann_fast.analysis.sweep reads the manifest)
        if analyze:
            from tdann_fast.analysis.sweep import sweep_report

            t0 = time.perf_counter()
            sweep_report(manifest_path, out / "report")
            m.time("report", time.perf_counter() - t0)
            say(f"report: {out / 'report' / 'sweep_report.md'}")
        m.time("total", time.perf_counter() - t_total)
        m.write()
        return {**m.data, "manifest": str(manifest_path)}
    finally:
        lock.release()
