# "My activity": a user sees their own audit events - sign-ins, failures,
# searches, views, downloads - newest first and paged, and never anyone
# else's, nor what others did about them beyond their account's security.

from __future__ import annotations

import re

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.conftest import CASES
from tests.portal_accounts import (BOB, CAROL, make_app, portal_app, portal_home,  # noqa: F401
                                   sign_in)
from vault.config import load
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.account_pages import ACTIVITY_PER_PAGE


def rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[-1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", body, re.S)


def test_own_sign_ins_failures_searches_views_and_downloads(portal_home):
    settings = load(portal_home)
    vault = open_vault(settings)
    catalogue = Catalogue(settings.path(settings.catalogue.path))
    vault.archive((CASES / "B16.eml").read_bytes(), Envelope("x@elsewhere.net", (BOB,)))
    Follower(vault, catalogue, portal_home / "cursor").catch_up()
    app = make_app(portal_home)

    client = app.test_client()
    sign_in(client, password="not my password")
    sign_in(client)
    page = client.get("/search?q=AVOCET-B16").get_data(as_text=True)
    message_id = re.search(r'href="/messages/([0-9a-f]{64})"', page).group(1)
    client.get(f"/messages/{message_id}")
    client.get(f"/messages/{message_id}/original.eml")
    carol = app.test_client()
    sign_in(carol, CAROL)
    carol.get("/search?q=carols-secret-query")

    page = client.get("/activity").get_data(as_text=True)
    listed = rows(page)
    labels = [re.search(r"</td>\s*<td>([^<]+)", row).group(1).strip() for row in listed]
    assert labels == ["Downloaded a message", "Opened a message", "Searched",
                      "Signed in", "Failed sign-in", "Account created"]
    assert "query: AVOCET-B16" in listed[2]
    assert f'href="/messages/{message_id}"' in listed[0]
    assert "carols-secret-query" not in page and CAROL not in page


def test_activity_is_paged_newest_first(portal_app):
    control = portal_app.extensions["strongroom"].control
    total = 2 * ACTIVITY_PER_PAGE + 20
    for number in range(total):
        control.audit(BOB, "search", query=f"query-{number:03d}")
    client = portal_app.test_client()
    sign_in(client)  # one more event: the sign-in itself

    first = client.get("/activity").get_data(as_text=True)
    assert len(rows(first)) == ACTIVITY_PER_PAGE
    assert "Signed in" in rows(first)[0] and f"query-{total - 1}" in rows(first)[1]
    assert 'rel="next" href="/activity?page=2"' in first and 'rel="prev"' not in first
    last = client.get("/activity?page=3").get_data(as_text=True)
    # 120 searches, the sign-in and "account created": 22 on the last page.
    assert len(rows(last)) == total + 2 - 2 * ACTIVITY_PER_PAGE
    assert "query-000" in rows(last)[-2] and "Account created" in rows(last)[-1]
    assert 'rel="next"' not in last and 'rel="prev" href="/activity?page=2"' in last
    for page in ("0", "-1", "abc", "9" * 40):
        assert client.get(f"/activity?page={page}").status_code == 200


def test_others_actions_about_me_are_shown_only_for_account_security(portal_app):
    control = portal_app.extensions["strongroom"].control
    control.audit("cli:root", "account.unlocked", BOB)
    control.audit("auditor@example.com", "case.search", BOB, query="investigating bob")
    control.audit("auditor@example.com", "hold.placed", BOB)
    client = portal_app.test_client()
    sign_in(client)
    page = client.get("/activity").get_data(as_text=True)
    assert "Account unlocked" in page and "(by cli:root)" in page
    assert "investigating" not in page and "hold.placed" not in page
    assert "auditor@example.com" not in page


def test_activity_needs_sign_in_and_takes_no_account_from_the_request(portal_app):
    assert portal_app.test_client().get("/activity").status_code == 302
    client = portal_app.test_client()
    sign_in(client)
    for query in ("?actor=carol@example.com", "?address=carol@example.com", "?user_id=2"):
        assert CAROL not in client.get("/activity" + query).get_data(as_text=True)
