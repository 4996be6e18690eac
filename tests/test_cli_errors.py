"""Bad invocations of the ``tdann-fast`` command: one line ``tdann-fast: error: ...``, exit status 2, nothing left
behind, and config mistakes caught before any work starts (before torch is even imported)."""
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tdann_fast import cli

REPO = Path(__file__).resolve().parents[1]
RUN = "run_dir=run"  # every table row runs in a fresh temporary working directory

# (argv, words the one-line message must hold, work allowed: False when the command must fail before any data,
#  model or run directory is built)
TABLE = [
    (["train"], ["--config", "required"], False),
    (["train", "--config", "nope"], ["'nope'", "shipped"], False),
    (["train", "--config", "smoke", RUN, "batch_size=abc"], ["batch_size", "'abc'", "integer >= 3"], False),
    (["train", "--config", "smoke", RUN, "batch_size=2"], ["batch_size", "2", ">= 3"], False),
    (["train", "--config", "smoke", RUN, "batch_size=4.5"], ["batch_size", "4.5", "integer"], False),
    (["train", "--config", "smoke", RUN, "spatial.variant=foo"], ["spatial.variant", "'foo'", "'rel'"], False),
    (["train", "--config", "smoke", RUN, "spatial.time_reduction=median"], ["spatial.time_reduction", "'dual'"],
     False),
    (["train", "--config", "smoke", RUN, "swap.objective=best"], ["swap.objective", "'best'", "'exact'"], False),
    (["train", "--config", "smoke", RUN, "spatial.backend=cuda"], ["spatial.backend", "'triton'"], False),
    (["train", "--config", "smoke", RUN, "swap.backend=gpu"], ["swap.backend", "'cpp'"], False),
    (["train", "--config", "smoke", RUN, "spatial.alpha=-1"], ["spatial.alpha", "-1", ">= 0"], False),
    (["train", "--config", "smoke", RUN, "spatial.alpha=nan"], ["spatial.alpha", "nan"], False),
    (["train", "--config", "smoke", RUN, "spatial.alpha={layer9.9: 1}"], ["spatial.alpha.layer9.9", "layer"], False),
    (["train", "--config", "smoke", RUN, "spatial.alpha={layer3.1: 1}"], ["spatial.alpha", "missing"], False),
    (["train", "--config", "smoke", RUN, "spatial.layers=[layer3.2]"], ["spatial.layers", "did you mean 'layer3.1'"],
     False),
    (["train", "--config", "smoke", RUN, "spatial.num_neighbourhoods=0"], ["spatial.num_neighbourhoods", ">= 1"],
     False),
    (["train", "--config", "smoke", RUN, "log_every=0"], ["log_every", ">= 1"], False),
    (["train", "--config", "smoke", RUN, "checkpoint_every=-3"], ["checkpoint_every", "-3"], False),
    (["train", "--config", "smoke", RUN, "data.frams=3"], ["data.frams", "did you mean 'frames'"], False),
    (["train", "--config", "smoke", RUN, "spatial.alfa=1"], ["spatial.alfa", "did you mean 'alpha'"], False),
    (["train", "--config", "smoke", RUN, "--resum"], ["--resum"], False),
    (["train", "--config", "smoke", RUN, "--from-st", "3"], ["--from-st"], False),
    (["train", "--config", "smoke", RUN, "--from-stage", "9"], ["--from-stage", "9"], False),
    (["train", "--config", "smoke", RUN, "--resume", "--from-stage", "3"], ["--from-stage", "--resume"], False),
    (["train", "--config", "smoke", RUN, "--fallback"], ["--fallback", "--resume"], False),
    (["train", "--config", "smoke", RUN, "--from-stage", "4", "--stop-after", "2"], ["--stop-after"], False),
    (["train", "--config", "smoke", RUN, "batch_size"], ["batch_size", "KEY=VALUE"], False),
    (["train", "--config", "smoke", RUN, "data.frames=[1,"], ["data.frames", "YAML"], False),
    (["train", "--config", "smoke", RUN, "spatial=3"], ["spatial", "mapping"], False),
    (["train", "--config", "smoke", RUN, "device=tpu"], ["device", "'tpu'", "'cuda'"], False),
    (["train", "--config", "smoke", RUN, "precision=fp8"], ["precision", "'fp8'"], False),
    (["train", "--config", "smoke", RUN, "progress=maybe"], ["progress", "'maybe'", "true or false"], False),
    (["train", "--config", "smoke", RUN, "pretrain.steps=-5"], ["pretrain.steps", "-5"], False),
    (["train", "--config", "smoke", RUN, "pretrain.min_lr=1"], ["pretrain.min_lr", "pretrain.lr"], False),
    (["train", "--config", "smoke", RUN, "moco.temperature=0"], ["moco.temperature", "> 0"], False),
    (["train", "--config", "smoke", RUN, "data.mean=[0.5]"], ["data.mean", "3 numbers"], False),
    (["train", "--config", "smoke", RUN, "data.size=4"], ["data.size", ">= 8"], False),
    (["train", "--config", "smoke", RUN, "data.load_size=20"], ["data.load_size", "data.size"], False),
    (["train", "--config", "smoke", RUN, "swap.grating_spatial_freqs=[]"], ["swap.grating_spatial_freqs"], False),
    (["train", "--config", "smoke", RUN, "data.augment.p_flip=2"], ["data.augment.p_flip", "[0, 1]"], False),
    (["train", "--config", "smoke", RUN, "data.source=folder"], ["data.root", "required"], False),
    (["train", "--config", "smoke", RUN, "data.source=folder", "data.root=missing"], ["data.root", "'missing'"],
     False),
    (["train", "--config", "smoke", RUN, "analysis.enabled=true", "spatial.layers=[layer3.1]",
      "analysis.layer=layer2.0"], ["analysis.layer", "'layer2.0'"], False),
    (["train", "--config", "broken.yaml", RUN], ["broken.yaml", "YAML"], False),
    (["train", "--config", "list.yaml", RUN], ["list.yaml", "mapping"], False),
    (["train", "--config", "smoke", RUN, "--resume"], ["--resume", "does not exist"], True),
    (["train", "--config", "smoke", "run_dir=empty", "--resume"], ["--resume", "no checkpoint"], True),
    (["train", "--config", "smoke", "run_dir=empty", "--from-stage", "3"], ["--from-stage 3", "stage 2"], True),
    (["train", "--config", "smoke", RUN, "data.source=folder", "data.root=novideos"], ["data.root", "readable"],
     True),
    (["swap"], ["checkpoint"], False),
    (["swap", "missing.pt"], ["missing.pt", "not found"], True),
    (["swap", "zero.pt"], ["zero.pt", "empty"], True),
    (["swap", "text.pt"], ["text.pt", "not a checkpoint"], True),
    (["demo", "--resume", RUN], ["--resume", "does not exist"], True),
    (["demo", RUN, "batch_size=1"], ["batch_size", ">= 3"], False),
    (["demo", RUN, "analysis.kwargs={bogus: 1}"], ["analysis.kwargs", "bogus"], True),
    (["analyze", "--out", "out"], ["CHECKPOINT", "--random-init"], False),
    (["analyze", "zero.pt", "--random-init", "--out", "out"], ["either"], False),
    (["analyze", "zero.pt", "--out", "out"], ["zero.pt", "empty"], True),
    (["analyze", "text.pt", "--out", "out"], ["text.pt"], True),
    (["analyze", "--random-init"], ["--out"], False),
    (["analyze", "--random-init", "--arch", "vgg", "--out", "out"], ["--arch", "'vgg'"], False),
    (["analyze", "--random-init", "--out", "out", "--spatial-freqs", "a,b"], ["--spatial-freqs", "'a,b'"], False),
    (["sweep-report"], ["RUN_DIR"], False),
    (["sweep-report", "nowhere", "--out", "out"], ["nowhere"], True),
    (["trian"], ["'trian'", "train"], False),
    ([], ["COMMAND"], False),
]


