"""The optional TOTP second factor (RFC 6238), one secret per account.

Secrets are kept in ``account_state.totp_secret`` sealed with AES-256-GCM
under a key derived (HKDF-SHA256) from the portal's secret key, with the
account id as associated data, so a secret copied to another account's row
does not open.  Layout of the column: 12-byte nonce, then ciphertext and
16-byte tag.  Secrets are never logged.

A code is accepted for the current 30-second step or one step either side
(clock drift), and only if its step is later than the last step accepted
for that account: a code seen once cannot be replayed, not even within
its own window.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault import clock
from vault.control import ControlDB

HKDF_INFO = b"strongroom totp secret v1"
NONCE_BYTES = 12
# RFC 6238 section 5.2: allow one step of drift each way.
DRIFT_STEPS = 1


class SecondFactor:
    """Enrol, verify and reset accounts' TOTP secrets."""

    def __init__(self, control: ControlDB, portal_secret: bytes, issuer: str) -> None:
        self.control = control
        self.issuer = issuer
        self._aead = AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                 info=HKDF_INFO).derive(portal_secret))

    def is_enabled(self, user_id: int) -> bool:
        """Tell whether the account signs in with a code."""
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT totp_enabled FROM account_state WHERE user_id = ?",
                (user_id,)).fetchone()
        return bool(row and row["totp_enabled"])

    def begin(self, user_id: int) -> str:
        """Return the account's unconfirmed secret, making one if needed."""
        with self.control.connect(exclusive=True) as connection:
            row = connection.execute(
                "SELECT totp_secret, totp_enabled FROM account_state WHERE user_id = ?",
                (user_id,)).fetchone()
            if row and row["totp_secret"] and not row["totp_enabled"]:
                return self._open(user_id, row["totp_secret"])
            secret = pyotp.random_base32()
            connection.execute(
                "INSERT INTO account_state (user_id, totp_secret, totp_enabled) VALUES (?, ?, 0)"
                " ON CONFLICT (user_id) DO UPDATE SET totp_secret = excluded.totp_secret,"
                " totp_enabled = 0", (user_id, self._seal(user_id, secret)))
        return secret

    def uri(self, secret: str, address: str) -> str:
        """Return the otpauth:// URI an authenticator app reads."""
        return pyotp.TOTP(secret).provisioning_uri(name=address, issuer_name=self.issuer)

    def confirm(self, user_id: int, code: str) -> bool:
        """Turn the factor on if ``code`` matches the unconfirmed secret."""
        if not self._accept(user_id, code, enabled=False):
            return False
        with self.control.connect() as connection:
            connection.execute(
                "UPDATE account_state SET totp_enabled = 1 WHERE user_id = ?", (user_id,))
        return True

    def verify(self, user_id: int, code: str) -> bool:
        """Tell whether ``code`` is a fresh, right code for an enabled factor."""
        return self._accept(user_id, code, enabled=True)

    def _accept(self, user_id: int, code: str, *, enabled: bool) -> bool:
        code = "".join(code.split())
        if len(code) != 6 or not code.isascii() or not code.isdigit():
            return False
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT totp_secret, totp_last_step FROM account_state"
                " WHERE user_id = ? AND totp_enabled = ?", (user_id, int(enabled))).fetchone()
        if row is None or row["totp_secret"] is None:
            return False
        step = matching_step(self._open(user_id, row["totp_secret"]), code, clock.now())
        if step is None or step <= row["totp_last_step"]:
            return False
        # Compare-and-set, so two requests racing with one code cannot
        # both be accepted.
        with self.control.connect() as connection:
            cursor = connection.execute(
                "UPDATE account_state SET totp_last_step = ?"
                " WHERE user_id = ? AND totp_last_step < ?", (step, user_id, step))
        return cursor.rowcount == 1

    def _seal(self, user_id: int, secret: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode("ascii"), _bound(user_id))

    def _open(self, user_id: int, sealed: bytes) -> str:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:],
                                      _bound(user_id)).decode("ascii")
        except InvalidTag:
            raise SecondFactorError(
                "this account's TOTP secret does not open (was the portal secret key "
                "replaced?); reset it with 'strongroom user totp-reset'") from None


class SecondFactorError(Exception):
    """A stored TOTP secret cannot be opened."""


def matching_step(secret: str, code: str, at: dt.datetime) -> int | None:
    """Return the time step whose code is ``code``, within the drift allowed."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(at)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def reset_second_factor(control: ControlDB, user_id: int) -> bool:
    """Remove an account's TOTP secret; False if it had none."""
    with control.connect() as connection:
        cursor = connection.execute(
            "UPDATE account_state SET totp_secret = NULL, totp_enabled = 0"
            " WHERE user_id = ? AND totp_secret IS NOT NULL", (user_id,))
    return bool(cursor.rowcount)


def qr_svg(uri: str) -> str:
    """Return an inline SVG QR code of ``uri`` (no script, no remote load)."""
    import segno

    return str(segno.make(uri, error="m").svg_inline(
        scale=4, border=2, title="TOTP set-up code", omitsize=False))


def _bound(user_id: int) -> bytes:
    return f"totp-secret:{user_id}".encode("ascii")
