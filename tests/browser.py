"""Rendering a local page in Debian's headless Chromium (driven by Playwright, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def image_widths_in_chromium(page_path: Path) -> list[int]:
    """naturalWidth of every <img> of a local page rendered by Debian's headless Chromium (0 for
    an image that did not load); skips the test when Chromium or Playwright is missing."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(Path(page_path).resolve().as_uri())
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        browser.close()
    return widths
