"""Map statistics against position-shuffled nulls (tdann_fast.analysis.maps): ground truth (ring-spectrum Gaussian
random fields, density π/Λ²), shuffled and pure-noise controls, a random-init r3d_18, argument errors, the
Rayleigh test and determinism."""
import json
import math

import numpy as np
import pytest

from tdann_fast.analysis.maps import (SUMMARY_KEYS, count_window, inner_extent, map_statistics, rayleigh_test,
                                      ring_spectrum_field, spectral_peak, synthetic_tuning_map)
from tdann_fast.analysis.tuning import tuning_metrics

SIDE = 5.0
N_UNITS = 8000
# (Λ mm, period, seed): both column spacings, directions and orientations, one seed each
CASES = [(0.5, 2 * math.pi, 0), (0.8, math.pi, 1), (0.8, 2 * math.pi, 2), (0.5, math.pi, 3)]


def _ground_truth(lam, period, seed):
    d = 16 if period > 4 else 8
    pos = np.random.default_rng(seed).uniform(0, SIDE, (N_UNITS, 2))
    resp = synthetic_tuning_map(pos, lam, num_directions=d, seed=seed, period=period)
    tm = tuning_metrics(resp, np.arange(d) * period / d, period=period, fit_iterations=5)
    return pos, tm


@pytest.fixture(scope="module")
def ground_truth():
    out = {}
    for lam, period, seed in CASES:
        pos, tm = _ground_truth(lam, period, seed)
        ms = map_statistics(pos, tm.vector, period, extent=(0, SIDE, 0, SIDE), seed=seed, sigmas_mm=[0.1, 0.3],
                            mask=tm.responsive)
        out[(lam, period, seed)] = (pos, tm, ms)
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"lam{c[0]}-{'dir' if c[1] > 4 else 'ori'}-s{c[2]}" for c in CASES])
def test_ground_truth_map_is_detected(ground_truth, case):
    lam, period, seed = case
    _, _, ms = ground_truth[case]
    assert ms.spacing_resolved and ms.detected, ms.verdict()
    assert ms.spacing_mm == pytest.approx(lam, rel=0.05)
    assert ms.density_per_spacing2 == pytest.approx(math.pi, rel=0.15)
    # counting σ is tied to Λ: max(Λ/12, 0.8 unit spacings)
    unit = math.sqrt(SIDE * SIDE / ms.num_units)
    assert ms.sigma_mm == pytest.approx(max(ms.spacing_mm / 12, 0.8 * unit))
    assert ms.grid_mm == pytest.approx(ms.sigma_mm / 2)
    # the map is far smoother than its nulls, whose smoothness is ~0
    assert ms.smoothness > 0.5
    assert abs(ms.smoothness_null.mean) < 0.01 and ms.smoothness_null.n == 999
    assert ms.smoothness_null.p == pytest.approx(1 / 1000)
    assert ms.spacing_p == pytest.approx(1 / 21) and ms.spectrum_peak_ratio > 3
    # the model's spectrum peaks near 1/Λ, where the nulls are flat
    kpk = ms.spectrum_k[np.argmax(np.where(ms.spectrum_k > 0, ms.spectrum_ratio, 0))]
    assert kpk == pytest.approx(1 / lam, rel=0.15)
    kind = "direction" if period > 4 else "orientation"
    v = ms.verdict()
    assert v.startswith(f"{kind} map detected: Λ = {ms.spacing_mm:.2f} mm") and "pinwheels per Λ²" in v
    assert ms.pinwheel.charges.size == ms.num_pinwheels
    assert ms.pinwheel.spacing_mm == ms.spacing_mm
    # density against σ: the nulls' smoothed white noise has about 1/(4πσ²) winding centres (GRF with <k²> = 1/σ²)
    s = ms.density_vs_sigma["sigma_mm"][0]
    assert ms.density_vs_sigma["null_mean"][0] == pytest.approx(1 / (4 * math.pi * s * s), rel=0.3)


def test_ground_truth_position_shuffled_is_not_detected(ground_truth):
    pos, tm, _ = ground_truth[CASES[0]]
    v = tm.vector[np.random.default_rng(7).permutation(tm.vector.size)]
    ms = map_statistics(pos, v, extent=(0, SIDE, 0, SIDE), seed=1, sigmas_mm=[0.2])
    assert not ms.detected
    assert not ms.spacing_resolved and math.isnan(ms.spacing_mm) and math.isnan(ms.density_per_spacing2)
    assert ms.smoothness_null.p > 0.01 and abs(ms.smoothness) < 4 * ms.smoothness_null.sd
    assert ms.sigma_mm == pytest.approx(3.0 / math.sqrt(ms.num_units / (SIDE * SIDE)), rel=0.02)
    v = ms.verdict()
    assert v.startswith("no direction map detected: smoothness") and "column spacing not resolved" in v


