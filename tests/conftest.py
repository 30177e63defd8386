"""Shared fixtures: the committed fixture set (tests/data) and the optional real data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "data"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/data: small copies of each dataset format (see tests/data/README.md)."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real dataset subsets); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA



@pytest.fixture(autouse=True, scope="session")
def _isolated_faceprobe_home(tmp_path_factory):
    """Every test sees an empty $FACEPROBE_HOME and $TORCH_HOME unless it sets its own: weights or
    caches of the user's (an SCRFD file turns `--detector auto` into SCRFD) must not change what
    the tests measure."""
    import os

    old = {k: os.environ.get(k) for k in ("FACEPROBE_HOME", "TORCH_HOME")}
    for k in old:  # torch's checkpoint cache is a weights location too
        os.environ[k] = str(tmp_path_factory.mktemp(k.lower()))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
