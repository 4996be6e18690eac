"""Windows of the swap optimisation: where they are, which units they hold, and in which rounds they run.

State: the positions of the layer form a fixed set of *slots* (the input positions); the optimisation only
permutes which unit sits in which slot (``unit_at_slot``). Window ``w`` is the half-open square
``[x0, x0 + width) × [y0, y0 + width)`` with ``x0 = ex0 + U(0,1)·(ex1 - ex0 - width)`` (centre uniform so the
square lies inside the sheet extent ``[ex0, ex1] × [ey0, ey1]``); its slots are those whose position falls inside.
When more than ``max_units`` slots fall inside, the ``max_units`` slots with the smallest counter-based keys
``draw(window_key(seed, SUBSAMPLE, w), slot)`` are kept; slots are listed in increasing slot index.

Scheduling (identical in every backend, independent of the thread count): windows are taken in index order into
a look-ahead queue of ``4·round_size`` windows; each round scans the queue in order and takes every window whose
square is disjoint from the squares already taken in that round, up to ``round_size`` windows; the rest wait for
the next round (the queue head is always taken, so every window runs). Windows of one round touch disjoint sets of
slots, so running them concurrently equals running them one after the other; the result of an optimisation is
therefore that of processing the windows sequentially in schedule order.
"""
from __future__ import annotations

import numpy as np

from . import rng

ROUND_SIZE = 64
LOOKAHEAD_FACTOR = 4


def window_rects(seed: int, num_windows: int, width: float, extent) -> np.ndarray:
    """(K, 4) float64 ``[x0, y0, x1, y1]`` of the ``num_windows`` windows (x1 = x0 + width)."""
    ex0, ey0, ex1, ey1 = (float(v) for v in extent)
    key = rng.window_key(seed, rng.STREAM_WINDOW, np.arange(num_windows, dtype=np.uint64))
    ux = rng.uniform01(rng.draw(key, 0))
    uy = rng.uniform01(rng.draw(key, 1))
    x0 = ex0 + ux * ((ex1 - ex0) - width)
    y0 = ey0 + uy * ((ey1 - ey0) - width)
    return np.stack([x0, y0, x0 + width, y0 + width], axis=1)


def schedule_rounds(rects: np.ndarray, round_size: int = ROUND_SIZE, lookahead: int | None = None) -> list:
    """Rounds of mutually disjoint windows (list of int64 arrays), see the module docstring."""
    lookahead = LOOKAHEAD_FACTOR * round_size if lookahead is None else lookahead
    k = rects.shape[0]
    pending: list = []
    nxt = 0
    rounds = []
    while nxt < k or pending:
        while len(pending) < lookahead and nxt < k:
            pending.append(nxt)
            nxt += 1
        taken: list = []
        for w in pending:
            x0, y0, x1, y1 = rects[w]
            ok = True
            for t in taken:
                tx0, ty0, tx1, ty1 = rects[t]
                if not (x1 <= tx0 or tx1 <= x0 or y1 <= ty0 or ty1 <= y0):
                    ok = False
                    break
            if ok:
                taken.append(w)
                if len(taken) == round_size:
                    break
        chosen = set(taken)
        pending = [w for w in pending if w not in chosen]
        rounds.append(np.asarray(taken, dtype=np.int64))
    return rounds


def window_slots(slot_pos: np.ndarray, rect, seed: int, window: int, max_units: int) -> np.ndarray:
    """Slot indices (increasing) of window ``window``, subsampled to at most ``max_units``."""
    x0, y0, x1, y1 = rect
    x, y = slot_pos[:, 0], slot_pos[:, 1]
    slots = np.nonzero((x >= x0) & (x < x1) & (y >= y0) & (y < y1))[0].astype(np.int64)
    if slots.size > max_units:
        keys = rng.draw(rng.window_key(seed, rng.STREAM_SUBSAMPLE, window), slots.astype(np.uint64))
        order = np.lexsort((slots, keys))[:max_units]
        slots = np.sort(slots[order])
    return slots


def trials_per_window(steps: int, steps_per_neighbourhood: int) -> np.ndarray:
    """Trials of each window: ``steps_per_neighbourhood`` each, the last one takes the remainder."""
    k = -(-steps // steps_per_neighbourhood) if steps > 0 else 0
    t = np.full(k, steps_per_neighbourhood, dtype=np.int64)
    if k:
        t[-1] = steps - (k - 1) * steps_per_neighbourhood
    return t


def slot_grid(slot_pos: np.ndarray, extent, cell: float):
    """Bucket slots into a grid of square cells (used by the C++/CUDA backends to find a window's slots fast).

    Returns ``(cell_start (G+1,), cell_slots (N,), params)`` with params = ``[gx0, gy0, cell, nx, ny]``; the cells
    are a speed-up only: membership is still decided by the exact comparisons of :func:`window_slots`.
    """
    ex0, ey0, ex1, ey1 = (float(v) for v in extent)
    nx = max(1, int(np.ceil((ex1 - ex0) / cell)) + 1)
    ny = max(1, int(np.ceil((ey1 - ey0) / cell)) + 1)
    cx = np.clip(np.floor((slot_pos[:, 0] - ex0) / cell).astype(np.int64), 0, nx - 1)
    cy = np.clip(np.floor((slot_pos[:, 1] - ey0) / cell).astype(np.int64), 0, ny - 1)
    cid = cy * nx + cx
    order = np.argsort(cid, kind="stable").astype(np.int64)
    counts = np.bincount(cid, minlength=nx * ny)
    start = np.zeros(nx * ny + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    return start, order, np.array([ex0, ey0, cell, nx, ny], dtype=np.float64)
