"""Journal senders: mail servers that may journal to the archive by SMTP AUTH.

A journal sender is a name and a password, made by an administrator with
``strongroom sender add``; the receiver checks them when the ``trust`` mode
admits authenticated peers.  Passwords are hashed with Argon2id exactly as
account passwords are, and nothing secret is kept in the configuration.
"""

from __future__ import annotations

import re
import sqlite3

from argon2.exceptions import InvalidHashError, VerificationError

from vault.clock import now
from vault.control import ControlDB
from web.accounts import DUMMY_HASH, AccountError, check_password, password_hasher

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_senders (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
"""

# A SASL user name that a mail server's password map can hold as it is.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class JournalSenders:
    """Create, remove and check journal senders in the control database."""

    def __init__(self, control: ControlDB) -> None:
        self.control = control
        with control.connect() as connection:
            connection.executescript(SCHEMA)

    def add(self, name: str, password: str) -> None:
        """Create a journal sender; raise AccountError if refused."""
        if not _NAME.fullmatch(name):
            raise AccountError(
                f"journal sender name {name!r}: use up to 64 letters, digits and ._@+-")
        check_password(password)
        try:
            with self.control.connect() as connection:
                connection.execute(
                    "INSERT INTO journal_senders (name, password_hash, created_at)"
                    " VALUES (?, ?, ?)",
                    (name, password_hasher.hash(password), now().isoformat()),
                )
        except sqlite3.IntegrityError:
            raise AccountError(f"journal sender {name!r} already exists") from None

    def remove(self, name: str) -> None:
        """Remove a journal sender; raise AccountError if there is none."""
        with self.control.connect() as connection:
            removed = connection.execute(
                "DELETE FROM journal_senders WHERE name = ?", (name,)).rowcount
        if not removed:
            raise AccountError(f"no journal sender {name!r}")

    def authenticate(self, name: str, password: str) -> bool:
        """Tell whether the password is right; as slow for unknown names."""
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT password_hash FROM journal_senders WHERE name = ?", (name,)
            ).fetchone()
        try:
            password_hasher.verify(row["password_hash"] if row else DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False
        return row is not None
