"""Tuning metrics against analytic values of synthetic von Mises curves (computed independently here)."""
import math

import numpy as np
import pytest
from scipy import optimize

from tdann_fast.analysis.tuning import curve_fwhm, tuning_metrics

D = 16
THETA = np.arange(D) * 2 * np.pi / D
FINE = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)


def curve(theta, mu, kappa, base, amp, amp2=0.0, kappa2=1.0):
    """Baseline + von Mises lobe at mu + an axial (180°-periodic) lobe."""
    return (base + amp * np.exp(kappa * (np.cos(theta - mu) - 1))
            + amp2 * np.exp(kappa2 * (np.cos(2 * (theta - mu)) - 1)))


def analytic(mu, kappa, base, amp, amp2, kappa2):
    """DSI from the curve at mu and mu+π; CV and harmonics by numerical integration on a fine grid."""
    f = curve(FINE, mu, kappa, base, amp, amp2, kappa2)
    r_pref = curve(mu, mu, kappa, base, amp, amp2, kappa2)
    r_null = curve(mu + np.pi, mu, kappa, base, amp, amp2, kappa2)
    m0 = f.mean()
    a1 = abs((f * np.exp(1j * FINE)).mean())
    a2 = abs((f * np.exp(2j * FINE)).mean())
    return {"dsi": 1 - r_null / r_pref, "dsi_n": (r_pref - r_null) / (r_pref + r_null), "cv": 1 - a1 / m0,
            "axial": a2 / (a1 + a2)}


def half_width_deg(kappa):
    """Full width at half height above baseline of exp(κ(cos θ - 1)), by root finding (not the closed form)."""
    g = lambda t: np.exp(kappa * (np.cos(t) - 1)) - 0.5  # noqa: E731
    if g(np.pi) > 0:
        return 360.0
    return 2 * math.degrees(optimize.brentq(g, 0.0, np.pi, xtol=1e-14))


def test_von_mises_recovery(rng):
    n = 40
    k = rng.uniform(0.6, 4.0, n)
    b = rng.uniform(0.0, 1.0, n)
    a = rng.uniform(0.5, 3.0, n)
    idx = rng.integers(0, D, n)
    mu = THETA[idx]
    a2 = np.where(np.arange(n) % 2 == 0, 0.0, rng.uniform(0.1, 0.8, n) * a)  # half the units get an axial lobe
    k2 = rng.uniform(0.5, 2.5, n)
    r = np.stack([curve(THETA, mu[i], k[i], b[i], a[i], a2[i], k2[i]) for i in range(n)])
    m = tuning_metrics(r, THETA)
    for i in range(n):
        ref = analytic(mu[i], k[i], b[i], a[i], a2[i], k2[i])
        assert m.dsi[i] == pytest.approx(ref["dsi"], abs=1e-3)
        assert m.dsi_normalised[i] == pytest.approx(ref["dsi_n"], abs=1e-3)
        assert m.circular_variance[i] == pytest.approx(ref["cv"], abs=1e-3)
        assert m.axial_share[i] == pytest.approx(ref["axial"], abs=1e-3)
        d = abs((m.preferred[i] - mu[i] + np.pi) % (2 * np.pi) - np.pi)
        assert d < 1e-3
        if a2[i] == 0:
            assert m.fwhm_deg[i] == pytest.approx(half_width_deg(k[i]), abs=1e-3)
            assert m.kappa[i] == pytest.approx(k[i], rel=1e-3)
    sel = np.array([analytic(mu[i], k[i], b[i], a[i], a2[i], k2[i])["dsi"] >= 0.5 for i in range(n)])
    assert np.array_equal(m.selective, sel)


def test_off_grid_preferred_and_cv(rng):
    mu = rng.uniform(0, 2 * np.pi, 10)
    k = rng.uniform(0.5, 3.0, 10)
    r = np.stack([curve(THETA, mu[i], k[i], 0.2, 1.0) for i in range(10)])
    m = tuning_metrics(r, THETA)
    for i in range(10):
        ref = analytic(mu[i], k[i], 0.2, 1.0, 0.0, 1.0)
        assert m.circular_variance[i] == pytest.approx(ref["cv"], abs=1e-3)
        assert abs((m.preferred[i] - mu[i] + np.pi) % (2 * np.pi) - np.pi) < 1e-3
        assert m.fwhm_deg[i] == pytest.approx(half_width_deg(k[i]), abs=1e-3)  # fit is exact off the grid too


