"""A real Debian chromium driven by Playwright, shared by the browser tests.

Never `playwright install` (it downloads a browser); scripts/setup_browser.sh installs
Debian's chromium and the playwright package. Missing either fails under CI and skips
elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> Iterator[Any]:
    """A launched browser for the duration of a fixture (use with `yield from`)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: run scripts/setup_browser.sh")
        pytest.skip(f"{CHROMIUM} missing: run scripts/setup_browser.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright missing: run scripts/setup_browser.sh")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
