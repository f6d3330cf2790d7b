# The portal: sign-in, search and reading of one's own mail only, CSRF on
# every form, and an audit record for every access.

from __future__ import annotations

import re

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.conftest import CASES
from tests.homes import PASSWORD, make_home
from vault.config import load
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.app import create_app



@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path)


@pytest.fixture
def app(home):
    settings = load(home)
    vault = open_vault(settings)
    catalogue = Catalogue(settings.path(settings.catalogue.path))
    for name, rcpt in (("B16.eml", "bob@example.com"), ("B09.eml", "carol@example.com")):
        vault.archive((CASES / name).read_bytes(), Envelope("x@elsewhere.net", (rcpt,)))
    Follower(vault, catalogue, home / "cursor").catch_up()
    app = create_app(settings, vault=vault, catalogue=catalogue)
    app.config["TESTING"] = True
    return app


def csrf_token(client, path="/login"):
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client, address="bob@example.com", password=PASSWORD):
    return client.post("/login", data={
        "address": address, "password": password, "csrf_token": csrf_token(client)})


def message_id_for(client, query):
    page = client.get(f"/search?q={query}").get_data(as_text=True)
    return re.search(r'href="/messages/([0-9a-f]{64})"', page).group(1)


def test_search_requires_sign_in(app):
    response = app.test_client().get("/search?q=x")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_wrong_password_and_unknown_account_fail_alike(app):
    client = app.test_client()
    wrong = sign_in(client, password="not the password")
    unknown = sign_in(client, address="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert "address or password is wrong" in wrong.get_data(as_text=True)
    assert "address or password is wrong" in unknown.get_data(as_text=True)


def test_login_form_without_csrf_token_is_refused(app):
    client = app.test_client()
    response = client.post("/login", data={"address": "bob@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/search").status_code == 302


def test_owner_searches_reads_and_downloads_own_message(app):
    client = app.test_client()
    assert sign_in(client).status_code == 302
    page = client.get("/search?q=AVOCET-B16").get_data(as_text=True)
    assert "1 message" in page
    assert "Sweepstakes Alert\u2013Prize Desk" in page
    assert "<mark>AVOCET</mark>" in page

    message_id = message_id_for(client, "AVOCET-B16")
    view = client.get(f"/messages/{message_id}")
    assert view.status_code == 200
    assert "Signed text. Keyword: AVOCET-B16." in view.get_data(as_text=True)
    download = client.get(f"/messages/{message_id}/original.eml")
    assert download.data == (CASES / "B16.eml").read_bytes()
    assert download.headers["Content-Type"] == "message/rfc822"
    assert download.headers["X-Content-Type-Options"] == "nosniff"


def test_other_users_message_is_404_on_every_route(app):
    carol = app.test_client()
    sign_in(carol, "carol@example.com")
    carols_id = message_id_for(carol, "PELICAN-B09")
    bob = app.test_client()
    sign_in(bob)
    assert "0 messages" in bob.get("/search?q=PELICAN-B09").get_data(as_text=True)
    for path in (f"/messages/{carols_id}", f"/messages/{carols_id}/original.eml"):
        assert bob.get(path).status_code == 404


def test_sign_out_needs_csrf_and_ends_the_session(app):
    client = app.test_client()
    sign_in(client)
    assert client.post("/logout").status_code == 400
    assert client.get("/search").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token(client, "/search")})
    assert client.get("/search").status_code == 302


def test_every_access_is_audited(app):
    client = app.test_client()
    sign_in(client, password="wrong password")
    sign_in(client)
    message_id = message_id_for(client, "AVOCET-B16")
    client.get(f"/messages/{message_id}")
    client.get(f"/messages/{message_id}/original.eml")
    events = app.extensions["strongroom"].control.audit_events(limit=20)
    actions = [(e["actor"], e["action"]) for e in reversed(events)]
    assert actions[-5:] == [
        ("bob@example.com", "login.failure"), ("bob@example.com", "login"),
        ("bob@example.com", "search"), ("bob@example.com", "view"),
        ("bob@example.com", "download")]
    assert '"query": "AVOCET-B16"' in events[2]["detail"]


