"""Smoothed preference maps, pinwheel detection and column spacing (DESIGN §7).

The map is the Gaussian-smoothed **vector field** ``z(x) = Σ_i K_σ(x - x_i)·v_i`` on a regular grid (angles are
never averaged). Its zeros are the pinwheel centres: around every grid plaquette the phase increments are wrapped to
(-π, π] and summed; a sum of ±2π is a centre of charge ±1 (winding of the field; an orientation map, period π,
carries orientation charge ±1/2 at such a point). The column spacing Λ comes from the peak of the radially averaged
power spectrum of z.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["PinwheelResult", "check_positions", "pinwheels", "smooth_vector_field", "winding_numbers", "radial_power_spectrum",
           "angles_to_vectors", "default_sigma_mm", "grid_axes", "count_pinwheels"]


@dataclass
class PinwheelResult:
    """Output of :func:`pinwheels`.

    ``field`` is the complex smoothed map (ny, nx) sampled at ``grid_x`` (nx,) × ``grid_y`` (ny,) mm;
    ``valid`` marks grid points covered by units; ``centres`` (P, 2) are plaquette centres (x, y) in mm with
    ``charges`` (P,) ±1. ``spacing_mm`` is Λ, ``density_per_spacing2`` is density·Λ².
    """

    field: np.ndarray
    grid_x: np.ndarray
    grid_y: np.ndarray
    valid: np.ndarray
    centres: np.ndarray
    charges: np.ndarray
    area_mm2: float
    density_per_mm2: float
    spacing_mm: float
    density_per_spacing2: float
    sigma_mm: float
    grid_mm: float
    period: float
    spectrum_k: np.ndarray        # radial wavenumbers, cycles/mm
    spectrum_power: np.ndarray

    @property
    def num_positive(self) -> int:
        return int((self.charges > 0).sum())

    @property
    def num_negative(self) -> int:
        return int((self.charges < 0).sum())

    def preference_map(self) -> np.ndarray:
        """Preferred angle of the smoothed map on the grid, in [0, period) radians."""
        return np.mod(np.angle(self.field), 2 * math.pi) * (self.period / (2 * math.pi))

    def summary(self) -> dict:
        return {
            "num_pinwheels": int(self.charges.size),
            "num_positive": self.num_positive,
            "num_negative": self.num_negative,
            "area_mm2": float(self.area_mm2),
            "density_per_mm2": float(self.density_per_mm2),
            "spacing_mm": float(self.spacing_mm),
            "density_per_spacing2": float(self.density_per_spacing2),
            "sigma_mm": float(self.sigma_mm),
            "grid_mm": float(self.grid_mm),
        }


def check_positions(positions) -> np.ndarray:
    """Unit positions as a float64 (N, 2) array in mm, N >= 3, all finite; one clear error otherwise (complex,
    non-numeric, wrong shape, NaN/inf)."""
    if np.iscomplexobj(positions):
        raise TypeError("positions must hold real numbers (mm), got complex values")
    try:
        p = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"positions must be an (N, 2) array of numbers (mm), got {type(positions).__name__}") from None
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 3:
        raise ValueError(f"positions must have shape (N >= 3, 2), got {np.shape(positions)}")
    if not np.all(np.isfinite(p)):
        raise ValueError("positions holds non-finite values")
    return p

def angles_to_vectors(angles, weights=None, period: float = 2 * math.pi) -> np.ndarray:
    """Complex vectors ``w·exp(2πi·θ/period)`` (unit length when ``weights`` is None)."""
    a = np.asarray(angles, dtype=np.float64)
    v = np.exp(1j * a * (2 * math.pi / period))
    return v if weights is None else v * np.asarray(weights, dtype=np.float64)


def default_sigma_mm(positions) -> float:
    """Smoothing width giving ~28 units within one σ of a grid point: σ = 3/√(unit density)."""
    p = np.asarray(positions, dtype=np.float64)
    span = np.ptp(p, axis=0)
    area = float(max(span[0], 1e-12) * max(span[1], 1e-12))
    return 3.0 / math.sqrt(p.shape[0] / area)


def smooth_vector_field(positions, vectors, sigma_mm: float, grid_x, grid_y, chunk: int = 16384, dtype=None,
                        truncate: Optional[float] = 6.0, tile: int = 48):
    """``z(g) = Σ_i exp(-|g - x_i|²/2σ²)·v_i`` and the kernel density ``Σ_i exp(...)`` on the grid.

    The Gaussian is separable, so on a tile of the grid the sum is a product of (ty, n) and (n, tx) matrices
    (batched over tiles with torch, whose CPU matmul is fast). Units farther than ``truncate``·σ (default 6σ:
    dropped terms are below e^-18 ≈ 1.5e-8 of a unit's peak weight) from a ``tile`` × ``tile`` block of grid
    points are skipped for that block; ``truncate=None`` sums every unit at every grid point. ``vectors`` is (N,)
    or a stack (M, N) of maps over the same positions (e.g. a map and its position-shuffled nulls), which share
    the kernel matrices. ``chunk`` bounds the units per matmul. ``dtype`` is the torch float dtype of the sums
    (default float64). Returns ``(field, density)``: field (ny, nx) or (M, ny, nx) complex128, density (ny, nx)
    float64.
    """
    import torch

    dt = torch.float64 if dtype is None else dtype
    pos = np.asarray(positions, dtype=np.float64)
    v = np.asarray(vectors).astype(np.complex128)
    single = v.ndim == 1
    v = v.reshape(-1, v.shape[-1])
    m = v.shape[0]
    gx = np.asarray(grid_x, dtype=np.float64)
    gy = np.asarray(grid_y, dtype=np.float64)
    ny, nx = gy.size, gx.size
    if truncate is None:
        ty, tx, reach = ny, nx, math.inf
    else:
        reach = float(truncate) * sigma_mm
        nty, ntx = -(-ny // max(int(tile), 1)), -(-nx // max(int(tile), 1))
        ty, tx = -(-ny // nty), -(-nx // ntx)  # balanced tiles: at most tile × tile, little padding
    nty, ntx = -(-ny // ty), -(-nx // tx)

    def padded(g, n):  # grid axis continued to a whole number of tiles (the extra points are cropped)
        step = g[1] - g[0] if g.size > 1 else 1.0
        return np.concatenate([g, g[-1] + step * np.arange(1, n - g.size + 1)])

    gyp, gxp = padded(gy, nty * ty).reshape(nty, ty), padded(gx, ntx * tx).reshape(ntx, tx)
    # units near each tile (tiles in row-major order), padded to a common length with an invalid flag
    near = []
    for iy in range(nty):
        rows = (pos[:, 1] >= gyp[iy].min() - reach) & (pos[:, 1] <= gyp[iy].max() + reach)
        for ix in range(ntx):
            cols = (pos[:, 0] >= gxp[ix].min() - reach) & (pos[:, 0] <= gxp[ix].max() + reach)
            near.append(np.nonzero(rows & cols)[0])
    n_max = max(1, max(u.size for u in near))
    idx = np.zeros((len(near), n_max), dtype=np.int64)
    ok = np.zeros((len(near), n_max), dtype=bool)
    for t, u in enumerate(near):
        idx[t, :u.size], ok[t, :u.size] = u, True
    tile_y = torch.as_tensor(np.repeat(np.arange(nty), ntx))
    tile_x = torch.as_tensor(np.tile(np.arange(ntx), nty))
    parts = torch.as_tensor(np.ascontiguousarray(np.concatenate([v.real, v.imag], 0))).to(dt)  # (2M, N)
    px, py = torch.as_tensor(pos[:, 0]), torch.as_tensor(pos[:, 1])
    gyt, gxt = torch.as_tensor(gyp), torch.as_tensor(gxp)
    out = torch.zeros(2 * m, nty, ty, ntx, tx, dtype=dt)
    dens = torch.zeros(nty, ty, ntx, tx, dtype=dt)
    idx_t, ok_t = torch.as_tensor(idx), torch.as_tensor(ok)
    n_chunk = max(1, min(int(chunk), n_max))
    # tiles per batched matmul: ~16M entries in the (tiles, 2M·ty, units) left factor
    group = max(1, int(2 ** 24 // max(2 * m * ty * n_chunk, 1)))
    for t0 in range(0, len(near), group):
        ts = slice(t0, min(t0 + group, len(near)))
        tyi, txi = tile_y[ts], tile_x[ts]
        for c0 in range(0, n_max, n_chunk):
            cs = slice(c0, min(c0 + n_chunk, n_max))
            ii, valid = idx_t[ts, cs], ok_t[ts, cs]                                           # (G, n)
            if not bool(valid.any()):
                continue
            ky = torch.exp(-0.5 * ((gyt[tyi][:, :, None] - py[ii][:, None, :]) / sigma_mm) ** 2)  # (G, ty, n)
            ky = (ky * valid[:, None, :]).to(dt)
            kx = torch.exp(-0.5 * ((px[ii][:, :, None] - gxt[txi][:, None, :]) / sigma_mm) ** 2).to(dt)  # (G, n, tx)
            dens[tyi, :, txi, :] += torch.bmm(ky, kx)
            vg = parts[:, ii].permute(1, 0, 2).contiguous()                                   # (G, 2M, n)
            w = vg[:, :, None, :] * ky[:, None, :, :]                                          # (G, 2M, ty, n)
            res = torch.bmm(w.reshape(w.shape[0], -1, w.shape[-1]), kx)                       # (G, 2M·ty, tx)
            out[:, tyi, :, txi, :] += res.reshape(-1, 2 * m, ty, tx)
    out = out.reshape(2 * m, nty * ty, ntx * tx)[:, :ny, :nx].to(torch.float64).numpy()
    dens = dens.reshape(nty * ty, ntx * tx)[:ny, :nx].to(torch.float64).numpy()
    field = out[:m] + 1j * out[m:]
    return (field[0] if single else field), dens


def winding_numbers(field: np.ndarray) -> np.ndarray:
    """Winding number (integer) of the phase of ``field`` (ny, nx) around every plaquette: (ny-1, nx-1).

    Corners are visited counter-clockwise in (x, y) with y increasing with the row index."""
    ph = np.angle(field)

    def wrap(d):
        return np.pi - np.mod(np.pi - d, 2 * np.pi)  # (-π, π]

    a, b = ph[:-1, :-1], ph[:-1, 1:]   # (y, x), (y, x+1)
    c, d = ph[1:, 1:], ph[1:, :-1]     # (y+1, x+1), (y+1, x)
    total = wrap(b - a) + wrap(c - b) + wrap(d - c) + wrap(a - d)
    return np.rint(total / (2 * np.pi)).astype(np.int64)


def radial_power_spectrum(field: np.ndarray, grid_mm: float, mask: Optional[np.ndarray] = None, pad: int = 1):
    """Radially averaged power spectrum of the complex map (mean removed, Hann-windowed).

    ``pad`` > 1 zero-pads the windowed map to ``pad`` times its size before the FFT (finer sampling of the same
    spectrum). Returns ``(k, power)`` with k in cycles/mm (bin width = 1/(pad · grid extent)); ``power`` is the
    mean |FFT|² over the Fourier modes of each radial bin."""
    z = np.array(field, dtype=np.complex128)
    if mask is not None:
        z = np.where(mask, z, 0)
        z = np.where(mask, z - z[mask].mean(), 0) if mask.any() else z
    else:
        z = z - z.mean()
    ny, nx = z.shape
    win = np.outer(np.hanning(ny), np.hanning(nx))
    pad = int(pad)
    pw = np.abs(np.fft.fft2(z * win, s=(pad * ny, pad * nx))) ** 2
    ky = np.fft.fftfreq(pad * ny, d=grid_mm)
    kx = np.fft.fftfreq(pad * nx, d=grid_mm)
    kr = np.hypot(ky[:, None], kx[None, :])
    dk = 1.0 / (pad * max(nx, ny) * grid_mm)
    bins = np.rint(kr / dk).astype(np.int64)
    nb = int(bins.max()) + 1
    power = np.bincount(bins.ravel(), weights=pw.ravel(), minlength=nb) / np.maximum(
        np.bincount(bins.ravel(), minlength=nb), 1)
    return np.arange(nb) * dk, power


def _spacing_from_spectrum(k: np.ndarray, power: np.ndarray) -> float:
    if power.size < 3 or not np.any(power[1:] > 0):
        return float("nan")
    i = int(np.argmax(power[1:])) + 1
    if i == 1:
        # the power peaks at the lowest non-zero wavenumber: no column period is resolved inside the map
        return float("nan")
    # parabolic refinement of the peak, then the power-weighted mean wavenumber over the peak (half maximum)
    lo = i
    while lo > 1 and power[lo - 1] >= 0.5 * power[i]:
        lo -= 1
    hi = i
    while hi < power.size - 1 and power[hi + 1] >= 0.5 * power[i]:
        hi += 1
    sel = slice(lo, hi + 1)
    kbar = float((k[sel] * power[sel]).sum() / power[sel].sum())
    return 1.0 / kbar if kbar > 0 else float("nan")


def pinwheels(
    positions,
    vectors,
    sigma_mm: Optional[float] = None,
    grid_mm: Optional[float] = None,
    period: float = 2 * math.pi,
    extent=None,
    min_density: float = 0.2,
) -> PinwheelResult:
    """Pinwheels of a preference map given by unit ``positions`` (N, 2) mm and complex ``vectors`` (N,).

    ``vectors`` are the units' normalised vector sums (for orientation, of the doubled angle: pass the ``vector``
    field of :func:`~tdann_fast.analysis.tuning_metrics` computed with ``period=π``). ``sigma_mm`` is the Gaussian
    smoothing width (default :func:`default_sigma_mm`), ``grid_mm`` the grid spacing (default and maximum σ/2).
    ``extent`` = (x0, x1, y0, y1) mm limits the grid (default: the bounding box of the positions). Grid points
    whose kernel density is below ``min_density`` × its median are excluded, with every plaquette touching them.
    ``density_per_mm2`` = number of pinwheels / area of the valid plaquettes. ``spacing_mm`` (Λ) is the inverse
    of the power-weighted mean wavenumber over the radial spectrum's peak (above half its height); it is NaN when
    the power peaks at the lowest resolvable wavenumber (no column period inside the map, e.g. untrained models).
    """
    p = check_positions(positions)
    v = np.asarray(vectors)
    if v.shape != (p.shape[0],):
        raise ValueError(f"vectors must have shape ({p.shape[0]},) to match positions, got {v.shape}")
    if not np.iscomplexobj(v):
        raise TypeError("vectors must be complex (the unit's normalised vector sum); use angles_to_vectors()")
    keep = np.isfinite(v)
    p, v = p[keep], v[keep]
    if p.shape[0] < 3:
        raise ValueError("fewer than 3 units have finite vectors")
    if not (isinstance(period, (int, float)) and period > 0):
        raise ValueError(f"period must be a positive number, got {period!r}")
    sigma = default_sigma_mm(p) if sigma_mm is None else float(sigma_mm)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma_mm must be a positive number, got {sigma_mm!r}")
    h = sigma / 2 if grid_mm is None else float(grid_mm)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"grid_mm must be a positive number, got {grid_mm!r}")
    if h > sigma / 2 + 1e-12:
        raise ValueError(f"grid_mm must be <= sigma_mm/2 = {sigma / 2:g}, got {h:g}")
    if extent is None:
        x0, y0 = p.min(0)
        x1, y1 = p.max(0)
    else:
        x0, x1, y0, y1 = (float(e) for e in extent)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"extent must be (x0, x1, y0, y1) with x1 > x0 and y1 > y0, got {extent!r}")
    gx, gy = grid_axes((x0, x1, y0, y1), h)
    field, dens = smooth_vector_field(p, v, sigma, gx, gy)
    valid = dens >= min_density * np.median(dens)
    centres, charges, area = count_pinwheels(field, valid, gx, gy)
    k, power = radial_power_spectrum(field, h, valid)
    spacing = _spacing_from_spectrum(k, power)
    density = charges.size / area if area > 0 else float("nan")
    return PinwheelResult(
        field=field, grid_x=gx, grid_y=gy, valid=valid, centres=centres, charges=charges,
        area_mm2=area, density_per_mm2=float(density), spacing_mm=float(spacing),
        density_per_spacing2=float(density * spacing ** 2), sigma_mm=sigma, grid_mm=h, period=float(period),
        spectrum_k=k, spectrum_power=power,
    )


def grid_axes(extent, h: float):
    """Grid axes ``(gx, gy)`` of spacing ``h`` covering ``extent`` = (x0, x1, y0, y1), centred in it (at least 2
    points per axis)."""
    x0, x1, y0, y1 = (float(e) for e in extent)
    nx = max(int(math.floor((x1 - x0) / h)) + 1, 2)
    ny = max(int(math.floor((y1 - y0) / h)) + 1, 2)
    gx = x0 + (np.arange(nx) + 0.5 * ((x1 - x0) / h - (nx - 1))) * h
    gy = y0 + (np.arange(ny) + 0.5 * ((y1 - y0) / h - (ny - 1))) * h
    return gx, gy


def count_pinwheels(field: np.ndarray, valid: np.ndarray, grid_x, grid_y):
    """Pinwheels of a smoothed map ``field`` (ny, nx) on the grid: plaquettes with winding number ±1 whose four
    corners are all ``valid``. Returns ``(centres (P, 2) mm, charges (P,) ±1, valid area mm²)``."""
    gx, gy = np.asarray(grid_x), np.asarray(grid_y)
    h = float(gx[1] - gx[0])
    w = winding_numbers(field)
    pv = valid[:-1, :-1] & valid[:-1, 1:] & valid[1:, :-1] & valid[1:, 1:]
    w = np.where(pv, w, 0)
    iy, ix = np.nonzero(w)
    centres = np.stack([gx[ix] + h / 2, gy[iy] + h / 2], 1) if iy.size else np.zeros((0, 2))
    charges = np.sign(w[iy, ix]).astype(np.int64)
    return centres, charges, float(pv.sum()) * h * h
