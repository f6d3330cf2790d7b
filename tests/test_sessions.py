# Portal sessions live on the server: a cookie is only a random id, signing
# out deletes its session, sessions end when idle or old, and an account
# can end all its sessions at once.

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time

import pytest

from tests.harness import USER_PASSWORD, ArchiveServer, strongroom
from tests.portal_accounts import PASSWORD, portal_app, portal_home, sign_in  # noqa: F401
from tests.portal_client import PortalClient, cookie_attributes

BOB = "bob@example.com"
COOKIE = "strongroom_session"


def serve(tmp_path, accounts: str = "", portal: str = "") -> ArchiveServer:
    server = ArchiveServer(tmp_path / "home")
    server.init()
    if accounts:
        server.configure("accounts", accounts)
    if portal:
        server.configure("portal", portal)
    server.start()
    server.add_user(BOB)
    return server


@pytest.fixture
def server(tmp_path):
    server = serve(tmp_path)
    yield server
    server.stop()


def signed_in(server: ArchiveServer, user_agent: str = "portal-client/1") -> PortalClient:
    client = PortalClient(server.base_url, user_agent)
    reply = client.sign_in(BOB, USER_PASSWORD)
    assert reply.status == 302 and reply.location == "/search", reply.body[:300]
    assert client.get("/search").status == 200
    return client


def session_rows(server: ArchiveServer) -> list[sqlite3.Row]:
    connection = sqlite3.connect(server.home / "control.sqlite3")
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute("SELECT * FROM sessions WHERE user_id IS NOT NULL").fetchall()
    finally:
        connection.close()


def test_b26_cookie_replayed_after_sign_out_opens_nothing(server):
    # B26: after sign-out a protected page redirects to sign-in, and the
    # cookie is expired with the attributes it was issued with.
    client = PortalClient(server.base_url)
    reply = client.sign_in(BOB, USER_PASSWORD, remember="on")
    issued = [h for h in reply.set_cookies() if h.startswith(COOKIE + "=")]
    assert len(issued) == 1
    assert not [h for h in reply.set_cookies() if h.startswith("remember_token")]
    captured = dict(client.cookies)
    assert client.get("/search").status == 200

    reply = client.sign_out()
    assert reply.status == 302 and reply.location == "/login"
    expired = [h for h in reply.set_cookies() if h.startswith(COOKIE + "=")]
    assert len(expired) == 1
    issued_attributes = cookie_attributes(issued[0])
    expired_attributes = cookie_attributes(expired[0])
    assert "1970" in expired_attributes["expires"]
    for name in ("path", "httponly", "samesite", "domain", "secure"):
        assert issued_attributes.get(name) == expired_attributes.get(name), name
    assert session_rows(server) == []

    replay = PortalClient(server.base_url)
    replay.cookies = captured
    for path in ("/search", "/search?q=x", "/account", "/activity"):
        reply = replay.get(path)
        assert reply.status == 302 and reply.location == "/login", path


def test_cookie_carries_only_a_random_id(server):
    client = signed_in(server)
    value = client.cookies[COOKIE]
    assert len(value) >= 43 and "." not in value  # no signed payload
    other = signed_in(server)
    assert other.cookies[COOKIE] != value
    rows = session_rows(server)
    assert len(rows) == 2
    assert value not in {row["id_sha256"] for row in rows}  # only its hash is stored


def test_cookies_are_httponly_samesite_and_secure_when_configured(tmp_path):
    server = serve(tmp_path, portal="secure_cookies = true")
    try:
        reply = PortalClient(server.base_url).sign_in(BOB, USER_PASSWORD)
        header = next(h for h in reply.set_cookies() if h.startswith(COOKIE))
        attributes = cookie_attributes(header)
        assert "httponly" in attributes and "secure" in attributes
        assert attributes["samesite"] in ("Lax", "Strict")
    finally:
        server.stop()


def test_sign_in_starts_a_new_session_id(server):
    # A session id planted before sign-in must not become a signed-in one.
    client = PortalClient(server.base_url)
    client.get("/login")
    before = client.cookies[COOKIE]
    client.sign_in(BOB, USER_PASSWORD)
    assert client.cookies[COOKIE] != before
    planted = PortalClient(server.base_url)
    planted.cookies = {COOKIE: before}
    assert planted.get("/search").status == 302


def test_idle_session_ends(tmp_path):
    server = serve(tmp_path, accounts="session_idle_minutes = 0.08")  # 4.8 s
    try:
        client = signed_in(server)
        for _ in range(6):
            time.sleep(1.0)
            assert client.get("/search").status == 200  # activity keeps it alive
        time.sleep(6.0)
        reply = client.get("/search")
        assert reply.status == 302 and reply.location == "/login"
        assert session_rows(server) == []
    finally:
        server.stop()


