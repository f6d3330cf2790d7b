# eDiscovery in a real browser against `strongroom serve`: a compliance
# officer opens a case, saves a search, previews it, holds it, exports it
# and downloads the result; an auditor searches every mailbox but has no
# hold or export controls and is refused when posting to them anyway; an
# administrator reaches no mail at all.  Each step must be in the audit log.

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.ediscovery import MAIL, audit_actions, message
from tests.harness import ADMIN_PASSWORD, USER_PASSWORD, ArchiveServer
from tests.peers.chromium import DESKTOP, PHONE, full_page_screenshot

OFFICER = "comp@example.com"
AUDITOR = "aud@example.com"
ADMIN = "admin@example.com"
CASE = "kestrel"
# Read at import: the autouse clean_environment fixture hides STRONGROOM_*.
SCREENSHOTS = os.environ.get("STRONGROOM_SCREENSHOTS", "")
EXPORT_TIMEOUT_S = 240  # a busy machine can take its time


@pytest.fixture
def server(tmp_path):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.start()
    server.add_user(OFFICER, role="compliance")
    server.add_user(AUDITOR, role="auditor")
    tokens = {address: server.add_user(address)
              for address in ("bob@example.com", "carol@example.com", "dave@example.com")}
    for sender, recipient, subject, body in MAIL:
        server.send(message(sender, recipient, subject, body), sender, [recipient])
    for address, token in tokens.items():
        # A mailbox holds what its owner sent as well as what they received.
        expected = sum(address in (sender, recipient) for sender, recipient, _, _ in MAIL)
        assert server.wait_for(token, "*", count=expected, timeout=30)["total"] == expected
    yield server
    server.stop()


def sign_in(page, base_url: str, address: str, password: str, landing: str) -> None:
    page.goto(base_url + "/login")
    page.get_by_label("Email address").fill(address)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{landing}")
    assert address in page.locator(".who").inner_text()


def sign_out(page) -> None:
    page.context.clear_cookies()


def search_row(page, name: str):
    return page.locator("table.searches tr", has_text=name)


def screenshot(page, name: str, folder: Path) -> None:
    for label, size in (("360", PHONE), ("1280", DESKTOP)):
        page.set_viewport_size(size)
        full_page_screenshot(page, str(folder / f"{name}-{label}.png"))
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= size["width"], f"{name} scrolls sideways at {label} px ({width})"
    page.set_viewport_size(DESKTOP)


