# The TOTP second factor: enrol with a confirmed code, then sign-in asks for
# a code after the password; a code is never accepted twice; roles can be
# made to use it; an operator can reset it; the secret is stored sealed.

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import urllib.parse

import pyotp
import pytest

from tests.harness import USER_PASSWORD, ArchiveServer, strongroom
from tests.portal_accounts import (ADMIN, ADMIN_PASSWORD, BOB, audit_actions, make_app,  # noqa: F401
                                   portal_app, portal_home, post_form, sign_in)
from tests.portal_client import PortalClient
from web.totp import matching_step


def enrol(client) -> pyotp.TOTP:
    """Set up TOTP on the signed-in account; return the app's generator."""
    page = client.get("/account/totp").get_data(as_text=True)
    uri = re.search(r"<code>(otpauth://[^<]+)</code>", page).group(1)
    secret = urllib.parse.parse_qs(urllib.parse.urlsplit(
        uri.replace("&amp;", "&")).query)["secret"][0]
    totp = pyotp.TOTP(secret)
    response = post_form(client, "/account/totp", {"code": totp.now()})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return totp


def test_enrolment_page_shows_secret_uri_and_inline_svg(portal_app):
    client = portal_app.test_client()
    sign_in(client)
    response = client.get("/account/totp")
    page = response.get_data(as_text=True)
    uri = re.search(r"<code>(otpauth://[^<]+)</code>", page).group(1).replace("&amp;", "&")
    parts = urllib.parse.urlsplit(uri)
    assert parts.netloc == "totp"
    assert urllib.parse.unquote(parts.path) == f"/Strongroom:{BOB}"
    secret = urllib.parse.parse_qs(parts.query)["secret"][0]
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    assert " ".join(secret[i:i + 4] for i in range(0, 32, 4)) in page
    assert "<svg" in page and "<script" not in page and "<img" not in page
    assert "script-src" not in response.headers["Content-Security-Policy"]
    # Reloading shows the same unconfirmed secret, not a new one.
    assert secret in client.get("/account/totp").get_data(as_text=True)


def test_wrong_code_does_not_turn_it_on(portal_app):
    client = portal_app.test_client()
    sign_in(client)
    client.get("/account/totp")
    for code in ("000000", "12345", "abcdef", "", "1" * 50):
        post_form(client, "/account/totp", {"code": code})
    client.post("/logout", data={"csrf_token": _token(client)})
    assert sign_in(client).headers["Location"] == "/search"


def test_sign_in_asks_for_a_code_after_the_password(portal_app):
    client = portal_app.test_client()
    sign_in(client)
    totp = enrol(client)
    client.post("/logout", data={"csrf_token": _token(client)})

    response = sign_in(client)
    assert response.headers["Location"] == "/login/code"
    assert client.get("/search").status_code == 302  # not signed in yet
    assert client.get("/search").headers["Location"].startswith("/login")
    wrong = post_form(client, "/login/code", {"code": "000000"})
    assert wrong.status_code == 401
    right = post_form(client, "/login/code", {"code": _next_code(totp)})
    assert right.headers["Location"] == "/search"
    assert client.get("/search").status_code == 200
    events = portal_app.extensions["strongroom"].control.audit_events(actor=BOB, limit=3)
    assert [e["action"] for e in events[:2]] == ["login", "login.failure"]
    assert '"second_factor": true' in events[0]["detail"]
    assert '"reason": "code"' in events[1]["detail"]
    assert (BOB, "totp.enrolled", BOB) in audit_actions(portal_app)


def test_a_code_is_not_accepted_twice(portal_app):
    client = portal_app.test_client()
    sign_in(client)
    totp = enrol(client)
    code = _next_code(totp)
    first, second = portal_app.test_client(), portal_app.test_client()
    sign_in(first)
    sign_in(second)
    assert post_form(first, "/login/code", {"code": code}).status_code == 302
    replay = post_form(second, "/login/code", {"code": code})
    assert replay.status_code == 401
    assert "already used" in replay.get_data(as_text=True)
    # Nor is an older code, still inside the drift window.
    assert post_form(second, "/login/code", {"code": totp.now()}).status_code == 401


def test_wrong_codes_count_towards_lockout(portal_home):
    app = make_app(portal_home, "lockout_attempts = 3")
    client = app.test_client()
    sign_in(client)
    totp = enrol(client)
    other = app.test_client()
    sign_in(other)
    post_form(other, "/login/code", {"code": "000000"})
    post_form(other, "/login/code", {"code": "000001"})
    locked = post_form(other, "/login/code", {"code": "000002"})
    assert locked.headers["Location"] == "/login"
    assert sign_in(other).status_code == 401  # right password, locked account
    assert ("portal", "account.locked", BOB) in audit_actions(app)
    assert _next_code(totp)  # the factor itself is untouched


