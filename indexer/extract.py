"""Extract searchable text and metadata from a message's raw bytes.

Malformed mail is data, not an error: every step that can fail on hostile
or broken input falls back to a more lenient reading and records a defect,
and extraction as a whole never raises for bad mail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
import datetime as dt
import codecs
import html
import logging
import mimetypes
import re
from email import policy
from email.header import Header, decode_header
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parsedate_to_datetime

import nh3

from vault.ownership import parse_addresses

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2_000_000
MAX_PARTS = 500


@dataclasses.dataclass
class Extract:
    """What the catalogue needs to know about one message."""

    subject: str = ""
    sender: str = ""
    to: str = ""
    cc: str = ""
    message_id: str = ""
    date: dt.datetime | None = None
    body: str = ""
    attachments: list[str] = dataclasses.field(default_factory=list)
    defects: list[str] = dataclasses.field(default_factory=list)


def extract(raw: bytes) -> Extract:
    """Read ``raw`` as far as it can be read; never raises for bad mail."""
    result = Extract()
    try:
        return _extract(raw, result)
    except Exception as err:
        # Whatever was read before the failure is kept; the rest of the
        # message is indexed as raw text so its words are still found.
        log.warning("extraction stopped early: %r", err,
                    extra={"event": "extract.failed"})
        result.defects.append(f"extraction stopped early: {type(err).__name__}")
        if not result.body:
            result.body = raw.decode("utf-8", "replace")[:MAX_TEXT_CHARS]
        return result


def _extract(raw: bytes, result: Extract) -> Extract:
    try:
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
    except RecursionError:
        # The feed parser descends once per nested multipart; mail nested
        # deeper than the stack is read for its headers and raw text.
        result.defects.append("MIME nesting too deep; body indexed as raw text")
        _read_headers(BytesHeaderParser(policy=policy.compat32).parsebytes(raw), result)
        result.body = raw.decode("utf-8", "replace")[:MAX_TEXT_CHARS]
        return result
    _read_headers(message, result)
    result.defects.extend(type(defect).__name__ for defect in message.defects)

    texts: list[str] = []
    for index, part in enumerate(leaf_parts(message)):
        if index >= MAX_PARTS:
            result.defects.append(f"more than {MAX_PARTS} parts; rest not indexed")
            break
        try:
            _read_part(part, index, texts, result)
        except Exception as err:
            result.defects.append(f"part {index} unreadable: {type(err).__name__}")
    result.body = "\n".join(texts)[:MAX_TEXT_CHARS]
    return result


def _read_headers(message: Message, result: Extract) -> None:
    result.subject = header_text(message, "subject")
    result.sender = address_text(message, "from")
    result.to = address_text(message, "to")
    result.cc = address_text(message, "cc")
    result.message_id = header_text(message, "message-id").strip()
    result.date = header_date(message, result.defects)


def leaf_parts(message: Message) -> Iterator[Message]:
    """Yield the non-multipart parts depth first, without recursion.

    ``Message.walk`` recurses once per level, and hostile mail nests
    deeper than Python's stack allows.
    """
    pending = [message]
    while pending:
        part = pending.pop()
        if part.is_multipart():
            children = part.get_payload()
            pending.extend(reversed([c for c in children if isinstance(c, Message)]))
        else:
            yield part


def _read_part(part: Message, index: int, texts: list[str], result: Extract) -> None:
    filename = part_filename(part, result.defects)
    disposition = header_text(part, "content-disposition").split(";")[0].strip().lower()
    content_type = part.get_content_type()
    if filename or disposition == "attachment":
        result.attachments.append(filename or fallback_filename(part, index))
        return
    if content_type == "text/plain":
        texts.append(part_text(part, result.defects))
    elif content_type == "text/html":
        texts.append(html_to_text(part_text(part, result.defects)))


def header_text(message: Message, name: str) -> str:
    """Return a header's value unfolded, with RFC 2047 words and 8-bit decoded."""
    value = message.get(name)
    if value is None:
        return ""
    try:
        if isinstance(value, Header):
            # compat32 wraps raw 8-bit header bytes as an unknown-8bit
            # Header; read those bytes first, then any encoded words in them
            # (real mail puts raw Latin-1 inside encoded words, too).
            value = "".join(
                decode_text(chunk, None) if isinstance(chunk, bytes) else chunk
                for chunk, _ in decode_header(value)
            )
        return decode_words(_FOLD.sub("", str(value)))
    except Exception:
        return str(value)


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def decode_words(text: str) -> str:
    """Decode the RFC 2047 encoded words in ``text``.

    ``decode_header`` already drops the white space between adjacent
    encoded words (RFC 2047 section 6.2) and keeps it elsewhere, so the
    chunks are joined as they come; ``make_header`` would add spaces.
    """
    pieces = []
    for chunk, charset in decode_header(text):
        if isinstance(chunk, str):
            pieces.append(chunk)
        elif charset is None:
            pieces.append(chunk.decode("raw-unicode-escape"))
        else:
            pieces.append(decode_text(chunk, charset))
    return "".join(pieces)


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


