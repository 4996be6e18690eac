"""Shared pytest configuration.

* Without CUDA, ``TRITON_INTERPRET=1`` is set before anything imports triton, so the Triton kernels run on CPU
  tensors through the interpreter (this is how CI tests them).
* ``gpu`` tests are skipped without CUDA; ``slow`` tests run only with ``--run-slow``.
* ``TDANN_TEST_HANG_S=<seconds>`` (CI sets it): a test still running after that long writes its node id and the
  stacks of all threads to ``TDANN_TEST_HANG_FILE`` (default ``pytest-hang.txt``) and ends pytest with status 1.
  This works where a Python-level timeout cannot fire (a deadlock in C that holds the GIL: pytest-timeout, a dev
  dependency, fires from a Python thread or a signal handler, both of which need the GIL), and the report does not
  drown in the rest of the output: ``scripts/check_oldest.sh`` and ``.ci/run`` print a summary of it last.
"""
import faulthandler
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


# read once and taken out of the environment: the pytest runs that tests start in subprocesses get no limit and do not
# write over this run's report
_HANG_RAW = os.environ.pop("TDANN_TEST_HANG_S", "").strip()
_HANG_FILE = os.environ.pop("TDANN_TEST_HANG_FILE", "pytest-hang.txt")
_HANG_KEY = pytest.StashKey[float]()


def pytest_configure(config):
    try:
        limit = float(_HANG_RAW) if _HANG_RAW else 0.0
    except ValueError:
        limit = -1.0
    if not limit >= 0:
        raise pytest.UsageError(f"TDANN_TEST_HANG_S must be a non-negative number of seconds, got {_HANG_RAW!r}")
    config.stash[_HANG_KEY] = limit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = item.config.stash[_HANG_KEY]
    if not limit:
        yield
        return
    with open(_HANG_FILE, "w") as report:
        report.write(f"{item.nodeid} ran over TDANN_TEST_HANG_S={limit:g} s\n")
        report.flush()
        faulthandler.dump_traceback_later(limit, exit=True, file=report)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
    os.remove(_HANG_FILE)  # only a test that hung leaves its report


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    run_slow = config.getoption("--run-slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="slow: use --run-slow")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


@pytest.fixture
def rng():
    """A fresh random generator per test (fresh inputs every run); the seed is printed on failure, and
    ``TDANN_TEST_SEED=<seed>`` replays it."""
    replay = os.environ.get("TDANN_TEST_SEED", "").strip()
    if replay and not replay.isdigit():
        raise pytest.UsageError(f"TDANN_TEST_SEED must be a non-negative integer, got {replay!r}")
    seed = int(replay) if replay else int.from_bytes(os.urandom(4), "little")
    print(f"rng seed = {seed}")
    return np.random.default_rng(seed)