def test_pure_noise_is_not_detected():
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 4.0, (3000, 2))
    v = np.exp(1j * rng.uniform(0, 2 * np.pi, 3000)) * rng.uniform(0.1, 1.0, 3000)
    ms = map_statistics(pos, v, math.pi, seed=2, sigmas_mm=[0.15, 0.3])
    assert not ms.detected and not ms.spacing_resolved
    assert abs(ms.smoothness_null.mean) < 0.002
    assert 0 < ms.smoothness_null.sd < 0.02 and ms.smoothness_null.values.size == 999
    assert ms.smoothness_null.p > 0.01 and ms.smoothness < ms.smoothness_null.mean + 3 * ms.smoothness_null.sd
    assert ms.verdict().startswith("no orientation map detected")


def test_smoothness_grows_with_map_order():
    """Mixing a smooth map with noise: smoothness increases monotonically with the map's share."""
    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 4.0, (3000, 2))
    smooth = np.exp(1j * 2 * np.pi * pos[:, 0] / 2.0)
    noise = np.exp(1j * rng.uniform(0, 2 * np.pi, 3000))
    vals = []
    for w in (0.0, 0.3, 0.6, 1.0):
        v = w * smooth + (1 - w) * noise
        v = v / np.abs(v)
        vals.append(map_statistics(pos, v, seed=0, num_shuffles=4, sigmas_mm=[0.3], smoothness_shuffles=50).smoothness)
    assert abs(vals[0]) < 0.03 and vals[-1] > 0.9
    assert np.all(np.diff(vals) > 0.02)


def test_random_init_r3d18_is_not_detected():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from tdann_fast import presets
    from tdann_fast.analysis.responses import grating_responses
    from tdann_fast.analysis.stimuli import DriftingGratings

    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(weights=None).eval()
    layer, size = "layer3.1", 32
    shapes, specs = presets.r3d18_layer_shapes(size), presets.r3d18_mt_specs()
    sheet = presets.build_sheets({layer: shapes[layer]}, {layer: specs[layer]}, seed=5, num_neighbourhoods=64)[layer]
    stim = DriftingGratings(frames=4, size=size, spatial_freqs=(2.0, 4.0), temporal_freqs=(0.125,), num_phases=1)
    gr = grating_responses(model, layer, stim, batch_size=8, progress=False)
    tm = tuning_metrics(gr.responses, gr.directions, period=gr.period, fit_iterations=5)
    side = float(sheet.side_mm)
    ms = map_statistics(sheet.positions.numpy(), tm.vector, gr.period, extent=(0, side, 0, side), mask=tm.responsive,
                        margin_mm=side / 8, seed=0)
    assert not ms.detected, ms.verdict()
    assert abs(ms.smoothness) < 0.05
    assert ms.verdict().startswith("no direction map detected")
    s = ms.summary()
    assert s["detected"] is False and s["num_units"] == ms.num_units <= int(tm.responsive.sum())


def test_margin_drops_border_units_and_records_the_inner_extent():
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, 4.0, (4000, 2))
    v = np.exp(1j * rng.uniform(0, 2 * np.pi, 4000))
    v[:100] = np.nan  # unresponsive units are dropped
    mask = np.ones(4000, bool)
    mask[100:300] = False
    ms = map_statistics(pos, v, extent=(0, 4, 0, 4), margin_mm=0.5, mask=mask, num_shuffles=3, sigmas_mm=[0.3],
                        smoothness_shuffles=10)
    inside = np.all((pos >= 0.5) & (pos <= 3.5), axis=1)
    assert ms.num_units == int(np.sum(inside[300:]))
    assert ms.inner_extent == (0.5, 3.5, 0.5, 3.5) and ms.extent == (0, 4, 0, 4) and ms.margin_mm == 0.5
    # pinwheels are counted only where the kernel is not cut by the inner extent's edge
    w = count_window(ms.inner_extent, ms.sigma_mm)
    assert w[0] == pytest.approx(0.5 + 2 * ms.sigma_mm) and ms.area_mm2 <= (w[1] - w[0]) * (w[3] - w[2]) + 1e-9
    assert ms.area_mm2 > 0.8 * (w[1] - w[0]) * (w[3] - w[2])
    assert ms.pinwheel.grid_x.min() >= 0.5 and ms.pinwheel.grid_x.max() <= 3.5
    assert inner_extent((0, 4, 0, 2), 0.25) == (0.25, 3.75, 0.25, 1.75)