def test_pages_carry_a_strict_content_security_policy(app):
    response = app.test_client().get("/login")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"


def test_unreadable_query_gets_a_message_not_a_500(app):
    client = app.test_client()
    sign_in(client)
    for query in ('"unbalanced', "from:(", "a" * 3000, "subject:\x00"):
        response = client.get("/search", query_string={"q": query})
        assert response.status_code == 200, query


def test_tampered_message_is_refused_clearly_and_audited(app, home):
    client = app.test_client()
    sign_in(client)
    message_id = message_id_for(client, "AVOCET-B16")
    stored = home / "store/objects/messages" / message_id
    stored.chmod(0o600)
    damaged = bytearray(stored.read_bytes())
    damaged[-20] ^= 0x01
    stored.write_bytes(bytes(damaged))

    for path in (f"/messages/{message_id}", f"/messages/{message_id}/original.eml"):
        response = client.get(path)
        assert response.status_code == 500
        assert "integrity check" in response.get_data(as_text=True)
        assert b"AVOCET" not in response.data
    events = app.extensions["strongroom"].control.audit_events(limit=1)
    assert events[0]["action"] == "integrity.failure"
    assert events[0]["target"] == message_id


def test_page_numbers_that_are_not_plain_digits(app):
    client = app.test_client()
    sign_in(client)
    token = app.extensions["strongroom"].accounts.create_token("bob@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    for value in ("\u00b2", "0", "-1", "9" * 5000, "1e3"):
        assert client.get("/search", query_string={"q": "x", "page": value}).status_code == 200
        response = client.get("/api/v1/search", query_string={"q": "x", "page": value},
                              headers=headers)
        assert response.status_code == 400, value
        assert "whole number" in response.get_json()["message"]


def test_large_message_is_shown_from_the_catalogue_not_parsed(home, monkeypatch):
    import web.reading

    settings = load(home)
    vault = open_vault(settings)
    catalogue = Catalogue(settings.path(settings.catalogue.path))
    raw = (b"From: a@example.com\r\nTo: bob@example.com\r\nSubject: GIANT-LINE\r\n\r\nSTART "
           + b"B" * (5 * 1024 * 1024) + b"\r\n")
    vault.archive(raw, Envelope("a@example.com", ("bob@example.com",)))
    Follower(vault, catalogue, home / "cursor2").catch_up()
    app = create_app(settings, vault=vault, catalogue=catalogue)
    monkeypatch.setattr(web.reading, "MessageParts", lambda raw: pytest.fail("parsed in full"))
    client = app.test_client()
    sign_in(client)
    page = client.get(f"/messages/{message_id_for(client, 'GIANT-LINE')}").get_data(as_text=True)
    assert "This message is large" in page
    assert "START" in page and "GIANT-LINE" in page
    assert len(page) < 200_000


def test_help_page_documents_every_field_the_parser_knows(app):
    from indexer.query import FIELDS

    page = app.test_client().get("/help").get_data(as_text=True)
    for name in (*FIELDS, "date", "after", "before", "has", "larger", "smaller"):
        assert f"<code>{name}:" in page, name


def test_a_full_disk_is_a_503_with_a_retry_not_a_500(app, monkeypatch, caplog):
    # With the disk full, every page that writes (the audit, the session)
    # answered Flask's generic 500.
    import sqlite3

    from vault.control import ControlDB

    client = app.test_client()
    sign_in(client)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ControlDB, "audit", full)
    response = client.get("/search", query_string={"q": "AVOCET"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "300"
    assert "The archive&#39;s disk is full" in response.get_data(as_text=True)
    assert "Traceback" not in caplog.text and "the disk is full" in caplog.text


def test_disk_full_is_found_behind_the_errors_it_caused():
    import errno

    from web.app import _is_disk_full

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("could not write the session") from err
    except RuntimeError as wrapped:
        assert _is_disk_full(wrapped)
    assert not _is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not _is_disk_full(ValueError("disk is full"))
