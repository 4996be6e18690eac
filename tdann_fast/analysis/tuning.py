"""Per-unit tuning metrics for direction (period 2π) and orientation (period π) tuning curves (DESIGN §7).

Conventions
-----------
``responses`` is (N, D): the response of N units to D stimulus angles ``angles`` (radians) that are evenly spaced
over one period (16 directions 22.5° apart for MT, 8 orientations 22.5° apart for V1). Angles are mapped to the
phase ``φ = 2π·θ/period`` so the same formulas serve directions (period 2π) and orientations (period π):

* preferred angle: ``arg Σ_k r_k e^{iφ_k}`` (mapped back to stimulus units, in ``[0, period)``);
* R_pref is the largest sampled response, R_null the response at the sampled angle half a period away
  (the opposite direction; the orthogonal orientation);
* DSI = 1 - R_null/R_pref and the normalised form (R_pref - R_null)/(R_pref + R_null) (OSI for period π);
* circular variance CV = 1 - |Σ r_k e^{iφ_k}| / Σ r_k;
* von Mises FWHM: fit ``b + A·exp(κ(cos(φ-μ) - 1))`` by batched Levenberg-Marquardt, FWHM = 2·arccos(1 + ln 0.5/κ)
  (360°-equivalent when κ < ln2/2, i.e. the curve never falls to half height);
* CV-derived bandwidth: the FWHM of the baseline-free von Mises with the same circular variance
  (κ solves I1(κ)/I0(κ) = 1 - CV);
* axial share (direction only): A2/(A1 + A2) with A_n = |Σ_k r_k e^{inθ_k}|;
* population tuning curve (PTC): every responsive unit's curve rotated so the sample nearest its preferred angle
  sits at offset 0, divided by its peak response, averaged; its FWHM is the width of the primary peak at half height between the curve's
  minimum and its peak (linear interpolation).

Widths are returned in degrees of the stimulus angle (a 180° orientation period gives widths up to 180°).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, Optional

import numpy as np
from scipy import special

from .._validation import check_not_complex

__all__ = [
    "TuningMetrics",
    "tuning_metrics",
    "fit_von_mises",
    "von_mises_fwhm",
    "kappa_from_resultant",
    "population_tuning_curve",
    "curve_fwhm",
    "SFPreference",
    "sf_preference",
    "cardinal_bias",
]

_LN_HALF = math.log(0.5)


@dataclass
class TuningMetrics:
    """Per-unit tuning metrics (arrays of length N) plus the population tuning curve.

    Angles are in radians of the stimulus angle; widths (``fwhm_deg``, ``cv_bandwidth_deg``) in degrees.
    ``responsive`` is False for units that never respond (all responses 0); their metrics are NaN and they are
    never selective.
    """

    preferred: np.ndarray          # preferred angle in [0, period)
    vector: np.ndarray             # complex normalised vector sum Σ r e^{iφ} / Σ r (|vector| = 1 - CV)
    r_pref: np.ndarray
    r_null: np.ndarray
    dsi: np.ndarray                # 1 - R_null / R_pref
    dsi_normalised: np.ndarray     # (R_pref - R_null) / (R_pref + R_null)
    circular_variance: np.ndarray
    kappa: np.ndarray              # fitted von Mises concentration
    fwhm_deg: np.ndarray           # von Mises FWHM
    cv_bandwidth_deg: np.ndarray   # CV-derived bandwidth
    axial_share: np.ndarray        # A2 / (A1 + A2) (NaN for period π)
    fit_r2: np.ndarray             # coefficient of determination of the von Mises fit
    responsive: np.ndarray         # bool
    selective: np.ndarray          # bool: responsive and dsi >= selective_threshold
    ptc_offsets: np.ndarray        # (D,) offsets from the preferred angle, radians, centred on 0
    ptc: np.ndarray                # (D,) population tuning curve (peak-normalised, mean over responsive units)
    ptc_fwhm_deg: float
    period: float
    selective_threshold: float

    @property
    def num_units(self) -> int:
        return int(self.preferred.shape[0])

    def summary(self) -> Dict[str, float]:
        """Population summary (medians over responsive units, fractions over all units)."""
        r = self.responsive
        n = self.num_units

        def med(a):
            vals = a[r & np.isfinite(a)]
            return float(np.median(vals)) if vals.size else float("nan")

        out = {
            "num_units": n,
            "num_responsive": int(r.sum()),
            "responsive_fraction": float(r.mean()) if n else float("nan"),
            "selective_fraction": float(self.selective.sum() / n) if n else float("nan"),
            "selective_fraction_of_responsive": float(self.selective.sum() / max(int(r.sum()), 1)),
            "median_dsi": med(self.dsi),
            "median_dsi_normalised": med(self.dsi_normalised),
            "median_circular_variance": med(self.circular_variance),
            "fraction_cv_below_0.6": float(np.mean(self.circular_variance[r] < 0.6)) if r.any() else float("nan"),
            "median_fwhm_deg": med(self.fwhm_deg),
            "median_cv_bandwidth_deg": med(self.cv_bandwidth_deg),
            "median_axial_share": med(self.axial_share),
            "median_fit_r2": med(self.fit_r2),
            "ptc_fwhm_deg": float(self.ptc_fwhm_deg),
            "selective_threshold": float(self.selective_threshold),
        }
        if self.selective.any():
            s = self.selective
            out["median_fwhm_deg_selective"] = float(np.nanmedian(self.fwhm_deg[s]))
            out["median_circular_variance_selective"] = float(np.nanmedian(self.circular_variance[s]))
        return out

    def arrays(self) -> Dict[str, np.ndarray]:
        """All array fields (for ``np.savez``)."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}


