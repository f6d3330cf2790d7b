"""Check sign-in credentials, count failures, lock accounts, throttle clients.

After ``accounts.lockout_attempts`` wrong passwords or second-factor codes
in a row, an account locks for ``accounts.lockout_minutes`` (0: until an
administrator unlocks it).  A locked account still has its password
verified (so a sign-in takes as long as any other) and then fails with the
same answer as a wrong password: neither the message nor the timing tells
whether an account exists or is locked.  Failures are counted in
``account_state``; locking and unlocking are audited with the account's
address as target.

Locking alone lets anyone who reaches the sign-in page lock every account
in turn.  So failures are also counted per client address: after
``accounts.client_failures`` within ``accounts.client_window_minutes``, that
client's sign-ins are refused (429) without being tried, and so without
counting against any account, until its failures age out of the window.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from argon2.exceptions import InvalidHashError, VerificationError

from vault import clock
from vault.control import ControlDB
from vault.ownership import normalise
from web.accounts import DUMMY_HASH, password_hasher

log = logging.getLogger(__name__)

# Longest address written to the audit trail from a sign-in form.
MAX_AUDITED_ADDRESS = 320
# Client addresses whose failures are remembered at once; past it, the
# address failing least recently is forgotten first.
MAX_CLIENTS = 100_000


class Lockout:
    """Verify passwords and keep each account's run of failures."""

    def __init__(self, control: ControlDB, attempts: int, minutes: float = 0.0) -> None:
        self.control = control
        self.attempts = attempts
        self.minutes = minutes

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
        locked = row is not None and self.in_force(row["locked_at"])
        if is_right and not locked:
            return int(row["id"])
        reason = "unknown account" if row is None else ("locked" if locked else "password")
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
            before = connection.execute(
                "SELECT locked_at FROM account_state WHERE user_id = ?", (user_id,)).fetchone()
            if before is not None and before["locked_at"] and not self.in_force(
                    before["locked_at"]):
                # The lock has lifted: this failure starts a new run.
                connection.execute(
                    "UPDATE account_state SET locked_at = NULL, failed_attempts = 0"
                    " WHERE user_id = ?", (user_id,))
            connection.execute(
                "INSERT INTO account_state (user_id, failed_attempts) VALUES (?, 1)"
                " ON CONFLICT (user_id) DO UPDATE SET failed_attempts = failed_attempts + 1",
                (user_id,))
            row = connection.execute(
                "SELECT failed_attempts, locked_at FROM account_state WHERE user_id = ?",
                (user_id,)).fetchone()
            if row["locked_at"] is not None or row["failed_attempts"] < self.attempts:
                return
            locked_at = clock.now()
            connection.execute("UPDATE account_state SET locked_at = ? WHERE user_id = ?",
                               (locked_at.isoformat(), user_id))
            lifts = lifts_at(locked_at, self.minutes)
            self.control.audit_within(connection, "portal", "account.locked", address,
                                      attempts=row["failed_attempts"],
                                      until=lifts.isoformat() if lifts else "unlocked")
        log.warning("account %s locked after %d failed sign-ins", address,
                    row["failed_attempts"], extra={"event": "account.locked"})

    def succeed(self, user_id: int) -> None:
        """Forget an account's run of failures (and a lifted lock) after a sign-in."""
        with self.control.connect() as connection:
            connection.execute(
                "UPDATE account_state SET failed_attempts = 0, locked_at = NULL"
                " WHERE user_id = ?", (user_id,))

    def is_locked(self, user_id: int) -> bool:
        """Tell whether an account is locked now."""
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT locked_at FROM account_state WHERE user_id = ?", (user_id,)).fetchone()
        return row is not None and self.in_force(row["locked_at"])

    def in_force(self, locked_at: str | None) -> bool:
        """Tell whether a lock made at ``locked_at`` (ISO text) still holds."""
        if not locked_at:
            return False
        lifts = lifts_at(dt.datetime.fromisoformat(locked_at), self.minutes)
        return lifts is None or clock.now() < lifts

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


def lifts_at(locked_at: dt.datetime, minutes: float) -> dt.datetime | None:
    """Return when a lock made at ``locked_at`` lifts; None: when unlocked."""
    return locked_at + dt.timedelta(minutes=minutes) if minutes else None


class ClientThrottle:
    """Failed sign-ins per client address, over a sliding window.

    Kept in the portal's memory: a restart forgets them, which gives an
    attacker one window more, no account.  At most MAX_CLIENTS addresses
    are remembered.
    """

    def __init__(self, failures: int, window_minutes: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.window = window_minutes * 60
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())

    def retry_after(self, client: str | None) -> int:
        """Return the seconds until ``client`` may try again; 0 if it may now."""
        if not self.failures or client is None:
            return 0
        with self._lock:
            times = self._recent(client)
            if times is None or len(times) < self.failures:
                return 0
            return max(1, int(times[-self.failures] + self.window - self.clock()) + 1)

    def failed(self, client: str | None) -> None:
        """Count one failed sign-in step from ``client``."""
        if not self.failures or client is None:
            return
        with self._lock:
            times = self._recent(client)
            if times is None:
                times = self._seen[client] = collections.deque(maxlen=self.failures)
                while len(self._seen) > MAX_CLIENTS:
                    self._seen.popitem(last=False)
            times.append(self.clock())
            self._seen.move_to_end(client)

    def _recent(self, client: str) -> collections.deque[float] | None:
        times = self._seen.get(client)
        if times is None:
            return None
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._seen[client]
            return None
        return times


def audited_address(address: str) -> str:
    """Return a typed address as the audit trail records it."""
    return normalise(address.strip())[:MAX_AUDITED_ADDRESS]


def _peer() -> str | None:
    from flask import has_request_context, request

    return request.remote_addr if has_request_context() else None
