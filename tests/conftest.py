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

