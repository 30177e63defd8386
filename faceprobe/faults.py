"""Fault injection for the reliability tests: the only place production code asks for one.

Kill and failure tests must land a SIGKILL inside a narrow window (a rename, just after a
checkpoint) or make one Ray actor die, on purpose rather than by luck. Each hook below is off
unless its environment variable is set, and no real run sets them; production code calls
:func:`pause` / :func:`ray_fault` at the exact points the tests need, so every fault point can
be found by searching for ``faults.``.

| variable | set by | effect |
|---|---|---|
| ``FACEPROBE_TEST_PAUSE_BEFORE_RENAME`` | tests/reliability | sleep N s before each store rename |
| ``FACEPROBE_TEST_PAUSE_AFTER_CHECKPOINT`` | tests/test_finetune.py | sleep N s after each finetune checkpoint |
| ``FACEPROBE_TEST_RAY_FAULTS`` | tests/test_distributed_embed.py | a shard holding a path with ``fault-exit`` kills its actor, ``fault-raise`` raises |
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

PAUSE_BEFORE_RENAME = "FACEPROBE_TEST_PAUSE_BEFORE_RENAME"
PAUSE_AFTER_CHECKPOINT = "FACEPROBE_TEST_PAUSE_AFTER_CHECKPOINT"
RAY_FAULTS = "FACEPROBE_TEST_RAY_FAULTS"


def pause(variable: str) -> None:
    """Sleep for the seconds ``variable`` holds (nothing when it is unset or empty)."""
    seconds = os.environ.get(variable)
    if seconds:
        time.sleep(float(seconds))


def ray_fault(paths: Iterable[str]) -> str | None:
    """``"exit"`` / ``"raise"`` when the Ray fault hook is on and a path asks for it, else None."""
    if not os.environ.get(RAY_FAULTS):
        return None
    paths = list(paths)
    for kind in ("exit", "raise"):
        if any(f"fault-{kind}" in p for p in paths):
            return kind
    return None
