# After N wrong passwords an account locks for a while (or until an
# administrator unlocks it); the sign-in answer never tells a locked or
# unknown account from a wrong password, in its words, its status or
# (roughly) its time.  One client failing too often is refused before its
# attempts can lock accounts.

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
import time

import pytest

from tests.harness import USER_PASSWORD, ArchiveServer, strongroom
from tests.portal_accounts import (BOB, CAROL, PASSWORD, audit_actions, make_app,  # noqa: F401
                                   portal_home, sign_in)
from tests.portal_client import PortalClient
from vault import clock
from web.lockout import ClientThrottle

FAILURE = "Sign-in failed: the address or password is wrong."


def answer(response):
    """What a visitor can see of a failed sign-in, minus the echoed address."""
    page = response.get_data(as_text=True)
    return response.status_code, page.replace(BOB, "ADDRESS").replace(
        "nobody@example.com", "ADDRESS")


def test_n_wrong_passwords_lock_and_the_right_one_then_fails(portal_home):
    app = make_app(portal_home, "lockout_attempts = 3")
    client = app.test_client()
    for _ in range(2):
        assert sign_in(client, password="wrong password!").status_code == 401
    assert sign_in(client).status_code == 302  # a success resets the run
    client.post("/logout", data={"csrf_token": _token(client)})
    for _ in range(3):
        assert sign_in(client, password="wrong password!").status_code == 401
    locked = sign_in(client)
    assert locked.status_code == 401
    assert FAILURE in locked.get_data(as_text=True)
    assert client.get("/search").status_code == 302
    assert (("portal", "account.locked", BOB)) in audit_actions(app)


def test_locked_unknown_and_wrong_answer_alike(portal_home):
    app = make_app(portal_home, "lockout_attempts = 1")
    client = app.test_client()
    wrong = answer(sign_in(client, password="wrong password!"))   # locks bob
    locked = answer(sign_in(client))                              # right password
    unknown = answer(sign_in(client, address="nobody@example.com"))
    again = answer(sign_in(client, password="wrong password!"))
    pattern = r'name="csrf_token" value="[^"]+"'
    normalised = {re.sub(pattern, "", text) for _, text in (wrong, locked, unknown, again)}
    assert len(normalised) == 1
    assert {status for status, _ in (wrong, locked, unknown, again)} == {401}


def test_failures_take_about_as_long_for_every_kind_of_account(portal_home):
    app = make_app(portal_home, "lockout_attempts = 1000")
    client = app.test_client()

    def seconds(**credentials):
        started = time.perf_counter()
        assert sign_in(client, **credentials).status_code == 401
        return time.perf_counter() - started

    # Interleaved pairs, so that a machine busy with other work slows both
    # kinds alike; the median ratio of the pairs is what an observer sees.
    ratios = []
    for _ in range(9):
        wrong = seconds(password="wrong password!")
        unknown = seconds(address="nobody@example.com")
        ratios.append(unknown / wrong)
    ratio = statistics.median(ratios)
    print(f"median failed sign-in time, unknown / wrong password: {ratio:.2f}")
    # Every path verifies one Argon2 hash and commits one transaction.
    assert 0.5 < ratio < 2.0, ratios


@pytest.fixture
def server(tmp_path):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.configure("accounts", "lockout_attempts = 4")
    server.start()
    server.add_user(BOB)
    yield server
    server.stop()


def test_cli_unlock_over_http_and_both_are_audited(server):
    client = PortalClient(server.base_url)
    for _ in range(4):
        assert client.sign_in(BOB, "wrong password!").status == 401
    assert client.sign_in(BOB, USER_PASSWORD).status == 401
    output = strongroom("user", "unlock", BOB, "--home", str(server.home),
                        "--actor", "cli:operator")
    assert f"Unlocked {BOB}" in output
    reply = client.sign_in(BOB, USER_PASSWORD)
    assert reply.status == 302 and reply.location == "/search"
    assert "was not locked" in strongroom("user", "unlock", BOB, "--home", str(server.home))

    events = strongroom("audit", "show", "--home", str(server.home), "--limit", "30")
    assert f"portal  account.locked  {BOB}" in events
    assert f"cli:operator  account.unlocked  {BOB}" in events
    assert events.count("login.failure") == 5


def test_unlock_of_an_unknown_account_is_a_clear_error(server):
    with pytest.raises(RuntimeError, match="no account for nobody@example.com"):
        strongroom("user", "unlock", "nobody@example.com", "--home", str(server.home))


