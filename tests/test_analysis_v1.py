"""V1 analysis of image models: spatial-frequency preference and its map, cardinal bias, static-grating SFs, and the
orientation path of analyze_model / analyze_checkpoint for a resnet18-like bundle."""
import json
import math

import numpy as np
import pytest
import torch

from tdann_fast.analysis import analyze_model
from tdann_fast.analysis.analyze import sf_map_analysis
from tdann_fast.analysis.maps import scalar_map_statistics
from tdann_fast.analysis.stimuli import DriftingGratings, StaticGratings
from tdann_fast.analysis.tuning import cardinal_bias, sf_preference
from _image_models import TinyImageNet, grid_positions as _grid_positions

SFS = np.array([1.0, 2.0, 4.0, 8.0, 16.0])


def _planted_full(log2_pref, rng, d=8, noise=0.02, octaves=1.0):
    """(N, D, SF) responses: log-Gaussian SF tuning around 2^log2_pref (``octaves`` sd) times von Mises orientation
    tuning around a random orientation, baseline 0.1, multiplicative noise."""
    n = log2_pref.size
    sf = np.exp(-0.5 * ((np.log2(SFS)[None, :] - log2_pref[:, None]) / octaves) ** 2)         # (N, SF)
    th = np.arange(d) * (math.pi / d)
    mu = rng.uniform(0, math.pi, n)
    ori = np.exp(2.0 * (np.cos(2 * (th[None, :] - mu[:, None])) - 1.0))                     # (N, D)
    full = 0.1 + ori[:, :, None] * sf[:, None, :]
    return np.maximum(full * (1 + noise * rng.standard_normal(full.shape)), 0.0)


def test_static_grating_default_sfs_span_octaves_below_half_nyquist():
    for size, lo in ((64, 1.0), (112, 1.75), (224, 3.5)):
        f = StaticGratings(size=size).spatial_freqs
        assert len(f) == 5 and f[0] == pytest.approx(lo) and f[-1] == pytest.approx(size / 4)
        assert np.allclose(np.diff(np.log2(f)), 1.0)              # octave steps
    assert StaticGratings(size=32).spatial_freqs == (1.0, 2.0, 4.0, 8.0)   # < 1 cycle per image dropped
    assert StaticGratings(size=64, spatial_freqs=(3,)).spatial_freqs == (3.0,)   # the caller's SFs are kept
    assert DriftingGratings().spatial_freqs == (2.0, 4.0, 8.0)   # the video path's defaults are unchanged


def test_sf_preference_recovers_planted_tuning(rng):
    n = 600
    idx = rng.integers(0, SFS.size, n)
    for mode in ("mean", "best"):
        sfp = sf_preference(_planted_full(np.log2(SFS[idx]), rng), SFS, mode=mode)
        assert np.array_equal(sfp.preferred_index, idx) and np.allclose(sfp.preferred_sf, SFS[idx])
        assert sfp.tuned.all()
    # continuous preferences inside the range: the baseline-free log2 centroid follows them (within 0.3 octave)
    mu = rng.uniform(1.0, 3.0, n)
    sfp = sf_preference(_planted_full(mu, rng), SFS)
    err = np.log2(sfp.centroid_sf) - mu
    assert np.max(np.abs(err)) < 0.3 and np.corrcoef(np.log2(sfp.centroid_sf), mu)[0, 1] > 0.97
    # a (N, D, SF, TF) array takes the best TF; flat or silent units are not tuned; one SF is refused
    full = _planted_full(np.log2(SFS[idx]), rng)
    four = np.stack([0.2 * full, full], -1)
    assert np.array_equal(sf_preference(four, SFS).preferred_index, idx)
    full[:3] = 0.0
    full[3:5] = 0.7
    s = sf_preference(full, SFS)
    assert not s.tuned[:5].any() and np.isnan(s.centroid_sf[:5]).all() and s.tuned[5:].all()
    assert s.summary()["num_tuned"] == n - 5 and sum(s.summary()["preferred_sf_counts"]) == n - 5
    with pytest.raises(ValueError, match="at least 2"):
        sf_preference(full[:, :, :1], SFS[:1])
    with pytest.raises(ValueError, match="mode"):
        sf_preference(full, SFS, mode="median")


