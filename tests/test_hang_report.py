"""The CI watchdog for a hung test (tests/conftest.py, TDANN_TEST_HANG_S) and its summary (scripts/hang_report.sh)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUITE = '''
import os
import threading


def test_quick():
    pass


def test_stuck():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=float(os.environ["STUCK_S"]))  # waits in C, as a deadlock does


def test_after():
    pass
'''


def _pytest(tmp_path, **env):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDANN_TEST_HANG")} | env
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_suite.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _summary(report):
    return subprocess.run(["bash", str(ROOT / "scripts" / "hang_report.sh"), str(report)], capture_output=True,
                          text=True, check=True).stdout.splitlines()


def test_a_hung_test_ends_pytest_and_leaves_a_report_naming_it(tmp_path):
    proc = _pytest(tmp_path, TDANN_TEST_HANG_S="2", STUCK_S="100")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "test_after" not in proc.stdout and "passed" not in proc.stdout  # pytest ended inside test_stuck
    report = tmp_path / "pytest-hang.txt"
    lines = report.read_text().splitlines()
    assert lines[0] == "test_suite.py::test_stuck ran over TDANN_TEST_HANG_S=2 s"
    assert any("test_suite.py" in line and "in test_stuck" in line for line in lines), lines
    summary = _summary(report)
    assert summary[-1] == "== hung: test_suite.py::test_stuck ran over TDANN_TEST_HANG_S=2 s"
    assert any("in test_stuck" in line for line in summary), summary


def test_without_a_hang_no_report_is_left(tmp_path):
    proc = _pytest(tmp_path, TDANN_TEST_HANG_S="60", STUCK_S="0.5")
    assert proc.returncode == 0 and "3 passed" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "pytest-hang.txt").exists()
    assert _summary(tmp_path / "pytest-hang.txt") == []


def test_bad_limit_is_one_clear_error(tmp_path):
    proc = _pytest(tmp_path, TDANN_TEST_HANG_S="soon", STUCK_S="0")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "TDANN_TEST_HANG_S must be a non-negative number of seconds, got 'soon'" in proc.stderr


def _stuck_rank(rank, world, port):
    import threading

    from _spawn import end_rank, start_rank

    start_rank(rank, world, port, limit_s=3)
    if rank == 1:
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # never returns
    end_rank()  # rank 0 waits in the barrier for rank 1


def test_a_stuck_rank_ends_spawn_ranks_with_an_error():
    import time

    import pytest
    import torch.multiprocessing as mp

    from _spawn import spawn_ranks

    t0 = time.monotonic()
    with pytest.raises(mp.ProcessExitedException, match="exit code 1"):
        spawn_ranks(_stuck_rank, 2)
    assert time.monotonic() - t0 < 60
