# The admin page in a real browser: headless Chromium against `strongroom
# serve`.  An administrator finds a locked account, unlocks it with the
# page's button (no script), and its owner signs in again; the accounts
# and coverage pages are photographed at 360 and 1280 px.

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import demo_mail
from tests.harness import ADMIN_PASSWORD, USER_PASSWORD, ArchiveServer
from tests.test_browser import SCREENSHOTS, Portal, server_audit

ADMIN = "admin@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
LOCKOUT_ATTEMPTS = 3


class AdminPortal(Portal):
    """The portal's steps, and those of an administrator."""

    def sign_in_as_admin(self, address: str, password: str) -> None:
        self.page.goto(self.base_url + "/login?next=/admin/accounts")
        self.page.get_by_label("Email address").fill(address)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url("**/admin/accounts")
        assert self.page.locator("h1").inner_text() == "Accounts"

    def fail_sign_ins(self, address: str, times: int) -> None:
        for _ in range(times):
            self.page.goto(self.base_url + "/login")
            self.page.get_by_label("Email address").fill(address)
            self.page.get_by_label("Password").fill("not the password")
            self.page.get_by_role("button", name="Sign in").click()
            assert "Sign-in failed" in self.page.get_by_role("alert").inner_text()

    def account_row(self, address: str):
        return self.page.locator("table.accounts tbody tr", has=self.page.locator(
            "th", has_text=address))

    def unlock(self, address: str) -> str:
        self.page.get_by_role("button", name=f"Unlock {address}").click()
        self.page.wait_for_url("**/admin/accounts")
        return self.page.get_by_role("alert").inner_text()

    def sign_out(self) -> None:
        self.page.get_by_role("button", name="Sign out").click()
        self.page.wait_for_url("**/login")


@pytest.fixture
def server(tmp_path):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.configure("accounts", f"lockout_attempts = {LOCKOUT_ATTEMPTS}")
    server.start()
    token = server.add_user(BOB)
    server.add_user(CAROL, "sales@example.com", role="auditor")
    messages = demo_mail.demo_messages()
    for raw in messages:
        server.send(raw, demo_mail.sender_of(raw), [BOB])
    assert server.wait_for(token, "*", count=len(messages), timeout=30)["total"] == len(
        messages)
    yield server
    server.stop()


@pytest.fixture
def portal(chromium, server, tmp_path):
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    published = Path(SCREENSHOTS) if SCREENSHOTS else screenshots
    published.mkdir(parents=True, exist_ok=True)
    return AdminPortal(chromium.page(), server.base_url, screenshots, published)


def test_admin_unlocks_a_locked_account_and_its_owner_signs_in(portal, chromium, server):
    portal.fail_sign_ins(BOB, LOCKOUT_ATTEMPTS)

    portal.sign_in_as_admin(ADMIN, ADMIN_PASSWORD)
    row = portal.account_row(BOB)
    assert "Locked" in row.inner_text()
    assert "sales@example.com" in portal.account_row(CAROL).inner_text()
    portal.screenshot("admin-accounts", publish=True)

    assert portal.unlock(BOB) == f"Unlocked {BOB}."
    assert "Locked" not in portal.account_row(BOB).inner_text()
    portal.page.get_by_role("link", name="Coverage").click()
    portal.page.wait_for_url("**/admin/coverage")
    status = portal.page.get_by_role("status").inner_text()
    expected = len(demo_mail.demo_messages())
    assert f"{expected} of {expected} stored messages indexed" in status
    assert "no gap" in status
    portal.screenshot("admin-coverage", publish=True)
    for subject in (demo_mail.ATTACHMENT_SUBJECT, demo_mail.KEYWORD):
        assert subject not in portal.page.content()
    portal.sign_out()

    portal.sign_in(BOB, USER_PASSWORD)
    events = [(e["actor"], e["action"], e["target"]) for e in reversed(server_audit(server))]
    assert events.index(("portal", "account.locked", BOB)) < events.index(
        (ADMIN, "account.unlocked", BOB)) < len(events) - 1 - events[::-1].index(
        (BOB, "login", ""))
    failures = [json.loads(e["detail"])["reason"] for e in server_audit(server, "login.failure")]
    assert failures.count("password") == LOCKOUT_ATTEMPTS
    # The failed sign-ins answer 401, which Chromium reports; nothing else.
    refused = [e for e in chromium.console_errors
               if "/login: Failed to load resource" in e and "status of 401" in e]
    assert len(refused) == LOCKOUT_ATTEMPTS
    assert len(chromium.console_errors) == LOCKOUT_ATTEMPTS
    assert chromium.remote_requests == []
