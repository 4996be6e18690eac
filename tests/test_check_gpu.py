"""scripts/check_gpu.py: steps recorded as skipped / failed / timed out, the record valid while the check runs, the
process group of a step killed, the output folder protected. Every run hides the GPUs (CUDA_VISIBLE_DEVICES="")
and uses small ``python -c`` steps (the hidden ``--extra-step NAME=CODE``), so the file runs anywhere in seconds."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_gpu.py"
GPU_STEPS = ["gpu_tests", "triton_tests", "bench_loss_fp32", "bench_loss_bf16", "bench_step", "bench_swap_gpu",
             "train_mt_gpu", "analyze_mt_gpu"]


@functools.lru_cache(maxsize=1)
def _module():
    """scripts/check_gpu.py imported as a module (registered first: its dataclass needs sys.modules)."""
    spec = importlib.util.spec_from_file_location("check_gpu_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _env(**extra):
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", **extra)


def _check(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


def _record(out: Path) -> dict:
    return json.loads((out / "check_gpu.json").read_text())


def _steps(out: Path) -> dict:
    return {s["name"]: s for s in _record(out)["steps"]}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as dead)."""
    if Path("/proc/self").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _sleeper(pidfile: Path, ignore_term: bool) -> str:
    """Code of a step that starts a grandchild, writes its pid, and sleeps; both may ignore SIGTERM."""
    ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else ""
    return (f"{ignore}import pathlib, subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', {ignore + 'import time; time.sleep(120)'!r}]); "
            f"pathlib.Path({str(pidfile)!r}).write_text(str(p.pid)); time.sleep(120)")


# ------------------------------------------------------------------------------------------------ the real steps
def test_without_cuda_the_environment_runs_and_gpu_steps_are_skipped(tmp_path):
    out = tmp_path / "out"
    res = _check("--out", str(out))
    assert res.returncode == 0, res.stderr
    steps = _steps(out)
    assert list(steps) == ["environment", *GPU_STEPS]
    env = steps["environment"]
    assert env["status"] == "ok" and env["returncode"] == 0 and env["seconds"] > 0, env
    assert env["summary"]["cuda_available"] is False and env["summary"]["torch"]
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"] == "no CUDA device", steps[name]
        assert steps[name]["seconds"] is None
    record = _record(out)
    assert record["status"] == "ok" and record["cuda"] is False and record["finished_utc"]
    assert record["environment"]["tdann_fast"]["swap_backends"][0] == "reference"
    assert record["totals"]["ok"] == 1 and record["totals"]["skipped"] == len(GPU_STEPS)
    assert (out / "environment.json").is_file() and (out / "logs" / "environment.stdout.txt").is_file()
    progress = [line for line in res.stdout.splitlines() if line.startswith("check_gpu: [")]
    assert len(progress) == 1 + len(GPU_STEPS) and "no CUDA device" in progress[-1]


def test_a_gpu_step_forced_on_cpu_fails_with_its_reason_and_the_next_step_runs(tmp_path):
    out = tmp_path / "out"
    res = _check("--out", str(out), "--skip", "environment", "--only", "bench_swap_gpu,after", "--force-run",
                 "--extra-step", "after=print('after ran')")
    assert res.returncode == 1, res.stdout + res.stderr
    steps = _steps(out)
    swap = steps["bench_swap_gpu"]
    assert swap["status"] == "failed" and swap["returncode"] == 1, swap
    assert "cuda backend not available" in swap["reason"] and swap["reason"].startswith("exit status 1")
    assert "cuda backend not available" in swap["stderr_tail"]
    assert steps["after"]["status"] == "ok" and steps["after"]["stdout_tail"] == "after ran"
    assert steps["environment"]["reason"] == "not selected (--only/--skip)"
    assert steps["bench_step"]["status"] == "skipped"