def test_argument_errors_name_the_argument():
    rng = np.random.default_rng(6)
    pos = rng.uniform(0, 2, (200, 2))
    v = np.exp(1j * rng.uniform(0, 2 * np.pi, 200))
    kw = dict(num_shuffles=2, sigmas_mm=[0.3], smoothness_shuffles=5)
    with pytest.raises(ValueError, match="^positions"):
        map_statistics(pos[:, :1], v, **kw)
    with pytest.raises(ValueError, match="^positions"):
        map_statistics(np.where(np.arange(200)[:, None] == 3, np.nan, pos), v, **kw)
    with pytest.raises(ValueError, match="^vectors"):
        map_statistics(pos, v[:-1], **kw)
    with pytest.raises(TypeError, match="^vectors"):
        map_statistics(pos, np.angle(v), **kw)
    with pytest.raises(ValueError, match="^vectors"):
        map_statistics(pos, np.full(200, np.nan + 0j), **kw)
    with pytest.raises(ValueError, match="^num_shuffles"):
        map_statistics(pos, v, num_shuffles=1)
    with pytest.raises(TypeError, match="^num_shuffles"):
        map_statistics(pos, v, num_shuffles=2.5)
    with pytest.raises(ValueError, match="^margin_mm"):
        map_statistics(pos, v, extent=(0, 2, 0, 2), margin_mm=1.0, **kw)
    with pytest.raises(ValueError, match="^margin_mm"):
        map_statistics(pos, v, margin_mm=-0.1, **kw)
    with pytest.raises(ValueError, match="^sigma_mm"):
        map_statistics(pos, v, sigma_mm=0.0, **kw)
    with pytest.raises(TypeError, match="^sigma_mm"):
        map_statistics(pos, v, sigma_mm="wide", **kw)
    with pytest.raises(ValueError, match="^grid_mm"):
        map_statistics(pos, v, sigma_mm=0.2, grid_mm=0.15, **kw)
    with pytest.raises(ValueError, match="^sigmas_mm"):
        map_statistics(pos, v, num_shuffles=2, sigmas_mm=[0.1, -1])
    with pytest.raises(ValueError, match="^extent"):
        map_statistics(pos, v, extent=(0, 2, 2, 0), **kw)
    with pytest.raises(ValueError, match="^mask"):
        map_statistics(pos, v, mask=np.ones(10, bool), **kw)
    with pytest.raises(ValueError, match="^alpha_level"):
        map_statistics(pos, v, alpha_level=1.5, **kw)
    with pytest.raises(ValueError, match="^period"):
        map_statistics(pos, v, -1.0, **kw)
    with pytest.raises(ValueError, match="^spacing_mm"):
        ring_spectrum_field(pos, 0.0)
    with pytest.raises(ValueError, match="^angles"):
        rayleigh_test([0.1])
    with pytest.raises(ValueError, match="^weights"):
        rayleigh_test([0.1, 0.2, 0.3], weights=[1, -1, 1])


def test_rayleigh_test():
    rng = np.random.default_rng(8)
    # uniform angles: p-values are ~uniform on [0, 1] (the approximation keeps the level)
    ps = np.array([rayleigh_test(rng.uniform(0, 2 * np.pi, 30))[2] for _ in range(400)])
    assert 0.02 < np.mean(ps < 0.05) < 0.09 and 0.4 < np.median(ps) < 0.6
    # concentrated angles (orientation period π): tiny p, mean angle found
    a = np.mod(0.5 + 0.2 * rng.standard_normal(200), np.pi)
    rbar, z, p, mean = rayleigh_test(a, period=np.pi)
    assert p < 1e-30 and rbar > 0.8 and mean == pytest.approx(0.5, abs=0.05)
    # known value: n = 10 directions with R̄ = 0.5 exactly (5 at 0, 5 spread to cancel) against the formula
    a = np.array([0.0] * 5 + list(np.arange(5) * 2 * np.pi / 5 + 0.3))
    rbar, z, p, _ = rayleigh_test(a)
    assert rbar == pytest.approx(0.5) and z == pytest.approx(10 * 0.25)
    assert p == pytest.approx(math.exp(math.sqrt(1 + 40 + 4 * (100 - 25)) - 21))  # 0.0794
    assert p == pytest.approx(0.0794, abs=5e-4)
    # weights: equal weights change nothing; zero weights drop samples
    assert rayleigh_test(a, weights=np.full(10, 3.0))[2] == pytest.approx(p)
    b = np.concatenate([a, rng.uniform(0, 2 * np.pi, 7)])
    assert rayleigh_test(b, weights=np.r_[np.ones(10), np.zeros(7)])[2] == pytest.approx(p)


