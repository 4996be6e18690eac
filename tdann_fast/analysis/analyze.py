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
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from tdann_fast._io import atomic_write_text, jsonable

from .figures import (plot_delta_histogram, plot_direction_map, plot_map_spectrum, plot_metric_histograms,
                      plot_preferred_histogram, plot_ptc, plot_sf_map)
from .neighbours import adjacent_differences, smoothness_curve
from .references import references_for
from .report import write_report
from .responses import grating_responses
from .stimuli import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, DriftingGratings, StaticGratings
from .tuning import cardinal_bias, sf_preference, tuning_metrics

__all__ = ["analyze_model", "analyze_checkpoint", "analyze_random_init", "default_margin_mm", "preferred_uniformity",
           "border_band", "load_metrics", "random_init_like", "DEFAULT_LAYERS", "sf_map_analysis"]

#: The layer analysed when none is named: MT (r3d_18, video) and V1 (resnet18, images; the TDANN's layer2.x).
DEFAULT_LAYERS = {"r3d_18": "layer3.1", "resnet18": "layer2.1"}

#: Shuffles of the SF map's smoothness null (as the orientation map's smoothness null: p can reach 0.001).
SF_MAP_SHUFFLES = 999


def _positions(sheet) -> np.ndarray:
    pos = getattr(sheet, "positions", sheet)
    if isinstance(pos, torch.Tensor):
        pos = pos.detach().cpu().numpy()
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"sheet must be a CorticalSheet or an (N, 2) array of positions, got shape {pos.shape}")
    return pos


def default_margin_mm(sheet, layer_shape, positions) -> float:
    """The border band excluded from the map statistics: one grid cell of the layer (the spacing of its receptive
    fields on the image, mapped onto the sheet), i.e. ``side_mm / W`` for a layer of spatial width W. Units in this
    band see the zero padding at the image border through most of their receptive field."""
    w = int(layer_shape[-1]) if layer_shape is not None and len(layer_shape) >= 2 else 0
    side = getattr(sheet, "side_mm", None)
    if side is None:
        side = float(np.max(np.ptp(positions, axis=0)))
    return float(side) / w if w > 1 else 0.0


def preferred_uniformity(preferred, period: float, mask=None, bins: int = 16) -> Dict[str, Any]:
    """Is the population of preferred angles uniform? Rayleigh test (mean resultant length, z, p, mean angle) and
    the fraction of units within a quarter period (±45° for directions) of the modal bin, against 0.25 if
    uniform. ``mask`` selects the units (e.g. the selective ones)."""
    from .maps import rayleigh_test

    a = np.asarray(preferred, dtype=np.float64)
    keep = np.isfinite(a) if mask is None else (np.isfinite(a) & np.asarray(mask, dtype=bool))
    a = a[keep]
    out: Dict[str, Any] = {"num_units": int(a.size), "period_deg": math.degrees(period)}
    if a.size < 2:
        return {**out, "mean_resultant_length": float("nan"), "rayleigh_z": float("nan"), "p": float("nan"),
                "mean_angle_deg": float("nan"), "fraction_within_quarter_of_mode": float("nan"),
                "hist": [], "bin_edges_deg": []}
    rbar, z, p, mean_angle = rayleigh_test(a, period=period)
    edges = np.linspace(0.0, period, bins + 1)
    hist = np.histogram(np.mod(a, period), edges)[0]
    mode = 0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1])
    d = np.mod(a - mode, period)
    d = np.minimum(d, period - d)
    return {**out, "mean_resultant_length": rbar, "rayleigh_z": z, "p": p,
            "mean_angle_deg": math.degrees(mean_angle), "mode_deg": math.degrees(mode),
            "fraction_within_quarter_of_mode": float(np.mean(d <= period / 8 + 1e-12)),
            "hist": hist.tolist(), "bin_edges_deg": np.degrees(edges).tolist()}


def border_band(positions, extent, margin_mm: float) -> np.ndarray:
    """Bool (N,): units within ``margin_mm`` of the sheet's edge (``extent`` = (x0, x1, y0, y1))."""
    p = np.asarray(positions, dtype=np.float64)
    x0, x1, y0, y1 = extent
    d = np.minimum.reduce([p[:, 0] - x0, x1 - p[:, 0], p[:, 1] - y0, y1 - p[:, 1]])
    return d < margin_mm


