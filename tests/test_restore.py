# Restore to mailbox: archived messages go back into their owner's own
# mailbox on a real Dovecot, byte for byte, with their original date and
# the configured flags; nobody restores anyone else's mail; no password is
# kept or logged; every restore is audited.

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import time

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.conftest import CASES
from tests.homes import PASSWORD, make_home
from tests.peers.dovecot import Dovecot, require_dovecot
from vault import ConfigError
from vault.config import RestoreSettings, load
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.app import create_app
from web.accounts import User
from web.mailbox import RestoreLoginError, credentials_for, imap_bytes
from web.restore import internal_date

BOB_IMAP = "bob's mailbox secret 7"
CAROL_IMAP = "carol's mailbox secret 9"
MASTER_IMAP = "master of all mailboxes 3"
BOB_MESSAGES = ("B16.eml", "B22.eml", "B29.eml")
NO_DATE = (b"From: Dana <dana@elsewhere.net>\r\nTo: bob@example.com\r\n"
           b"Subject: undated note\r\nMessage-ID: <undated@elsewhere.net>\r\n\r\n"
           b"This message has no Date header.\r\n")


@pytest.fixture
def dovecot():
    require_dovecot()
    server = Dovecot({"bob@example.com": BOB_IMAP, "carol@example.com": CAROL_IMAP},
                     masters={"archive": MASTER_IMAP})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def home(tmp_path, dovecot):
    return make_home(tmp_path, config=(
        f'[restore]\nimap_host = "127.0.0.1"\nimap_port = {dovecot.port}\n'
        'tls = "none"\nflags = ["\\\\Seen", "\\\\Flagged", "restored"]\n'
        "timeout_seconds = 20.0\n"))


def make_app(home, **restore):
    settings = load(home)
    if restore:
        settings = settings.replace("restore", **restore)
    vault = open_vault(settings)
    catalogue = Catalogue(settings.path(settings.catalogue.path))
    if not catalogue.count():
        for name in BOB_MESSAGES:
            vault.archive((CASES / name).read_bytes(),
                          Envelope("x@elsewhere.net", ("bob@example.com",)))
        vault.archive(NO_DATE, Envelope("dana@elsewhere.net", ("bob@example.com",)))
        vault.archive((CASES / "B09.eml").read_bytes(),
                      Envelope("x@elsewhere.net", ("carol@example.com",)))
        Follower(vault, catalogue, home / "cursor").catch_up()
    app = create_app(settings, vault=vault, catalogue=catalogue)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def app(home):
    return make_app(home)


def csrf_token(client, path="/login"):
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def signed_in(app, address="bob@example.com"):
    client = app.test_client()
    response = client.post("/login", data={
        "address": address, "password": PASSWORD, "csrf_token": csrf_token(client)})
    assert response.status_code == 302
    return client


def ids_for(client, query):
    page = client.get(f"/search?q={query}").get_data(as_text=True)
    return re.findall(r'name="id" value="([0-9a-f]{64})"', page)


def restore(client, message_ids, password=BOB_IMAP, **form):
    data = {"csrf_token": csrf_token(client, "/search?q=x"), "message": message_ids,
            "imap_password": password, **form}
    return client.post("/restore/start", data=data)


def finished(client, response, timeout=30.0):
    # Follow the status page until it stops refreshing itself.
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    deadline = time.monotonic() + timeout
    while True:
        page = client.get(location)
        if "Refresh" not in page.headers or time.monotonic() > deadline:
            return page.get_data(as_text=True)
        time.sleep(0.2)


def audit(app, action):
    return [event for event in app.extensions["strongroom"].control.audit_events(limit=500)
            if event["action"] == action]


def restored_folder(dovecot, login="bob@example.com"):
    folders = [name for name in dovecot.folders(login) if name.startswith("Restored.")]
    assert len(folders) == 1, folders
    return folders[0]


