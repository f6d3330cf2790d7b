# The password policy from [accounts]: length, character classes, no reuse
# of the last N passwords, and a forced change once a password is too old.

from __future__ import annotations

import datetime as dt
import io
import sqlite3

import pytest

from tests.portal_accounts import (BOB, PASSWORD, audit_actions, make_app, portal_app,  # noqa: F401
                                   portal_home, post_form, sign_in)
from web.cli import main as strongroom
from web.passwords import PasswordPolicy


def test_policy_names_every_problem():
    policy = PasswordPolicy(min_length=14, classes=3)
    problems = policy.problems("short", "bob@example.com")
    assert problems == [
        "it must have at least 14 characters",
        "it must mix at least 3 of: lower-case letters, upper-case letters, digits,"
        " other characters (it has 1)"]
    assert policy.problems("Bob-Example-2026") == []
    assert policy.problems("ÉCOLE-été-2026x") == []  # classes are Unicode-aware
    assert PasswordPolicy().problems("bob@example.com", "Bob@Example.com") == [
        "it must not be your address"]
    assert PasswordPolicy().problems("x" * 2000)[0].startswith("it must have at most")


def test_max_age_zero_means_never():
    old = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    assert not PasswordPolicy(max_age_days=0).is_expired(old)
    assert PasswordPolicy(max_age_days=90).is_expired(old)
    assert not PasswordPolicy(max_age_days=90).is_expired(dt.datetime.now(dt.timezone.utc))


def test_user_add_enforces_the_configured_policy(portal_home, monkeypatch, capsys):
    with open(portal_home / "config.toml", "a") as config:
        config.write("\n[accounts]\npassword_min_length = 16\npassword_classes = 3\n")
    add = ["user", "add", "dave@example.com", "--home", str(portal_home), "--password-stdin"]
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert strongroom(add) == 2
    error = capsys.readouterr().err
    assert "at least 16 characters" in error and "at least 3 of" in error
    assert "Traceback" not in error

    monkeypatch.setattr("sys.stdin", io.StringIO("Correct horse battery 9\n"))
    assert strongroom(add) == 0


def change(client, current, new, confirm=None):
    return post_form(client, "/account/password", {
        "current_password": current, "new_password": new,
        "confirm_password": new if confirm is None else confirm})


def test_change_page_refuses_the_last_n_passwords(portal_home):
    app = make_app(portal_home, "password_history = 3")
    client = app.test_client()
    sign_in(client)
    second, third = "second password x", "third password xx"
    assert change(client, PASSWORD, PASSWORD).status_code == 400
    assert change(client, PASSWORD, second).status_code == 302
    assert change(client, second, third).status_code == 302
    for reused in (PASSWORD, second, third):
        refused = change(client, third, reused)
        assert refused.status_code == 400
        assert "must differ from your current password and the 2 before it" in \
            refused.get_data(as_text=True)
    assert change(client, third, "fourth password x").status_code == 302
    assert change(client, "fourth password x", PASSWORD).status_code == 302  # 4 back: allowed
    with sqlite3.connect(portal_home / "control.sqlite3") as connection:
        kept = connection.execute(
            "SELECT count(*) FROM password_history h JOIN users u ON u.id = h.user_id"
            " WHERE u.address = ?", (BOB,)).fetchone()[0]
    assert kept == 3  # older hashes are deleted, not kept as targets


def test_change_page_explains_each_refusal(portal_app):
    client = portal_app.test_client()
    sign_in(client)
    cases = [
        (("wrong current pw", "new password 123"), "current password is not right"),
        ((PASSWORD, "new password 123", "new password 124"), "confirmation differ"),
        ((PASSWORD, "short"), "at least 12 characters"),
    ]
    for arguments, message in cases:
        response = change(client, *arguments)
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
    assert sign_in(portal_app.test_client()).status_code == 302  # password unchanged


def test_change_ends_other_sessions_and_keeps_this_one(portal_app):
    here, elsewhere = portal_app.test_client(), portal_app.test_client()
    sign_in(here)
    sign_in(elsewhere)
    assert change(here, PASSWORD, "a new password 1").headers["Location"] == "/account"
    assert here.get("/search").status_code == 200
    assert elsewhere.get("/search").status_code == 302
    assert sign_in(portal_app.test_client(), password="a new password 1").status_code == 302
    assert (BOB, "password.changed", BOB) in audit_actions(portal_app)


def age_password(home, days):
    at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).isoformat()
    with sqlite3.connect(home / "control.sqlite3") as connection:
        connection.execute(
            "UPDATE account_state SET password_changed_at = ? WHERE user_id ="
            " (SELECT id FROM users WHERE address = ?)", (at, BOB))


@pytest.mark.parametrize("path", ["/search", "/search?q=x", "/account", "/activity",
                                  "/account/totp", "/"])
def test_expired_password_must_be_changed_before_anything_else(portal_home, path):
    app = make_app(portal_home, "password_max_age_days = 90")
    age_password(portal_home, 91)
    client = app.test_client()
    assert sign_in(client).headers["Location"] == "/account/password"
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"] == "/account/password"
    assert "Your password has expired" in client.get("/account/password").get_data(as_text=True)

    assert change(client, PASSWORD, "a fresh password").headers["Location"] == "/search"
    assert client.get(path).status_code in (200, 302)
    assert client.get("/search").status_code == 200


def test_password_within_its_age_is_not_forced(portal_home):
    app = make_app(portal_home, "password_max_age_days = 90")
    age_password(portal_home, 89)
    client = app.test_client()
    assert sign_in(client).headers["Location"] == "/search"
