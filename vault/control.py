"""The control database: accounts, addresses, API tokens, audit trail.

SQLite in WAL mode.  Each thread keeps one connection per ControlDB and
reuses it from one operation to the next (opening one costs more than most
queries here), so the receiver, the follower and the portal's threads never
share one.  Nothing here is needed to prove what the archive received: the
vault is the source of truth, and this database is the archive's own
bookkeeping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vault.audit_commit import AuditCommitter
from vault.clock import now

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    address       TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('user', 'auditor', 'compliance', 'admin')),
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
""" + """
CREATE TABLE IF NOT EXISTS role_grants (
    address    TEXT NOT NULL,
    capability TEXT NOT NULL,
    PRIMARY KEY (address, capability)
);
CREATE TABLE IF NOT EXISTS role_scopes (
    address TEXT NOT NULL,
    domain  TEXT NOT NULL,
    PRIMARY KEY (address, domain)
);
CREATE TABLE IF NOT EXISTS approvals (
    id           INTEGER PRIMARY KEY,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL DEFAULT '',
    requested_by TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'executed', 'rejected')),
    decided_by   TEXT,
    decided_at   TEXT
);
CREATE TABLE IF NOT EXISTS cases (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    hold_future INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS case_members (
    case_id INTEGER NOT NULL REFERENCES cases(id),
    address TEXT NOT NULL,
    PRIMARY KEY (case_id, address)
);
CREATE TABLE IF NOT EXISTS case_custodians (
    case_id INTEGER NOT NULL REFERENCES cases(id),
    mailbox TEXT NOT NULL,
    PRIMARY KEY (case_id, mailbox)
);
CREATE INDEX IF NOT EXISTS case_custodians_by_mailbox ON case_custodians (mailbox);
CREATE TABLE IF NOT EXISTS case_notes (
    id      INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    author  TEXT NOT NULL,
    at      TEXT NOT NULL,
    text    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS case_searches (
    id         INTEGER PRIMARY KEY,
    case_id    INTEGER NOT NULL REFERENCES cases(id),
    name       TEXT NOT NULL,
    query      TEXT NOT NULL,
    custodians TEXT NOT NULL DEFAULT '[]',
    date_from  TEXT NOT NULL DEFAULT '',
    date_to    TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT '{}',
    UNIQUE (case_id, name)
);
CREATE TABLE IF NOT EXISTS case_holds (
    hold_name TEXT PRIMARY KEY REFERENCES holds(name),
    case_id   INTEGER NOT NULL REFERENCES cases(id),
    search_id INTEGER REFERENCES case_searches(id)
);
CREATE TABLE IF NOT EXISTS exports (
    id          INTEGER PRIMARY KEY,
    case_id     INTEGER NOT NULL REFERENCES cases(id),
    search_id   INTEGER NOT NULL REFERENCES case_searches(id),
    format      TEXT NOT NULL,
    path        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'queued',
    total       INTEGER NOT NULL DEFAULT 0,
    done        INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0,
    operator    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    error       TEXT NOT NULL DEFAULT '',
    faults      INTEGER NOT NULL DEFAULT 0
);
"""
# Shared mailboxes (web/accounts.py): a mailbox an administrator lets
# another account read besides its owner (a team address, a departed
# colleague's mail), who granted it and when.
SCHEMA += """
CREATE TABLE IF NOT EXISTS mailbox_shares (
    address    TEXT NOT NULL,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    PRIMARY KEY (address, user_id)
);
"""
# Restores to mailbox (web/restore_jobs.py): each job and the messages
# that failed, so a job's status outlives the process that ran it.
SCHEMA += """
CREATE TABLE IF NOT EXISTS restore_jobs (
    id            TEXT PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id),
    actor         TEXT NOT NULL,
    folder        TEXT NOT NULL,
    server_folder TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL DEFAULT 'running' CHECK (state IN
                  ('running', 'restored', 'partial', 'failed', 'interrupted')),
    total         INTEGER NOT NULL,
    restored      INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    error         TEXT NOT NULL DEFAULT '',
    started_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    finished_at   TEXT
);
CREATE INDEX IF NOT EXISTS restore_jobs_running ON restore_jobs (state)
    WHERE state = 'running';
CREATE TABLE IF NOT EXISTS restore_failures (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES restore_jobs(id),
    message_id TEXT NOT NULL,
    reason     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS restore_failures_by_job ON restore_failures (job_id, id);
"""


@dataclasses.dataclass(eq=False)
class _KeptConnection:
    """One thread's reusable connection, and whether a block is using it."""

    pid: int
    connection: sqlite3.Connection | None = None
    is_busy: bool = False

    def check_in(self) -> None:
        # A transaction left open (a failed COMMIT) would hold its lock
        # and its snapshot into the next operation: drop such a connection.
        if self.connection is not None and self.connection.in_transaction:
            self.connection.close()
            self.connection = None
        self.is_busy = False


