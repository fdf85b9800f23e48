"""The OS's Chromium, driven by Playwright's Python package, for the dashboard's page tests.

Playwright's own browsers are never downloaded: the tests launch the system's Chromium
(``WORKERS_TEST_CHROMIUM``, default ``/usr/bin/chromium``; ``scripts/browser.sh`` installs
it). Without it the tests skip, except in CI (``CI=true``), where that is a failure.
Screenshots go to ``WORKERS_TEST_SCREENSHOTS`` when it is set, else nowhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("WORKERS_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _missing(why: str) -> None:
    if os.environ.get("CI", "") in ("true", "1"):
        pytest.fail(f"{why} (in CI the browser tests must run: scripts/browser.sh installs it)")
    pytest.skip(why)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium; closed at the end."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no browser at {CHROMIUM}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Screens:
    """Saves numbered screenshots of a page, if asked to (``WORKERS_TEST_SCREENSHOTS``)."""

    def __init__(self, prefix: str) -> None:
        where = os.environ.get("WORKERS_TEST_SCREENSHOTS")
        self._dir = Path(where) if where else None
        self._prefix = prefix
        self._count = 0

    def take(self, page: Any, what: str) -> None:
        if self._dir is None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        self._count += 1
        page.screenshot(path=str(self._dir / f"{self._prefix}-{self._count:02d}-{what}.png"),
                        full_page=True)
