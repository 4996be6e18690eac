"""End-to-end analysis on small random models: stimuli, responses, figures, metrics.json, report.md, CLI, sweep."""
import argparse
import json

import numpy as np
import pytest
import torch
from torch import nn

from tdann_fast.analysis import analyze_model
from tdann_fast.analysis.commands import register
from tdann_fast.analysis.responses import grating_responses, layer_responses
from tdann_fast.analysis.stimuli import DriftingGratings, StaticGratings
from _image_models import TinyImageNet, grid_positions as _grid_positions


class TinyVideoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 8, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv3d(8, 16, 3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.head = nn.Conv3d(16, 4, 1)

    def forward(self, x):
        return self.head(self.layer3(self.stem(x)))


def _png_ok(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] > 150 and img.shape[1] > 150
    assert float(np.var(img[..., :3])) > 1e-3  # not blank


def test_drifting_gratings_move_in_their_direction():
    g = DriftingGratings(frames=4, size=32, num_directions=8, spatial_freqs=(2,), temporal_freqs=(0.125,),
                         num_phases=1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert len(g) == 8
    clips = g.clips(range(8))
    assert clips.shape == (8, 3, 4, 32, 32)
    assert torch.allclose(clips[:, 0], clips[:, 1])  # grey
    # direction 0 (rightwards): frame t+1 is frame t shifted right by tf/sf of the image width = 2 pixels
    c0 = clips[0, 0]
    assert torch.allclose(c0[1, :, 2:], c0[0, :, :-2], atol=1e-5)
    # direction 90° (upwards): frame t+1 is frame t shifted up (towards row 0)
    c2 = clips[2, 0]
    assert torch.allclose(c2[1, :-2, :], c2[0, 2:, :], atol=1e-5)
    with pytest.raises(ValueError, match="num_directions"):
        DriftingGratings(num_directions=5)
    with pytest.raises(ValueError, match="mean"):
        DriftingGratings(mean=(0.5, 0.5))


def test_layer_responses_stop_after_the_layer():
    model = TinyVideoNet()

    def boom(*_):
        raise RuntimeError("the network must stop after the analysed layer")

    model.head.register_forward_hook(boom)
    g = DriftingGratings(frames=4, size=32, num_directions=4, spatial_freqs=(2, 4), temporal_freqs=(0.125,),
                         num_phases=2)
    raw, shape = layer_responses(model, "layer3", g, batch_size=5, progress=False)
    assert raw.shape == (len(g), 16 * 8 * 8) and shape == (16, 8, 8)
    gr = grating_responses(model, "layer3", g, batch_size=5, progress=False)
    assert gr.responses.shape == (16 * 8 * 8, 4)
    # phase average at the best SF: recompute by hand for one unit
    u = 123
    full = raw[:, u].reshape(4, 2, 1, 2).mean(3)
    best = full.max(0).reshape(-1).argmax()
    assert np.allclose(gr.responses[u], full.reshape(4, -1)[:, best], atol=1e-6)
    with pytest.raises(KeyError, match="layer9"):
        layer_responses(model, "layer9", g, progress=False)


def test_analyze_model_writes_report(tmp_path, rng):
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = TinyVideoNet()
    pos = _grid_positions(16, 8, 8, 3.0, rng)
    m = analyze_model(model, pos, tmp_path / "a", frames=4, size=32, layer="layer3", progress=False,
                      spatial_freqs=(2, 4), temporal_freqs=(0.125,), num_phases=2, sigma_mm=0.2)
    out = tmp_path / "a"
    for name in ("direction_map.png", "ptc.png", "metric_histograms.png", "delta_histogram.png"):
        assert (out / name).stat().st_size > 10_000
        _png_ok(out / name)
    for name in ("map_spectrum.png", "preferred_histogram.png"):
        _png_ok(out / name)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "direction" and saved["tuning"]["num_units"] == 16 * 64
    assert 0 <= saved["tuning"]["selective_fraction"] <= 1
    assert saved["map"]["sigma_mm"] == pytest.approx(0.2) and saved["pinwheels"]["sigma_mm"] == pytest.approx(0.2)
    assert saved["map"]["detected"] is False  # an untrained net on a jittered grid: no map
    assert saved["border"]["margin_mm"] == pytest.approx(3.0 / 8, rel=0.05)  # one grid cell of the 8 x 8 layer
    assert saved["border"]["units_in_band"] + saved["border"]["units_inside"] == 16 * 64
    assert 0 <= saved["preferred_uniformity"]["p"] <= 1
    report = (out / "report.md").read_text()
    lines = report.splitlines()
    assert lines[2] == f"**{saved['verdict']}**" and lines[2].startswith("**no direction map detected")
    assert "| statistic | model | position-shuffled (mean ± sd) | p |" in report
    assert "Kaschube" in report and "Albright" in report and "Not compared, and why" in report
    # no macaque number beside a model number unless the definitions match; map references need a detected map
    from tdann_fast.analysis.references import MT_REFERENCES

    assert not any(getattr(r, "comparable", False) for r in MT_REFERENCES if r.metric == "pinwheel_density_per_mm2")
    assert "4.9 mm⁻² [" not in report.split("## Macaque references")[0]
    assert "DESIGN" not in report  # the report cites only files in the repository
    assert "![direction_map](direction_map.png)" in report
    npz = np.load(out / "tuning.npz")
    assert npz["responses"].shape == (16 * 64, 16)
    with pytest.raises(ValueError, match="positions"):
        analyze_model(model, pos[:-1], tmp_path / "b", frames=4, size=32, layer="layer3", progress=False,
                      spatial_freqs=(2,), temporal_freqs=(0.125,), num_phases=1)


def test_analyze_image_model_v1_path(tmp_path, rng):
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = TinyImageNet()
    pos = _grid_positions(16, 8, 8, 3.0, rng)
    m = analyze_model(model, pos, tmp_path, frames=None, size=32, layer="layer2", progress=False,
                      spatial_freqs=(2, 4), num_phases=4, sigma_mm=0.2)
    assert m["kind"] == "orientation"
    assert (tmp_path / "orientation_map.png").stat().st_size > 10_000
    report = (tmp_path / "report.md").read_text()
    assert "V1" in report and "Ringach" in report and "0.605" in report
    s = StaticGratings(size=16, num_orientations=8, spatial_freqs=(2,), num_phases=2)
    assert s.clips(range(len(s))).shape == (16, 3, 16, 16)


def test_analyze_cli_arguments():
    parser = argparse.ArgumentParser(prog="tdann-fast")
    register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["analyze", "--random-init", "--out", "x", "--spatial-freqs", "2,4", "--phases", "1"])
    assert a.random_init and a.spatial_freqs == [2.0, 4.0] and a.func.__name__ == "run_analyze"
    with pytest.raises(ValueError, match="CHECKPOINT"):
        parser.parse_args(["analyze", "--out", "x"]).func(parser.parse_args(["analyze", "--out", "x"]))


def test_analyze_checkpoint_uses_the_bundle(tmp_path, rng, monkeypatch):
    import types

    import tdann_fast.train.checkpoint as ckpt
    from tdann_fast.analysis import analyze_checkpoint
    from tdann_fast.sheet import CorticalSheet

    pos = _grid_positions(16, 8, 8, 3.0, rng).astype(np.float32)
    sheet = CorticalSheet(torch.from_numpy(pos), 3.0, 1.0, neighbourhoods=torch.arange(64).view(2, 32),
                          shape=(16, 8, 8))
    bundle = types.SimpleNamespace(encoder=TinyVideoNet().eval(), sheets={"layer3": sheet}, frames=4, size=32,
                                   mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2), stage=6, alpha={"layer3": 0.25},
                                   config={}, step=7)
    seen = {}

    def fake_load(path, map_location="cpu"):
        seen["path"] = path
        return bundle

    monkeypatch.setattr(ckpt, "load_for_analysis", fake_load)
    m = analyze_checkpoint("some/run", tmp_path, layer="layer3", progress=False, num_directions=8,
                           spatial_freqs=(2,), temporal_freqs=(0.125,), num_phases=1, sigma_mm=0.25)
    assert seen["path"] == "some/run"
    assert m["alpha"] == 0.25 and m["stage"] == 6 and m["stimuli"]["mean"] == [0.4, 0.4, 0.4]
    assert m["num_stimuli"] == 8 and (tmp_path / "report.md").is_file()
    # the random-init control ran on the same sheet and sits beside the model in the report
    ctrl = json.loads((tmp_path / "controls" / "random_init" / "metrics.json").read_text())
    assert ctrl["tuning"]["num_units"] == 16 * 64 and ctrl["checkpoint"].startswith("random init")
    report = (tmp_path / "report.md").read_text()
    assert "- control **random init**: " + ctrl["verdict"] in report
    assert "| statistic | model | position-shuffled (mean ± sd) | p | random init |" in report
    assert m["controls"]["random init"]["verdict"] == ctrl["verdict"]
    from tdann_fast.errors import ConfigError

    with pytest.raises(ConfigError, match="layer3.1"):
        analyze_checkpoint("some/run", tmp_path, layer="layer3.1", progress=False)


