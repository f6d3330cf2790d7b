"""Accounts, their mailboxes and API tokens.

A user holds one or more archive mailboxes (their own address, aliases and
shared mailboxes); everything a user may see is decided by that set.
Passwords are hashed with Argon2id; API tokens are random 256-bit strings
of which only a SHA-256 is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import sqlite3

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from vault.clock import now
from vault.control import ControlDB
from vault.ownership import OwnershipRules, normalise
from web.passwords import PasswordBook, PasswordPolicy, PasswordRefused

ROLES = ("user", "auditor", "compliance", "admin")
MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "srt_"

password_hasher = PasswordHasher()
# A token's id: the first hex digits of its digest.
TOKEN_ID_DIGITS = 12
# Verifying against this keeps a sign-in for an unknown address as slow as
# one for a known address, so timing does not reveal which accounts exist.
DUMMY_HASH = password_hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """An account operation was refused; the message says why."""


@dataclasses.dataclass(frozen=True)
class User:
    """A signed-in person and the mailboxes whose mail they may see."""

    id: int
    address: str
    role: str
    mailboxes: frozenset[str]

    # flask-login's user protocol.
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        return str(self.id)


class Accounts:
    """Create, find and authenticate users in the control database."""

    def __init__(self, control: ControlDB, rules: OwnershipRules,
                 policy: PasswordPolicy | None = None) -> None:
        self.control = control
        self.rules = rules
        self.policy = policy or PasswordPolicy()

    def add(self, address: str, password: str, role: str = "user",
            aliases: tuple[str, ...] = ()) -> User:
        """Create a user for a local address; raise AccountError if refused."""
        address = normalise(address)
        mailboxes = [address, *(normalise(alias) for alias in aliases)]
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
        for mailbox in mailboxes:
            if not self.rules.is_local(mailbox):
                raise AccountError(
                    f"{mailbox} is not in the archive's domains "
                    f"({', '.join(self.rules.domains) or 'none configured'})"
                )
        try:
            self.policy.check(password, address)
        except PasswordRefused as err:
            raise AccountError(str(err)) from None
        password_hash = password_hasher.hash(password)
        try:
            with self.control.connect() as connection:
                cursor = connection.execute(
                    "INSERT INTO users (address, role, password_hash, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (address, role, password_hash, now().isoformat()),
                )
                connection.executemany(
                    "INSERT INTO mailboxes (address, user_id) VALUES (?, ?)",
                    [(mailbox, cursor.lastrowid) for mailbox in dict.fromkeys(mailboxes)],
                )
                PasswordBook(self.control, self.policy).record(
                    connection, cursor.lastrowid, password_hash)
        except sqlite3.IntegrityError:
            raise AccountError(f"{address} or one of its aliases already has an account") from None
        user = self.get(address=address)
        assert user is not None
        return user

    def get(self, *, user_id: int | None = None, address: str | None = None) -> User | None:
        """Return the enabled user with this id or address, if any."""
        column, value = ("id", user_id) if user_id is not None else ("address", normalise(address or ""))
        with self.control.connect() as connection:
            row = connection.execute(
                f"SELECT id, address, role FROM users WHERE {column} = ? AND disabled = 0",
                (value,),
            ).fetchone()
            if row is None:
                return None
            mailboxes = connection.execute(
                "SELECT address FROM mailboxes WHERE user_id = ?"
                " UNION SELECT address FROM mailbox_shares WHERE user_id = ?",
                (row["id"], row["id"]),
            ).fetchall()
        return User(row["id"], row["address"], row["role"],
                    frozenset(m["address"] for m in mailboxes))

    def existing(self, address: str) -> User:
        """Return the account for ``address``; AccountError if there is none."""
        user = self.get(address=address)
        if user is None:
            raise AccountError(f"no account for {normalise(address)}")
        return user

    def share(self, mailbox: str, address: str, actor: str) -> User:
        """Let the account ``address`` read ``mailbox`` too; return it as it is now."""
        mailbox = normalise(mailbox)
        if not self.rules.is_local(mailbox):
            raise AccountError(f"{mailbox} is not in the archive's domains "
                               f"({', '.join(self.rules.domains) or 'none configured'})")
        user = self.existing(address)
        if mailbox in user.mailboxes:
            raise AccountError(f"{user.address} already reads {mailbox}")
        with self.control.connect() as connection:
            connection.execute(
                "INSERT INTO mailbox_shares (address, user_id, granted_by, granted_at)"
                " VALUES (?, ?, ?, ?)", (mailbox, user.id, actor, now().isoformat()))
        self.control.audit(actor, "mailbox.shared", user.address, mailbox=mailbox)
        return self.get(user_id=user.id) or user

    def unshare(self, mailbox: str, address: str, actor: str) -> User:
        """Take back a shared mailbox; the account's own addresses stay."""
        mailbox = normalise(mailbox)
        user = self.existing(address)
        with self.control.connect() as connection:
            removed = connection.execute(
                "DELETE FROM mailbox_shares WHERE address = ? AND user_id = ?",
                (mailbox, user.id)).rowcount
        if not removed:
            raise AccountError(f"{mailbox} is not shared with {user.address}")
        self.control.audit(actor, "mailbox.unshared", user.address, mailbox=mailbox)
        return self.get(user_id=user.id) or user

    def authenticate(self, address: str, password: str) -> User | None:
        """Return the user if the password is right, else None (same cost).

        A locked account fails too; the portal's sign-in goes through
        ``web.lockout``, which also counts the failures.
        """
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT u.id, u.password_hash, s.locked_at FROM users u"
                " LEFT JOIN account_state s ON s.user_id = u.id"
                " WHERE u.address = ? AND u.disabled = 0",
                (normalise(address),),
            ).fetchone()
        try:
            password_hasher.verify(row["password_hash"] if row else DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or row["locked_at"] is not None:
            return None
        return self.get(user_id=row["id"])

    def create_token(self, address: str) -> str:
        """Create an API token for a user and return it; it is shown once."""
        user = self.existing(address)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.control.connect() as connection:
            connection.execute(
                "INSERT INTO api_tokens (token_sha256, user_id, created_at) VALUES (?, ?, ?)",
                (_token_digest(token), user.id, now().isoformat()),
            )
        return token

    def tokens(self, address: str) -> list[tuple[str, str]]:
        """Return an account's API tokens as (id, created at), oldest first.

        The id is the start of the token's digest: it names the token in
        ``revoke_tokens`` and in the audit, and reveals nothing of it.
        """
        user = self.existing(address)
        with self.control.connect() as connection:
            rows = connection.execute(
                "SELECT token_sha256, created_at FROM api_tokens WHERE user_id = ?"
                " ORDER BY created_at", (user.id,)).fetchall()
        return [(token_id(row["token_sha256"]), row["created_at"]) for row in rows]

    def revoke_tokens(self, address: str, token: str | None, actor: str) -> int:
        """Revoke the account's token with id ``token``, or all with None.

        Returns how many were revoked; AccountError for an id the account
        has no token under.
        """
        user = self.existing(address)
        with self.control.connect() as connection:
            digests = [row["token_sha256"] for row in connection.execute(
                "SELECT token_sha256 FROM api_tokens WHERE user_id = ?", (user.id,))
                if token is None or token_id(row["token_sha256"]) == token.lower()]
            if token is not None and not digests:
                raise AccountError(f"{user.address} has no API token {token}")
            for digest in digests:
                connection.execute("DELETE FROM api_tokens WHERE token_sha256 = ?", (digest,))
                self.control.audit_within(connection, actor, "token.revoked", user.address,
                                          token=token_id(digest))
        return len(digests)

    def user_for_token(self, token: str) -> User | None:
        """Return the user an API token belongs to, if it is valid."""
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT user_id FROM api_tokens WHERE token_sha256 = ?",
                (_token_digest(token),),
            ).fetchone()
        return self.get(user_id=row["user_id"]) if row else None


def check_password(password: str) -> None:
    """Raise AccountError if a new password is too weak."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")


def token_id(digest: str) -> str:
    """Return the id shown for a token: the first 12 hex digits of its digest."""
    return digest[:TOKEN_ID_DIGITS]


def token_id_of(token: str) -> str:
    """Return the id shown for ``token`` itself."""
    return token_id(_token_digest(token))


def _token_digest(token: str) -> str:
    # Tokens carry 256 random bits, so a plain hash cannot be brute-forced;
    # lookup by digest also avoids comparing secrets byte by byte.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