def test_failed_sign_ins_are_audited_with_the_reason(portal_home):
    app = make_app(portal_home, "lockout_attempts = 2")
    client = app.test_client()
    sign_in(client, password="wrong password!")
    sign_in(client, password="wrong password!")
    sign_in(client)
    sign_in(client, address="Nobody@Example.com")
    events = app.extensions["strongroom"].control.audit_events(action="login.failure")
    reasons = [(e["actor"], json.loads(e["detail"])["reason"])
               for e in reversed(events)]
    assert reasons == [(BOB, "password"), (BOB, "password"), (BOB, "locked"),
                       ("nobody@example.com", "unknown account")]
    assert PASSWORD not in str(events)


def _token(client):
    from tests.portal_accounts import csrf_token

    return csrf_token(client, "/account")


def test_a_lock_lifts_by_itself_after_lockout_minutes(portal_home, monkeypatch):
    app = make_app(portal_home, "lockout_attempts = 2\nlockout_minutes = 10")
    client = app.test_client()
    for _ in range(2):
        assert sign_in(client, password="wrong password!").status_code == 401
    assert sign_in(client).status_code == 401
    started = clock.now()
    monkeypatch.setattr(clock, "now", lambda: started + dt.timedelta(minutes=9))
    assert sign_in(client).status_code == 401
    monkeypatch.setattr(clock, "now", lambda: started + dt.timedelta(minutes=11))
    # After the lock lifts, one wrong password starts a new run, no new lock.
    assert sign_in(client, password="wrong password!").status_code == 401
    assert sign_in(client).status_code == 302
    [locked] = app.extensions["strongroom"].control.audit_events(action="account.locked")
    until = dt.datetime.fromisoformat(json.loads(locked["detail"])["until"])
    assert dt.timedelta(minutes=9) < until - started <= dt.timedelta(minutes=10)


def test_lockout_minutes_0_locks_until_an_administrator_unlocks(portal_home, monkeypatch):
    app = make_app(portal_home, "lockout_attempts = 1\nlockout_minutes = 0")
    client = app.test_client()
    assert sign_in(client, password="wrong password!").status_code == 401
    later = clock.now() + dt.timedelta(days=30)
    monkeypatch.setattr(clock, "now", lambda: later)
    assert sign_in(client).status_code == 401


def from_client(client, address):
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_one_client_cannot_lock_every_account(portal_home):
    app = make_app(portal_home, "lockout_attempts = 3\nclient_failures = 5")
    attacker = from_client(app.test_client(), "192.0.2.66")
    for _ in range(3):
        assert sign_in(attacker, password="wrong password!").status_code == 401
    for _ in range(2):
        assert sign_in(attacker, address=CAROL, password="wrong password!").status_code == 401
    refused = sign_in(attacker, address=CAROL, password="wrong password!")
    assert refused.status_code == 429
    assert 14 * 60 <= int(refused.headers["Retry-After"]) <= 15 * 60 + 1
    assert "Too many failed sign-ins from your network" in refused.get_data(as_text=True)
    # Not tried, so not counted: carol is not locked, and signs in from her own desk.
    assert sign_in(attacker, address=CAROL).status_code == 429
    carol = from_client(app.test_client(), "192.0.2.10")
    assert sign_in(carol, address=CAROL).status_code == 302
    throttled = app.extensions["strongroom"].control.audit_events(action="login.throttled")
    assert [(event["actor"], json.loads(event["detail"])["peer"]) for event in throttled] == [
        (CAROL, "192.0.2.66"), (CAROL, "192.0.2.66")]


def test_a_clients_failures_age_out_of_the_window():
    now = [1000.0]
    throttle = ClientThrottle(3, window_minutes=1, clock=lambda: now[0])
    for step in range(3):
        assert throttle.retry_after("192.0.2.1") == 0
        throttle.failed("192.0.2.1")
        now[0] += 10
    assert throttle.retry_after("192.0.2.1") == 31    # the first failure leaves at 1060
    assert throttle.retry_after("192.0.2.2") == 0
    now[0] = 1060.5
    assert throttle.retry_after("192.0.2.1") == 0
    throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 10    # the second leaves at 1070


def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled(portal_home):
    with open(portal_home / "config.toml", "a") as config:
        config.write("\n[portal]\ntrusted_proxies = 1\n")
    app = make_app(portal_home, "client_failures = 2")
    proxy = from_client(app.test_client(), "127.0.0.1")

    def through_proxy(client_address, **credentials):
        proxy.environ_base["HTTP_X_FORWARDED_FOR"] = client_address
        return sign_in(proxy, **credentials)

    for _ in range(2):
        assert through_proxy("198.51.100.7", password="wrong password!").status_code == 401
    assert through_proxy("198.51.100.7").status_code == 429
    assert through_proxy("198.51.100.8").status_code == 302
