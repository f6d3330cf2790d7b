"""Debian's Chromium, headless, driven by Playwright, watching what it loads.

Playwright's Python package talks to the browser over the DevTools
protocol; it is pointed at /usr/bin/chromium with ``executable_path`` and
its own browser download (``playwright install``) is never used.  Each
``Chromium`` has a fresh profile directory, and records, for every page:

- every request the browser makes, and aborts any that is not to a
  loopback address (a portal page must never reach another host);
- console errors and uncaught page errors (a CSP violation is one).

Tests assert on ``requests``, ``console_errors`` and ``remote_requests``
after the steps they drive.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import shutil
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 740}
ACTION_TIMEOUT_MS = 15_000


def require_chromium() -> None:
    """Skip the test (fail it under CI=true) without Chromium and Playwright."""
    require(Path(CHROMIUM).is_file(),
            "chromium is not installed (scripts/install-peers installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require(False, "the playwright package is missing (pip install -e '.[test]')")


def is_loopback_url(url: str) -> bool:
    """Tell whether a URL names a loopback host (or is data:/about:)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "about", "blob"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Chromium:
    """A headless Chromium with a fresh profile; use as a context manager."""

    def __init__(self, downloads: Path | None = None) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="strongroom-chromium-"))
        self.downloads = downloads or self.profile / "downloads"
        self.requests: list[str] = []
        self.remote_requests: list[str] = []
        self.console_errors: list[str] = []
        self._playwright = None
        self.context = None

    def start(self) -> None:
        """Launch the browser."""
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.context = self._playwright.chromium.launch_persistent_context(
            str(self.profile), executable_path=CHROMIUM, headless=True,
            args=list(FLAGS), accept_downloads=True, downloads_path=str(self.downloads),
            viewport=DESKTOP, env={**os.environ, "TZ": "UTC"},
        )
        self.context.set_default_timeout(ACTION_TIMEOUT_MS)
        self.context.route("**/*", self._guard)
        self.context.on("page", self._watch)
        for page in self.context.pages:
            self._watch(page)

    def page(self):
        """Return the browser's page (the first tab)."""
        assert self.context is not None
        return self.context.pages[0] if self.context.pages else self.context.new_page()

    def _guard(self, route) -> None:
        url = route.request.url
        self.requests.append(url)
        if is_loopback_url(url):
            route.continue_()
        else:
            self.remote_requests.append(url)
            route.abort("blockedbyclient")

    def _watch(self, page) -> None:
        page.on("console", lambda message: message.type == "error"
                and self.console_errors.append(f"{page.url}: {message.text}"))
        page.on("pageerror", lambda error: self.console_errors.append(
            f"{page.url}: uncaught {error}"))

    def stop(self) -> None:
        """Close the browser and remove its profile; safe to call twice."""
        if self.context is not None:
            self.context.close()
            self.context = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def full_page_screenshot(page, path: str) -> None:
    """Save the whole page as it lays out at the current viewport width.

    Playwright's ``full_page`` capture leaves a sandboxed (out-of-process)
    frame blank when it lies below the viewport, so the viewport is grown
    to the page's height instead; frames sized in ``vh`` are first pinned
    to the height they have at the real viewport, so that the capture
    shows the layout a reader sees and not one stretched to fit.
    """
    size = page.viewport_size
    page.evaluate("""() => { for (const frame of document.querySelectorAll('iframe'))
                               frame.style.height = frame.offsetHeight + 'px'; }""")
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
    page.wait_for_timeout(300)
    try:
        page.screenshot(path=path)
    finally:
        page.set_viewport_size(size)
        page.evaluate("""() => { for (const frame of document.querySelectorAll('iframe'))
                                   frame.style.height = ''; }""")