def _prepare(cwd: Path) -> set:
    (cwd / "empty").mkdir()
    (cwd / "novideos").mkdir()
    (cwd / "novideos" / "clip.mp4").write_bytes(b"not a video")
    (cwd / "zero.pt").write_bytes(b"")
    (cwd / "text.pt").write_text("hello")
    (cwd / "broken.yaml").write_text("a: [1,\n")
    (cwd / "list.yaml").write_text("- 1\n- 2\n")
    return {p.relative_to(cwd) for p in cwd.rglob("*")}


def _run(argv, capsys):
    code = None
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    return code, err, elapsed


def test_bad_invocations_table(tmp_path, monkeypatch, capsys):
    """Every row: exit 2, first stderr line 'tdann-fast: error: ...' naming what is wrong, no traceback, no file or
    directory left behind; rows marked 'no work' fail before data, model or run directory are built."""
    from tdann_fast.train.state import RunState

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = _prepare(tmp_path)
    real_build = RunState.build
    allow_work = {"flag": True}

    def guarded_build(self):
        assert allow_work["flag"], "data/model were built for an invocation that should fail before any work"
        return real_build(self)

    monkeypatch.setattr(RunState, "build", guarded_build)
    report = []
    for argv, words, work in TABLE:
        allow_work["flag"] = work
        code, err, elapsed = _run(argv, capsys)
        lines = err.strip().splitlines()
        first = lines[0] if lines else ""
        left = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} - before
        # the frame index of a video folder is a cache by design (in the folder, or the cache dir), not a result
        left = {p for p in left if p.parts[0] != "cache" and p.name != ".tdann_fast_index.json"}
        report.append((argv, code, first, elapsed, sorted(map(str, left))))
        assert code == 2, (argv, code, err)
        assert first.startswith("tdann-fast: error: ") and len(lines) == 1 and "Traceback" not in err, (argv, err)
        for w in words:
            assert w in first, (argv, w, first)
        assert not left, (argv, left)
    print(f"{len(TABLE)} bad invocations; slowest {max(r[3] for r in report):.2f} s in-process")
    for argv, code, first, elapsed, left in report:
        print(f"{elapsed:6.2f} s  exit {code}  {' '.join(argv)}  ->  {first}")
    assert len(TABLE) >= 30


