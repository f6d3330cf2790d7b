"""The control database: accounts, addresses, API tokens, audit trail.

SQLite in WAL mode, one short-lived connection per operation so that the
receiver, the follower and the portal's threads never share one.  Nothing
here is needed to prove what the archive received: the vault is the source
of truth, and this database is the archive's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vault.clock import now

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    address       TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('user', 'auditor', 'admin')),
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS mailboxes (
    address TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id)
);
CREATE TABLE IF NOT EXISTS api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id),
    created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}',
    batch  INTEGER
);
CREATE INDEX IF NOT EXISTS audit_unsealed ON audit (id) WHERE batch IS NULL;
CREATE TABLE IF NOT EXISTS holds (
    name        TEXT PRIMARY KEY,
    query       TEXT NOT NULL,
    placed_by   TEXT NOT NULL,
    placed_at   TEXT NOT NULL,
    released_by TEXT,
    released_at TEXT
);
CREATE TABLE IF NOT EXISTS hold_objects (
    hold_name  TEXT NOT NULL REFERENCES holds(name),
    object_key TEXT NOT NULL,
    PRIMARY KEY (hold_name, object_key)
);
CREATE INDEX IF NOT EXISTS hold_objects_by_key ON hold_objects (object_key);
CREATE TABLE IF NOT EXISTS refusals (
    id     INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    source TEXT NOT NULL,
    code   INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS refusals_by_time ON refusals (at);
CREATE TABLE IF NOT EXISTS audit_chain (
    sequence   INTEGER PRIMARY KEY,
    object_key TEXT NOT NULL,
    sha256     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_sha256    TEXT PRIMARY KEY,
    user_id      INTEGER REFERENCES users(id),
    data         TEXT NOT NULL DEFAULT '{}',
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    user_agent   TEXT NOT NULL DEFAULT '',
    peer_hmac    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id);
CREATE TABLE IF NOT EXISTS password_history (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id),
    password_hash TEXT NOT NULL,
    set_at        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS password_history_by_user ON password_history (user_id, id);
CREATE TABLE IF NOT EXISTS account_state (
    user_id             INTEGER PRIMARY KEY REFERENCES users(id),
    password_changed_at TEXT,
    failed_attempts     INTEGER NOT NULL DEFAULT 0,
    locked_at           TEXT,
    totp_secret         BLOB,
    totp_enabled        INTEGER NOT NULL DEFAULT 0,
    totp_last_step      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS audit_by_actor ON audit (actor, id);
CREATE INDEX IF NOT EXISTS audit_by_target ON audit (target, id);
"""


class ControlDB:
    """Open short-lived connections to the control database."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def create(self) -> None:
        """Create the schema; safe to call on an existing database."""
        with self.connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)

    @contextlib.contextmanager
    def connect(self, *, exclusive: bool = False) -> Iterator[sqlite3.Connection]:
        """Yield a connection that commits on success and always closes.

        ``exclusive`` takes the database's write lock at once, for a
        read-modify-write that no other process may interleave with.
        """
        connection = sqlite3.connect(self.path, timeout=30)
        if exclusive:
            connection.isolation_level = "IMMEDIATE"
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys=ON")
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def audit(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        """Append one event to the audit trail."""
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO audit (at, actor, action, target, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (now().isoformat(), actor, action, target,
                 json.dumps(detail, sort_keys=True)),
            )

    def record_refusal(self, source: str, code: int, reason: str) -> None:
        """Count one 4xx or 5xx answer to a journal source, for status."""
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO refusals (at, source, code, reason) VALUES (?, ?, ?, ?)",
                (now().isoformat(), source, code, reason[:200]))

    def audit_events(
        self, actor: str | None = None, limit: int = 100, *,
        action: str | None = None, since: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the latest audit events, newest first, optionally filtered."""
        clauses, parameters = [], []
        for clause, value in (("actor = ?", actor), ("action = ?", action),
                              ("at >= ?", since)):
            if value is not None:
                clauses.append(clause)
                parameters.append(value)
        query = "SELECT * FROM audit"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY id DESC LIMIT ?"
        with self.connect() as connection:
            rows = connection.execute(query, (*parameters, limit)).fetchall()
        return [dict(row) for row in rows]

    def audit_within(self, connection: sqlite3.Connection, actor: str, action: str,
                     target: str = "", **detail: Any) -> None:
        """Append one event inside the caller's transaction (see ``audit``)."""
        connection.execute(
            "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            (now().isoformat(), actor, action, target, json.dumps(detail, sort_keys=True)))
