"""The password policy: length, character classes, history and age.

The policy comes from the ``[accounts]`` settings.  History keeps the
Argon2id hashes of an account's last ``password_history`` passwords in
``password_history`` (older ones are deleted: an old hash is still a
target); a new password is checked against each of them and against the
current one.  An account's password age is counted from
``account_state.password_changed_at``, or from the account's creation if
it never changed its password.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import unicodedata

from argon2.exceptions import InvalidHashError, VerificationError

from vault import clock
from vault.config import AccountSettings
from vault.control import ControlDB

CLASS_NAMES = ("lower-case letters", "upper-case letters", "digits", "other characters")
# Argon2 hashes what it is given; past this, a "password" is a denial of
# service aimed at the hasher.
MAX_PASSWORD_LENGTH = 1024


class PasswordRefused(ValueError):
    """A new password breaks the policy; the message says every reason."""


@dataclasses.dataclass(frozen=True)
class PasswordPolicy:
    """What a new password must be, and how long it lasts."""

    min_length: int = 12
    classes: int = 1
    history: int = 5
    max_age_days: int = 0

    @classmethod
    def from_settings(cls, accounts: AccountSettings) -> PasswordPolicy:
        return cls(accounts.password_min_length, accounts.password_classes,
                   accounts.password_history, accounts.password_max_age_days)

    def problems(self, password: str, address: str = "") -> list[str]:
        """Return every way ``password`` breaks the policy (empty if none)."""
        found = []
        if len(password) < self.min_length:
            found.append(f"it must have at least {self.min_length} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            found.append(f"it must have at most {MAX_PASSWORD_LENGTH} characters")
        used = character_classes(password)
        if len(used) < self.classes:
            found.append(f"it must mix at least {self.classes} of: {', '.join(CLASS_NAMES)}"
                         f" (it has {len(used)})")
        address = address.lower()
        if address and password.lower() in (address, address.partition("@")[0]):
            found.append("it must not be your address")
        return found

    def check(self, password: str, address: str = "") -> None:
        """Raise PasswordRefused naming every problem with ``password``."""
        found = self.problems(password, address)
        if found:
            raise PasswordRefused("This password cannot be used: " + "; ".join(found) + ".")

    def is_expired(self, changed_at: dt.datetime, at: dt.datetime | None = None) -> bool:
        """Tell whether a password set at ``changed_at`` must now be changed."""
        if not self.max_age_days:
            return False
        return (at or clock.now()) - changed_at >= dt.timedelta(days=self.max_age_days)


def character_classes(password: str) -> set[str]:
    """Return which of the four classes ``password`` uses."""
    used = set()
    for character in password:
        category = unicodedata.category(character)
        if category == "Ll":
            used.add(CLASS_NAMES[0])
        elif category in ("Lu", "Lt"):
            used.add(CLASS_NAMES[1])
        elif category == "Nd":
            used.add(CLASS_NAMES[2])
        else:
            used.add(CLASS_NAMES[3])
    return used


class PasswordBook:
    """Set passwords with history, and tell an account's password age."""

    def __init__(self, control: ControlDB, policy: PasswordPolicy) -> None:
        self.control = control
        self.policy = policy

    def record(self, connection: sqlite3.Connection, user_id: int, password_hash: str) -> None:
        """Note a newly set password hash inside the caller's transaction."""
        at = clock.now().isoformat()
        connection.execute(
            "INSERT INTO password_history (user_id, password_hash, set_at) VALUES (?, ?, ?)",
            (user_id, password_hash, at))
        connection.execute(
            "DELETE FROM password_history WHERE user_id = ? AND id NOT IN (SELECT id FROM"
            " password_history WHERE user_id = ? ORDER BY id DESC LIMIT ?)",
            (user_id, user_id, max(self.policy.history, 1)))
        connection.execute(
            "INSERT INTO account_state (user_id, password_changed_at) VALUES (?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET password_changed_at = excluded.password_changed_at",
            (user_id, at))

    def change(self, user_id: int, address: str, new_password: str) -> None:
        """Replace an account's password; raise PasswordRefused if the policy forbids it."""
        from web.accounts import password_hasher

        self.policy.check(new_password, address)
        if self._was_used(user_id, new_password):
            earlier = self.policy.history - 1
            raise PasswordRefused(
                "This password cannot be used: it must differ from your current password"
                + (f" and the {earlier} before it." if earlier > 0 else "."))
        password_hash = password_hasher.hash(new_password)
        with self.control.connect(exclusive=True) as connection:
            connection.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                               (password_hash, user_id))
            self.record(connection, user_id, password_hash)

    def changed_at(self, user_id: int) -> dt.datetime:
        """Return when the account's password was last set."""
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT coalesce(s.password_changed_at, u.created_at) AS at FROM users u"
                " LEFT JOIN account_state s ON s.user_id = u.id WHERE u.id = ?",
                (user_id,)).fetchone()
        changed = dt.datetime.fromisoformat(row["at"])
        return changed if changed.tzinfo else changed.replace(tzinfo=dt.timezone.utc)

    def is_expired(self, user_id: int) -> bool:
        """Tell whether the account must choose a new password now."""
        return self.policy.is_expired(self.changed_at(user_id))

    def _was_used(self, user_id: int, password: str) -> bool:
        from web.accounts import password_hasher

        with self.control.connect() as connection:
            current = connection.execute(
                "SELECT password_hash FROM users WHERE id = ?", (user_id,)).fetchone()
            earlier = connection.execute(
                "SELECT password_hash FROM password_history WHERE user_id = ?"
                " ORDER BY id DESC LIMIT ?", (user_id, self.policy.history)).fetchall()
        hashes = dict.fromkeys([current["password_hash"], *(r["password_hash"] for r in earlier)])
        for password_hash in hashes:
            try:
                if password_hasher.verify(password_hash, password):
                    return True
            except (VerificationError, InvalidHashError):
                continue
        return False
