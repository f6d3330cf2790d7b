# The admin page: an administrator lists accounts and unlocks, signs out
# and resets them through the same functions as `strongroom user`, sees the
# catalogue's coverage, and reads no mail; no other role reaches it.

from __future__ import annotations

import json
import re

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.ediscovery import make_home, message, portal_app
from tests.homes import damage
from tests.portal_accounts import csrf_token, sign_in, signed_in
from vault.config import load
from vault.ingest import open_vault
from vault.ownership import Envelope

ADMIN = "admin@example.com"
ADMIN_PASSWORD = "admin password 1"
BOB = "bob@example.com"
ADMIN_ROUTES = [("GET", "/admin/"), ("GET", "/admin/accounts"), ("GET", "/admin/coverage"),
                ("POST", "/admin/accounts"), ("POST", "/admin/accounts/1/unlock"),
                ("POST", "/admin/accounts/1/sign-out"),
                ("POST", "/admin/accounts/1/totp-reset")]


@pytest.fixture
def home(tmp_path, monkeypatch):
    return make_home(tmp_path, monkeypatch, "[accounts]\nlockout_attempts = 3\n")


@pytest.fixture
def app(home):
    return portal_app(home)


def events(app, **filters):
    found = app.extensions["strongroom"].control.audit_events(limit=10_000, **filters)
    return [(e["actor"], e["action"], e["target"], json.loads(e["detail"]))
            for e in reversed(found)]


def user_id(app, address):
    return app.extensions["strongroom"].accounts.get(address=address).id


def test_a_locked_account_unlocked_from_the_page_can_sign_in(app):
    bob = app.test_client()
    for _ in range(3):
        assert sign_in(bob, BOB, "wrong password!").status_code == 401
    assert sign_in(bob, BOB).status_code == 401          # locked: the right one fails

    admin = signed_in(app, ADMIN, ADMIN_PASSWORD)
    page = admin.get("/admin/accounts").get_data(as_text=True)
    row = re.search(rf"<tr class=\"locked\">\s*<th scope=\"row\" class=\"address\">{BOB}", page)
    assert row, "bob is not listed as locked"
    assert page.count('class="locked"') == 1
    unlock = f"/admin/accounts/{user_id(app, BOB)}/unlock"
    response = admin.post(unlock, data={"csrf_token": csrf_token(admin, "/admin/accounts")})
    assert response.status_code == 303 and response.headers["Location"] == "/admin/accounts"
    assert f"Unlocked {BOB}." in admin.get("/admin/accounts").get_data(as_text=True)

    assert sign_in(bob, BOB).status_code == 302
    assert bob.get("/search").status_code == 200
    trail = [(actor, action, target) for actor, action, target, _ in events(app)]
    locked = trail.index(("portal", "account.locked", BOB))
    unlocked = trail.index((ADMIN, "account.unlocked", BOB))
    signed = len(trail) - 1 - trail[::-1].index((BOB, "login", ""))
    assert locked < unlocked < signed
    assert (ADMIN, "admin.accounts.viewed", "") in trail
    # A second unlock finds nothing to do and audits nothing.
    admin.post(unlock, data={"csrf_token": csrf_token(admin, "/admin/accounts")})
    assert trail.count((ADMIN, "account.unlocked", BOB)) == 1
    assert len(events(app, action="account.unlocked")) == 1


def test_the_account_list_shows_state_and_no_mail(app):
    admin = signed_in(app, ADMIN, ADMIN_PASSWORD)
    page = admin.get("/admin/accounts").get_data(as_text=True)
    for address in ("comp@example.com", "aud@example.com", BOB, ADMIN):
        assert f'class="address">{address}</th>' in page
    assert page.count("TOTP off") == 7
    assert "0 days" in page and "never" in page
    # The admin signed in a moment ago: their row has a sign-in time.
    admin_row = page.split(f'class="address">{ADMIN}</th>')[1].split("</tr>")[0]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", admin_row)
    for subject in ("Merger timeline", "Lunch", "elsewhere.net", "kestrel"):
        assert subject not in page
    coverage = admin.get("/admin/coverage").get_data(as_text=True)
    for subject in ("Merger timeline", "Lunch", "kestrel", "x@elsewhere.net"):
        assert subject not in coverage


def test_sign_out_everywhere_and_totp_reset_are_audited_with_the_admin(app):
    bob = signed_in(app, BOB)
    assert bob.get("/search").status_code == 200
    services = app.extensions["strongroom.accounts"]
    secret = services.factor.begin(user_id(app, BOB))
    assert secret
    with services.control.connect() as connection:
        connection.execute("UPDATE account_state SET totp_enabled = 1 WHERE user_id = ?",
                           (user_id(app, BOB),))
    admin = signed_in(app, ADMIN, ADMIN_PASSWORD)
    target = f"/admin/accounts/{user_id(app, BOB)}"
    admin.post(f"{target}/sign-out", data={"csrf_token": csrf_token(admin, "/admin/accounts")})
    assert bob.get("/search").status_code == 302        # bob's session is gone
    assert admin.get("/admin/accounts").status_code == 200   # the admin's is not
    admin.post(f"{target}/totp-reset", data={"csrf_token": csrf_token(admin, "/admin/accounts")})
    assert not services.factor.is_enabled(user_id(app, BOB))
    trail = events(app)
    assert (ADMIN, "sessions.ended", BOB, {"sessions": 1}) in trail
    assert (ADMIN, "totp.reset", BOB, {}) in trail