def test_without_torch_the_record_is_still_written(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no torch in this test')\n")
    out = tmp_path / "out"
    res = _check("--out", str(out), env=_env(PYTHONPATH=str(fake.parent)))
    assert res.returncode == 1, res.stdout + res.stderr
    steps = _steps(out)
    env = steps["environment"]
    assert env["status"] == "failed" and "no torch in this test" in env["reason"], env
    assert _record(out)["environment"]["problems"] == ["torch cannot be imported: ImportError: no torch in this test"]
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"].startswith("no CUDA device")


# ------------------------------------------------------------------------------------------ failures and limits
def test_a_failing_step_is_recorded_and_the_next_step_runs(tmp_path):
    out = tmp_path / "out"
    res = _check("--out", str(out), "--skip", "environment", "--only", "boom,after",
                 "--extra-step", "boom=import sys; print('partial output'); sys.exit('boom: something broke')",
                 "--extra-step", "after=print('after ran')")
    assert res.returncode == 1
    steps = _steps(out)
    assert steps["boom"]["status"] == "failed" and steps["boom"]["returncode"] == 1
    assert steps["boom"]["reason"] == "exit status 1: boom: something broke"
    assert steps["boom"]["stdout_tail"] == "partial output"
    assert steps["after"]["status"] == "ok" and steps["after"]["reason"] is None
    assert all(steps[n]["status"] == "skipped" for n in GPU_STEPS)
    record = _record(out)
    assert record["status"] == "failed" and record["totals"]["failed"] == 1 and record["totals"]["ok"] == 1
    assert "not ok: boom" in res.stdout.splitlines()[-1]


def test_a_step_past_its_limit_is_timed_out_and_its_process_group_killed(tmp_path):
    out, pidfile = tmp_path / "out", tmp_path / "grandchild.pid"
    t0 = time.monotonic()
    res = _check("--out", str(out), "--skip", "environment", "--only", "slow,after", "--time-scale", "0.1",
                 "--extra-step", f"slow={_sleeper(pidfile, ignore_term=True)}",
                 "--extra-step", "after=print('after ran')")
    elapsed = time.monotonic() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    steps = _steps(out)
    slow = steps["slow"]
    limit = 0.1 * _module().EXTRA_LIMIT_S
    assert slow["status"] == "timed_out" and slow["limit_s"] == pytest.approx(limit), slow
    assert slow["reason"] == f"killed after its {limit:g} s limit"
    # SIGTERM was ignored: the step went down with SIGKILL after the grace period, long before its 120 s sleep
    assert limit <= slow["seconds"] < limit + _module().GRACE_S + 10 and elapsed < 60
    assert slow["returncode"] == -signal.SIGKILL
    assert _wait_dead(int(pidfile.read_text())), "the step's grandchild survived"
    assert steps["after"]["status"] == "ok"


def test_the_record_is_valid_json_while_a_step_runs(tmp_path):
    out = tmp_path / "out"
    record = str(out / "check_gpu.json")
    probe = (f"import json; r = json.load(open({record!r})); s = {{x['name']: x for x in r['steps']}}; "
             "assert r['status'] == 'running', r['status']; "
             "assert s['first']['status'] == 'ok' and s['first']['stdout_tail'] == 'one', s['first']; "
             "assert s['second']['status'] == 'running' and s['second']['pid'] > 0, s['second']; "
             "assert s['third']['status'] == 'pending', s['third']; "
             "print('record ok')")
    res = _check("--out", str(out), "--skip", "environment", "--only", "first,second,third",
                 "--extra-step", "first=print('one')", "--extra-step", f"second={probe}",
                 "--extra-step", "third=print('three')")
    steps = _steps(out)
    assert steps["second"]["status"] == "ok", steps["second"]["stderr_tail"]
    assert steps["second"]["stdout_tail"] == "record ok" and "pid" not in steps["second"]
    assert res.returncode == 0 and [steps[n]["status"] for n in ("first", "third")] == ["ok", "ok"]
    assert not list(out.glob(".*.tmp"))


def test_sigterm_kills_the_running_step_and_closes_the_record(tmp_path):
    out, pidfile = tmp_path / "out", tmp_path / "grandchild.pid"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), "--skip", "environment",
                             "--only", "slow,after", "--extra-step", f"slow={_sleeper(pidfile, ignore_term=False)}",
                             "--extra-step", "after=print('after ran')"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not pidfile.is_file() or not pidfile.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, "the slow step did not start"
            time.sleep(0.1)
        assert _steps(out)["slow"]["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    record, steps = _record(out), _steps(out)
    assert record["status"] == "interrupted" and record["finished_utc"]
    assert steps["slow"]["status"] == "failed" and steps["slow"]["reason"].startswith("interrupted")
    assert steps["after"]["status"] == "skipped" and steps["after"]["reason"] == "not run: the check was interrupted"
    assert _wait_dead(int(pidfile.read_text())), "the step's grandchild survived"


# ------------------------------------------------------------------------------------------ options and folder
def test_a_non_empty_out_folder_is_refused_and_force_moves_it_aside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "check_gpu.json").write_text("earlier result")
    args = ("--out", str(out), "--skip", "environment", "--only", "quick", "--extra-step", "quick=print(1)")
    res = _check(*args)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"check_gpu: error: --out {out}: exists and is not empty (1 entry); choose a new "
                                  f"folder, or pass --force to move its contents into {out}/previous-<time>/")
    assert (out / "check_gpu.json").read_text() == "earlier result" and len(list(out.iterdir())) == 1
    res = _check(*args, "--force")
    assert res.returncode == 0, res.stderr
    (previous,) = out.glob("previous-*")
    assert (previous / "check_gpu.json").read_text() == "earlier result"
    assert _record(out)["options"]["previous_contents_moved_to"] == str(previous)
    assert _steps(out)["quick"]["status"] == "ok"