def test_absolute_limit_ends_even_an_active_session(tmp_path):
    server = serve(tmp_path, accounts="session_absolute_hours = 0.001")  # 3.6 s
    try:
        client = signed_in(server)
        started = time.monotonic()
        while client.get("/search").status == 200:
            assert time.monotonic() - started < 10, "session outlived its absolute limit"
            time.sleep(0.5)
        assert 3.0 < time.monotonic() - started
        assert client.get("/search").location == "/login"
    finally:
        server.stop()


def test_sign_out_everywhere_from_the_account_page(server):
    phone, laptop = signed_in(server, "phone/1"), signed_in(server, "laptop/1")
    page = laptop.get("/account").body
    assert "phone/1" in page and "laptop/1" in page and "this browser" in page
    reply = laptop.post("/account/sign-out-everywhere", {})
    assert reply.status == 302 and reply.location == "/login"
    assert phone.get("/search").location == "/login"
    assert laptop.get("/search").location == "/login"
    assert session_rows(server) == []


def test_sign_out_everywhere_needs_its_csrf_token(server):
    client = signed_in(server)
    reply = client.post("/account/sign-out-everywhere", {"csrf_token": "forged"})
    assert reply.status == 400
    assert client.get("/search").status == 200


def test_strongroom_user_signout_ends_every_session(server):
    phone, laptop = signed_in(server), signed_in(server)
    output = strongroom("user", "signout", BOB, "--home", str(server.home))
    assert "Ended 2 session(s)" in output
    assert phone.get("/search").location == "/login"
    assert laptop.get("/search").location == "/login"
    events = strongroom("audit", "show", "--home", str(server.home), "--action",
                        "sessions.ended")
    assert BOB in events


# Test-client level: the clock moves instead of the test sleeping for hours.

class FakeClock:
    def __init__(self) -> None:
        self.at = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += dt.timedelta(**delta)


@pytest.fixture
def fake_clock(monkeypatch):
    import vault.clock

    clock = FakeClock()
    monkeypatch.setattr(vault.clock, "now", clock)
    return clock


def test_default_idle_and_absolute_limits(portal_app, fake_clock):
    client = portal_app.test_client()
    sign_in(client)
    for _ in range(3):
        fake_clock.advance(minutes=29)
        assert client.get("/search").status_code == 200
    fake_clock.advance(minutes=31)
    assert client.get("/search").status_code == 302

    sign_in(client)
    for _ in range(12 * 3 - 1):
        fake_clock.advance(minutes=20)
        assert client.get("/search").status_code == 200
    fake_clock.advance(minutes=21)
    assert client.get("/search").status_code == 302


def test_expired_sessions_are_pruned(portal_app, fake_clock):
    from web.signin import services

    sign_in(portal_app.test_client())
    sign_in(portal_app.test_client())
    fake_clock.advance(hours=13)
    with portal_app.app_context():
        assert services().sessions.prune() == 2


def test_a_home_made_before_sessions_gains_the_tables_on_serve(tmp_path):
    # A control database from before this feature: users without history,
    # account state or sessions.  serve adds the tables and signs them in.
    server = ArchiveServer(tmp_path / "home")
    server.init()
    strongroom("user", "add", BOB, "--home", str(server.home), "--password-stdin",
               stdin=USER_PASSWORD + "\n")
    with sqlite3.connect(server.home / "control.sqlite3") as connection:
        for table in ("sessions", "password_history", "account_state"):
            connection.execute(f"DROP TABLE {table}")
    server.start()
    try:
        client = signed_in(server)
        assert client.get("/account").status == 200
        assert len(session_rows(server)) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/account/sign-out-everywhere", "/account/password",
                                  "/account/totp", "/logout"])
def test_account_forms_refuse_a_post_without_its_csrf_token(portal_app, path):
    client = portal_app.test_client()
    sign_in(client)
    response = client.post(path, data={"current_password": "x", "code": "123456"})
    assert response.status_code == 400
    assert client.get("/search").status_code == 200


def test_b26_variant_parent_domain_cookie_is_expired_on_that_domain(portal_app):
    # B26 variant: with the cookie scoped to a parent domain, sign-out must
    # expire it on that domain, or the browser keeps the old one.
    portal_app.config["SESSION_COOKIE_DOMAIN"] = ".archive.example.com"
    client = portal_app.test_client()
    site = "http://portal.archive.example.com"
    page = client.get("/login", base_url=site).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    signed = client.post("/login", base_url=site, data={
        "address": BOB, "password": PASSWORD, "csrf_token": token})
    assert signed.status_code == 302
    issued = cookie_attributes(_session_cookie(signed))
    assert issued["domain"].lstrip(".") == "archive.example.com"
    page = client.get("/account", base_url=site).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    out = client.post("/logout", base_url=site, data={"csrf_token": token})
    expired = cookie_attributes(_session_cookie(out))
    assert "1970" in expired["expires"]
    for name in ("domain", "path", "samesite", "httponly"):
        assert expired.get(name) == issued.get(name), name
    assert client.get("/search", base_url=site).status_code == 302


def _session_cookie(response) -> str:
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(COOKIE))
