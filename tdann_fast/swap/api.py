"""Public API of the position swap optimisation (DESIGN §5): :func:`optimize_positions`,
:func:`optimize_sheet_positions` and :class:`SwapStats`."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .._validation import check_not_complex
from ..sheet import check_positions_inside
from . import backend as _backend
from . import reference, rng, windows

OBJECTIVES = reference.OBJECTIVES


@dataclass
class SwapStats:
    """What one optimisation did. Per-window arrays are in window-index order (length = number of windows).

    ``objective_before``/``objective_after`` are the window objective (SL_rel of the window for ``"exact"``, the
    all-entries SL_rel for ``"tdann"``) before and after its trials, NaN for windows skipped (fewer than 5 units).
    """

    backend: str
    objective: str
    threads: int
    seed: int
    units: np.ndarray
    accepted: np.ndarray
    trials: np.ndarray
    objective_before: np.ndarray
    objective_after: np.ndarray
    seconds: float
    rounds: int
    extent: tuple = field(default=())

    @property
    def num_windows(self) -> int:
        return int(self.units.size)

    @property
    def skipped(self) -> np.ndarray:
        return np.isnan(self.objective_before)

    @property
    def total_accepted(self) -> int:
        return int(self.accepted.sum())

    @property
    def total_trials(self) -> int:
        return int(self.trials.sum())

    @property
    def trials_per_second(self) -> float:
        return self.total_trials / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        ok = ~self.skipped
        before = float(np.mean(self.objective_before[ok])) if ok.any() else float("nan")
        after = float(np.mean(self.objective_after[ok])) if ok.any() else float("nan")
        return (
            f"swap[{self.backend}, {self.objective}]: {self.num_windows} windows ({int(self.skipped.sum())} skipped), "
            f"{self.total_trials} trials, {self.total_accepted} accepted, mean window objective {before:.4f} -> "
            f"{after:.4f}, {self.seconds:.2f} s"
        )


def _as_numpy_2d(x, name: str) -> np.ndarray:
    check_not_complex(x, name)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # bf16/fp16: NumPy has no bfloat16
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception:
            raise TypeError(f"{name} must be a NumPy array or a torch tensor") from None
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    return x


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def optimize_positions(
    responses,
    positions,
    neighbourhood_width_mm: float,
    steps: int,
    steps_per_neighbourhood: int = 500,
    max_units: int = 500,
    objective: str = "tdann",
    seed: int = 0,
    backend: str = "auto",
    threads: Optional[int] = None,
    progress: bool = True,
    side_mm: Optional[float] = None,
):
    """Greedy position swaps that make units with correlated responses neighbours (DESIGN §5).

    Args:
        responses: (stimuli, units) responses of the layer (NumPy array or tensor), at least 3 stimuli, finite.
            Zero-variance units are legal (their correlations are 0).
        positions: (units, 2) positions in mm (NumPy array or tensor).
        neighbourhood_width_mm: side of the square windows in mm (<= the sheet extent).
        steps: total number of swap trials.
        steps_per_neighbourhood: trials per window (the last window takes the remainder).
        max_units: windows holding more units are subsampled (without replacement) to this many.
        objective: ``"tdann"`` or ``"exact"`` — they accept the same swaps (see :mod:`tdann_fast.swap.reference`)
            and report different window objectives.
        seed: integer in [0, 2^64); same seed, same result on every backend and thread count (CUDA: see README).
        backend: ``"auto"`` (fastest available), ``"reference"`` (NumPy), ``"cpp"`` (OpenMP) or ``"cuda"``.
        threads: OpenMP threads for ``"cpp"``, over the disjoint windows of a round (default:
            ``torch.get_num_threads()``); torch runs single-threaded during the call (BLAS inside a window).
            Does not change the result.
        progress: show a tqdm bar.
        side_mm: the sheet is ``[0, side_mm]²``; default: the bounding box of ``positions``. Windows are placed
            with centres uniform such that the window lies inside the sheet.

    Returns:
        ``(new_positions, stats)``: ``new_positions`` is a permutation of the rows of ``positions`` of the same
        type, dtype and device; ``stats`` a :class:`SwapStats`.
    """
    t_start = time.perf_counter()
    is_tensor = isinstance(positions, torch.Tensor)
    pos_in = positions
    pos_np = _as_numpy_2d(positions, "positions")
    if pos_np.ndim != 2 or pos_np.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2), got {tuple(pos_np.shape)}")
    slot_pos = np.ascontiguousarray(pos_np, dtype=np.float64)
    if not np.isfinite(slot_pos).all():
        raise ValueError("positions holds non-finite values")
    n = slot_pos.shape[0]
    if n < reference.MIN_UNITS:
        raise ValueError(f"positions must hold at least {reference.MIN_UNITS} units, got {n}")
    resp = _as_numpy_2d(responses, "responses")
    if resp.ndim != 2:
        raise ValueError(f"responses must have shape (stimuli, units), got {tuple(resp.shape)}")
    if resp.shape[1] != n:
        raise ValueError(f"responses has {resp.shape[1]} units (columns) but positions has {n} rows")
    if resp.shape[0] < 3:
        raise ValueError(f"responses must hold at least 3 stimuli (rows), got {resp.shape[0]}")
    if not np.isfinite(resp).all():
        raise ValueError("responses holds non-finite values (NaN or inf)")
    check_not_complex(neighbourhood_width_mm, "neighbourhood_width_mm")
    try:
        width = float(neighbourhood_width_mm)
    except (TypeError, ValueError):
        raise TypeError("neighbourhood_width_mm must be a number") from None
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"neighbourhood_width_mm must be a finite number > 0, got {neighbourhood_width_mm!r}")
    steps = _check_int(steps, "steps", 0)
    spn = _check_int(steps_per_neighbourhood, "steps_per_neighbourhood", 1)
    max_units = _check_int(max_units, "max_units", reference.MIN_UNITS)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}; got {objective!r}")
    seed = rng.check_seed(seed)
    name = _backend.resolve(backend)
    if threads is None:
        threads = torch.get_num_threads() if name == "cpp" else 1
    threads = _check_int(threads, "threads", 1)
    if side_mm is None:
        lo, hi = slot_pos.min(axis=0), slot_pos.max(axis=0)
        extent = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
    else:
        side = float(check_not_complex(side_mm, "side_mm"))
        if not (math.isfinite(side) and side > 0):
            raise ValueError(f"side_mm must be a finite number > 0, got {side_mm!r}")
        check_positions_inside(torch.from_numpy(slot_pos), side, "positions")  # a unit outside is never moved
        extent = (0.0, 0.0, side, side)
    ext_w, ext_h = extent[2] - extent[0], extent[3] - extent[1]
    if width > ext_w or width > ext_h:
        raise ValueError(
            f"neighbourhood_width_mm={width} is larger than the sheet extent ({ext_w:.6g} x {ext_h:.6g} mm)"
        )

    trials = windows.trials_per_window(steps, spn)
    k = trials.size
    rects = windows.window_rects(seed, k, width, extent)
    rounds = _schedule(rects, name)
    z = reference.standardize(resp)
    unit_at_slot = np.arange(n, dtype=np.int64)
    stats = np.full((k, 5), np.nan)
    runner = _make_runner(name, z, slot_pos, extent, width, unit_at_slot, rects, trials, seed, max_units,
                          objective, threads)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(trials.sum()), desc=f"swap ({name})", unit="trial", unit_scale=True, leave=False)
    saved_threads = torch.get_num_threads()
    try:
        if name == "cpp":
            # parallelism is over windows (`threads` OpenMP workers); ATen/BLAS inside a window run single-threaded
            torch.set_num_threads(1)
        for ids in rounds:
            stats[ids] = runner(ids)
            if bar is not None:
                bar.update(int(trials[ids].sum()))
    finally:
        if name == "cpp":
            torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()

    slot_of_unit = np.empty(n, dtype=np.int64)
    slot_of_unit[unit_at_slot] = np.arange(n, dtype=np.int64)
    if is_tensor:
        new_pos = pos_in[torch.from_numpy(slot_of_unit).to(pos_in.device)]
    else:
        new_pos = np.asarray(pos_in)[slot_of_unit]
    result = SwapStats(
        backend=name, objective=objective, threads=threads, seed=seed,
        units=stats[:, 0].astype(np.int64) if k else np.zeros(0, np.int64),
        accepted=np.nan_to_num(stats[:, 1]).astype(np.int64), trials=np.nan_to_num(stats[:, 4]).astype(np.int64),
        objective_before=stats[:, 2], objective_after=stats[:, 3], seconds=time.perf_counter() - t_start,
        rounds=len(rounds), extent=extent,
    )
    return new_pos, result


def _schedule(rects: np.ndarray, name: str) -> list:
    ext = _backend.extension() if name != "reference" else None
    if ext is None or rects.shape[0] == 0:
        return windows.schedule_rounds(rects)
    ids, offsets = ext.schedule_rounds(torch.from_numpy(rects), windows.ROUND_SIZE,
                                       windows.LOOKAHEAD_FACTOR * windows.ROUND_SIZE)
    ids, offsets = ids.numpy(), offsets.numpy()
    return [ids[offsets[i]:offsets[i + 1]] for i in range(offsets.size - 1)]


class _ReferenceRunner:
    def __init__(self, z, slot_pos, unit_at_slot, rects, trials, seed, max_units, objective):
        self.args = (z, slot_pos, unit_at_slot, rects)
        self.trials, self.seed, self.max_units, self.objective = trials, seed, max_units, objective

    def __call__(self, ids):
        return reference.run_round(*self.args, ids, self.trials, self.seed, self.max_units, self.objective)


class _ExtensionRunner:
    def __init__(self, fn, z, slot_pos, extent, width, unit_at_slot, rects, trials, seed, max_units, objective,
                 threads, device=None):
        start, order, params = windows.slot_grid(slot_pos, extent, width / 2.0)
        self.fn = fn
        zt = torch.from_numpy(z)
        self.z = zt.to(device) if device is not None else zt
        self.slot_pos = torch.from_numpy(slot_pos)
        self.grid = (torch.from_numpy(start), torch.from_numpy(order), torch.from_numpy(params))
        self.unit_at_slot_np = unit_at_slot
        self.unit_at_slot = torch.from_numpy(unit_at_slot)  # shares memory: updated in place by the extension
        self.rects = torch.from_numpy(rects)
        self.trials = torch.from_numpy(trials)
        self.seed, self.max_units, self.exact, self.threads = seed, max_units, objective == "exact", threads

    def __call__(self, ids):
        out = self.fn(self.z, self.slot_pos, *self.grid, self.unit_at_slot, self.rects,
                      torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), self.trials, self.seed,
                      self.max_units, self.exact, self.threads)
        return out.numpy()


def _make_runner(name, z, slot_pos, extent, width, unit_at_slot, rects, trials, seed, max_units, objective, threads):
    if name == "reference":
        return _ReferenceRunner(z, slot_pos, unit_at_slot, rects, trials, seed, max_units, objective)
    ext = _backend.extension()
    if name == "cpp":
        return _ExtensionRunner(ext.swap_round_cpu, z, slot_pos, extent, width, unit_at_slot, rects, trials, seed,
                                max_units, objective, threads)
    return _ExtensionRunner(ext.swap_round_cuda, z, slot_pos, extent, width, unit_at_slot, rects, trials, seed,
                            max_units, objective, max(threads, os.cpu_count() or 1), device="cuda")


def optimize_sheet_positions(sheet, responses, steps: int, **kwargs):
    """Run :func:`optimize_positions` on a :class:`~tdann_fast.sheet.CorticalSheet` (its positions, width and
    side) and return ``(new_sheet, stats)``; the new sheet has recomputed neighbourhoods
    (``sheet.with_positions``). ``kwargs`` go to :func:`optimize_positions`, except ``neighbourhood_kwargs``
    (a dict passed to ``with_positions``)."""
    from tdann_fast.sheet import CorticalSheet

    if not isinstance(sheet, CorticalSheet):
        raise TypeError(f"sheet must be a CorticalSheet, got {type(sheet).__name__}")
    for key in ("positions", "neighbourhood_width_mm"):
        if key in kwargs:
            raise TypeError(f"{key} comes from the sheet; do not pass it to optimize_sheet_positions")
    neighbourhood_kwargs = kwargs.pop("neighbourhood_kwargs", None) or {}
    kwargs.setdefault("side_mm", sheet.side_mm)
    positions = sheet.positions.detach().cpu()
    new_pos, stats = optimize_positions(responses, positions, sheet.neighbourhood_width_mm, steps, **kwargs)
    return sheet.with_positions(new_pos.to(sheet.positions.device), **neighbourhood_kwargs), stats