def post_with_token(page, base_url: str, path: str, data: dict | None = None):
    """POST as the signed-in browser would, with the page's own CSRF token."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    return page.request.post(base_url + path,
                             form={"csrf_token": token, **(data or {})},
                             max_redirects=0)


def test_officer_opens_case_holds_exports_and_downloads(server, chromium, tmp_path):
    page = chromium.page()
    base = server.base_url
    sign_in(page, base, OFFICER, USER_PASSWORD, "/search")

    page.get_by_role("link", name="Cases").click()
    page.wait_for_url("**/cases")
    page.get_by_label("Name").fill(CASE)
    page.get_by_label("Description").fill("Leak of the Kestrel merger plans")
    page.get_by_label(re.compile("^Custodians")).fill("bob@example.com carol@example.com")
    page.get_by_role("button", name="Open case").click()
    page.wait_for_url(f"**/cases/{CASE}")
    assert page.locator("h1").inner_text() == f"Case {CASE}"

    page.get_by_label("Search name").fill("merger")
    page.get_by_label("Query").fill("kestrel")
    page.get_by_role("button", name="Save search").click()
    assert "kestrel" in search_row(page, "merger").locator("code").inner_text()

    page.get_by_label("Member").fill(AUDITOR)
    page.get_by_role("button", name="Add member").click()
    assert AUDITOR in page.locator("main").inner_text()

    search_row(page, "merger").get_by_role("button", name="Preview").click()
    preview = page.locator("section.preview")
    # bob and carol's merger mail; dave is no custodian of the case.
    assert "3 messages" in preview.inner_text()

    search_row(page, "merger").get_by_role("button", name="Hold", exact=True).click()
    page.wait_for_url(f"**/cases/{CASE}")
    holds = page.locator("h2", has_text="Legal holds").locator("xpath=following-sibling::ul[1]")
    # Three messages (held with their delivery receipts, which are not counted).
    assert re.search(r"merger: 3 messages", holds.inner_text()), holds.inner_text()

    row = search_row(page, "merger")
    row.get_by_label("Format").select_option("zip")
    row.get_by_role("button", name="Export").click()
    page.wait_for_url(f"**/cases/{CASE}")
    deadline = time.monotonic() + EXPORT_TIMEOUT_S
    while True:
        state = page.locator("table.exports tr").nth(1).locator(".state").inner_text()
        assert "failed" not in state, state
        if state == "done":
            break
        assert time.monotonic() < deadline, f"export still {state}"
        page.wait_for_timeout(500)
        page.reload()
    exports = page.locator("table.exports")
    assert exports.locator("progress").get_attribute("value") == "3"
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    screenshot(page, "case", folder)

    with page.expect_download() as download:
        exports.get_by_role("link", name="manifest.json").click()
    assert download.value.suggested_filename == "manifest.json"
    manifest = json.loads(Path(download.value.path()).read_text())
    assert len(manifest["items"]) == 3

    actions = audit_actions(server.home, OFFICER)
    for step in ("login", "case.created", "case.search_saved", "case.member_added",
                 "case.previewed", "hold.placed", "case.held", "export.started",
                 "export.finished", "export.downloaded"):
        assert step in actions, (step, actions)
    assert chromium.console_errors == [] and chromium.remote_requests == []

    # The auditor: every mailbox, read-only.
    sign_out(page)
    sign_in(page, base, AUDITOR, USER_PASSWORD, "/search")
    page.get_by_role("link", name="All mailboxes").click()
    box = page.get_by_role("searchbox", name="Search")
    box.fill("kestrel")
    box.press("Enter")
    page.wait_for_url("**/ediscovery/search?q=kestrel")
    # dave's too: the auditor is bound to no case's custodians.
    assert page.locator(".count").inner_text().startswith("4 messages")
    assert page.locator(".results .held").count() == 3
    page.locator(".results a", has_text="Merger gossip").click()
    page.wait_for_url("**/ediscovery/messages/*")
    message_id = page.url.rsplit("/", 1)[1]
    assert "kestrel merger rumours" in page.locator("main").inner_text()

    page.goto(f"{base}/cases/{CASE}")
    assert search_row(page, "merger").get_by_role("button", name="Preview").count() == 1
    for control in ("Hold", "Export", "Hold future mail of the custodians",
                    "Release all holds of this case"):
        assert page.get_by_role("button", name=control, exact=True).count() == 0, control
    assert page.get_by_role("link", name="manifest.json").count() == 0
    for path, data in ((f"/cases/{CASE}/searches/merger/hold", None),
                       (f"/cases/{CASE}/searches/merger/export", {"format": "zip"}),
                       (f"/cases/{CASE}/hold-future", None),
                       (f"/cases/{CASE}/release", None)):
        response = post_with_token(page, base, path, data)
        assert response.status in (403, 404), (path, response.status)
    # The form's own page is refused too, not only its button hidden.
    job_files = page.request.get(f"{base}/cases/{CASE}/exports/1/manifest.json")
    assert job_files.status == 403
    auditor_actions = audit_actions(server.home, AUDITOR)
    assert "search" in auditor_actions and "view" in auditor_actions
    assert auditor_actions.count("denied") >= 5, auditor_actions
    assert chromium.remote_requests == []

    # The administrator: accounts and the audit trail, no mail.
    sign_out(page)
    sign_in(page, base, ADMIN, ADMIN_PASSWORD, "/audit")
    nav = page.get_by_role("navigation", name="Account")
    assert nav.get_by_role("link", name="All mailboxes").count() == 0
    assert nav.get_by_role("link", name="Cases").count() == 0
    for path, status in (("/ediscovery/search?q=kestrel", 403), ("/cases", 403),
                         (f"/cases/{CASE}", 403), (f"/messages/{message_id}", 404),
                         (f"/messages/{message_id}/original.eml", 404),
                         (f"/ediscovery/messages/{message_id}", 404)):
        response = page.goto(base + path)
        assert response.status == status, (path, response.status)
        assert "rumours" not in page.content()
    admin_actions = audit_actions(server.home, ADMIN)
    assert admin_actions.count("denied") >= 6, admin_actions