def test_an_account_created_from_the_page_follows_the_policy(app):
    admin = signed_in(app, ADMIN, ADMIN_PASSWORD)
    form = {"address": "erin@example.com", "role": "auditor", "aliases": "sales@example.com",
            "password": "short", "password_again": "short"}
    admin.post("/admin/accounts", data={**form, "csrf_token": csrf_token(admin, "/admin/accounts")})
    page = admin.get("/admin/accounts").get_data(as_text=True)
    assert "The account was not created" in page and "at least 12 characters" in page
    assert app.extensions["strongroom"].accounts.get(address="erin@example.com") is None

    form.update(password="a long enough password", password_again="a long enough password")
    admin.post("/admin/accounts", data={**form, "csrf_token": csrf_token(admin, "/admin/accounts")})
    erin = app.extensions["strongroom"].accounts.get(address="erin@example.com")
    assert erin.role == "auditor"
    assert erin.mailboxes == {"erin@example.com", "sales@example.com"}
    assert (ADMIN, "user.created", "erin@example.com",
            {"role": "auditor", "mailboxes": ["erin@example.com", "sales@example.com"]}
            ) in events(app)
    assert sign_in(app.test_client(), "erin@example.com",
                   "a long enough password").status_code == 302


@pytest.mark.parametrize("address", ["bob@example.com", "aud@example.com",
                                     "comp@example.com"])
def test_every_other_role_gets_404_and_the_denial_is_audited(app, address):
    client = signed_in(app, address)
    for method, path in ADMIN_ROUTES:
        data = {"csrf_token": csrf_token(client, "/account")} if method == "POST" else None
        response = client.open(path, method=method, data=data)
        assert response.status_code == 404, (method, path)
    denials = [(target, detail["method"]) for actor, action, target, detail
               in events(app, actor=address) if action == "denied"]
    assert denials == [(path, method) for method, path in ADMIN_ROUTES]
    assert app.extensions["strongroom"].accounts.get(address="x@example.com") is None
    assert "Admin</a>" not in client.get("/account").get_data(as_text=True)


def test_a_form_without_its_csrf_token_is_refused(app):
    bob = app.test_client()
    for _ in range(3):
        sign_in(bob, BOB, "wrong password!")
    admin = signed_in(app, ADMIN, ADMIN_PASSWORD)
    response = admin.post(f"/admin/accounts/{user_id(app, BOB)}/unlock")
    assert response.status_code == 400
    response = admin.post(f"/admin/accounts/{user_id(app, BOB)}/unlock",
                          data={"csrf_token": "forged"})
    assert response.status_code == 400
    assert events(app, action="account.unlocked") == []
    assert sign_in(bob, BOB).status_code == 401        # still locked


def test_coverage_shows_a_gap_until_the_follower_indexes(app, home):
    admin = signed_in(app, ADMIN, ADMIN_PASSWORD)
    page = admin.get("/admin/coverage").get_data(as_text=True)
    assert "5 of 5</strong> stored messages indexed" in page and "no gap" in page
    assert "GAP" not in page

    # Seal a message as the receiver would, without running the follower.
    settings = load(home)
    vault = open_vault(settings)
    vault.archive(message("x@elsewhere.net", BOB, "Unindexed", "not yet searchable"),
                  Envelope("x@elsewhere.net", (BOB,), peer="192.0.2.7"))
    page = admin.get("/admin/coverage").get_data(as_text=True)
    assert "5 of 6</strong> stored messages indexed" in page
    assert '<strong class="gap-total">gap 1</strong>' in page
    row = re.search(r'<tr class="gap">\s*<th scope="row">\d{4}-\d\d-\d\d</th>(.*?)</tr>',
                    page, re.S)
    cells = re.findall(r'<td data-label="([^"]+)">(.*?)</td>', row.group(1))
    assert cells == [("Stored", "6"), ("Indexed", "5"), ("Partially indexed", "0"),
                     ("Gap", "<strong>GAP 1</strong>")]
    # The receiver's view: the new delivery's peer is a source of the last hour.
    source = page.split('class="address">192.0.2.7')[1].split("</tr>")[0]
    assert "1 msg" in source

    Follower(vault, Catalogue(settings.path(settings.catalogue.path))).catch_up()
    page = admin.get("/admin/coverage").get_data(as_text=True)
    assert "6 of 6</strong> stored messages indexed" in page and "no gap" in page
    assert "GAP" not in page
    viewed = [detail for _, action, _, detail in events(app, actor=ADMIN)
              if action == "admin.coverage.viewed"]
    assert viewed == [{"gap": 0}, {"gap": 1}, {"gap": 0}]


def test_coverage_names_a_damaged_receipt_and_shows_the_rest(app, home):
    settings = load(home)
    key = next(iter(open_vault(settings).receipts_after("")))
    damage(home, key)
    admin = signed_in(app, ADMIN, ADMIN_PASSWORD)
    response = admin.get("/admin/coverage")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<strong>1 receipt(s) cannot be read</strong>" in page and key in page
    assert "4 of 4</strong> stored messages indexed" in page