def test_cv_bandwidth_matches_zero_baseline_von_mises(rng):
    k = rng.uniform(0.5, 5.0, 8)
    r = np.stack([np.exp(kk * (np.cos(THETA) - 1)) for kk in k])
    m = tuning_metrics(r, THETA)
    # without a baseline the CV-derived bandwidth equals the true half-height width
    for i, kk in enumerate(k):
        assert m.cv_bandwidth_deg[i] == pytest.approx(half_width_deg(kk), abs=0.05)


def test_orientation_period_pi(rng):
    ori = np.arange(8) * np.pi / 8
    mu = ori[rng.integers(0, 8, 6)]
    k = rng.uniform(0.5, 3.0, 6)
    r = np.stack([0.1 + np.exp(k[i] * (np.cos(2 * (ori - mu[i])) - 1)) for i in range(6)])
    m = tuning_metrics(r, ori, period=np.pi)
    fine = np.linspace(0, np.pi, 100_000, endpoint=False)
    for i in range(6):
        f = 0.1 + np.exp(k[i] * (np.cos(2 * (fine - mu[i])) - 1))
        cv = 1 - abs((f * np.exp(2j * fine)).mean()) / f.mean()
        assert m.circular_variance[i] == pytest.approx(cv, abs=1e-3)
        assert abs((m.preferred[i] - mu[i] + np.pi / 2) % np.pi - np.pi / 2) < 1e-3
        assert m.fwhm_deg[i] == pytest.approx(half_width_deg(k[i]) / 2, abs=1e-3)
    assert np.all(np.isnan(m.axial_share))


def test_population_tuning_curve_and_dead_units(rng):
    k = 2.0
    mu_idx = rng.integers(0, D, 20)
    r = np.stack([np.exp(k * (np.cos(THETA - THETA[j]) - 1)) for j in mu_idx])
    r = np.vstack([r, np.zeros((3, D))])  # dead units
    m = tuning_metrics(r, THETA)
    expect = np.exp(k * (np.cos(m.ptc_offsets) - 1))
    assert np.allclose(m.ptc, expect, atol=1e-12)
    assert m.ptc_fwhm_deg == pytest.approx(curve_fwhm(expect, 22.5))
    assert 0.8 * half_width_deg(k) < m.ptc_fwhm_deg < 1.2 * half_width_deg(k)
    assert not m.responsive[-3:].any() and not m.selective[-3:].any()
    assert np.all(np.isnan(m.dsi[-3:])) and np.all(np.isfinite(m.dsi[:-3]))
    s = m.summary()
    assert s["num_responsive"] == 20 and np.isfinite(s["median_dsi"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="responses"):
        tuning_metrics(-np.ones((2, D)), THETA)
    with pytest.raises(ValueError, match="directions"):
        tuning_metrics(np.ones((2, D)), THETA[:-1])
    with pytest.raises(ValueError, match="evenly spaced"):
        tuning_metrics(np.ones((2, D)), THETA ** 1.1)
    with pytest.raises(ValueError, match="non-finite"):
        tuning_metrics(np.full((2, D), np.nan), THETA)
    with pytest.raises(ValueError, match="selective_threshold"):
        tuning_metrics(np.ones((2, D)), THETA, selective_threshold=2)


def test_ptc_alignment_with_offset_directions(rng):
    theta = np.arange(D) * 2 * np.pi / D + np.pi / D  # 11.25°, 33.75°, ...
    idx = rng.integers(0, D, 12)
    r = np.stack([0.2 + np.exp(1.5 * (np.cos(theta - theta[j]) - 1)) for j in idx])
    m = tuning_metrics(r, theta)
    expect = (0.2 + np.exp(1.5 * (np.cos(m.ptc_offsets) - 1))) / 1.2
    assert np.allclose(m.ptc, expect, atol=1e-12)