def test_sf_map_smoothness_planted_field_and_its_shuffle(rng):
    """A smooth planted log2-SF field (plane waves, 1.5-2 mm periods on a 4 mm sheet) gives a significant SF map
    with the responses' noise; the same units with shuffled positions do not."""
    n = 3000
    pos = rng.uniform(0, 4.0, (n, 2))
    ph = rng.uniform(0, 2 * math.pi, 2)
    mu = 2.0 + 0.8 * np.sin(2 * math.pi * pos[:, 0] / 1.5 + ph[0]) + 0.6 * np.cos(2 * math.pi * pos[:, 1] / 2 + ph[1])
    full = _planted_full(mu, rng, noise=0.1)
    responsive = np.ones(n, dtype=bool)
    out, arrays = sf_map_analysis(full, SFS, pos, responsive, extent=(0, 4, 0, 4), margin_mm=0.25,
                                  seed=int(rng.integers(1 << 20)), num_shuffles=199)
    m = out["map"]
    assert out["measured"] and m["significant"] and m["smoothness"] > 0.5
    assert m["smoothness_p"] == pytest.approx(1 / 200) and m["smoothness"] > m["smoothness_null_mean"] + 10 * m[
        "smoothness_null_sd"]
    assert abs(m["smoothness_null_mean"]) < 0.05 and out["map_preferred_index"]["significant"]
    assert arrays["sf_centroid"].shape == (n,) and np.isfinite(arrays["_map"].smoothed[arrays["_map"].valid]).all()
    shuffled, _ = sf_map_analysis(full, SFS, pos[rng.permutation(n)], responsive, extent=(0, 4, 0, 4),
                                  margin_mm=0.25, seed=int(rng.integers(1 << 20)), num_shuffles=199)
    s = shuffled["map"]
    assert s["smoothness"] < s["smoothness_null_mean"] + 4.5 * s["smoothness_null_sd"]
    assert abs(s["smoothness"]) < 0.1
    # scalar maps: complex values are refused; one SF is reported as not measured
    with pytest.raises(TypeError, match="real"):
        scalar_map_statistics(pos, mu + 0j)
    one, arr = sf_map_analysis(full[:, :, :1], SFS[:1], pos, responsive)
    assert one["measured"] is False and "not measured" in one["reason"] and arr == {}


def test_cardinal_bias_on_planted_preferences(rng):
    n = 4000
    half = math.pi / 16
    cardinal = rng.choice([0.0, math.pi / 2, math.pi], n) + rng.uniform(-0.95 * half, 0.95 * half, n)
    c = cardinal_bias(np.mod(cardinal, math.pi), 8)
    assert c["share"] == 1.0 and c["ratio"] == pytest.approx(4.0) and c["expected_share"] == 0.25
    assert c["p"] < 1e-100 and c["p_greater"] < 1e-100 and c["half_window_deg"] == pytest.approx(11.25)
    u = cardinal_bias(rng.uniform(0, math.pi, n), 8)
    assert abs(u["ratio"] - 1.0) < 0.15 and u["p"] > 1e-6 and u["p_greater"] > 1e-6
    oblique = np.mod(rng.choice([math.pi / 4, 3 * math.pi / 4], n) + rng.uniform(-0.3, 0.3, n), math.pi)
    o = cardinal_bias(oblique, 8)
    assert o["ratio"] == 0.0 and o["p"] < 1e-100 and o["p_greater"] == pytest.approx(1.0)
    # 16 orientations: windows of ±5.625°, 12.5 % expected, ratio 8 when all cardinal
    c16 = cardinal_bias(np.mod(rng.choice([0.0, math.pi / 2], n) + rng.uniform(-0.09, 0.09, n), math.pi), 16)
    assert c16["expected_share"] == 0.125 and c16["ratio"] == pytest.approx(8.0)
    # mask and NaN: only the kept, finite units count
    a = np.concatenate([np.zeros(10), np.full(30, math.pi / 4), [np.nan] * 5])
    mk = cardinal_bias(a, 8, mask=np.arange(a.size) >= 5)
    assert mk["num_units"] == 35 and mk["num_cardinal"] == 5
    assert math.isnan(cardinal_bias([], 8)["ratio"])
    with pytest.raises(ValueError, match="even"):
        cardinal_bias(a, 5)


