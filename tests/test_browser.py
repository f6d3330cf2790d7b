# The portal in a real browser: headless Chromium against `strongroom
# serve`, signing in, searching, reading, downloading the original and
# restoring into a real Dovecot, with no console error and no request to
# any host but loopback.  Screenshots at phone and desktop widths go to
# STRONGROOM_SCREENSHOTS (default: the test's temporary directory).

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest

from tests.conftest import CASES
from tests.harness import USER_PASSWORD, ArchiveServer
from tests.peers.chromium import DESKTOP, PHONE, Chromium, require_chromium
from tests.peers.dovecot import Dovecot, require_dovecot

BOB = "bob@example.com"
BOB_IMAP = "bob's mailbox password 5"
MESSAGES = ("B16.eml", "B29.eml", "B22.eml")
# Read at import: the autouse clean_environment fixture hides STRONGROOM_*.
SCREENSHOTS = os.environ.get("STRONGROOM_SCREENSHOTS", "")


class Portal:
    """The steps a person takes in the portal, one method each.

    Each step drives ``page`` and checks that it landed where a person
    would expect; a test strings steps together.
    """

    def __init__(self, page, base_url: str, screenshots: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.screenshots = screenshots

    def sign_in(self, address: str, password: str = USER_PASSWORD) -> None:
        self.page.goto(self.base_url + "/login")
        self.page.get_by_label("Email address").fill(address)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url("**/search")
        assert address in self.page.locator(".who").inner_text()

    def search(self, query: str) -> int:
        if "/search" not in self.page.url:
            self.page.get_by_role("link", name="Strongroom").click()
        box = self.page.get_by_role("searchbox", name="Search")
        box.fill(query)
        box.press("Enter")
        self.page.wait_for_url("**/search?q=*")
        count = self.page.locator(".count").inner_text()
        return int(count.split()[0])

    def open_message(self, subject: str) -> None:
        self.page.locator(".results a", has_text=subject).first.click()
        self.page.wait_for_url("**/messages/*")
        assert subject in self.page.locator("h1").inner_text()

    def download_original(self) -> bytes:
        with self.page.expect_download() as download:
            self.page.get_by_role("link", name="Download original (.eml)").click()
        return Path(download.value.path()).read_bytes()

    def choose_for_restore(self, *subjects: str) -> None:
        for subject in subjects:
            self.page.get_by_role("checkbox", name=f"Select {subject}").check()
        self.page.get_by_role("button", name="Restore selected").click()
        self.page.wait_for_url("**/restore")
        assert self.page.locator("h1").inner_text() == "Restore to your mailbox"

    def choose_all_for_restore(self) -> None:
        self.page.get_by_role("button", name=re.compile(r"^Restore all \d+")).click()
        self.page.wait_for_url("**/restore")

    def restore(self, imap_password: str) -> str:
        self.page.get_by_label(re.compile("Password of your mailbox")).fill(imap_password)
        self.page.get_by_role("button", name=re.compile(r"^Restore \d+ message")).click()
        self.page.wait_for_url(re.compile(r"/restore/[A-Za-z0-9_-]+$"))
        # The status page reloads itself (Refresh header) until it is done.
        self.page.locator(".restored").wait_for(timeout=60_000)
        return self.page.get_by_role("status").inner_text()

    def screenshot(self, name: str) -> list[Path]:
        taken = []
        for label, size in (("360", PHONE), ("1280", DESKTOP)):
            self.page.set_viewport_size(size)
            path = self.screenshots / f"{name}-{label}.png"
            self.page.screenshot(path=str(path), full_page=True)
            taken.append(path)
            width = self.page.evaluate("document.documentElement.scrollWidth")
            assert width <= size["width"], f"{name} scrolls sideways at {label} px ({width})"
        self.page.set_viewport_size(DESKTOP)
        return taken


@pytest.fixture
def dovecot():
    require_dovecot()
    server = Dovecot({BOB: BOB_IMAP})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(tmp_path, dovecot):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.configure("restore", f'imap_host = "127.0.0.1"\nimap_port = {dovecot.port}\n'
                                'tls = "none"')
    server.start()
    token = server.add_user(BOB)
    for name in MESSAGES:
        server.send((CASES / name).read_bytes(), "x@elsewhere.net", [BOB])
    assert server.wait_for(token, "*", count=len(MESSAGES), timeout=30)["total"] == 3
    yield server
    server.stop()


@pytest.fixture
def chromium(tmp_path):
    require_chromium()
    browser = Chromium(downloads=tmp_path / "downloads")
    browser.start()
    yield browser
    browser.stop()


@pytest.fixture
def portal(chromium, server, tmp_path):
    screenshots = Path(SCREENSHOTS or tmp_path / "screenshots")
    screenshots.mkdir(parents=True, exist_ok=True)
    return Portal(chromium.page(), server.base_url, screenshots)


def subject_of(name: str) -> str:
    raw = (CASES / name).read_text(errors="replace")
    return re.search(r"^Subject: (.*?)\r?$", raw, re.M).group(1)


def test_sign_in_search_read_download_and_restore(portal, chromium, dovecot):
    subject = subject_of("B16.eml")
    portal.sign_in(BOB)
    assert portal.search("from:elsewhere.net") == 3
    portal.screenshot("search")

    portal.open_message(subject)
    portal.screenshot("message")
    assert portal.download_original() == (CASES / "B16.eml").read_bytes()

    portal.search("from:elsewhere.net")
    portal.choose_for_restore(subject)
    portal.screenshot("restore-dialog")
    outcome = portal.restore(BOB_IMAP)
    assert "1 restored" in outcome and "0 failed" in outcome
    portal.screenshot("restore-done")

    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    (raw, _, flags), = dovecot.folder_messages(BOB, f"Restored.{today}")
    assert raw == (CASES / "B16.eml").read_bytes()
    assert b"\\Seen" in flags

    assert chromium.console_errors == []
    assert chromium.remote_requests == []
    assert chromium.requests and all(url.startswith(portal.base_url)
                                     for url in chromium.requests)


def test_wrong_mailbox_password_then_restore_all_results(portal, chromium, dovecot):
    portal.sign_in(BOB)
    portal.search("from:elsewhere.net")
    portal.choose_for_restore(subject_of("B29.eml"))
    portal.page.get_by_label(re.compile("Password of your mailbox")).fill("wrong password")
    portal.page.get_by_role("button", name=re.compile(r"^Restore 1 message")).click()
    alert = portal.page.get_by_role("alert")
    assert "refused the login" in alert.inner_text()
    portal.screenshot("restore-refused")
    assert dovecot.folders(BOB) == ["INBOX"]
    # The refused form answers 400, which Chromium reports; nothing else.
    assert [error for error in chromium.console_errors
            if "/restore/start: Failed to load resource" not in error
            or "status of 400" not in error] == []
    assert chromium.remote_requests == []

    portal.search("from:elsewhere.net")
    portal.choose_all_for_restore()
    outcome = portal.restore(BOB_IMAP)
    assert "3 restored" in outcome and "0 failed" in outcome
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    restored = dovecot.folder_messages(BOB, f"Restored.{today}")
    assert sorted(raw for raw, _, _ in restored) == sorted(
        (CASES / name).read_bytes() for name in MESSAGES)
    assert len(chromium.console_errors) == 1 and chromium.remote_requests == []
