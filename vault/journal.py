"""Exchange envelope journal reports: unwrap the original, keep the envelope.

An Exchange (or Exchange Online) journal report is a message carrying an
``X-MS-Journal-Report`` header whose first part lists the original's
envelope, one field per line ([MS-XJRNL])::

    Sender: alice@example.com
    Subject: ...
    Message-Id: <...>
    To: bob@example.com
    To: carol@example.com, Expanded: sales@example.com
    Bcc: erin@example.com
    Recipient: frank@example.com, Forwarded: fred@example.com

and whose ``message/rfc822`` part is the original message.  The original's
bytes are cut out of the report exactly as they were sent, never
re-serialised; the report's recipients - Bcc and distribution-list members
that appear nowhere in the original's headers - become the delivery's
recipients.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from vault.ownership import normalise

REPORT_HEADER = "x-ms-journal-report"
_RECIPIENT_FIELDS = ("to", "cc", "bcc", "recipient")
_ANNOTATIONS = ("expanded", "forwarded")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclasses.dataclass(frozen=True)
class JournalReport:
    """What an envelope journal report says about the message it carries."""

    original: bytes
    sender: str
    recipients: tuple[str, ...]
    expanded: tuple[str, ...]
    forwarded: tuple[str, ...]


def is_journal_report(raw: bytes) -> bool:
    """Tell whether ``raw`` carries the Exchange journal report header."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(_head(raw))
    return headers.get(REPORT_HEADER) is not None


def unwrap(raw: bytes) -> JournalReport | None:
    """Read a journal report; None if ``raw`` is not one or has no original."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(_head(raw))
    if headers.get(REPORT_HEADER) is None:
        return None
    boundary = headers.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    envelope_text, original = None, None
    for part_headers, part_body in raw_parts(raw, boundary.encode("latin-1", "replace")):
        content_type = part_headers.get_content_type()
        if content_type == "text/plain" and envelope_text is None:
            envelope_text = part_body.decode("utf-8", "replace")
        elif content_type == "message/rfc822" and original is None:
            original = _decoded(part_headers.get("content-transfer-encoding", ""), part_body)
    if envelope_text is None or not original:
        return None
    return _read_envelope(envelope_text, original)


def raw_parts(raw: bytes, boundary: bytes) -> list[tuple[Message, bytes]]:
    """Split a multipart message into (headers, raw body) without re-encoding.

    The line break before each boundary delimiter belongs to the delimiter
    (RFC 2046 section 5.1.1), so each body is exactly the bytes between.
    """
    start = _body_start(raw)
    delimiter = re.compile(
        rb"(?:\r?\n|^)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)", re.MULTILINE)
    parts = []
    previous_end = None
    for match in delimiter.finditer(raw, start):
        if previous_end is not None:
            parts.append(raw[previous_end:match.start()])
        if match.group(1):
            break
        previous_end = match.end()
    result: list[tuple[Message, bytes]] = []
    for part in parts:
        body_at = _body_start(part)
        headers = BytesHeaderParser(policy=compat32).parsebytes(part[:body_at])
        result.append((headers, part[body_at:]))
    return result


def _read_envelope(text: str, original: bytes) -> JournalReport:
    sender = ""
    recipients: list[str] = []
    expanded: list[str] = []
    forwarded: list[str] = []
    for line in text.splitlines():
        field, _, value = line.partition(":")
        field = field.strip().lower()
        if field == "sender":
            sender = normalise(value)
        elif field in _RECIPIENT_FIELDS:
            address, *annotations = [piece.strip() for piece in value.split(",")]
            if "@" in address:
                recipients.append(normalise(address))
            for annotation in annotations:
                kind, _, member = annotation.partition(":")
                if kind.strip().lower() == "expanded" and "@" in member:
                    expanded.append(normalise(member))
                elif kind.strip().lower() == "forwarded" and "@" in member:
                    forwarded.append(normalise(member))
    return JournalReport(original, sender, _unique(recipients), _unique(expanded),
                         _unique(forwarded))


def _decoded(encoding: str, body: bytes) -> bytes:
    # RFC 2046 forbids encoding message/rfc822, but some gateways base64 it.
    if encoding.strip().lower() == "base64":
        try:
            return base64.b64decode(body)
        except (binascii.Error, ValueError):
            return body
    return body


def _head(raw: bytes) -> bytes:
    return raw[:_body_start(raw)]


def _body_start(raw: bytes) -> int:
    match = _HEADER_END.search(raw)
    return match.end() if match else len(raw)


def _unique(addresses: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(addresses))