def test_usage_errors_name_the_option(tmp_path):
    res = _check("--out", str(tmp_path / "a"), "--only", "gpu_test")
    assert res.returncode == 2 and res.stderr.startswith("check_gpu: error: --only: unknown step(s) gpu_test; ")
    assert "gpu_tests" in res.stderr
    res = _check("--out", str(tmp_path / "b"), "--time-scale", "0")
    assert res.returncode == 2 and "--time-scale: got 0.0; expected a number > 0" in res.stderr
    res = _check()
    assert res.returncode == 2 and "--out: required" in res.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_list_prints_every_step_and_the_budget():
    res = _check("--list")
    assert res.returncode == 0
    for name in ["environment", *GPU_STEPS]:
        assert any(line.startswith(name + " ") for line in res.stdout.splitlines()), name
    assert "data.source=synthetic" in res.stdout


# ------------------------------------------------------------------------------------------------ plan and parts
def test_the_limits_fit_in_twenty_minutes_and_outputs_stay_in_out():
    mod = _module()
    out = Path("/somewhere/out")
    steps = mod.plan_steps(out)
    assert [s.name for s in steps] == ["environment", *GPU_STEPS]
    assert sum(s.limit_s for s in steps) + mod.GRACE_S * len(steps) <= mod.BUDGET_S <= 1200
    assert all(s.limit_s > 0 for s in steps) and [s.name for s in steps if not s.gpu] == ["environment"]
    for s in steps:
        for arg in s.command:
            if arg.startswith("/") and arg != mod.sys.executable and not arg.endswith("check_gpu.py"):
                assert arg.startswith(str(out)), (s.name, arg)
    train = next(s for s in steps if s.name == "train_mt_gpu")
    assert "data.source=synthetic" in train.command and f"run_dir={out / 'mt_gpu_run'}" in train.command
    assert {"pretrain.steps", "finetune.steps", "full.steps", "swap.steps", "swap.probe_clips"} <= {
        a.split("=")[0] for a in train.command if "=" in a}


def test_the_short_mt_gpu_overrides_are_a_valid_config(tmp_path):
    from tdann_fast.train.config import load_config

    cfg = load_config("mt_gpu", [f"run_dir={tmp_path / 'run'}", *_module().MT_GPU_OVERRIDES])
    assert cfg.data.source == "synthetic" and not cfg.progress and str(tmp_path) in cfg.run_dir
    assert cfg.pretrain.steps + cfg.finetune.steps + cfg.full.steps <= 100 and cfg.swap.steps <= 500_000
    assert cfg.pretrain.warmup_steps < cfg.pretrain.steps and cfg.full.warmup_steps < cfg.full.steps


def test_junit_summary_counts_and_names_the_failures(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" '
        'skipped="1" tests="5" time="2.5">'
        '<testcase classname="tests.test_a" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.test_a" name="test_ok2[x]" time="0.1"/>'
        '<testcase classname="tests.test_a" name="test_bad" time="0.1"><failure message="assert 1 == 2&#10;more">'
        'trace</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_err" time="0.1"><error message="fixture broke">t</error>'
        '</testcase>'
        '<testcase classname="tests.test_b" name="test_skip" time="0"><skipped message="needs CUDA"/></testcase>'
        '</testsuite></testsuites>')
    s = _module().summarize_junit(xml)
    assert {k: s[k] for k in ("tests", "passed", "failed", "errors", "skipped")} == {
        "tests": 5, "passed": 2, "failed": 1, "errors": 1, "skipped": 1}
    assert s["failing"] == [{"id": "tests.test_a::test_bad", "kind": "failure", "message": "assert 1 == 2"},
                            {"id": "tests.test_b::test_err", "kind": "error", "message": "fixture broke"}]
    assert s["seconds"] == 2.5
