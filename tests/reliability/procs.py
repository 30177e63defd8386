"""Subprocess helpers: the reliability tests run the real `faceprobe` command (a SIGKILL must
hit a real process, not the test's) and kill it together with its DataLoader workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "faceprobe", *map(str, args)]


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    e.update(extra)
    return e


def run(args: list[str], timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


def start(args: list[str], **extra_env: str) -> subprocess.Popen:
    # a session of its own, so killpg takes the DataLoader workers down with the main process
    return subprocess.Popen(args, cwd=REPO, env=env(**extra_env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 120,
             step: float = 0.01) -> bool:
    """Poll ``cond()`` until true; False when the process exited or time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(cond())
        time.sleep(step)
    return False
