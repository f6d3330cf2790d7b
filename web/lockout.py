"""Check sign-in credentials, count failures and lock accounts.

After ``accounts.lockout_attempts`` wrong passwords or second-factor codes
in a row, an account locks until an administrator unlocks it.  A locked
account still has its password verified (so a sign-in takes as long as any
other) and then fails with the same answer as a wrong password: neither
the message nor the timing tells whether an account exists or is locked.
Failures are counted in ``account_state``; locking and unlocking are
audited with the account's address as target.
"""

from __future__ import annotations

import logging

from argon2.exceptions import InvalidHashError, VerificationError

from vault import clock
from vault.control import ControlDB
from vault.ownership import normalise
from web.accounts import DUMMY_HASH, password_hasher

log = logging.getLogger(__name__)

# Longest address written to the audit trail from a sign-in form.
MAX_AUDITED_ADDRESS = 320


class Lockout:
    """Verify passwords and keep each account's run of failures."""

    def __init__(self, control: ControlDB, attempts: int) -> None:
        self.control = control
        self.attempts = attempts

    def verify_password(self, address: str, password: str) -> int | None:
        """Return the account id if the password is right and it is unlocked.

        Every failure is audited under the typed address and counted
        against the account, if there is one.
        """
        address = audited_address(address)
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT u.id, u.password_hash, s.locked_at FROM users u"
                " LEFT JOIN account_state s ON s.user_id = u.id"
                " WHERE u.address = ? AND u.disabled = 0", (address,)).fetchone()
        # Verify even for an unknown or locked account: the same work for
        # every attempt keeps timing from telling them apart.
        try:
            password_hasher.verify(row["password_hash"] if row else DUMMY_HASH, password)
            is_right = row is not None
        except (VerificationError, InvalidHashError):
            is_right = False
        if is_right and row["locked_at"] is None:
            return int(row["id"])
        reason = "unknown account" if row is None else (
            "locked" if row["locked_at"] else "password")
        self.fail(address, row["id"] if row else None, reason)
        return None

    def fail(self, address: str, user_id: int | None, reason: str) -> None:
        """Audit one failed sign-in step; lock the account at the limit.

        The audit record and the count share one transaction, so a failure
        for an unknown address commits as often as one for a real account.
        """
        with self.control.connect(exclusive=True) as connection:
            self.control.audit_within(connection, address or "-", "login.failure",
                                      reason=reason, peer=_peer())
            if user_id is None:
                return
            connection.execute(
                "INSERT INTO account_state (user_id, failed_attempts) VALUES (?, 1)"
                " ON CONFLICT (user_id) DO UPDATE SET failed_attempts = failed_attempts + 1",
                (user_id,))
            row = connection.execute(
                "SELECT failed_attempts, locked_at FROM account_state WHERE user_id = ?",
                (user_id,)).fetchone()
            if row["locked_at"] is not None or row["failed_attempts"] < self.attempts:
                return
            connection.execute("UPDATE account_state SET locked_at = ? WHERE user_id = ?",
                               (clock.now().isoformat(), user_id))
            self.control.audit_within(connection, "portal", "account.locked", address,
                                      attempts=row["failed_attempts"])
        log.warning("account %s locked after %d failed sign-ins", address,
                    row["failed_attempts"], extra={"event": "account.locked"})

    def succeed(self, user_id: int) -> None:
        """Forget an account's run of failures after a complete sign-in."""
        with self.control.connect() as connection:
            connection.execute(
                "UPDATE account_state SET failed_attempts = 0 WHERE user_id = ?", (user_id,))

    def is_locked(self, user_id: int) -> bool:
        """Tell whether an account is locked."""
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT locked_at FROM account_state WHERE user_id = ?", (user_id,)).fetchone()
        return row is not None and row["locked_at"] is not None

    def unlock(self, user_id: int, address: str, actor: str) -> bool:
        """Unlock an account and clear its failures; False if it was not locked."""
        with self.control.connect(exclusive=True) as connection:
            cursor = connection.execute(
                "UPDATE account_state SET locked_at = NULL, failed_attempts = 0"
                " WHERE user_id = ? AND locked_at IS NOT NULL", (user_id,))
        if cursor.rowcount:
            self.control.audit(actor, "account.unlocked", address)
        return bool(cursor.rowcount)

    def locked_accounts(self) -> list[dict[str, object]]:
        """Return every locked account with when it locked."""
        with self.control.connect() as connection:
            rows = connection.execute(
                "SELECT u.id, u.address, s.locked_at, s.failed_attempts FROM users u"
                " JOIN account_state s ON s.user_id = u.id WHERE s.locked_at IS NOT NULL"
                " ORDER BY u.address").fetchall()
        return [dict(row) for row in rows]


def audited_address(address: str) -> str:
    """Return a typed address as the audit trail records it."""
    return normalise(address.strip())[:MAX_AUDITED_ADDRESS]


def _peer() -> str | None:
    from flask import has_request_context, request

    return request.remote_addr if has_request_context() else None