def load_metrics(analysis) -> Dict[str, Any]:
    """The metrics dict of an analysis: a dict (returned as is), an analysis directory or its ``metrics.json``."""
    if isinstance(analysis, dict):
        return analysis
    path = Path(analysis)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"controls: no metrics.json at {str(path)!r}")
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
    m.setdefault("analysis_dir", str(path.parent))
    return m


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
    margin_mm: Optional[float] = None,
    num_shuffles: int = 20,
    seed: int = 0,
    controls: Optional[Mapping[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
    model_name: Optional[str] = None,
    **stimulus_kw,
) -> Dict[str, Any]:
    """Analyse ``layer`` of ``model`` with unit positions from ``sheet`` and write the outputs to ``out_dir``.

    ``frames`` set: drifting gratings (``DriftingGratings(frames, size, mean, std, **stimulus_kw)``), direction
    metrics (period 2π). ``frames=None``: static gratings (``StaticGratings(size, ...)``), orientation metrics
    (period π).

    The map is judged by :func:`~tdann_fast.analysis.maps.map_statistics` against ``num_shuffles``
    position-shuffled nulls, inside the sheet shrunk by ``margin_mm`` (default :func:`default_margin_mm`, one grid
    cell of the layer: the border band where receptive fields reach the image's zero padding). ``controls`` maps a
    label (e.g. ``"random init"``, ``"α = 0"``) to another analysis (directory, ``metrics.json`` or dict) whose
    numbers the report sets beside this one's.

    Orientation path only: ``cardinal_bias`` (share of selective units preferring 0° or 90° ± half an
    orientation step against uniform, binomial p; all selective units and those inside the border margin) and,
    with at least 2 SFs, ``sf_preference`` (per-unit preferred SF and log2 SF centroid of the orientation-averaged
    responses, the SF map's smoothness against position-shuffled nulls, ``sf_preference_map.png``); with one SF
    ``sf_preference`` says it was not measured.

    Writes ``metrics.json``, ``tuning.npz`` (per-unit arrays), ``direction_map.png`` (or ``orientation_map.png``),
    ``map_spectrum.png``, ``preferred_histogram.png``, ``ptc.png``, ``metric_histograms.png``,
    ``delta_histogram.png`` and ``report.md`` (opening with the verdict line). Returns the metrics dict (also
    holding ``files``).
    """
    from .maps import map_statistics

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = _positions(sheet)
    control_metrics = {str(k): load_metrics(v) for k, v in (controls or {}).items()}
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
    extent = (0.0, float(side), 0.0, float(side)) if side is not None else (
        float(positions[:, 0].min()), float(positions[:, 0].max()),
        float(positions[:, 1].min()), float(positions[:, 1].max()))
    margin = default_margin_mm(sheet, gr.layer_shape, positions) if margin_mm is None else float(margin_mm)
    ms = map_statistics(positions, tm.vector, period=gr.period, sigma_mm=sigma_mm, grid_mm=grid_mm, extent=extent,
                        margin_mm=margin, num_shuffles=num_shuffles, seed=seed, mask=tm.responsive,
                        progress=progress)
    band = border_band(positions, extent, margin)
    inner = ~band
    nd = adjacent_differences(positions, tm.preferred, period=gr.period, mask=tm.responsive & inner)
    sm = smoothness_curve(positions, tm.preferred, period=gr.period, mask=tm.responsive & inner)
    uniformity = preferred_uniformity(tm.preferred, gr.period, mask=tm.selective)
    border = {"margin_mm": margin, "units_in_band": int(band.sum()), "units_inside": int(inner.sum()),
              "preferred_in_band": preferred_uniformity(tm.preferred, gr.period, mask=tm.selective & band),
              "preferred_inside": preferred_uniformity(tm.preferred, gr.period, mask=tm.selective & inner)}
    card, sfm, sf_arrays = None, None, {}
    if not video:
        d = int(np.asarray(gr.directions).size)
        card = {"selective": cardinal_bias(tm.preferred, d, mask=tm.selective, period=gr.period),
                "selective_inside": cardinal_bias(tm.preferred, d, mask=tm.selective & inner, period=gr.period)}
        sfm, sf_arrays = sf_map_analysis(gr.full, stim.spatial_freqs, positions, tm.responsive,
                                         sigma_mm=ms.sigma_mm, extent=extent, margin_mm=margin, seed=seed)
    t3 = time.perf_counter()
    name = model_name or type(model).__name__
    title = f"{name} {layer}"
    refs = references_for(kind)
    figs = {
        "direction_map": plot_direction_map(ms.pinwheel, out / f"{kind}_map.png", positions=positions,
                                            preferred=tm.preferred, selective=tm.selective, title=title,
                                            inner_extent=ms.inner_extent, verdict=ms.verdict(),
                                            null_vectors=_one_null(tm.vector, tm.responsive, seed),
                                            sheet_extent=extent),
        "map_spectrum": plot_map_spectrum(ms, out / "map_spectrum.png", title=title),
        "preferred_histogram": plot_preferred_histogram(uniformity, border, out / "preferred_histogram.png",
                                                        title=title),
        "ptc": plot_ptc(tm, out / "ptc.png", title=title),
        "metric_histograms": plot_metric_histograms(tm, out / "metric_histograms.png", refs, title=title),
        "delta_histogram": plot_delta_histogram(nd, out / "delta_histogram.png", smooth=sm, title=title),
    }
    if sfm is not None and sfm.get("measured"):
        figs["sf_map"] = plot_sf_map(sf_arrays["_map"], out / "sf_preference_map.png", positions=positions,
                                     log2_sf=np.log2(sf_arrays["sf_centroid"]),
                                     spatial_freqs=sfm["spatial_freqs"], counts=sfm["preferred_sf_counts"],
                                     title=title, sheet_extent=extent)
    t4 = time.perf_counter()
    conds = stim.conditions()
    metrics: Dict[str, Any] = {
        "kind": kind,
        "model": name,
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
        "verdict": ms.verdict(),
        "map": ms.summary(),
        "tuning": tm.summary(),
        "preferred_uniformity": uniformity,
        "border": border,
        "pinwheels": ms.pinwheel.summary(),
        "neighbours": {**nd.summary(), "smoothness_curve": sm.smoothness},
        "best_sf_counts": np.bincount(gr.best_sf, minlength=stim.shape[1]).tolist(),
        "best_tf_counts": np.bincount(gr.best_tf, minlength=stim.shape[2]).tolist(),
        "references": [r.as_dict() for r in refs],
        "num_stimuli": int(conds.shape[0]),
        "controls": {k: _control_summary(v) for k, v in control_metrics.items()},
    }
    if card is not None:
        metrics["cardinal_bias"] = card
    if sfm is not None:
        metrics["sf_preference"] = sfm
    if extra:
        metrics.update(extra)
    np.savez_compressed(out / "tuning.npz", positions=positions, responses=gr.responses, directions=gr.directions,
                        best_sf=gr.best_sf, best_tf=gr.best_tf, border_band=band,
                        spectrum_k=ms.spectrum_k, spectrum_model=ms.spectrum_model,
                        spectrum_null_mean=ms.spectrum_null_mean, spectrum_null_sd=ms.spectrum_null_sd,
                        **{k: v for k, v in sf_arrays.items() if not k.startswith("_")},
                        **{k: v for k, v in tm.arrays().items() if isinstance(v, np.ndarray)})
    t5 = time.perf_counter()
    metrics["timing_s"] = {"responses": t1 - t0, "tuning": t2 - t1, "maps": t3 - t2, "figures": t4 - t3,
                           "total": t5 - t0}
    figs["report"] = write_report(metrics, out, {k: v for k, v in figs.items()}, controls=control_metrics)
    return _finish_metrics(metrics, out, figs, t0, tuning=out / "tuning.npz")


def _finish_metrics(metrics: dict, out: Path, figs: Mapping[str, Any], t0: float, **data_files) -> dict:
    """The end of an analysis: ``metrics["files"]`` (the figures and report ``figs``, the ``data_files``, then
    ``metrics.json`` itself), the total time since ``t0``; writes ``out/metrics.json`` atomically. Returns
    ``metrics``."""
    metrics["files"] = {k: str(v) for k, v in {**figs, **data_files}.items()}
    metrics["timing_s"]["total"] = time.perf_counter() - t0
    atomic_write_text(out / "metrics.json", json.dumps(jsonable(metrics), indent=2))
    metrics["files"]["metrics"] = str(out / "metrics.json")
    return metrics


def sf_map_analysis(full, spatial_freqs, positions, responsive, *, sigma_mm=None, extent=None, margin_mm=0.0,
                    seed: int = 0, num_shuffles: int = SF_MAP_SHUFFLES, mode: str = "mean"):
    """Spatial-frequency preference of every unit (:func:`~tdann_fast.analysis.tuning.sf_preference` of the
    phase-averaged responses ``full`` (N, D, SF[, TF])) and its map on the sheet: the smoothness of the log2 SF
    centroid map (and of the log2 preferred-SF map) against ``num_shuffles`` position-shuffled nulls, over the
    responsive units with a non-flat SF curve inside the border margin
    (:func:`~tdann_fast.analysis.maps.scalar_map_statistics`, smoothed at ``sigma_mm``).

    Returns ``(summary, arrays)``: ``summary`` the JSON-able dict stored as ``metrics["sf_preference"]``
    (``measured`` False with the ``reason`` when fewer than 2 SFs or too few units), ``arrays`` the per-unit
    ``sf_preferred``, ``sf_centroid``, ``sf_curve`` (for ``tuning.npz``) and ``_map`` (the scalar map
    statistics of the centroid map, for the figure)."""
    from .maps import scalar_map_statistics

    freqs = [float(f) for f in spatial_freqs]
    base = {"spatial_freqs": freqs, "num_spatial_freqs": len(freqs),
            "curve": ("orientation-averaged" if mode == "mean" else "best-orientation")
            + " phase-averaged response per SF"}
    if len(freqs) < 2:
        return {**base, "measured": False,
                "reason": f"one spatial frequency ({freqs[0]:g} cycles/image): SF preference not measured"}, {}
    sfp = sf_preference(full, freqs, mode=mode)
    keep = np.asarray(responsive, dtype=bool) & sfp.tuned
    arrays = {"sf_preferred": sfp.preferred_sf, "sf_centroid": sfp.centroid_sf, "sf_curve": sfp.curve}
    out = {**base, "measured": True, **sfp.summary(mask=keep)}
    try:
        cen = scalar_map_statistics(positions, np.log2(sfp.centroid_sf), sigma_mm=sigma_mm, extent=extent,
                                    margin_mm=margin_mm, mask=keep, num_shuffles=num_shuffles, seed=seed + 7)
        arg = scalar_map_statistics(positions, np.log2(sfp.preferred_sf), sigma_mm=sigma_mm, extent=extent,
                                    margin_mm=margin_mm, mask=keep, num_shuffles=num_shuffles, seed=seed + 8)
    except ValueError as exc:  # too few tuned units inside the margin
        return {**out, "measured": False, "reason": f"SF map not measured: {exc}"}, arrays
    out["map"] = cen.summary()
    out["map_preferred_index"] = arg.summary()
    arrays["_map"] = cen
    return out, arrays


def _one_null(vectors, mask, seed):
    """One position-shuffled copy of the vectors (responsive units permuted among themselves) for the figure."""
    v = np.array(vectors, dtype=np.complex128)
    m = np.asarray(mask, dtype=bool) & np.isfinite(v)
    idx = np.flatnonzero(m)
    v[idx] = v[np.random.default_rng(seed + 1).permutation(idx)]
    v[~m] = np.nan
    return v


def _control_summary(m: Mapping[str, Any]) -> Dict[str, Any]:
    return {"analysis_dir": m.get("analysis_dir"), "checkpoint": m.get("checkpoint"), "alpha": m.get("alpha"),
            "verdict": m.get("verdict"), "map": m.get("map"), "tuning": m.get("tuning"),
            "preferred_uniformity": m.get("preferred_uniformity"), "cardinal_bias": m.get("cardinal_bias"),
            "sf_preference": m.get("sf_preference")}


def _alpha_of(alpha, layer):
    if isinstance(alpha, dict):
        return alpha.get(layer, next(iter(alpha.values()), None) if alpha else None)
    return alpha


def random_init_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """A randomly initialised network of the same architecture: torchvision's own initialisation for a
    ``VideoResNet`` (r3d_18, ``fc`` = Identity as in the encoder) or ``ResNet`` (resnet18), else a copy of
    ``model`` whose modules are re-initialised with their ``reset_parameters``."""
    import copy

    import torchvision

    torch.manual_seed(seed)
    if type(model).__name__ == "VideoResNet":
        rand = torchvision.models.video.r3d_18(weights=None)
    elif type(model).__name__ == "ResNet":
        rand = torchvision.models.resnet18(weights=None)
    else:
        rand = copy.deepcopy(model)
        for mod in rand.modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
        return rand.eval()
    if isinstance(getattr(model, "fc", None), nn.Identity):
        rand.fc = nn.Identity()
    return rand.eval()


def analyze_checkpoint(checkpoint, out_dir, layer: Optional[str] = None, device="cpu", progress: bool = True,
                       controls: Optional[Mapping[str, Any]] = None, random_init_control: bool = True,
                       **kwargs) -> Dict[str, Any]:
    """Analyse a training checkpoint (file or run directory) with the sheet and clip settings stored in it.

    The bundle's ``arch`` ("r3d_18": video, drifting gratings, direction map; "resnet18": images,
    ``frames=None``, static gratings, orientation map) names the model and picks the default ``layer``
    (:data:`DEFAULT_LAYERS`: "layer3.1" for r3d_18, "layer2.1" for resnet18). Unless ``controls`` already names
    one or ``random_init_control`` is False, the same layer of a randomly initialised network of the same
    architecture on the **same sheet** is analysed first (``out_dir/controls/random_init``) and shown beside
    the model in the report. ``controls`` adds other analyses (label → directory), e.g. the α = 0 run.
    Other keyword arguments go to :func:`analyze_model` (``batch_size``, ``sigma_mm``, ``margin_mm``,
    ``num_shuffles``, stimulus settings, ...)."""
    from tdann_fast.errors import ConfigError
    from tdann_fast.train.checkpoint import load_for_analysis

    bundle = load_for_analysis(checkpoint, map_location="cpu")
    arch = getattr(bundle, "arch", None) or "r3d_18"
    task = getattr(bundle, "task", None) or ("video_moco" if arch == "r3d_18" else None)
    if layer is None:
        if arch not in DEFAULT_LAYERS:
            raise ConfigError(f"layer: checkpoint {checkpoint} is a {arch!r} model with no default layer; "
                              f"name one of {list(bundle.sheets)}")
        layer = DEFAULT_LAYERS[arch]
    if layer not in bundle.sheets:
        raise ConfigError(f"layer: got {layer!r}; checkpoint {checkpoint} ({arch}) has sheets for "
                          f"{list(bundle.sheets)}")
    controls = dict(controls or {})
    common = dict(frames=bundle.frames, size=bundle.size, mean=bundle.mean, std=bundle.std, layer=layer,
                  device=device, progress=progress, **kwargs)
    if random_init_control and not any("random" in str(k) for k in controls):
        seed = int(bundle.config.get("seed", 0)) if isinstance(bundle.config, dict) else 0
        rand = random_init_like(bundle.encoder, seed)
        ctrl_dir = Path(out_dir) / "controls" / "random_init"
        analyze_model(rand.eval(), bundle.sheets[layer], ctrl_dir, model_name=f"{arch} (random init)",
                      extra={"checkpoint": "random init (same sheet)", "alpha": None, "stage": None, "seed": seed,
                             "arch": arch, "task": None},
                      **common)
        controls = {"random init": ctrl_dir, **controls}
    extra = {"checkpoint": str(checkpoint), "stage": bundle.stage, "alpha": _alpha_of(bundle.alpha, layer),
             "alpha_config": bundle.alpha, "step": getattr(bundle, "step", None),
             "probe": getattr(bundle, "probe", None), "arch": arch, "task": task,
             "moco_weight": getattr(bundle, "moco_weight", 1.0),
             "finetune_seed": bundle.config.get("finetune_seed") if isinstance(bundle.config, dict) else None}
    return analyze_model(bundle.encoder, bundle.sheets[layer], out_dir, extra=extra, model_name=arch,
                         controls=controls, **common)


def analyze_random_init(out_dir, arch: str = "r3d_18", frames: int = 8, size: int = 64,
                        layer: Optional[str] = None, seed: int = 0, device="cpu", progress: bool = True,
                        sheet_sizes="analysis", **kw) -> Dict[str, Any]:
    """Analyse a randomly initialised ``r3d_18`` (MT preset, layer3.1) or ``resnet18`` (TDANN preset, V1 =
    layer2.1, static gratings; ``sheet_sizes`` as in :func:`tdann_fast.presets.resnet18_tdann_specs`) with
    retinotopic sheet positions: the untrained baseline of the report."""
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
        shapes, specs = presets.resnet18_layer_shapes(size), presets.resnet18_tdann_specs(sheet_sizes)
        clip = {"frames": None}
    else:
        raise ValueError(f"arch must be 'r3d_18' or 'resnet18', got {arch!r}")
    if layer not in specs:
        raise KeyError(f"unknown layer {layer!r} for {arch}; layers are {list(specs)}")
    i = list(specs).index(layer)
    sheet = presets.build_sheets({layer: shapes[layer]}, {layer: specs[layer]}, seed=seed + i,
                                 num_neighbourhoods=64)[layer]
    return analyze_model(model.eval(), sheet, out_dir, size=size, layer=layer, device=device, progress=progress,
                         extra={"checkpoint": "random init", "alpha": None, "stage": None, "seed": seed,
                                "arch": arch, "task": None},
                         model_name=f"{arch} (random init)", **clip, **kw)
