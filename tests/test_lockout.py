# After N wrong passwords an account locks until an administrator unlocks
# it; the sign-in answer never tells a locked or unknown account from a
# wrong password, in its words, its status or (roughly) its time.

from __future__ import annotations

import json
import re
import statistics
import time

import pytest

from tests.harness import USER_PASSWORD, ArchiveServer, strongroom
from tests.portal_accounts import (BOB, PASSWORD, audit_actions, make_app, portal_home,  # noqa: F401
                                   sign_in)
from tests.portal_client import PortalClient

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