def test_pending_password_expires(portal_app, monkeypatch):
    import vault.clock

    client = portal_app.test_client()
    sign_in(client)
    totp = enrol(client)
    late = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=6)
    pending = portal_app.test_client()
    sign_in(pending)
    monkeypatch.setattr(vault.clock, "now", lambda: late)
    response = post_form(pending, "/login/code", {"code": totp.at(late)},
                         csrf_from="/login")
    assert response.headers["Location"] == "/login"


def test_secret_is_stored_sealed(portal_home):
    app = make_app(portal_home)
    client = app.test_client()
    sign_in(client)
    totp = enrol(client)
    with sqlite3.connect(portal_home / "control.sqlite3") as connection:
        stored = connection.execute("SELECT totp_secret FROM account_state WHERE totp_enabled = 1"
                                    ).fetchone()[0]
        dump = "\n".join(connection.iterdump())
    assert totp.secret.encode() not in stored
    assert totp.secret not in dump
    assert len(stored) == 12 + 32 + 16


def test_role_can_be_made_to_enrol_before_anything_else(portal_home):
    app = make_app(portal_home, 'require_totp_roles = ["admin"]')
    admin = app.test_client()
    response = sign_in(admin, ADMIN, ADMIN_PASSWORD)
    assert response.headers["Location"] == "/account/totp"
    for path in ("/search", "/account", "/activity", "/account/password"):
        assert admin.get(path).headers["Location"] == "/account/totp", path
    assert "Your role must sign in with a code" in \
        admin.get("/account/totp").get_data(as_text=True)
    page = admin.get("/account/totp").get_data(as_text=True)
    secret = re.search(r"secret=([A-Z2-7]+)", page).group(1)
    response = post_form(admin, "/account/totp", {"code": pyotp.TOTP(secret).now()})
    assert response.headers["Location"] == "/search"
    # Enrolled, the administrator reaches their pages (their landing page,
    # /search, sends them to the audit trail: their role reads no mail).
    assert admin.get("/account").status_code == 200
    # A user of another role is not asked.
    assert sign_in(app.test_client()).headers["Location"] == "/search"


def test_matching_step_allows_one_step_of_drift():
    secret = pyotp.random_base32()
    at = dt.datetime(2026, 12, 4, 12, 0, 10, tzinfo=dt.timezone.utc)
    totp = pyotp.TOTP(secret)
    step = totp.timecode(at)
    assert matching_step(secret, totp.at(at), at) == step
    assert matching_step(secret, totp.generate_otp(step - 1), at) == step - 1
    assert matching_step(secret, totp.generate_otp(step + 1), at) == step + 1
    assert matching_step(secret, totp.generate_otp(step + 2), at) is None


@pytest.fixture
def server(tmp_path):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.start()
    server.add_user(BOB)
    yield server
    server.stop()


def test_totp_reset_over_http_and_the_secret_never_reaches_the_log(server):
    client = PortalClient(server.base_url)
    client.sign_in(BOB, USER_PASSWORD)
    page = client.get("/account/totp").body
    secret = re.search(r"secret=([A-Z2-7]+)", page).group(1)
    totp = pyotp.TOTP(secret)
    assert client.post("/account/totp", {"code": totp.now()}).status == 302
    client.sign_out()
    assert client.sign_in(BOB, USER_PASSWORD).location == "/login/code"
    assert client.post("/login/code", {"code": _next_code(totp)},
                       csrf_from="/login/code").location == "/search"
    client.sign_out()

    output = strongroom("user", "totp-reset", BOB, "--home", str(server.home))
    assert f"Removed the second factor of {BOB}" in output
    assert client.sign_in(BOB, USER_PASSWORD).location == "/search"
    events = strongroom("audit", "show", "--home", str(server.home))
    assert f"totp.reset  {BOB}" in events
    server.stop()
    assert secret not in server.log_path.read_text()
    assert secret not in events


def _next_code(totp: pyotp.TOTP) -> str:
    # The code of the next step: fresh even if the test already used this
    # step's code, and inside the one-step drift the server allows.
    return totp.generate_otp(totp.timecode(dt.datetime.now(dt.timezone.utc)) + 1)


def _token(client):
    from tests.portal_accounts import csrf_token

    return csrf_token(client, "/account")
