"""Shared pytest configuration.

* Without CUDA, ``TRITON_INTERPRET=1`` is set before anything imports triton, so the Triton kernels run on CPU
  tensors through the interpreter (this is how CI tests them).
* ``gpu`` tests are skipped without CUDA; ``slow`` tests run only with ``--run-slow``.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


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
