"""Shared by the training tests: start a training command and SIGKILL it once a file exists."""
import os
import signal
import subprocess
import time

import pytest


def kill_once_exists(cmd, env, target, cwd, limit_s: float = 240) -> None:
    """Run ``cmd``; as soon as ``target`` exists, SIGKILL it (a test fails when the command exits first or the file
    does not appear within ``limit_s`` seconds)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    deadline = time.time() + limit_s
    try:
        while not target.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail(f"no {target.parent.name}/{target.name} within {limit_s:.0f} s")
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