def test_analyze_image_model_writes_v1_keys_and_figures(tmp_path, rng):
    torch.manual_seed(int(rng.integers(1 << 30)))
    pos = _grid_positions(16, 8, 8, 3.0, rng)
    kw = dict(frames=None, size=32, layer="layer2", progress=False, num_phases=2, sigma_mm=0.2, num_shuffles=5)
    ctrl = analyze_model(TinyImageNet(), pos, tmp_path / "ctrl", model_name="tiny (random init)", **kw)
    m = analyze_model(TinyImageNet(), pos, tmp_path / "m", controls={"random init": tmp_path / "ctrl"}, **kw)
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["stimuli"]["spatial_freqs"] == [1.0, 2.0, 4.0, 8.0]   # size-32 defaults
    cb = saved["cardinal_bias"]["selective"]
    assert set(saved["cardinal_bias"]) == {"selective", "selective_inside"}
    assert cb["expected_share"] == 0.25 and cb["num_units"] == round(saved["tuning"]["selective_fraction"] * 1024)
    assert saved["controls"]["random init"]["cardinal_bias"] == ctrl["cardinal_bias"]
    sf = saved["sf_preference"]
    assert sf["measured"] and sf["spatial_freqs"] == [1.0, 2.0, 4.0, 8.0]
    assert 0 < sf["map"]["smoothness_p"] <= 1 and sf["map"]["num_shuffles"] == 999
    assert sum(sf["preferred_sf_counts"]) == sf["num_tuned"] > 0
    assert (tmp_path / "m" / "sf_preference_map.png").stat().st_size > 10_000
    assert m["files"]["sf_map"].endswith("sf_preference_map.png")
    npz = np.load(tmp_path / "m" / "tuning.npz")
    assert npz["sf_centroid"].shape == (1024,) and npz["sf_curve"].shape == (1024, 4)
    report = (tmp_path / "m" / "report.md").read_text()
    assert report.splitlines()[2] == f"**{saved['verdict']}**"
    assert "## Cardinal bias" in report and "## Spatial-frequency preference map" in report
    assert "pixel grid" in report and "| selective | random init |" in report
    assert "![sf_map](sf_preference_map.png)" in report and "Ringach et al. 2002" in report
    # one SF: not measured, said so, no SF figure
    one = analyze_model(TinyImageNet(), pos, tmp_path / "one", spatial_freqs=(2,), **kw)
    assert one["sf_preference"]["measured"] is False and "sf_map" not in one["files"]
    assert "SF preference not measured: one spatial frequency" in (tmp_path / "one" / "report.md").read_text()
    assert "No random-init control" in (tmp_path / "one" / "report.md").read_text()


def test_analyze_checkpoint_resnet18_bundle(tmp_path, rng, monkeypatch):
    """An image bundle (arch resnet18, frames None) goes down the orientation path at the default layer
    layer2.1, with a random-init control of the same architecture on the same sheet."""
    import types

    import tdann_fast.train.checkpoint as ckpt
    from tdann_fast.analysis import analyze_checkpoint
    from tdann_fast.errors import ConfigError
    from tdann_fast.sheet import CorticalSheet

    pos = _grid_positions(16, 8, 8, 3.0, rng).astype(np.float32)
    sheet = CorticalSheet(torch.from_numpy(pos), 3.0, 1.0, neighbourhoods=torch.arange(64).view(2, 32),
                          shape=(16, 8, 8))
    bundle = types.SimpleNamespace(encoder=TinyImageNet().eval(), sheets={"layer2.1": sheet}, frames=None, size=32,
                                   mean=None, std=None, stage=6, alpha={"layer2.1": 0.5}, config={"seed": 3},
                                   step=11, arch="resnet18", task="image_simclr")
    monkeypatch.setattr(ckpt, "load_for_analysis", lambda path, map_location="cpu": bundle)
    m = analyze_checkpoint("run", tmp_path, progress=False, num_phases=2, spatial_freqs=(2, 4), sigma_mm=0.25,
                           num_shuffles=5)
    assert m["kind"] == "orientation" and m["layer"] == "layer2.1" and m["model"] == "resnet18"
    assert m["arch"] == "resnet18" and m["task"] == "image_simclr" and m["alpha"] == 0.5
    assert m["stimuli"]["mean"] == [0.485, 0.456, 0.406]   # ImageNet normalisation when the bundle gives none
    ctrl = json.loads((tmp_path / "controls" / "random_init" / "metrics.json").read_text())
    assert ctrl["model"] == "resnet18 (random init)" and ctrl["kind"] == "orientation"
    assert "cardinal_bias" in ctrl and ctrl["sf_preference"]["spatial_freqs"] == [2.0, 4.0]
    assert m["controls"]["random init"]["sf_preference"] == ctrl["sf_preference"]
    assert "- **task**: image_simclr" in (tmp_path / "report.md").read_text()
    bundle.arch = "vit_b_16"
    with pytest.raises(ConfigError, match="no default layer"):
        analyze_checkpoint("run", tmp_path / "x", progress=False)
