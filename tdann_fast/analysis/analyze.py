"""End-to-end analysis: stimuli → layer responses → tuning metrics → map, pinwheels → figures, metrics.json, report.md.

* :func:`analyze_model` -- any model and sheet (video models: drifting gratings, MT direction path; image models,
  ``frames=None``: static gratings, V1 orientation path).
* :func:`analyze_checkpoint` -- a training checkpoint (via ``tdann_fast.train.checkpoint.load_for_analysis``).
* :func:`analyze_random_init` -- a randomly initialised ``r3d_18`` (or ``resnet18``) with the preset sheet, so the
  report can be produced before any training.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from .figures import plot_delta_histogram, plot_direction_map, plot_metric_histograms, plot_ptc
from .neighbours import adjacent_differences, smoothness_curve
from .pinwheels import pinwheels
from .references import references_for
from .report import write_report
from .responses import grating_responses
from .stimuli import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, DriftingGratings, StaticGratings
from .tuning import tuning_metrics

__all__ = ["analyze_model", "analyze_checkpoint", "analyze_random_init"]


def _positions(sheet) -> np.ndarray:
    pos = getattr(sheet, "positions", sheet)
    if isinstance(pos, torch.Tensor):
        pos = pos.detach().cpu().numpy()
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"sheet must be a CorticalSheet or an (N, 2) array of positions, got shape {pos.shape}")
    return pos


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if not math.isfinite(v) else v
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def analyze_model(
    model: nn.Module,
    sheet,
    out_dir: Union[str, Path],
    frames: Optional[int] = 16,
    size: int = 112,
    mean=None,
    std=None,
    layer: str = "layer3.1",
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    batch_size: int = 8,
    sigma_mm: Optional[float] = None,
    grid_mm: Optional[float] = None,
    selective_threshold: float = 0.5,
    extra: Optional[Dict[str, Any]] = None,
    model_name: Optional[str] = None,
    **stimulus_kw,
) -> Dict[str, Any]:
    """Analyse ``layer`` of ``model`` with unit positions from ``sheet`` and write the outputs to ``out_dir``.

    ``frames`` set: drifting gratings (``DriftingGratings(frames, size, mean, std, **stimulus_kw)``), direction
    metrics (period 2π) against the MT references. ``frames=None``: static gratings
    (``StaticGratings(size, ...)``), orientation metrics (period π) against the V1 references.
    Writes ``metrics.json``, ``tuning.npz`` (per-unit arrays), ``direction_map.png`` (or ``orientation_map.png``),
    ``ptc.png``, ``metric_histograms.png``, ``delta_histogram.png`` and ``report.md``. Returns the metrics dict
    (also holding ``files``).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = _positions(sheet)
    video = frames is not None
    if video:
        stim = DriftingGratings(frames=frames, size=size, mean=mean or KINETICS_MEAN, std=std or KINETICS_STD,
                                **stimulus_kw)
    else:
        stim = StaticGratings(size=size, mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD, **stimulus_kw)
    kind = "direction" if video else "orientation"
    model = model.to(device)
    gr = grating_responses(model, layer, stim, batch_size=batch_size, device=device, progress=progress)
    n = gr.responses.shape[0]
    if positions.shape[0] != n:
        raise ValueError(
            f"sheet has {positions.shape[0]} unit positions but layer {layer!r} has {n} units "
            f"(shape {gr.layer_shape} at {size}x{size}); use the sheet made for this clip size")
    t1 = time.perf_counter()
    tm = tuning_metrics(gr.responses, gr.directions, selective_threshold=selective_threshold, period=gr.period)
    t2 = time.perf_counter()
    side = getattr(sheet, "side_mm", None)
    extent = (0.0, float(side), 0.0, float(side)) if side is not None else None
    pw = pinwheels(positions, np.nan_to_num(tm.vector, nan=0.0), sigma_mm=sigma_mm, grid_mm=grid_mm,
                   period=gr.period, extent=extent)
    nd = adjacent_differences(positions, tm.preferred, period=gr.period, mask=tm.responsive)
    sm = smoothness_curve(positions, tm.preferred, period=gr.period, mask=tm.responsive)
    t3 = time.perf_counter()
    title = f"{model_name or type(model).__name__} {layer}"
    refs = references_for(kind)
    figs = {
        "direction_map": plot_direction_map(pw, out / f"{kind}_map.png", positions=positions, preferred=tm.preferred,
                                            selective=tm.selective, title=title),
        "ptc": plot_ptc(tm, out / "ptc.png", title=title),
        "metric_histograms": plot_metric_histograms(tm, out / "metric_histograms.png", refs, title=title),
        "delta_histogram": plot_delta_histogram(nd, out / "delta_histogram.png", smooth=sm, title=title),
    }
    t4 = time.perf_counter()
    conds = stim.conditions()
    metrics: Dict[str, Any] = {
        "kind": kind,
        "model": model_name or type(model).__name__,
        "layer": layer,
        "layer_shape": list(gr.layer_shape),
        "frames": frames,
        "size": size,
        "stimuli": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in stim.__dict__.items()},
        "stimuli_text": (f"{len(stim)} {'drifting' if video else 'static'} gratings: "
                         f"{stim.shape[0]} {'directions' if video else 'orientations'} × "
                         f"SF {list(stim.spatial_freqs)} cyc/image"
                         + (f" × TF {list(stim.temporal_freqs)} cyc/frame" if video else "")
                         + f" × {stim.shape[3]} phases; {frames if video else 1} frames of {size}×{size}"),
        "tuning": tm.summary(),
        "pinwheels": pw.summary(),
        "neighbours": {**nd.summary(), "smoothness": sm.smoothness},
        "best_sf_counts": np.bincount(gr.best_sf, minlength=stim.shape[1]).tolist(),
        "best_tf_counts": np.bincount(gr.best_tf, minlength=stim.shape[2]).tolist(),
        "references": [r.as_dict() for r in refs],
        "num_stimuli": int(conds.shape[0]),
    }
    if extra:
        metrics.update(extra)
    metrics["pinwheel_density_per_mm2"] = pw.density_per_mm2
    np.savez_compressed(out / "tuning.npz", positions=positions, responses=gr.responses, directions=gr.directions,
                        best_sf=gr.best_sf, best_tf=gr.best_tf, **{k: v for k, v in tm.arrays().items()
                                                                    if isinstance(v, np.ndarray)})
    t5 = time.perf_counter()
    metrics["timing_s"] = {"responses": t1 - t0, "tuning": t2 - t1, "maps": t3 - t2, "figures": t4 - t3,
                           "total": t5 - t0}
    figs["report"] = write_report(metrics, out, {k: v for k, v in figs.items()})
    metrics["files"] = {k: str(v) for k, v in figs.items()}
    metrics["files"]["tuning"] = str(out / "tuning.npz")
    metrics["timing_s"]["total"] = time.perf_counter() - t0
    with open(out / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(_jsonable(metrics), f, indent=2)
    metrics["files"]["metrics"] = str(out / "metrics.json")
    return metrics


def _alpha_of(alpha, layer):
    if isinstance(alpha, dict):
        return alpha.get(layer, next(iter(alpha.values()), None) if alpha else None)
    return alpha


def analyze_checkpoint(checkpoint, out_dir, layer: str = "layer3.1", device="cpu", progress: bool = True,
                       **stimulus_kw) -> Dict[str, Any]:
    """Analyse a training checkpoint (file or run directory) with the sheet and clip settings stored in it."""
    from tdann_fast.train.checkpoint import load_for_analysis

    bundle = load_for_analysis(checkpoint, map_location="cpu")
    if layer not in bundle.sheets:
        from tdann_fast.errors import ConfigError

        raise ConfigError(f"layer: got {layer!r}; checkpoint {checkpoint} has sheets for {list(bundle.sheets)}")
    extra = {"checkpoint": str(checkpoint), "stage": bundle.stage, "alpha": _alpha_of(bundle.alpha, layer),
             "alpha_config": bundle.alpha, "step": getattr(bundle, "step", None)}
    analysis_kw = {k: stimulus_kw.pop(k) for k in ("batch_size", "sigma_mm", "grid_mm", "selective_threshold")
                   if k in stimulus_kw}
    return analyze_model(bundle.encoder, bundle.sheets[layer], out_dir, frames=bundle.frames, size=bundle.size,
                         mean=bundle.mean, std=bundle.std, layer=layer, device=device, progress=progress,
                         extra=extra, model_name="r3d_18", **analysis_kw, **stimulus_kw)


def analyze_random_init(out_dir, arch: str = "r3d_18", frames: int = 8, size: int = 64,
                        layer: Optional[str] = None, seed: int = 0, device="cpu", progress: bool = True,
                        **kw) -> Dict[str, Any]:
    """Analyse a randomly initialised ``r3d_18`` (MT preset, layer3.1) or ``resnet18`` (TDANN preset, V1 =
    layer2.1, static gratings) with retinotopic sheet positions: the untrained baseline of the report."""
    import torchvision

    from tdann_fast import presets

    torch.manual_seed(seed)
    if arch == "r3d_18":
        layer = layer or "layer3.1"
        model = torchvision.models.video.r3d_18(weights=None)
        shapes, specs = presets.r3d18_layer_shapes(size), presets.r3d18_mt_specs()
        clip = {"frames": frames}
    elif arch == "resnet18":
        layer = layer or "layer2.1"
        model = torchvision.models.resnet18(weights=None)
        shapes, specs = presets.resnet18_layer_shapes(size), presets.resnet18_tdann_specs("analysis")
        clip = {"frames": None}
    else:
        raise ValueError(f"arch must be 'r3d_18' or 'resnet18', got {arch!r}")
    if layer not in specs:
        raise KeyError(f"unknown layer {layer!r} for {arch}; layers are {list(specs)}")
    i = list(specs).index(layer)
    sheet = presets.build_sheets({layer: shapes[layer]}, {layer: specs[layer]}, seed=seed + i,
                                 num_neighbourhoods=64)[layer]
    return analyze_model(model.eval(), sheet, out_dir, size=size, layer=layer, device=device, progress=progress,
                         extra={"checkpoint": "random init", "alpha": None, "stage": None, "seed": seed},
                         model_name=f"{arch} (random init)", **clip, **kw)
