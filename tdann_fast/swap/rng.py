"""Counter-based random numbers shared bit-for-bit by the NumPy reference, the C++ and the CUDA backends.

Every random number of the swap optimisation is a pure function of ``(seed, stream, window, counter)``, so
windows can be processed in any order, on any number of threads, and still draw the same numbers:

* ``mix(z)`` is the SplitMix64 finaliser (a bijection of 64-bit integers);
* ``window_key(seed, stream, w) = mix(mix(seed + G1·(stream + 1)) + G2·(w + 1))``;
* ``draw(key, t) = mix(key + G1·(t + 1))`` is the ``t``-th number of that window's stream (all mod 2^64).

Streams: ``STREAM_WINDOW`` (counter 0 → centre x, 1 → centre y), ``STREAM_SUBSAMPLE`` (counter = slot index:
the key that orders a window's candidate units for subsampling), ``STREAM_TRIAL`` (counter = trial index: the
pair of units of that trial). The same constants live in ``csrc/swap_common.h``.
"""
from __future__ import annotations

import numpy as np

G1 = np.uint64(0x9E3779B97F4A7C15)
G2 = np.uint64(0xD1B54A32D192ED03)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)

STREAM_WINDOW = 0
STREAM_SUBSAMPLE = 1
STREAM_TRIAL = 2

_U30, _U27, _U31, _U32, _U11 = (np.uint64(s) for s in (30, 27, 31, 32, 11))
_LOW32 = np.uint64(0xFFFFFFFF)


def check_seed(seed) -> int:
    """Seeds are integers in [0, 2^64)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def mix(z):
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U30)) * M1
        z = (z ^ (z >> _U27)) * M2
    return z ^ (z >> _U31)


def window_key(seed: int, stream: int, window):
    """Key of ``window`` (scalar or array) in ``stream``; uint64 array."""
    with np.errstate(over="ignore"):
        base = mix(np.uint64(seed) + G1 * np.uint64(stream + 1))
        w = np.asarray(window, dtype=np.uint64)
        return mix(base + G2 * (w + np.uint64(1)))


def draw(key, counter):
    """The ``counter``-th 64-bit number of the stream with ``key`` (broadcasting uint64 arrays)."""
    with np.errstate(over="ignore"):
        c = np.asarray(counter, dtype=np.uint64)
        return mix(np.asarray(key, dtype=np.uint64) + G1 * (c + np.uint64(1)))


def uniform01(u):
    """Doubles in [0, 1) from 64-bit numbers (top 53 bits)."""
    return (np.asarray(u, dtype=np.uint64) >> _U11).astype(np.float64) * (1.0 / 9007199254740992.0)


def trial_pairs(seed: int, window: int, num_trials: int, m: int):
    """The unit pairs (a, b), a != b, of the first ``num_trials`` trials of a window of ``m`` units.

    a = (hi32 · m) >> 32 and b = (lo32 · (m - 1)) >> 32, then b += 1 when b >= a (uniform over ordered pairs up to
    a bias below 2^-22).
    """
    key = window_key(seed, STREAM_TRIAL, window)
    u = draw(key, np.arange(num_trials, dtype=np.uint64))
    hi = u >> _U32
    lo = u & _LOW32
    with np.errstate(over="ignore"):
        a = (hi * np.uint64(m)) >> _U32
        b = (lo * np.uint64(m - 1)) >> _U32
    b = b + (b >= a)
    return a.astype(np.int64), b.astype(np.int64)
