"""Fixtures of the reliability suite (helpers: procs.py, hostile inputs: hostile.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dlib_available():
    import importlib.util

    # find_spec, not import: face_recognition_models' __init__ needs pkg_resources
    if not all(importlib.util.find_spec(m) for m in ("dlib", "face_recognition_models")):
        pytest.skip("dlib.resnet needs the [dlib] extra")
