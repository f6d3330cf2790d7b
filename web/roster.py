"""The administrator's list of accounts: who, what role, in what state.

Only account facts are listed - address, role, the mailboxes the account
holds, lockout, second factor, password age, last sign-in - never
anything read from mail.  The last sign-in comes from the audit trail
(the latest ``login`` event whose actor is the account).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from vault import clock
from vault.control import ControlDB
from web.lockout import lifts_at


@dataclasses.dataclass(frozen=True)
class AccountRow:
    """One line of the account list."""

    id: int
    address: str
    role: str
    mailboxes: tuple[str, ...]
    locked_at: dt.datetime | None
    # When the lock lifts by itself; None with locked_at: when unlocked.
    locked_until: dt.datetime | None
    failed_attempts: int
    totp_enabled: bool
    password_changed_at: dt.datetime
    last_sign_in: dt.datetime | None

    @property
    def is_locked(self) -> bool:
        if self.locked_at is None:
            return False
        return self.locked_until is None or clock.now() < self.locked_until

    @property
    def aliases(self) -> tuple[str, ...]:
        """The mailboxes besides the account's own address."""
        return tuple(m for m in self.mailboxes if m != self.address)

    def password_age_days(self, at: dt.datetime | None = None) -> int:
        """Return the password's age in whole days."""
        return ((at or clock.now()) - self.password_changed_at).days


def list_accounts(control: ControlDB, lockout_minutes: float = 0.0) -> list[AccountRow]:
    """Return every enabled account, by address.

    ``lockout_minutes`` is how long a lock lasts (0: until unlocked).
    """
    with control.connect() as connection:
        users = connection.execute(
            "SELECT u.id, u.address, u.role, u.created_at, s.password_changed_at,"
            " s.locked_at, coalesce(s.failed_attempts, 0) AS failed_attempts,"
            " coalesce(s.totp_enabled, 0) AS totp_enabled FROM users u"
            " LEFT JOIN account_state s ON s.user_id = u.id"
            " WHERE u.disabled = 0 ORDER BY u.address").fetchall()
        mailboxes: dict[int, list[str]] = {}
        for row in connection.execute(
                "SELECT user_id, address FROM mailboxes ORDER BY address"):
            mailboxes.setdefault(row["user_id"], []).append(row["address"])
        # One indexed lookup per account (audit_by_actor), not a scan.
        last_logins = {
            row["address"]: connection.execute(
                "SELECT max(at) FROM audit WHERE actor = ? AND action = 'login'",
                (row["address"],)).fetchone()[0]
            for row in users}
    return [AccountRow(
        id=row["id"], address=row["address"], role=row["role"],
        mailboxes=tuple(mailboxes.get(row["id"], ())),
        locked_at=_time(row["locked_at"]),
        locked_until=_lifts(_time(row["locked_at"]), lockout_minutes),
        failed_attempts=row["failed_attempts"],
        totp_enabled=bool(row["totp_enabled"]),
        password_changed_at=_time(row["password_changed_at"] or row["created_at"])
        or clock.now(),
        last_sign_in=_time(last_logins[row["address"]]),
    ) for row in users]


def _lifts(locked_at: dt.datetime | None, minutes: float) -> dt.datetime | None:
    return lifts_at(locked_at, minutes) if locked_at else None


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