class ControlDB:
    """Open connections to the control database, one kept per thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._kept = threading.local()
        self.audit_committer = AuditCommitter(self.connect)

    def create(self) -> None:
        """Create the schema; safe to call on an existing database."""
        with self.connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        migrate_user_roles(self.path)
        with self.connect() as connection:
            connection.executescript(SCHEMA)
            missing = missing_columns(connection)
        if missing:
            # Checked again under the write lock: two processes starting
            # at once must not both add a column.
            with self.connect(exclusive=True) as connection:
                for table, column, definition in missing_columns(connection):
                    connection.execute(
                        f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    @contextlib.contextmanager
    def connect(self, *, exclusive: bool = False) -> Iterator[sqlite3.Connection]:
        """Yield a connection that commits on success, rolls back on error.

        ``exclusive`` takes the database's write lock at once, for a
        read-modify-write that no other process may interleave with.
        The thread's kept connection is used unless it is already in use
        further up the stack (a nested block gets a connection of its own,
        closed at its end, so it never commits the outer block's work).
        """
        kept = self._slot()
        slot = None if kept.is_busy else kept
        if slot is None:
            connection = self._open()
        else:
            connection = slot.connection = slot.connection or self._open()
            slot.is_busy = True
        try:
            with connection:
                if exclusive:
                    # The sqlite3 module opens its transaction only before
                    # the first write; a read-modify-write must hold the
                    # lock from its first read, or two processes read the
                    # same state and both write on it.
                    connection.execute("BEGIN IMMEDIATE")
                yield connection
        finally:
            if slot is None:
                connection.close()
            else:
                slot.check_in()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    def _slot(self) -> _KeptConnection:
        slot: _KeptConnection | None = getattr(self._kept, "slot", None)
        # A connection must not cross a fork (SQLite's rule): a child
        # process opens its own.
        if slot is None or slot.pid != os.getpid():
            slot = self._kept.slot = _KeptConnection(os.getpid())
        return slot

    def close(self) -> None:
        """Close this thread's kept connection (others close with their threads)."""
        slot = self._slot()
        if slot.connection is not None and not slot.is_busy:
            slot.connection.close()
            slot.connection = None

    def audit(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        """Append one event to the audit trail; return once it is durable.

        Events of concurrent threads share a transaction (see
        ``vault.audit_commit``).  Raises AuditError if the event could not
        be recorded: the caller must then refuse what it was auditing.
        """
        self.audit_committer.append((now().isoformat(), actor, action, target,
                                     json.dumps(detail, sort_keys=True)))

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


# Columns added to a table after its first release: CREATE TABLE IF NOT
# EXISTS leaves an older database's table as it was, so create() adds
# them.  SQLite's ADD COLUMN needs a constant default for NOT NULL.
ADDED_COLUMNS = (
    ("exports", "faults", "INTEGER NOT NULL DEFAULT 0"),
)


def missing_columns(connection: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """Return those of ADDED_COLUMNS that the database lacks."""
    missing = []
    for table, column, definition in ADDED_COLUMNS:
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            missing.append((table, column, definition))
    return missing


_ROLE_CHECK = re.compile(r"(CHECK\s*\(\s*role\s+IN\s*\([^)]*)(\)\s*\))", re.IGNORECASE)


def migrate_user_roles(path: Path) -> None:
    """Widen an older database's users.role CHECK to accept 'compliance'.

    SQLite cannot alter a CHECK constraint, so the table is rebuilt the way
    SQLite's documentation prescribes (section 7 of "ALTER TABLE"): with
    foreign keys off, in one transaction, create the new table, copy the
    rows, drop the old one, rename the new one into place, and check the
    foreign keys before committing.  A crash leaves the old table intact.
    """
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        row = connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'users'"
        ).fetchone()
        if row is None or "'compliance'" in row[0]:
            return
        connection.execute("PRAGMA foreign_keys=OFF")
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Rebuild from the table's own definition, so that columns
            # added since (by ALTER TABLE) come across too.
            widened = _ROLE_CHECK.sub(r"\1, 'compliance'\2", row[0], count=1)
            indexes = [index for (index,) in connection.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'users' AND sql IS NOT NULL")]
            widened = widened.replace("users", "users_widened", 1)
            connection.execute(widened)
            columns = ", ".join(
                f'"{column[1]}"' for column in connection.execute("PRAGMA table_info(users)"))
            connection.execute(
                f"INSERT INTO users_widened ({columns}) SELECT {columns} FROM users")
            connection.execute("DROP TABLE users")
            connection.execute("ALTER TABLE users_widened RENAME TO users")
            for index in indexes:
                connection.execute(index)
            if connection.execute("PRAGMA foreign_key_check").fetchall():
                raise sqlite3.IntegrityError("foreign keys broken by the users migration")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()
