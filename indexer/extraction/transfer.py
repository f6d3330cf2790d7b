"""Undo a part's Content-Transfer-Encoding, leniently and within a size limit."""

from __future__ import annotations

import binascii
import re
from email.message import Message

from indexer.extraction.reading import PARTIAL


def part_payload(part: Message, defects: list[str], limit: int | None = None,
                 name: str = "") -> bytes | None:
    """Return a part's decoded content, or None when it is over ``limit``.

    Base64 is decoded chunk by chunk (:func:`decode_base64`, case B13).
    """
    encoded = part.get_payload()
    if not isinstance(encoded, str):
        encoded = str(encoded)
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    size = len(encoded) * 3 // 4 if encoding == "base64" else len(encoded)
    if limit is not None and size > limit:
        defects.append(f"{PARTIAL} {name}: about {size} bytes, over the "
                       f"{limit}-byte limit; not read")
        return None
    if encoding == "base64":
        return decode_base64(encoded.encode("ascii", "surrogateescape"))
    try:
        payload = part.get_payload(decode=True) or b""
    except Exception:
        defects.append("undecodable transfer encoding")
        payload = encoded.encode("utf-8", "replace")
    if not isinstance(payload, bytes):
        payload = str(payload).encode("utf-8", "replace")
    return payload


_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/=]+")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]+=*")


def decode_base64(encoded: bytes) -> bytes:
    """Decode base64 leniently, including separately padded chunks.

    Some senders concatenate chunks that were encoded one by one, each
    with its own ``=`` padding (case B13); a decoder that stops at the
    first padding loses the rest.  Each padded run is decoded on its own,
    characters outside the alphabet are skipped (RFC 2045 section 6.8),
    and a run's dangling last character, which encodes no whole byte, is
    dropped.
    """
    pieces = []
    for run in _BASE64_RUN.findall(_BASE64_NOISE.sub(b"", encoded)):
        data = run.rstrip(b"=")
        if len(data) % 4 == 1:
            data = data[:-1]
        pieces.append(binascii.a2b_base64(data + b"=" * (-len(data) % 4)))
    return b"".join(pieces)