def test_restored_messages_are_byte_identical_with_their_date_and_flags(app, dovecot):
    # The folder Restored/<today> is created (in Dovecot's "." hierarchy),
    # each message keeps its bytes and its Date as INTERNALDATE.
    client = signed_in(app)
    message_ids = ids_for(client, "from:elsewhere.net")
    assert len(message_ids) == 4
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    page = finished(client, restore(client, message_ids))
    assert "4 restored" in page and "0 failed" in page

    assert restored_folder(dovecot) == f"Restored.{today}"
    stored = dovecot.folder_messages("bob@example.com", f"Restored.{today}")
    originals = [(CASES / name).read_bytes() for name in BOB_MESSAGES] + [NO_DATE]
    assert sorted(raw for raw, _, _ in stored) == sorted(originals)
    for raw, when, flags in stored:
        assert {b"\\Seen", b"\\Flagged", b"restored"} <= set(flags)
        if raw == NO_DATE:
            # No Date header: the time the archive received it.
            assert abs(when - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
        else:
            assert when == internal_date(raw, lambda: None)
    by_subject = {re.search(rb"Subject: ([^\r]*)", raw).group(1): when for raw, when, _ in stored}
    b22 = [when for raw, when, _ in stored if raw == (CASES / "B22.eml").read_bytes()][0]
    assert b22 == dt.datetime(2025, 1, 7, 7, 30, tzinfo=dt.timezone.utc)
    # Case B29: the time its own server received it (top Received header,
    # 03-Mar-2015 08:15:07 +0100), not the Date (08:15:00) nor today.
    b29 = [when for raw, when, _ in stored if raw == (CASES / "B29.eml").read_bytes()][0]
    assert b29 == dt.datetime(2015, 3, 3, 7, 15, 7, tzinfo=dt.timezone.utc)
    assert len(by_subject) == 4

    (event,) = audit(app, "restore")
    detail = json.loads(event["detail"])
    assert event["actor"] == "bob@example.com" and event["target"] == f"Restored.{today}"
    assert detail["outcome"] == "restored" and detail["restored"] == 4
    assert sorted(detail["messages"]) == sorted(message_ids)


def test_wrong_imap_password_restores_nothing_and_logs_no_password(app, dovecot, caplog):
    # The form comes back with a clear error; the password appears in no
    # log line, no audit record and nowhere in the control database.
    caplog.set_level(logging.DEBUG)
    client = signed_in(app)
    wrong = "not-my-mailbox-password-42"
    response = restore(client, ids_for(client, "from:elsewhere.net"), password=wrong)
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "refused the login for bob@example.com" in page
    assert "Nothing was restored" in page
    assert wrong not in page
    assert [name for name in dovecot.folders("bob@example.com")] == ["INBOX"]

    (event,) = audit(app, "restore.login_failure")
    assert event["actor"] == "bob@example.com"
    assert not audit(app, "restore.start")
    control = app.extensions["strongroom"].control
    assert wrong.encode() not in control.path.read_bytes()
    assert wrong not in caplog.text
    # A successful restore does not leave its password behind either.
    finished(client, restore(client, ids_for(client, "undated")))
    assert BOB_IMAP not in caplog.text
    for path in control.path.parent.glob("control.sqlite3*"):
        assert BOB_IMAP.encode() not in path.read_bytes()


def test_another_users_message_is_refused_as_not_found_and_audited(app, dovecot):
    carol = signed_in(app, "carol@example.com")
    (carols,) = ids_for(carol, "from:elsewhere.net")
    bob = signed_in(app)
    own = ids_for(bob, "undated")
    confirm = bob.post("/restore", data={"csrf_token": csrf_token(bob, "/search?q=x"),
                                         "message": [carols]})
    assert confirm.status_code == 404
    response = restore(bob, [*own, carols])
    assert response.status_code == 404
    assert carols not in response.get_data(as_text=True)
    assert dovecot.folders("bob@example.com") == ["INBOX"]
    assert [e["target"] for e in audit(app, "restore.refused")] == [carols, carols]


def test_ownership_is_checked_again_as_each_message_is_read(app, dovecot):
    # Even a job handed an id it should never have got restores only what
    # the user owns; the other message fails as "not in your archive".
    bob_user = app.extensions["strongroom"].accounts.get(address="bob@example.com")
    carol = signed_in(app, "carol@example.com")
    (carols,) = ids_for(carol, "from:elsewhere.net")
    own = ids_for(signed_in(app), "undated")
    job = app.extensions["strongroom.restore"].start(bob_user, [*own, carols], BOB_IMAP)
    assert job.done.wait(30)
    assert job.restored == 1 and job.failures == [(carols, "not in your archive")]
    assert len(dovecot.folder_messages("bob@example.com", restored_folder(dovecot))) == 1
    assert [e["target"] for e in audit(app, "restore.refused")] == [carols]
    assert json.loads(audit(app, "restore")[0]["detail"])["outcome"] == "partial"


def test_a_mailbox_taken_back_while_a_restore_runs_is_not_restored(app, dovecot):
    # The job began while carol's mailbox was shared with bob, and it was
    # taken back since: what the account reads now decides each APPEND
    # (the job kept the mailboxes of its start, and restored them all).
    accounts = app.extensions["strongroom"].accounts
    bob_now = accounts.get(address="bob@example.com")
    bob_then = dataclasses.replace(bob_now, mailboxes=bob_now.mailboxes | {"carol@example.com"})
    carol = signed_in(app, "carol@example.com")
    (carols,) = ids_for(carol, "from:elsewhere.net")
    own = ids_for(signed_in(app), "undated")
    job = app.extensions["strongroom.restore"].start(bob_then, [*own, carols], BOB_IMAP)
    assert job.done.wait(30)
    assert job.restored == 1 and job.failures == [(carols, "not in your archive any more")]
    assert len(dovecot.folder_messages("bob@example.com", restored_folder(dovecot))) == 1
    assert [e["target"] for e in audit(app, "restore.refused")] == [carols]


def test_master_user_restores_without_the_users_password(home, dovecot):
    secret = home / "keys" / "imap-master"
    secret.write_text(MASTER_IMAP + "\n")
    secret.chmod(0o600)
    app = make_app(home, master_user="archive", master_password_file="keys/imap-master")
    client = signed_in(app, "carol@example.com")
    (carols,) = ids_for(client, "from:elsewhere.net")
    dialog = client.post("/restore", data={"csrf_token": csrf_token(client, "/search?q=x"),
                                           "message": [carols]})
    assert "logs in to your mailbox for you" in dialog.get_data(as_text=True)
    assert 'name="imap_password"' not in dialog.get_data(as_text=True)
    page = finished(client, restore(client, [carols], password=""))
    assert "1 restored" in page
    (raw, _, _), = dovecot.folder_messages("carol@example.com", restored_folder(
        dovecot, "carol@example.com"))
    assert raw == (CASES / "B09.eml").read_bytes()
    assert json.loads(audit(app, "restore.start")[0]["detail"])["credentials"] == "master user"


def test_restore_all_results_is_capped(home, dovecot):
    app = make_app(home, max_messages=3)
    client = signed_in(app)
    token = csrf_token(client, "/search?q=x")
    response = client.post("/restore", data={"csrf_token": token, "scope": "all",
                                             "q": "from:elsewhere.net"})
    assert response.status_code == 400
    assert "found 4 messages; at most 3" in response.get_data(as_text=True)
    dialog = client.post("/restore", data={"csrf_token": token, "scope": "all",
                                           "q": "subject:undated OR subject:ski"})
    assert dialog.status_code == 200
    chosen = re.findall(r'name="message" value="([0-9a-f]{64})"', dialog.get_data(as_text=True))
    assert 1 <= len(chosen) <= 3


def test_restore_form_without_csrf_token_is_refused(app, dovecot):
    client = signed_in(app)
    response = client.post("/restore/start", data={
        "message": ids_for(client, "undated"), "imap_password": BOB_IMAP})
    assert response.status_code == 400
    assert dovecot.folders("bob@example.com") == ["INBOX"]


def test_status_page_belongs_to_its_user(app, dovecot):
    bob = signed_in(app)
    response = restore(bob, ids_for(bob, "undated"))
    location = response.headers["Location"]
    assert bob.get(location).status_code == 200
    assert signed_in(app, "carol@example.com").get(location).status_code == 404


def test_unreachable_mail_server_is_a_clear_error(home):
    from tests.harness import free_port

    app = make_app(home, imap_port=free_port())
    client = signed_in(app)
    response = restore(client, ids_for(client, "undated"))
    assert response.status_code == 502
    assert "could not be reached" in response.get_data(as_text=True)
    (event,) = audit(app, "restore.failure")
    assert json.loads(event["detail"])["count"] == 1


def test_internal_date_falls_back_to_receipt_time():
    received = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert internal_date(NO_DATE, lambda: received) == received
    assert internal_date(b"Date: nonsense\r\n\r\n", lambda: received) == received
    assert internal_date(b"Date: Mon, 06 Jan 2025 09:00:00 -0000\r\n\r\n", lambda: received) == \
        dt.datetime(2025, 1, 6, 9, tzinfo=dt.timezone.utc)


def test_bare_line_ends_become_crlf_and_crlf_passes_unchanged():
    assert imap_bytes(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"
    crlf = (CASES / "B16.eml").read_bytes()
    assert imap_bytes(crlf) is crlf


@pytest.mark.parametrize("text, named", [
    ('tls = "none"\nimap_host = "imap.example.com"', "restore.tls"),
    ('tls = "maybe"', "restore.tls"),
    ('flags = ["\\\\Deleted"]', "restore.flags"),
    ('master_user = "archive"', "restore.master_user"),
    ('folder = "Restored/{user}"', "restore.folder"),
    ('login = "bob"', "restore.login"),
])
def test_bad_restore_settings_are_named(tmp_path, text, named):
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text(f"[restore]\n{text}\n")
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(home, {})


def test_a_restore_that_waits_shows_its_progress_and_refreshes(app, dovecot):
    # While a job cannot run yet (both worker slots taken) its page says so
    # and asks the browser to reload it; once it ran, the page stops that.
    restorer = app.extensions["strongroom.restore"]
    slots = [restorer._slots.acquire(timeout=5) for _ in range(2)]
    assert all(slots)
    client = signed_in(app)
    response = restore(client, ids_for(client, "from:elsewhere.net"))
    page = client.get(response.headers["Location"])
    assert page.headers["Refresh"] == "2"
    text = page.get_data(as_text=True)
    assert "0 of 4 done" in text and '<progress max="4" value="0">' in text
    assert 'href="' + response.headers["Location"] in text
    for _ in slots:
        restorer._slots.release()
    assert "4 restored" in finished(client, response)


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_restore_over_tls_verifies_the_servers_certificate(home, tmp_path, mode):
    # The password only crosses TLS, to a server whose certificate the
    # configured CA signed for the configured name.
    from tests.test_receiver_tls import Certificates

    require_dovecot()
    certificates = Certificates(tmp_path / "tls")
    server = Dovecot({"bob@example.com": BOB_IMAP}, certificate=certificates.certificate_file,
                     key=certificates.key_file)
    server.start()
    try:
        (home / "imap-ca.pem").write_bytes(certificates.ca_file.read_bytes())
        port = server.imaps_port if mode == "implicit" else server.port
        app = make_app(home, imap_port=port, tls=mode, ca_file="imap-ca.pem")
        client = signed_in(app)
        assert "1 restored" in finished(client, restore(client, ids_for(client, "undated")))
        assert len(server.folder_messages("bob@example.com", restored_folder(server))) == 1

        # Without the CA, the system's authorities do not vouch for it.
        untrusting = make_app(home, imap_port=port, tls=mode)
        client = signed_in(untrusting)
        response = restore(client, ids_for(client, "undated"))
        assert response.status_code == 502
        assert "certificate verify failed" in response.get_data(as_text=True)
    finally:
        server.stop()


def test_a_refused_master_login_says_so_and_restores_nothing(home, dovecot):
    secret = home / "keys" / "imap-master"
    secret.write_text("not the master password\n")
    secret.chmod(0o600)
    app = make_app(home, master_user="archive", master_password_file="keys/imap-master")
    client = signed_in(app)
    response = restore(client, ids_for(client, "undated"), password="")
    assert response.status_code == 400
    assert "refused the archive&#39;s login" in response.get_data(as_text=True)
    assert dovecot.folders("bob@example.com") == ["INBOX"]
    (event,) = audit(app, "restore.login_failure")
    assert json.loads(event["detail"])["credentials"] == "master user"


def test_a_message_the_server_refuses_fails_alone(home):
    # The batch goes as one MULTIAPPEND; when the server refuses it (here
    # its quota plugin refuses B16, larger than 800 bytes), the messages go
    # one by one and only the refused one fails, with the server's reason.
    require_dovecot()
    server = Dovecot({"bob@example.com": BOB_IMAP}, settings=(
        "mail_plugins = quota\nplugin {\n  quota = count:User quota\n"
        "  quota_vsizes = yes\n  quota_max_mail_size = 800\n}\n"))
    server.start()
    try:
        app = make_app(home, imap_port=server.port)
        client = signed_in(app)
        message_ids = ids_for(client, "from:elsewhere.net")
        page = finished(client, restore(client, message_ids))
        assert "3 restored" in page and "1 failed" in page
        assert "the mail server refused it" in page
        stored = server.folder_messages("bob@example.com", restored_folder(server))
        assert sorted(raw for raw, _, _ in stored) == sorted(
            [(CASES / "B22.eml").read_bytes(), (CASES / "B29.eml").read_bytes(), NO_DATE])
        detail = json.loads(audit(app, "restore")[0]["detail"])
        assert detail["outcome"] == "partial" and len(detail["failures"]) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("password", ["secret\r\nZ9 DELETE INBOX", "secret\nx", "tab\there"])
def test_a_password_with_control_characters_is_refused_before_any_login(tmp_path, password):
    # A line break in the password would end LOGIN and start a command of
    # the user's choosing on the mail server.
    bob = User(1, "bob@example.com", "user", frozenset({"bob@example.com"}))
    with pytest.raises(RestoreLoginError, match="control characters"):
        credentials_for(RestoreSettings(), tmp_path, bob, password)
    assert credentials_for(RestoreSettings(), tmp_path, bob, "plain pass").password == "plain pass"
