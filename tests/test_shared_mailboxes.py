# A shared mailbox (a team address) granted by an administrator: the
# account reads its mail beside its own until the grant is taken back,
# and both steps are audited under the operator who ran them.

from __future__ import annotations

import re

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.harness import strongroom
from tests.homes import BOB, CAROL, make_home
from tests.portal_accounts import signed_in
from vault.config import load
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.app import create_app

SALES = "sales@example.com"
TEAM_MAIL = (b"From: buyer@elsewhere.net\r\nTo: sales@example.com\r\n"
             b"Subject: Order for PELICAN lamps\r\nMessage-ID: <order-1@elsewhere.net>\r\n"
             b"\r\nPlease send twelve PELICAN lamps.\r\n")


@pytest.fixture
def home(tmp_path):
    home = make_home(tmp_path)
    settings = load(home)
    vault = open_vault(settings)
    vault.archive(TEAM_MAIL, Envelope("buyer@elsewhere.net", (SALES,)))
    Follower(vault, Catalogue(settings.path(settings.catalogue.path))).catch_up()
    return home


def found(app, address, query="PELICAN"):
    page = signed_in(app, address).get(f"/search?q={query}").get_data(as_text=True)
    return re.findall(r'href="/messages/([0-9a-f]{64})"', page)


def portal(home):
    app = create_app(load(home))
    app.config["TESTING"] = True
    return app


def test_a_shared_mailbox_is_read_until_the_grant_is_taken_back(home, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "operator")
    app = portal(home)
    assert found(app, BOB) == []

    output = strongroom("user", "share", SALES, BOB, "--home", str(home))
    assert f"{BOB} now reads {BOB}, {SALES}" in output
    [message_id] = found(app, BOB)
    bob = signed_in(app, BOB)
    assert bob.get(f"/messages/{message_id}").status_code == 200
    # Only the grantee: carol was given nothing.
    assert found(app, CAROL) == []
    assert signed_in(app, CAROL).get(f"/messages/{message_id}").status_code == 404

    strongroom("user", "unshare", SALES, BOB, "--home", str(home))
    # The signed-in session loses it at once: the grant is read per request.
    assert bob.get(f"/messages/{message_id}").status_code == 404
    assert found(app, BOB) == []

    events = strongroom("audit", "show", "--home", str(home), "--limit", "40")
    assert f"cli:operator  mailbox.shared  {BOB}" in events
    assert f"cli:operator  mailbox.unshared  {BOB}" in events


def test_sharing_refuses_what_it_cannot_grant(home):
    def refusal(*args):
        with pytest.raises(RuntimeError) as raised:
            strongroom("user", *args, "--home", str(home))
        return str(raised.value)

    assert "not in the archive's domains" in refusal("share", "sales@elsewhere.net", BOB)
    assert "no account for nobody@example.com" in refusal(
        "share", SALES, "nobody@example.com")
    assert f"{BOB} already reads {BOB}" in refusal("share", BOB, BOB)
    assert f"{SALES} is not shared with {BOB}" in refusal("unshare", SALES, BOB)