def test_config_errors_fail_before_torch_is_imported(tmp_path):
    """A config mistake is reported by a process that never imports torch (so in a fraction of a second)."""
    code = ("import sys\nfrom tdann_fast.cli import main\nrc = main(sys.argv[1:])\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\nsys.exit(rc)\n")
    for override in ("spatial.variant=foo", "batch_size=abc", "spatial.layers=[layer9]", "log_every=0"):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code, "train", "--config", "smoke", f"run_dir={tmp_path}/r",
                              override], capture_output=True, text=True, cwd=REPO, timeout=120)
        elapsed = time.perf_counter() - t0
        print(f"{override}: exit {res.returncode} in {elapsed:.2f} s: {res.stderr.strip()}")
        assert res.returncode == 2 and res.stderr.startswith("tdann-fast: error: "), res.stderr
        assert res.stdout.strip() == "torch not imported"
        assert not (tmp_path / "r").exists()


def test_console_entry_point_one_line(tmp_path):
    """The real entry point (python -m tdann_fast.cli) prints the one line and exits 2."""
    res = subprocess.run([sys.executable, "-m", "tdann_fast.cli", "train", "--config", "smoke",
                          f"run_dir={tmp_path}/r", "spatial.variant=foo"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "tdann-fast: error: spatial.variant: got 'foo'; expected one of 'rel', 'abs'"]


def test_unexpected_exception_keeps_its_traceback(tmp_path, monkeypatch):
    """A bug is not dressed up as a user error: it propagates (Python prints the traceback)."""
    import tdann_fast.train.trainer as trainer

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(trainer, "train", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "--config", "smoke", f"run_dir={tmp_path / 'r'}"])


def test_failed_start_leaves_no_run_dir(tmp_path, monkeypatch):
    """A failure while starting (here the lock cannot be taken) removes the run directory it created."""
    from tdann_fast.errors import RunDirError
    from tdann_fast.train import rundir

    def locked(self):
        raise RunDirError("locked")

    monkeypatch.setattr(rundir.RunLock, "acquire", locked)
    run_dir = tmp_path / "r"
    assert cli.main(["train", "--config", "smoke", f"run_dir={run_dir}", "pretrain.steps=1"]) == 2
    assert not run_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: device=cuda is valid")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    code, err, _ = _run(["train", "--config", "smoke", f"run_dir={tmp_path / 'r'}", "device=cuda"], capsys)
    assert code == 2 and err.startswith("tdann-fast: error: device: got 'cuda'")
    assert not (tmp_path / "r").exists()
