"""Receipts: one record per delivery, keyed so that key order is time order.

A receipt key is ``receipts/YYYY/MM/DD/HHMMSS.ffffff-<random>`` in UTC; the
random suffix keeps two deliveries in the same microsecond apart.  The body
is JSON, sealed like every other object.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
from typing import Any

RECEIPT_FORMAT = 1
RECEIPTS = "receipts"


@dataclasses.dataclass(frozen=True)
class Receipt:
    """One delivery of one message to the archive."""

    key: str
    received_at: dt.datetime
    message_key: str
    sha256: str
    size: int
    peer: str
    helo: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    owners: tuple[str, ...]
    journaled: bool
    retain_until: dt.datetime
    report_key: str = ""
    report_recipients: tuple[str, ...] = ()
    expanded: tuple[str, ...] = ()
    forwarded: tuple[str, ...] = ()
    # How the copy came, for an auditor: the TLS version of the session
    # ("" for none) and the journal sender it authenticated as ("" when
    # trusted by its network).  Receipts made before these existed lack
    # them and read as "".
    tls_version: str = ""
    journal_sender: str = ""

    def to_json(self) -> bytes:
        """Serialise the receipt for sealing."""
        fields = dataclasses.asdict(self)
        fields["received_at"] = self.received_at.isoformat()
        fields["retain_until"] = self.retain_until.isoformat()
        fields["format"] = RECEIPT_FORMAT
        return json.dumps(fields, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Receipt:
        """Read a receipt written by ``to_json``."""
        fields: dict[str, Any] = json.loads(data)
        # A field added by a later version is kept in the sealed bytes but
        # not understood here; dropping it keeps older readers working.
        fields = {name: value for name, value in fields.items() if name in _FIELD_NAMES}
        fields["received_at"] = dt.datetime.fromisoformat(fields["received_at"])
        fields["retain_until"] = dt.datetime.fromisoformat(fields["retain_until"])
        for name in ("rcpt_tos", "owners", "report_recipients", "expanded", "forwarded"):
            fields[name] = tuple(fields.get(name, ()))
        return cls(**fields)


# Read once: the follower reads a receipt per message.
_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Receipt))


def receipt_key(received_at: dt.datetime) -> str:
    """Return a new, time-ordered key for a receipt made at ``received_at``."""
    return f"{time_prefix(received_at)}-{secrets.token_hex(6)}"


def time_prefix(moment: dt.datetime) -> str:
    """Return the key prefix that sorts before every receipt made at or after ``moment``."""
    utc = moment.astimezone(dt.timezone.utc)
    return f"{RECEIPTS}/{utc:%Y/%m/%d/%H%M%S.%f}"


def receipt_time(key: str) -> dt.datetime:
    """Return the time encoded in a receipt key; raise ValueError if malformed."""
    stamp = key.removeprefix(RECEIPTS + "/").rpartition("-")[0]
    return dt.datetime.strptime(stamp, "%Y/%m/%d/%H%M%S.%f").replace(tzinfo=dt.timezone.utc)
