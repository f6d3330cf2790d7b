"""Decode text whose charset is declared, wrongly declared or missing.

Headers and bodies fail differently.  A raw 8-bit header is a few words,
too short to detect a charset from, so :func:`decode_text` reads it as
UTF-8 or else Windows-1252.  A body is long enough to measure, so
:func:`decode_body` asks charset-normalizer when neither the declared
charset nor UTF-8 reads it.
"""

from __future__ import annotations

import codecs

from charset_normalizer import from_bytes

# charset-normalizer reads this much of a body; its verdict then decodes
# the whole body.  Its cost grows with the sample, and 64 KiB is far more
# than it needs to tell single-byte Cyrillic from Latin.
DETECTION_SAMPLE_BYTES = 64 * 1024
# A declared charset still wins when at most this share of the non-ASCII
# characters it decodes are replacement characters: one corrupt sequence
# must not send a long GB2312 body to a guess.
TOLERATED_BAD_SHARE = 0.05
# ISO-2022-JP is 7-bit, so UTF-8 accepts it as gibberish; its escape
# sequences (RFC 1468) give it away.
ISO_2022_JP_ESCAPES = (b"\x1b$B", b"\x1b$@", b"\x1b(J")


def _codec_name(label: str) -> str:
    return codecs.lookup(label).name


# Mail labels text with a charset that its sender's software treated as a
# superset; decoding by the superset reads what the sender meant (the same
# mapping browsers apply, WHATWG Encoding Standard).
_SUPERSETS = {
    _codec_name(label): superset
    for label, superset in {
        "gb2312": "gb18030", "gbk": "gb18030", "iso-8859-1": "windows-1252",
        "euc-kr": "cp949", "ks_c_5601-1987": "cp949", "shift_jis": "cp932",
        "tis-620": "cp874", "iso-8859-9": "cp1254", "iso-8859-11": "cp874",
    }.items()
}


def codec_for(charset: str | None) -> str | None:
    """Return the Python codec for a declared charset, or None if unusable."""
    if not charset or charset.lower() == "unknown-8bit":
        return None
    try:
        name = _codec_name(charset)
    except LookupError:
        return None
    return _SUPERSETS.get(name, name)


def decode_text(raw: bytes, charset: str | None) -> str:
    """Decode bytes by their declared charset, tolerating lies and gaps.

    An undeclared or unknown charset means UTF-8, else Windows-1252: raw
    8-bit headers are UTF-8 in modern mail (RFC 6532) and mostly Latin-1
    in older mail.  A declared charset that fails on a few bytes still
    decodes the rest by that charset, with the bad bytes replaced.
    """
    codec = codec_for(charset)
    for candidate in filter(None, (codec, "utf-8")):
        try:
            return raw.decode(candidate)
        except (UnicodeError, LookupError):
            continue
    return _decode_leniently(raw, codec or "windows-1252")


def decode_body(raw: bytes, charset: str | None) -> str:
    """Decode a body or text attachment, detecting its charset if need be.

    The declared charset is tried first, then UTF-8; a declared charset
    that fails on a few bytes keeps them replaced.  Anything else (no
    charset, an unknown one, or one the bytes plainly are not in) is
    decoded by the charset that charset-normalizer finds.
    """
    codec = codec_for(charset)
    # Every ISO-2022-JP escape begins with ESC: one search rules them all out.
    if (codec in (None, "ascii") and b"\x1b" in raw
            and any(mark in raw for mark in ISO_2022_JP_ESCAPES)):
        codec = "iso2022_jp"
    for candidate in filter(None, (codec, "utf-8")):
        try:
            return raw.decode(candidate)
        except (UnicodeError, LookupError):
            continue
    if codec is not None:
        text = _decode_leniently(raw, codec)
        if _is_mostly_readable(text):
            return text
    return _decode_leniently(raw, detect_charset(raw) or "windows-1252")


def detect_charset(raw: bytes) -> str | None:
    """Return the codec charset-normalizer finds for ``raw``, or None."""
    try:
        best = from_bytes(raw[:DETECTION_SAMPLE_BYTES]).best()
    except Exception:
        return None
    return None if best is None else str(best.encoding)


def _is_mostly_readable(text: str) -> bool:
    bad = text.count("\ufffd")
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return bad <= TOLERATED_BAD_SHARE * non_ascii


def _decode_leniently(raw: bytes, codec: str) -> str:
    try:
        return raw.decode(codec, "replace")
    except (UnicodeError, LookupError):
        # Codecs such as punycode or idna are not text charsets at all
        # and can fail even with errors="replace".
        return raw.decode("windows-1252", "replace")
