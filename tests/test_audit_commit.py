# The portal's hot path: every access is audited durably before it is
# answered, concurrent events share one transaction (one fsync), an event
# that cannot be written refuses the access it records; each thread keeps
# one control-database connection; an API token is resolved once.

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from tests.test_portal import app, home, message_id_for, sign_in  # noqa: F401 (fixtures)
from vault.audit import seal_pending, verify_chain
from vault.audit_commit import AuditError
from vault.config import load
from vault.control import ControlDB
from vault.ingest import open_vault

THREADS = 12


def _until(condition, limit=20.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the audit threads"
        time.sleep(0.01)


def _audit_in_threads(control, addresses):
    errors: list[BaseException] = []

    def audit(address):
        try:
            control.audit(address, "search", query=address)
        except BaseException as err:  # reported below, on the test's thread
            errors.append(err)

    threads = [threading.Thread(target=audit, args=(address,)) for address in addresses]
    return threads, errors


def _rows(home, action="search"):
    with sqlite3.connect(home / "control.sqlite3") as connection:
        return connection.execute(
            "SELECT actor FROM audit WHERE action LIKE ? ORDER BY id", (action,)).fetchall()


def _hold_write_lock(home):
    # Another process's writer: SQLite lets one transaction write at a time.
    blocker = sqlite3.connect(home / "control.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_concurrent_events_share_commits_and_keep_the_chain(home):  # noqa: F811
    control = ControlDB(home / "control.sqlite3")
    committer = control.audit_committer
    addresses = [f"user{n}@example.com" for n in range(THREADS)]
    threads, errors = _audit_in_threads(control, addresses)

    # The first event's commit waits for the lock; the others queue behind it.
    blocker = _hold_write_lock(home)
    threads[0].start()
    _until(lambda: committer._is_committing and committer.waiting == 0)
    for thread in threads[1:]:
        thread.start()
    _until(lambda: committer.waiting == THREADS - 1)
    assert _rows(home) == []
    blocker.rollback()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(actor for (actor,) in _rows(home)) == sorted(addresses)
    assert (committer.events, committer.commits) == (THREADS, 2)
    vault = open_vault(load(home))
    assert seal_pending(control, vault) >= THREADS
    report = verify_chain(control, vault)
    assert report.first_break is None and report.unsealed == 0
    assert report.events == len(_rows(home, "%"))


def test_a_failed_commit_fails_every_event_in_it(home):  # noqa: F811
    control = ControlDB(home / "control.sqlite3")
    with sqlite3.connect(home / "control.sqlite3") as connection:
        connection.execute(
            "CREATE TRIGGER audit_full BEFORE INSERT ON audit"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    committer = control.audit_committer
    addresses = [f"user{n}@example.com" for n in range(4)]
    threads, errors = _audit_in_threads(control, addresses)
    blocker = _hold_write_lock(home)
    threads[0].start()
    _until(lambda: committer._is_committing and committer.waiting == 0)
    for thread in threads[1:]:
        thread.start()
    _until(lambda: committer.waiting == len(addresses) - 1)
    blocker.rollback()
    for thread in threads:
        thread.join(timeout=60)

    assert len(errors) == len(addresses)
    assert all(isinstance(error, AuditError) and "disk full" in str(error)
               for error in errors)
    assert _rows(home) == []
    assert committer.events == 0


def test_failed_audit_write_refuses_the_request(app, home):  # noqa: F811
    client = app.test_client()
    sign_in(client)
    message_id = message_id_for(client, "AVOCET-B16")
    with sqlite3.connect(home / "control.sqlite3") as connection:
        connection.execute(
            "CREATE TRIGGER audit_full BEFORE INSERT ON audit"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END")

    search = client.get("/search?q=AVOCET-B16")
    assert search.status_code == 503
    page = search.get_data(as_text=True)
    assert "could not record this access" in page
    assert message_id not in page
    view = client.get(f"/messages/{message_id}")
    assert view.status_code == 503
    assert "could not record this access" in view.get_data(as_text=True)
    download = client.get(f"/messages/{message_id}/original.eml")
    assert download.status_code == 503
    assert b"Subject:" not in download.data


def test_each_thread_keeps_one_connection_and_nesting_gets_another(home):  # noqa: F811
    control = ControlDB(home / "control.sqlite3")
    with control.connect() as first:
        with control.connect() as nested:
            assert nested is not first
    with control.connect() as again:
        assert again is first
    seen = []
    thread = threading.Thread(target=lambda: seen.append(control.connect().__enter__()))
    thread.start()
    thread.join()
    assert seen[0] is not first


def test_exclusive_connection_holds_the_write_lock_from_its_first_read(home):  # noqa: F811
    control = ControlDB(home / "control.sqlite3")
    with control.connect():
        pass  # the kept connection exists and is reused below
    other = sqlite3.connect(home / "control.sqlite3", timeout=0, isolation_level=None)
    with control.connect(exclusive=True) as connection:
        connection.execute("SELECT count(*) FROM audit").fetchone()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")
    other.rollback()


def test_an_open_transaction_is_never_carried_into_the_next_operation(home):  # noqa: F811
    control = ControlDB(home / "control.sqlite3")
    with pytest.raises(RuntimeError):
        with control.connect() as connection:
            connection.execute("INSERT INTO refusals (at, source, code) VALUES ('t', 's', 451)")
            raise RuntimeError("the caller failed half way")
    with control.connect() as connection:
        assert not connection.in_transaction
        assert connection.execute("SELECT count(*) FROM refusals").fetchone()[0] == 0


def test_an_api_request_resolves_its_token_once(app, monkeypatch):  # noqa: F811
    # The role guard and the view both need the token's account: one
    # lookup per request, shared through flask.g.
    accounts = app.extensions["strongroom"].accounts
    token = accounts.create_token("bob@example.com")
    lookups = []
    resolve = accounts.user_for_token
    monkeypatch.setattr(accounts, "user_for_token",
                        lambda value: lookups.append(value) or resolve(value))
    client = app.test_client()
    response = client.get("/api/v1/search?q=AVOCET-B16",
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.get_json()["total"] == 1
    assert lookups == [token]
    refused = client.get("/api/v1/search?q=x", headers={"Authorization": "Bearer srt_wrong"})
    assert refused.status_code == 401
