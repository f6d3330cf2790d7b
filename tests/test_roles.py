# Roles: least privilege decided in one place, and the users table of an
# older home widened to accept 'compliance' without losing an account.

from __future__ import annotations

import sqlite3

import pytest

from vault.control import ControlDB
from vault.roles import (AUDIT_VIEW, EXPORT_RUN, HOLD_PLACE, MAIL_ANY, MAIL_OWN,
                         PermissionDeniedError, Principal, allows, require)

OLD_USERS = """
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    address       TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('user', 'auditor', 'admin')),
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE mailboxes (address TEXT PRIMARY KEY,
                        user_id INTEGER NOT NULL REFERENCES users(id));
"""


def test_an_older_database_accepts_compliance_after_migration(tmp_path):
    path = tmp_path / "control.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_USERS)
        connection.execute("ALTER TABLE users ADD COLUMN locked INTEGER NOT NULL DEFAULT 0")
        connection.execute("INSERT INTO users VALUES (7, 'bob@example.com', 'auditor',"
                           " 'hash', '2026-01-01', 0, 1)")
        connection.execute("INSERT INTO mailboxes VALUES ('bob@example.com', 7)")
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute("INSERT INTO users (address, role, password_hash, created_at)"
                               " VALUES ('c@example.com', 'compliance', 'h', 'now')")
    control = ControlDB(path)
    control.create()
    control.create()  # a second start finds nothing to migrate
    with control.connect() as connection:
        connection.execute("INSERT INTO users (address, role, password_hash, created_at)"
                           " VALUES ('c@example.com', 'compliance', 'h', 'now')")
        bob = dict(connection.execute("SELECT * FROM users WHERE id = 7").fetchone())
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute("INSERT INTO users (address, role, password_hash, created_at)"
                               " VALUES ('d@example.com', 'root', 'h', 'now')")
    # Every column, the one added later included, came across.
    assert bob == {"id": 7, "address": "bob@example.com", "role": "auditor",
                   "password_hash": "hash", "created_at": "2026-01-01", "disabled": 0,
                   "locked": 1}


def test_admin_has_no_mail_content_and_auditor_cannot_hold_or_export():
    admin = Principal("admin@example.com", "admin", frozenset({"admin@example.com"}))
    auditor = Principal("aud@example.com", "auditor")
    assert not allows(admin, MAIL_OWN, mailboxes=["admin@example.com"])
    assert not allows(admin, MAIL_ANY)
    assert allows(auditor, MAIL_ANY) and allows(auditor, AUDIT_VIEW)
    assert not allows(auditor, HOLD_PLACE) and not allows(auditor, EXPORT_RUN)
    with pytest.raises(PermissionDeniedError, match="may not export.run"):
        require(auditor, EXPORT_RUN)


def test_a_grant_adds_one_capability_and_a_scope_limits_domains():
    auditor = Principal("aud@example.com", "auditor", grants=frozenset({EXPORT_RUN}),
                        domains=frozenset({"example.com"}))
    assert allows(auditor, EXPORT_RUN)
    assert not allows(auditor, HOLD_PLACE)
    assert allows(auditor, MAIL_ANY, mailboxes=["x@other.org", "bob@example.com"])
    assert not allows(auditor, MAIL_ANY, mailboxes=["x@other.org"])


def test_own_mail_means_the_principals_own_mailboxes_only():
    bob = Principal("bob@example.com", "user", frozenset({"bob@example.com"}))
    assert allows(bob, MAIL_OWN, mailboxes=["BOB@example.com"])
    assert not allows(bob, MAIL_OWN, mailboxes=["carol@example.com"])
    with pytest.raises(ValueError):
        allows(bob, "mail.read.everything")