def _map_metrics(positions, vectors, **kw):
    from tdann_fast.analysis.maps import map_statistics

    ms = map_statistics(positions, vectors, num_shuffles=10, seed=1, **kw)
    return {"kind": "direction", "model": "synthetic", "layer": "L", "verdict": ms.verdict(), "map": ms.summary(),
            "tuning": {"num_units": len(vectors), "selective_fraction": 0.5}}, ms


@pytest.mark.parametrize("detected", [True, False])
def test_verdict_line_opens_the_report(tmp_path, detected):
    """A ground-truth map (ring-spectrum field, Λ = 0.6 mm) gives a 'detected' verdict with Λ and pinwheels per Λ²;
    the same vectors position-shuffled give 'no direction map detected'; the report opens with that line and sets
    the macaque map references beside the numbers only in the detected case (and only comparable ones)."""
    from tdann_fast.analysis.maps import ring_spectrum_field
    from tdann_fast.analysis.report import write_report

    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 4.0, size=(4000, 2))
    v = ring_spectrum_field(pos, 0.6, seed=3)
    v = v / np.abs(v) * 0.8
    if not detected:
        v = v[rng.permutation(v.size)]
    metrics, ms = _map_metrics(pos, v)
    assert ms.detected is detected
    path = write_report(metrics, tmp_path, {})
    first = [ln for ln in open(path, encoding="utf-8").read().splitlines() if ln.strip()][1]
    if detected:
        assert first.startswith("**direction map detected: Λ = ")
        assert abs(ms.spacing_mm - 0.6) < 0.06 and "pinwheels per Λ²" in first
    else:
        assert first.startswith("**no direction map detected: ")
        assert "column spacing not resolved" in first or "smoothness" in first