def test_ring_spectrum_field_statistics():
    rng = np.random.default_rng(9)
    from scipy.special import j0

    d = rng.uniform(0, 6, (4000, 2))
    power, corr = [], {0.1: [], 0.23: [], 0.4: []}
    for seed in range(6):
        a = ring_spectrum_field(d, 0.6, seed=seed)
        power.append(np.mean(np.abs(a) ** 2))
        # autocorrelation of a thin ring field is J0(2π r/Λ) (first zero at r ≈ 0.383 Λ)
        for r in corr:
            ang = rng.uniform(0, 2 * np.pi, 4000)
            b = ring_spectrum_field(d + r * np.stack([np.cos(ang), np.sin(ang)], 1), 0.6, seed=seed)
            corr[r].append(np.mean((a * np.conj(b)).real) / np.mean(np.abs(a) ** 2))
    assert np.mean(power) == pytest.approx(1.0, rel=0.1)
    for r, c in corr.items():
        assert np.mean(c) == pytest.approx(j0(2 * np.pi * r / 0.6), abs=0.08)
    assert not np.allclose(ring_spectrum_field(d, 0.6, seed=0), ring_spectrum_field(d, 0.6, seed=1))


def test_summary_keys_json_and_determinism(ground_truth):
    pos, tm, ms = ground_truth[CASES[1]]
    s = ms.summary()
    assert tuple(s) == SUMMARY_KEYS
    assert set(s["density_vs_sigma"]) == {"sigma_mm", "model", "null_mean", "null_sd"}
    for k, v in s.items():
        if k not in ("detected", "spacing_resolved", "verdict", "density_vs_sigma", "num_units", "num_shuffles",
                     "num_pinwheels"):
            assert type(v) is float, k
    assert type(s["detected"]) is bool and type(s["num_pinwheels"]) is int and s["verdict"] == ms.verdict()
    json.dumps(s)
    # same seed, same summary (a smaller map: 2000 units on 3 × 3 mm); another seed, other nulls
    pos = np.random.default_rng(12).uniform(0, 3.0, (2000, 2))
    v = np.exp(1j * np.angle(ring_spectrum_field(pos, 0.6, seed=12)))
    kw = dict(extent=(0, 3, 0, 3), sigmas_mm=[0.1, 0.3], smoothness_shuffles=100)
    first = map_statistics(pos, v, seed=5, **kw).summary()
    assert json.dumps(map_statistics(pos, v, seed=5, **kw).summary()) == json.dumps(first)
    other = map_statistics(pos, v, seed=6, **kw)
    assert other.smoothness == first["smoothness"] and other.smoothness_null.mean != first["smoothness_null_mean"]


def test_smooth_map_without_a_column_period_is_not_a_map():
    """A smooth low-pass Gaussian random field (power falling monotonically with k, no ring): smoothness is highly
    significant and the spectrum stands far above the nulls, but only at the lowest wavenumbers, so no column
    spacing is resolved (no interior peak) and no map is detected."""
    rng = np.random.default_rng(10)
    pos = rng.uniform(0, 3.0, (2000, 2))
    kv = rng.normal(0, 0.25, (256, 2))  # cycles/mm
    z = np.exp(2j * np.pi * pos @ kv.T) @ (rng.standard_normal(256) + 1j * rng.standard_normal(256))
    ms = map_statistics(pos, np.exp(1j * np.angle(z)), extent=(0, 3, 0, 3), seed=0, sigmas_mm=[0.3],
                        smoothness_shuffles=200)
    assert ms.smoothness_null.p < 0.01 and ms.smoothness > ms.smoothness_null.mean + 3 * ms.smoothness_null.sd
    assert ms.spectrum_peak_ratio > 2
    assert not ms.spacing_resolved and not ms.detected
    assert ms.failed_criteria() == ["column spacing not resolved"]
    assert ms.verdict().endswith("; column spacing not resolved")


def test_spectral_peak_false_resolution_rate():
    """Exchangeable spectra (the model is one more null): the peak test pays for choosing the peak (maximum
    statistic over wavenumbers), so a spacing is resolved in at most ~1/(n + 1) of cases (choosing the largest bin
    and comparing it with the nulls at that bin alone would resolve about a third)."""
    rng = np.random.default_rng(11)
    k = np.arange(40) * 0.1
    taper = np.exp(-k ** 2)
    modes = np.maximum(np.arange(40) * 6, 1)
    hits = 0
    for _ in range(2000):
        spectra = taper * rng.gamma(modes, 1.0 / modes, size=(21, 40))  # mean power per mode of each bin
        hits += spectral_peak(k, spectra, 2, 35)["resolved"]
    assert hits / 2000 < 1 / 21 + 0.01
    # a real peak at k = 1.5 is resolved and located
    spectra = taper * rng.gamma(modes, 1.0 / modes, size=(21, 40))
    spectra[0] *= 1 + 4 * np.exp(-0.5 * ((k - 1.5) / 0.1) ** 2)
    res = spectral_peak(k, spectra, 2, 35)
    assert res["resolved"] and res["spacing_mm"] == pytest.approx(1 / 1.5, rel=0.03) and res["p"] == 1 / 21