def decode_text(raw: bytes, charset: str | None) -> str:
    """Decode bytes by their declared charset, tolerating lies and gaps.

    An undeclared or unknown charset means UTF-8, else Windows-1252: raw
    8-bit headers are UTF-8 in modern mail (RFC 6532) and mostly Latin-1
    in older mail.  A declared charset that fails on a few bytes still
    decodes the rest by that charset, with the bad bytes replaced.
    """
    codec = None
    if charset and charset.lower() != "unknown-8bit":
        try:
            codec = _SUPERSETS.get(_codec_name(charset), _codec_name(charset))
        except LookupError:
            codec = None
    for candidate in filter(None, (codec, "utf-8")):
        try:
            return raw.decode(candidate)
        except (UnicodeError, LookupError):
            continue
    try:
        return raw.decode(codec or "windows-1252", "replace")
    except (UnicodeError, LookupError):
        # Codecs such as punycode or idna are not text charsets at all
        # and can fail even with errors="replace".
        return raw.decode("windows-1252", "replace")


def address_text(message: Message, name: str) -> str:
    """Return a header's addresses as "Name <address>" text, decoded."""
    decoded = header_text(message, name)
    pairs = parse_addresses([decoded])
    return ", ".join(
        f"{display} <{address}>" if display else address
        for display, address in pairs if address or display
    ) or decoded


def header_date(message: Message, defects: list[str]) -> dt.datetime | None:
    """Return the Date header as an aware UTC datetime, or None.

    A date without a zone is taken as UTC; engines must only ever see UTC,
    since some drop the offset without converting (case B22).
    """
    value = message.get("date")
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(str(value))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed.astimezone(dt.timezone.utc)
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("unparsable Date header")
        return None


def fallback_filename(part: Message, index: int) -> str:
    """Name an attachment that carries no usable name of its own.

    ``index`` counts leaf parts from 0; the name counts them from 1.
    """
    extension = mimetypes.guess_extension(part.get_content_type()) or ".bin"
    return f"part-{index + 1}{extension}"


def part_filename(part: Message, defects: list[str]) -> str:
    """Return a part's file name (RFC 2231 and RFC 2047 decoded), or ""."""
    for header in ("content-disposition", "content-type"):
        for key, value in part.get_params(header=header, failobj=[])[1:]:
            if isinstance(value, tuple):
                value = value[2]
            if not value and key in ("name", "filename"):
                defects.append(f"{header} parameter {key} has no value")
    try:
        name = part.get_filename() or part.get_param("name") or ""
        if "\ufffd" in str(name):
            name = _filename_from_8bit_headers(part) or name
    except Exception:
        defects.append("unreadable file name parameter")
        return ""
    if isinstance(name, tuple):
        name = _rfc2231_value(name)
    name = str(name)
    if "=?" in name:
        try:
            name = decode_words(name)
        except Exception:
            pass
    return name.strip()


def _filename_from_8bit_headers(part: Message) -> str:
    # Raw 8-bit parameters (common from webmail) reach get_filename already
    # replaced by U+FFFD; read them from the decoded header text instead.
    decoded = Message()
    for header in ("content-disposition", "content-type"):
        if part.get(header) is not None:
            decoded[header] = header_text(part, header)
    return str(decoded.get_filename() or decoded.get_param("name") or "")


def _rfc2231_value(value: tuple) -> str:
    charset, _, text = value
    try:
        return text.encode("latin-1", "surrogateescape").decode(charset or "us-ascii")
    except (LookupError, UnicodeError):
        return text


def part_text(part: Message, defects: list[str]) -> str:
    """Decode a text part's body by its charset, tolerating lies and gaps."""
    try:
        payload = part.get_payload(decode=True) or b""
    except Exception:
        defects.append("undecodable transfer encoding")
        payload = str(part.get_payload()).encode("utf-8", "replace")
    if not isinstance(payload, bytes):
        payload = str(payload).encode("utf-8", "replace")
    return decode_text(payload, part.get_content_charset())


def html_to_text(markup: str) -> str:
    """Return the readable text of an HTML body (scripts and styles dropped)."""
    stripped = nh3.clean(markup, tags=set(), attributes={}, strip_comments=True)
    return html.unescape(stripped)