# ----------------------------------------------------------------------------------------------- helpers
def von_mises_fwhm(kappa, period: float = 2 * math.pi) -> np.ndarray:
    """FWHM in degrees of ``exp(κ(cos φ - 1))`` above its baseline: 2·arccos(1 + ln 0.5/κ) (phase units),
    converted to stimulus degrees (× period/2π). Curves that never fall to half height (κ < ln2/2) get the full
    period."""
    kappa = np.asarray(check_not_complex(kappa, "kappa"), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = 1.0 + _LN_HALF / kappa
    full = np.where(np.isfinite(c) & (c >= -1.0), 2.0 * np.arccos(np.clip(c, -1.0, 1.0)), 2.0 * math.pi)
    full = np.where(np.isnan(kappa), np.nan, full)
    return np.degrees(full) * (period / (2.0 * math.pi))


_KAPPA_TABLE = None


def kappa_from_resultant(rbar) -> np.ndarray:
    """κ of the von Mises distribution whose mean resultant length I1(κ)/I0(κ) equals ``rbar`` (vectorised)."""
    global _KAPPA_TABLE
    if _KAPPA_TABLE is None:
        k = np.concatenate([np.linspace(0.0, 2.0, 2001)[:-1], np.geomspace(2.0, 1e4, 6000)])
        a = special.i1e(k) / special.i0e(k)
        _KAPPA_TABLE = (a, k)
    a, k = _KAPPA_TABLE
    rbar = np.clip(np.asarray(check_not_complex(rbar, "rbar"), dtype=np.float64), 0.0, a[-1])
    return np.interp(rbar, a, k)


def _check_inputs(responses, angles, period):
    r = np.asarray(check_not_complex(responses, "responses"), dtype=np.float64)
    if r.ndim == 1:
        r = r[None, :]
    if r.ndim != 2:
        raise ValueError(f"responses must have shape (N, D), got shape {np.shape(responses)}")
    th = np.asarray(check_not_complex(angles, "directions"), dtype=np.float64).reshape(-1)
    if th.shape[0] != r.shape[1]:
        raise ValueError(f"directions has {th.shape[0]} angles but responses has {r.shape[1]} columns")
    d = th.shape[0]
    if d < 4 or d % 2:
        raise ValueError(f"need an even number >= 4 of evenly spaced directions, got {d}")
    if not (isinstance(period, (int, float)) and period > 0):
        raise ValueError(f"period must be a positive number (2π for directions, π for orientations), got {period!r}")
    if not np.all(np.isfinite(r)):
        raise ValueError("responses holds non-finite values (NaN or inf)")
    if np.any(r < 0):
        raise ValueError(
            f"responses must be >= 0 (rectified firing rates), got minimum {r.min():.4g}; "
            "shift or rectify them before computing tuning metrics"
        )
    phase = np.mod(th, period) * (2 * math.pi / period)
    order = np.argsort(phase)
    steps = np.diff(np.concatenate([phase[order], phase[order][:1] + 2 * math.pi]))
    if not np.allclose(steps, 2 * math.pi / d, atol=1e-6):
        raise ValueError(
            f"directions must be {d} angles evenly spaced over one period ({math.degrees(period):g}°), "
            f"got {np.round(np.degrees(th), 3).tolist()}"
        )
    return r[:, order], th[order], phase[order]


# ------------------------------------------------------------------------------------------ von Mises fit
def fit_von_mises(responses, phases, iterations: int = 60, init_kappa=None, init_mu=None):
    """Batched Levenberg-Marquardt fit of ``b + A·exp(κ(cos(φ - μ) - 1))`` to every row of ``responses``.

    ``phases`` (D,) in radians of the full circle. Returns a dict of arrays ``b, a, kappa, mu, r2``.
    κ is kept in [1e-3, 1e3] and A ≥ 0.
    """
    y = np.asarray(check_not_complex(responses, "responses"), dtype=np.float64)
    phi = np.asarray(check_not_complex(phases, "phases"), dtype=np.float64)[None, :]
    n, d = y.shape
    vec = (y * np.exp(1j * phi)).sum(1)
    tot = y.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rbar = np.where(tot > 0, np.abs(vec) / tot, 0.0)
    check_not_complex(init_kappa, "init_kappa")
    check_not_complex(init_mu, "init_mu")
    mu = np.angle(vec) if init_mu is None else np.asarray(init_mu, dtype=np.float64).copy()
    lk = np.log(np.clip(kappa_from_resultant(rbar) if init_kappa is None else init_kappa, 0.05, 500.0))
    b = y.min(1)
    a = np.maximum(y.max(1) - b, 1e-12)
    p = np.stack([b, a, lk, mu], 1)  # κ parametrised by its log (positive, well scaled)
    lam = np.full(n, 1e-2)

    def model(p, phi):
        b, a, lk, mu = (p[:, i:i + 1] for i in range(4))
        k = np.exp(lk)
        c = np.cos(phi - mu)
        e = np.exp(k * (c - 1.0))
        f = b + a * e
        j = np.stack([np.ones_like(e), e, a * e * k * (c - 1.0), a * e * k * np.sin(phi - mu)], 2)  # (n,d,4)
        return f, j

    f, j = model(p, phi)
    sse = ((y - f) ** 2).sum(1)
    eye = np.eye(4)[None]
    active = np.arange(n)
    floor = 1e-26 * (1.0 + (y ** 2).sum(1))
    for _ in range(iterations):
        if active.size == 0:
            break
        ya, pa, fa, ja, la = y[active], p[active], f[active], j[active], lam[active]
        res = ya - fa
        jtj = np.einsum("ndi,ndj->nij", ja, ja)
        jtr = np.einsum("ndi,nd->ni", ja, res)
        diag = np.einsum("nii->ni", jtj)
        h = jtj + la[:, None, None] * (diag[:, :, None] * eye) + 1e-12 * eye
        step = np.linalg.solve(h, jtr[:, :, None])[:, :, 0]
        cand = pa + step
        cand[:, 1] = np.maximum(cand[:, 1], 0.0)
        cand[:, 2] = np.clip(cand[:, 2], math.log(1e-3), math.log(1e3))
        fc, jc = model(cand, phi)
        sc = ((ya - fc) ** 2).sum(1)
        old = sse[active]
        better = np.isfinite(sc) & (sc < old)
        p[active] = np.where(better[:, None], cand, pa)
        f[active] = np.where(better[:, None], fc, fa)
        j[active] = np.where(better[:, None, None], jc, ja)
        new = np.where(better, sc, old)
        sse[active] = new
        la = np.clip(np.where(better, la * 0.3, la * 10.0), 1e-12, 1e12)
        lam[active] = la
        done = (la >= 1e6) | (new <= floor[active]) | (better & (old - new <= 1e-7 * old))
        active = active[~done]
    sst = ((y - y.mean(1, keepdims=True)) ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / sst, np.nan)
    return {"b": p[:, 0], "a": p[:, 1], "kappa": np.exp(p[:, 2]), "mu": np.mod(p[:, 3], 2 * math.pi), "r2": r2}


# ------------------------------------------------------------------------------------------ population curve
def population_tuning_curve(responses, mask=None, preferred_index=None):
    """Curves rotated so each unit's preferred sample sits at index D/2 (offset 0), divided by their peak and
    averaged over the units in ``mask`` with a positive peak. ``preferred_index`` (N,) gives each unit's preferred
    sample (default: the sample nearest its vector-sum preferred angle, as in DESIGN §7; aligning at the largest
    sample instead would put a selection-bias spike at 0 for noisy curves). Returns ``(offset_index, ptc)``."""
    r = np.asarray(check_not_complex(responses, "responses"), dtype=np.float64)
    n, d = r.shape
    keep = r.max(1) > 0
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    if not keep.any():
        return np.arange(d) - d // 2, np.full(d, np.nan)
    rr = r[keep]
    if preferred_index is None:
        phase = np.angle((rr * np.exp(2j * np.pi * np.arange(d) / d)[None, :]).sum(1))
        peak = np.rint(np.mod(phase, 2 * np.pi) / (2 * np.pi / d)).astype(np.int64) % d
    else:
        peak = np.asarray(preferred_index, dtype=np.int64)[keep] % d
    idx = (peak[:, None] + np.arange(d)[None, :] - d // 2) % d
    aligned = np.take_along_axis(rr, idx, 1) / rr.max(1, keepdims=True)
    return np.arange(d) - d // 2, aligned.mean(0)


def curve_fwhm(curve, step_deg: float) -> float:
    """Width (degrees) of the primary peak of a periodic curve whose peak sits at index D/2, at half height
    between its minimum and its peak, with linear interpolation between samples."""
    c = np.asarray(check_not_complex(curve, "curve"), dtype=np.float64)
    d = c.shape[0]
    if not np.all(np.isfinite(c)):
        return float("nan")
    centre = d // 2
    top, bottom = c[centre], c.min()
    if top - bottom <= 0:
        return float(d * step_deg)
    half = bottom + 0.5 * (top - bottom)

    def side(direction):
        for k in range(1, d // 2 + 1):
            i0, i1 = (centre + (k - 1) * direction) % d, (centre + k * direction) % d
            if c[i1] <= half:
                frac = (c[i0] - half) / (c[i0] - c[i1])
                return (k - 1 + frac) * step_deg
        return d / 2 * step_deg

    return float(side(1) + side(-1))


# ------------------------------------------------------------------------------------------------- main
def tuning_metrics(
    responses,
    directions,
    selective_threshold: float = 0.5,
    period: float = 2 * math.pi,
    fit_iterations: int = 60,
) -> TuningMetrics:
    """Tuning metrics of N units from their responses (N, D) >= 0 to D evenly spaced ``directions`` (radians).

    ``period`` is 2π for directions (MT) and π for orientations (V1: the DSI fields then hold the orientation
    selectivity index, R_null being the orthogonal orientation). A unit is selective when it responds and its
    DSI >= ``selective_threshold`` (0.5: preferred >= 2 × null). See the module docstring for every definition.
    """
    if not (isinstance(selective_threshold, (int, float)) and 0 <= selective_threshold <= 1):
        raise ValueError(f"selective_threshold must be a number in [0, 1], got {selective_threshold!r}")
    r, th, phase = _check_inputs(responses, directions, float(period))
    n, d = r.shape
    tot = r.sum(1)
    responsive = tot > 0
    e1 = np.exp(1j * phase)[None, :]
    s1 = (r * e1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vector = np.where(responsive, s1 / np.where(responsive, tot, 1.0), np.nan + 0j)
    cv = 1.0 - np.abs(vector)
    preferred = np.mod(np.angle(vector), 2 * math.pi) * (period / (2 * math.pi))
    ipk = r.argmax(1)
    r_pref = r[np.arange(n), ipk]
    r_null = r[np.arange(n), (ipk + d // 2) % d]
    with np.errstate(invalid="ignore", divide="ignore"):
        dsi = np.where(responsive, 1.0 - r_null / np.where(responsive, r_pref, 1.0), np.nan)
        dsi_n = np.where(responsive, (r_pref - r_null) / np.where(responsive, r_pref + r_null, 1.0), np.nan)
    # axial share uses harmonics of the stimulus angle itself (meaningful for directions)
    if abs(period - 2 * math.pi) < 1e-9:
        a1 = np.abs((r * np.exp(1j * th)[None, :]).sum(1))
        a2 = np.abs((r * np.exp(2j * th)[None, :]).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            axial = np.where(a1 + a2 > 0, a2 / (a1 + a2), np.nan)
    else:
        axial = np.full(n, np.nan)
    cv_bw = von_mises_fwhm(kappa_from_resultant(1.0 - cv), period)
    cv_bw = np.where(responsive, cv_bw, np.nan)
    kappa = np.full(n, np.nan)
    r2 = np.full(n, np.nan)
    if responsive.any():
        rr = r[responsive]
        scale = rr.max(1, keepdims=True)
        fit = fit_von_mises(rr / scale, phase, iterations=fit_iterations)
        kappa[responsive] = fit["kappa"]
        r2[responsive] = fit["r2"]
    fwhm = np.where(responsive, von_mises_fwhm(kappa, period), np.nan)
    selective = responsive & (np.nan_to_num(dsi, nan=-1.0) >= selective_threshold)
    step = 2 * math.pi / d
    pref_phase = np.mod(np.angle(np.where(responsive, s1, 1.0)), 2 * math.pi)
    pref_idx = np.rint(np.mod(pref_phase - phase[0], 2 * math.pi) / step).astype(np.int64) % d
    offs, ptc = population_tuning_curve(r, responsive, preferred_index=pref_idx)
    step_deg = math.degrees(period) / d
    return TuningMetrics(
        preferred=preferred, vector=vector, r_pref=r_pref, r_null=r_null, dsi=dsi, dsi_normalised=dsi_n,
        circular_variance=cv, kappa=kappa, fwhm_deg=fwhm, cv_bandwidth_deg=cv_bw, axial_share=axial, fit_r2=r2,
        responsive=responsive, selective=selective, ptc_offsets=offs * (period / d), ptc=ptc,
        ptc_fwhm_deg=curve_fwhm(ptc, step_deg), period=float(period), selective_threshold=float(selective_threshold),
    )


# --------------------------------------------------------------------------------- spatial frequency, cardinal
@dataclass
class SFPreference:
    """Per-unit spatial-frequency preference (arrays of length N; see :func:`sf_preference`).

    ``curve`` (N, SF) is the SF tuning curve used (orientation-averaged, phase-averaged responses);
    ``preferred_sf`` the SF (cycles per image) with the largest value of the curve, ``preferred_index`` its index;
    ``centroid_sf`` the baseline-free response-weighted geometric mean SF, ``2^(Σ_s w_s log2 f_s / Σ_s w_s)`` with
    ``w_s = curve_s - min_s curve``; ``modulation`` (max - min)/(max + min) of the curve. Units whose curve is flat
    or zero (``tuned`` False) have NaN preferences."""

    spatial_freqs: np.ndarray
    curve: np.ndarray
    preferred_index: np.ndarray
    preferred_sf: np.ndarray
    centroid_sf: np.ndarray
    modulation: np.ndarray
    tuned: np.ndarray

    def summary(self, mask=None) -> Dict[str, object]:
        """Counts of preferred SFs, median centroid and modulation over tuned units (within ``mask``)."""
        keep = self.tuned if mask is None else (self.tuned & np.asarray(mask, dtype=bool))
        nsf = self.spatial_freqs.size
        counts = np.bincount(self.preferred_index[keep], minlength=nsf) if keep.any() else np.zeros(nsf, int)
        cen = self.centroid_sf[keep]
        return {
            "spatial_freqs": [float(f) for f in self.spatial_freqs],
            "num_tuned": int(keep.sum()),
            "preferred_sf_counts": [int(c) for c in counts],
            "preferred_sf_fractions": [float(c / max(int(keep.sum()), 1)) for c in counts],
            "median_centroid_sf": float(np.median(cen)) if cen.size else float("nan"),
            "median_log2_centroid_sf": float(np.median(np.log2(cen))) if cen.size else float("nan"),
            "iqr_log2_centroid_sf": (float(np.subtract(*np.percentile(np.log2(cen), [75, 25])))
                                     if cen.size else float("nan")),
            "median_sf_modulation": float(np.median(self.modulation[keep])) if keep.any() else float("nan"),
        }


def sf_preference(full, spatial_freqs, mode: str = "mean") -> SFPreference:
    """Spatial-frequency preference of N units from their phase-averaged responses ``full`` (N, D, SF) or
    (N, D, SF, TF) (``GratingResponses.full``; with TF > 1 the TF with the largest response is used per unit).

    ``mode="mean"`` (default): the SF tuning curve is the response averaged over the D orientations (the unit's
    SF tuning independent of its orientation estimate, so orientation noise does not enter it); ``mode="best"``:
    the response at the unit's best orientation for each SF (the maximum over orientations). The preferred SF is
    the SF where the curve is largest; the centroid and modulation are defined in :class:`SFPreference`. Needs
    at least 2 SFs (ValueError otherwise)."""
    r = np.asarray(check_not_complex(full, "full"), dtype=np.float64)
    if r.ndim == 4:
        best_tf = r.max(axis=(1, 2)).argmax(1)
        r = r[np.arange(r.shape[0]), :, :, best_tf]
    if r.ndim != 3:
        raise ValueError(f"full must have shape (N, D, SF) or (N, D, SF, TF), got {np.shape(full)}")
    f = np.asarray(check_not_complex(spatial_freqs, "spatial_freqs"), dtype=np.float64).reshape(-1)
    if f.size != r.shape[2]:
        raise ValueError(f"spatial_freqs has {f.size} values but full has {r.shape[2]} SFs")
    if f.size < 2:
        raise ValueError(f"SF preference needs at least 2 spatial frequencies, got {f.size}")
    if not np.all(np.isfinite(f) & (f > 0)):
        raise ValueError(f"spatial_freqs must be positive, got {f.tolist()}")
    if not np.all(np.isfinite(r)):
        raise ValueError("full holds non-finite values")
    if mode == "mean":
        curve = r.mean(1)
    elif mode == "best":
        curve = r.max(1)
    else:
        raise ValueError(f"mode must be 'mean' or 'best', got {mode!r}")
    top, low = curve.max(1), curve.min(1)
    tuned = top > low + 1e-12 * np.maximum(np.abs(top), 1.0)
    idx = curve.argmax(1)
    w = curve - low[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        logc = (w * np.log2(f)[None, :]).sum(1) / w.sum(1)
        mod = (top - low) / (np.abs(top) + np.abs(low))
    return SFPreference(
        spatial_freqs=f, curve=curve, preferred_index=idx.astype(np.int64),
        preferred_sf=np.where(tuned, f[idx], np.nan), centroid_sf=np.where(tuned, 2.0 ** logc, np.nan),
        modulation=np.where(tuned, mod, np.nan), tuned=tuned)


def cardinal_bias(preferred, num_orientations: int = 8, mask=None, period: float = math.pi) -> Dict[str, float]:
    """Cardinal bias of preferred orientations (radians, period π): the share of units (within ``mask``, finite)
    whose preferred orientation lies within ± half an orientation step (π/(2·num_orientations)) of 0° or 90°,
    against the share expected if preferences were uniform, ``2/num_orientations`` (25 % for 8 orientations).
    ``ratio`` = share / expected (1: no bias; ``num_orientations/2`` when every unit is cardinal). The null is
    uniformity (independent of positions): ``p`` is the two-sided exact binomial p-value of the count,
    ``p_greater`` the one-sided one for an excess of cardinal units. The windows are centred on sampled
    orientations, like every other window of that width, so the pull of a sampled tuning curve's vector sum
    towards the sampled angles does not favour them."""
    from scipy import stats

    d = int(num_orientations)
    if d < 4 or d % 2:
        raise ValueError(f"num_orientations must be an even integer >= 4, got {num_orientations!r}")
    a = np.asarray(check_not_complex(preferred, "preferred"), dtype=np.float64).reshape(-1)
    keep = np.isfinite(a) if mask is None else (np.isfinite(a) & np.asarray(mask, dtype=bool).reshape(-1))
    a = np.mod(a[keep], period)
    half = period / (2 * d)
    dist = np.minimum.reduce([a, np.abs(a - period / 2), period - a])  # to 0°, 90°, 180°
    cardinal = dist < half - 1e-12
    n, k = int(a.size), int(cardinal.sum())
    expected = 2.0 / d
    out = {"num_units": n, "num_cardinal": k, "expected_share": expected, "half_window_deg": math.degrees(half),
           "num_orientations": d}
    if n == 0:
        return {**out, "share": float("nan"), "ratio": float("nan"), "p": float("nan"), "p_greater": float("nan")}
    share = k / n
    return {**out, "share": float(share), "ratio": float(share / expected),
            "p": float(stats.binomtest(k, n, expected, alternative="two-sided").pvalue),
            "p_greater": float(stats.binomtest(k, n, expected, alternative="greater").pvalue)}
