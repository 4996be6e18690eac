"""An independent float64 NumPy implementation of DESIGN §3, written for the tests (np.corrcoef, explicit pairs)."""
import numpy as np


def reduce_time(x: np.ndarray, mode: str) -> np.ndarray:
    """(B, N) observations × units from a (B, N), (B, C, H, W) or (B, C, T, H, W) array."""
    if x.ndim == 2:
        return x
    if x.ndim == 4:
        return x.reshape(x.shape[0], -1)
    b, c, t, h, w = x.shape
    if mode == "mean":
        return x.mean(axis=2).reshape(b, -1)
    if mode == "flatten":
        return x.transpose(0, 2, 1, 3, 4).reshape(b * t, c * h * w)
    raise ValueError(mode)


def correlations(x: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns; zero-variance columns correlate 0 with everything (np.corrcoef → NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(x.T)
    r = np.atleast_2d(r)
    r = np.nan_to_num(r, nan=0.0)
    dead = np.std(x, axis=0) <= 1e-6 * np.abs(np.mean(x, axis=0))
    r[dead, :] = 0.0
    r[:, dead] = 0.0
    return np.clip(r, -1.0, 1.0)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(max((a @ a) * (b @ b), 1e-30))
    return float(a @ b / denom)


def neighbourhood_loss(x2d: np.ndarray, positions: np.ndarray, idx, variant: str) -> float:
    idx = np.asarray(idx)
    r = correlations(x2d[:, idx])
    pairs_r, pairs_s = [], []
    for i in range(len(idx)):
        for j in range(i):
            pairs_r.append(r[i, j])
            d = np.hypot(*(positions[idx[i]] - positions[idx[j]]))
            pairs_s.append(1.0 / (d + 1.0))
    pairs_r, pairs_s = np.array(pairs_r), np.array(pairs_s)
    if variant == "rel":
        return (1.0 - pearson(pairs_r, pairs_s)) / 2.0
    return float(np.mean(np.abs(pairs_r - pairs_s)))


def layer_loss(x: np.ndarray, positions: np.ndarray, neighbourhoods, variant="rel", time_reduction="mean") -> float:
    nb = np.atleast_2d(np.asarray(neighbourhoods))
    if time_reduction == "dual":
        if x.ndim != 5:
            return layer_loss(x, positions, nb, variant, "mean")
        return 0.5 * (layer_loss(x, positions, nb, variant, "mean") + layer_loss(x, positions, nb, variant, "flatten"))
    x2d = reduce_time(np.asarray(x, dtype=np.float64), time_reduction)
    return float(np.mean([neighbourhood_loss(x2d, positions, row, variant) for row in nb]))
