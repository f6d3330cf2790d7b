# The portal in a real browser: headless Chromium against `strongroom
# serve`, signing in, searching, reading, downloading the original and
# restoring into a real Dovecot, with no console error and no request to
# any host but loopback.  Screenshots at phone and desktop widths go to
# STRONGROOM_SCREENSHOTS (default: the test's temporary directory).

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest

from tests import demo_mail
from tests.conftest import CASES
from tests.harness import USER_PASSWORD, ArchiveServer
from tests.peers.chromium import DESKTOP, PHONE, full_page_screenshot
from tests.peers.dovecot import Dovecot, require_dovecot
from vault.config import load
from vault.control import ControlDB

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

    def __init__(self, page, base_url: str, screenshots: Path,
                 published: Path | None = None) -> None:
        self.page = page
        self.base_url = base_url
        self.screenshots = screenshots
        # Where the screenshots of the demo mail go (docs/screenshots when
        # STRONGROOM_SCREENSHOTS names it); the others stay in screenshots.
        self.published = published or screenshots

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

    def download_attachment(self, filename: str) -> tuple[str, bytes]:
        """Download an attachment from the message page: (suggested name, bytes)."""
        with self.page.expect_download() as download:
            self.page.locator(".files a", has_text=filename).click()
        return download.value.suggested_filename, Path(download.value.path()).read_bytes()

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

    def screenshot(self, name: str, publish: bool = False) -> list[Path]:
        taken = []
        folder = self.published if publish else self.screenshots
        for label, size in (("360", PHONE), ("1280", DESKTOP)):
            self.page.set_viewport_size(size)
            path = folder / f"{name}-{label}.png"
            full_page_screenshot(self.page, str(path))
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
    for raw in demo_mail.demo_messages():
        server.send(raw, demo_mail.sender_of(raw), [BOB])
    expected = len(MESSAGES) + len(demo_mail.demo_messages())
    assert server.wait_for(token, "*", count=expected, timeout=30)["total"] == expected
    yield server
    server.stop()


@pytest.fixture
def portal(chromium, server, tmp_path):
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    published = Path(SCREENSHOTS) if SCREENSHOTS else screenshots
    published.mkdir(parents=True, exist_ok=True)
    return Portal(chromium.page(), server.base_url, screenshots, published)


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


def test_demo_mail_attachment_restore_and_screenshots(portal, chromium, server, dovecot):
    """Bob's ordinary week: find the budget mail, read it, take the attachment."""
    portal.sign_in(BOB)
    assert portal.search(demo_mail.KEYWORD) == len(demo_mail.demo_messages())
    portal.screenshot("search", publish=True)

    portal.open_message(demo_mail.NEWSLETTER_SUBJECT)
    assert portal.page.get_by_role("link", name="Show remote content").is_visible()
    portal.screenshot("message-html", publish=True)

    portal.search(demo_mail.KEYWORD)
    portal.open_message(demo_mail.ATTACHMENT_SUBJECT)
    portal.screenshot("message", publish=True)
    name, data = portal.download_attachment(demo_mail.ATTACHMENT_NAME)
    assert name == demo_mail.ATTACHMENT_NAME and data == demo_mail.ATTACHMENT
    link = portal.page.locator(".files a", has_text=demo_mail.ATTACHMENT_NAME)
    response = portal.page.request.get(portal.base_url + link.get_attribute("href"))
    assert response.ok and response.body() == demo_mail.ATTACHMENT
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    disposition = headers["content-disposition"]
    assert disposition.startswith("attachment;")
    # RFC 6266: an ASCII fallback and the exact name in RFC 5987 form.
    assert "filename*=UTF-8''Budget%202026%20%E2%80%93%20r%C3%A9vis%C3%A9.csv" in disposition
    audit = server_audit(server, "download.attachment")
    assert any(event["actor"] == BOB
               and json.loads(event["detail"])["filename"] == demo_mail.ATTACHMENT_NAME
               for event in audit)

    portal.search(demo_mail.KEYWORD)
    portal.choose_for_restore(demo_mail.ATTACHMENT_SUBJECT, demo_mail.THREAD_SUBJECT)
    portal.screenshot("restore-dialog", publish=True)
    outcome = portal.restore(BOB_IMAP)
    assert "2 restored" in outcome and "0 failed" in outcome
    portal.screenshot("restore-done", publish=True)

    assert chromium.console_errors == []
    assert chromium.remote_requests == []


def server_audit(server, action: str | None = None) -> list[dict]:
    """Read the server's audit events (of one action) from its control database."""
    settings = load(server.home)
    control = ControlDB(settings.path(settings.control.database))
    return control.audit_events(action=action, limit=10_000)
