"""Extract searchable text and metadata from a message's raw bytes.

Malformed mail is data, not an error: every step that can fail on hostile
or broken input falls back to a more lenient reading and records a defect,
and extraction as a whole never raises for bad mail.

What goes where: ``body`` holds the message's own text and HTML parts and
those of the messages nested in it (``message/rfc822``), each nested
message introduced by its From, To, Cc, Subject and Date; ``attachments``
holds the decoded names of attached files, including the files inside zip
archives and TNEF ``winmail.dat`` and nested messages' attachments;
``attachment_text`` holds the text read from those files, within the
bounds of :mod:`indexer.extraction`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import mimetypes
import re
from email import policy
from email.header import Header, decode_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime

from indexer.extraction.attachments import AttachmentReader
from indexer.extraction.charsets import decode_body, decode_text
from indexer.extraction.documents import calendar_text, html_to_text
from indexer.extraction.formats import BY_CONTENT_TYPE, TEXT_KINDS
from indexer.extraction.parsing import parse_message
from indexer.extraction.reading import DEFAULT_LIMITS, PARTIAL, Limits, TextBuffer
from indexer.extraction.sandbox import InProcessDeadline, Sandbox, shared_sandbox
from indexer.extraction.transfer import decode_base64, part_payload
from vault.ownership import parse_addresses

__all__ = ["Extract", "extract", "header_text", "decode_words", "decode_text",
           "decode_base64", "html_to_text", "PARTIAL"]

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2_000_000
MAX_PARTS = 500
# Headers of a nested message that are indexed with its body, the lines
# a reader sees at the top of a forwarded message.
NESTED_HEADERS = ("from", "to", "cc", "subject", "date")
ADDRESS_HEADERS = {"from", "to", "cc"}
NESTED_MESSAGE_TYPES = {"message/rfc822", "message/global"}


@dataclasses.dataclass
class Extract:
    """What the catalogue needs to know about one message."""

    subject: str = ""
    sender: str = ""
    # The first address of From, lower case (for narrowing by sender).
    sender_address: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    message_id: str = ""
    date: dt.datetime | None = None
    body: str = ""
    attachments: list[str] = dataclasses.field(default_factory=list)
    defects: list[str] = dataclasses.field(default_factory=list)
    attachment_text: str = ""
    # Message-IDs this message replies to (In-Reply-To, References), for
    # grouping conversations; without angle brackets.
    references: list[str] = dataclasses.field(default_factory=list)


def extract(raw: bytes, limits: Limits = DEFAULT_LIMITS,
            sandbox: Sandbox | InProcessDeadline | None = None,
            *, read_attachments: bool = True) -> Extract:
    """Read ``raw`` as far as it can be read; never raises for bad mail.

    ``read_attachments=False`` skips the text of attachments (their names
    are still listed), for callers that only display a message.
    """
    result = Extract()
    try:
        attachments = None
        if read_attachments:
            attachments = AttachmentReader(limits, sandbox or shared_sandbox())
        return _extract(raw, result, limits, attachments)
    except Exception as err:
        # Whatever was read before the failure is kept; the rest of the
        # message is indexed as raw text so its words are still found.
        log.warning("extraction stopped early: %r", err,
                    extra={"event": "extract.failed"})
        result.defects.append(
            f"{PARTIAL} extraction stopped early: {type(err).__name__}")
        if not result.body:
            result.body = raw.decode("utf-8", "replace")[:MAX_TEXT_CHARS]
        return result


def _extract(raw: bytes, result: Extract, limits: Limits,
             attachments: AttachmentReader | None) -> Extract:
    try:
        message = parse_message(raw)
    except RecursionError:
        # The feed parser descends once per nested multipart; mail nested
        # deeper than the stack is read for its headers and raw text.
        result.defects.append(
            f"{PARTIAL} MIME nesting too deep; body indexed as raw text")
        _read_headers(BytesHeaderParser(policy=policy.compat32).parsebytes(raw), result)
        result.body = raw.decode("utf-8", "replace")[:MAX_TEXT_CHARS]
        return result
    _read_headers(message, result)
    result.defects.extend(type(defect).__name__ for defect in message.defects)
    reader = _MessageReader(result, limits, attachments)
    reader.read(message)
    result.body = reader.body.text()
    if reader.body.is_full:
        result.defects.append(f"{PARTIAL} body text cut at {MAX_TEXT_CHARS} characters")
    if attachments is not None:
        result.attachment_text = attachments.text.text()
    return result


def _read_headers(message: Message, result: Extract) -> None:
    result.subject = header_text(message, "subject")
    result.sender, result.sender_address = _sender(message)
    result.to = address_text(message, "to")
    result.cc = address_text(message, "cc")
    result.bcc = address_text(message, "bcc")
    result.message_id = header_text(message, "message-id").strip()
    result.date = header_date(message, result.defects)
    result.references = referenced_ids(message)


class _MessageReader:
    """Walk one message's parts and sort their text into the extract."""

    def __init__(self, result: Extract, limits: Limits,
                 attachments: AttachmentReader | None) -> None:
        self.result = result
        self.limits = limits
        self.attachments = attachments
        self.body = TextBuffer(MAX_TEXT_CHARS)
        self.leaves = 0

    def read(self, message: Message) -> None:
        """Read every part depth first, without recursion.

        ``Message.walk`` recurses once per level, and hostile mail nests
        deeper than Python's stack allows.  ``depth`` counts nested
        messages, not multiparts.
        """
        pending = [(message, 0)]
        while pending:
            part, depth = pending.pop()
            if part.get_content_type() in NESTED_MESSAGE_TYPES:
                pending.extend(self._open_nested(part, depth))
            elif part.is_multipart():
                children = [c for c in part.get_payload() if isinstance(c, Message)]
                pending.extend((child, depth) for child in reversed(children))
            elif self.leaves >= MAX_PARTS:
                self.result.defects.append(
                    f"{PARTIAL} more than {MAX_PARTS} parts; rest not indexed")
                return
            else:
                self._read_leaf(part)

    def _open_nested(self, part: Message, depth: int) -> list[tuple[Message, int]]:
        filename = part_filename(part, self.result.defects)
        if filename:
            self.result.attachments.append(filename)
        if depth >= self.limits.message_depth:
            self.result.defects.append(f"{PARTIAL} messages nested more than "
                                       f"{self.limits.message_depth} deep not read")
            return []
        try:
            inner = nested_message(part)
        except Exception as err:
            self.result.defects.append(
                f"{PARTIAL} nested message unreadable ({type(err).__name__})")
            return []
        if inner is None:
            return []
        self.body.add(nested_header_text(inner))
        return [(inner, depth + 1)]

    def _read_leaf(self, part: Message) -> None:
        self.leaves += 1
        try:
            self._sort_leaf(part)
        except Exception as err:
            self.result.defects.append(
                f"{PARTIAL} part {self.leaves}: unreadable ({type(err).__name__})")

    def _sort_leaf(self, part: Message) -> None:
        filename = part_filename(part, self.result.defects)
        disposition = header_text(part, "content-disposition").split(";")[0]
        disposition = disposition.strip().lower()
        content_type = part.get_content_type()
        if not filename and disposition != "attachment":
            if content_type in ("text/plain", "text/html", "text/calendar"):
                self.body.add(_body_text(part, content_type, self.result.defects))
                return
            if not _is_document_type(content_type):
                return
        name = filename or fallback_filename(part, self.leaves - 1)
        self.result.attachments.append(name)
        self._read_attachment(part, name, content_type)

    def _read_attachment(self, part: Message, name: str, content_type: str) -> None:
        if self.attachments is None:
            return
        data = part_payload(part, self.result.defects, self.limits.part_bytes, name)
        if data is None:
            return
        charset = part.get_content_charset()
        reading = self.attachments.read(name, content_type, data, charset)
        self.result.attachments.extend(reading.names)
        self.result.defects.extend(reading.defects)


def _is_document_type(content_type: str) -> bool:
    # An unnamed inline part is an attachment only when its declared type
    # is one we can read (an inline PDF); inline images stay unnamed.
    return BY_CONTENT_TYPE.get(content_type, "text") not in TEXT_KINDS


def _body_text(part: Message, content_type: str, defects: list[str]) -> str:
    text = part_text(part, defects)
    if content_type == "text/html":
        return html_to_text(text)
    if content_type == "text/calendar":
        return calendar_text(text)
    return text


def nested_message(part: Message) -> Message | None:
    """Return the message inside a ``message/rfc822`` part, or None.

    RFC 2046 section 5.2.1 allows only 7bit, 8bit or binary here, but
    real mail base64-encodes attached messages; the parser then sees one
    headerless blob, which is decoded and parsed again.
    """
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        return None
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64" and not inner.keys():
        blob = str(inner.get_payload()).encode("ascii", "surrogateescape")
        return parse_message(decode_base64(blob))
    return inner


def nested_header_text(message: Message) -> str:
    """Return a nested message's headers as a reader sees them, one a line."""
    lines = []
    for name in NESTED_HEADERS:
        if message.get(name) is not None:
            read = address_text if name in ADDRESS_HEADERS else header_text
            lines.append(f"{name.title()}: {read(message, name)}")
    return "\n".join(lines)


def header_text(message: Message, name: str) -> str:
    """Return a header's value unfolded, with RFC 2047 words and 8-bit decoded."""
    value = message.get(name)
    if value is None:
        return ""
    return value_text(value)


def value_text(value: str | Header) -> str:
    """Return one header value (as ``Message.items`` gives it) as ``header_text`` does."""
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


def _sender(message: Message) -> tuple[str, str]:
    decoded = header_text(message, "from")
    pairs = parse_addresses([decoded]) if decoded else []
    first = next((address.lower() for _, address in pairs if address), "")
    return _address_list(pairs) or decoded, first


def _address_list(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(
        f"{display} <{address}>" if display else address
        for display, address in pairs if address or display
    )


def address_text(message: Message, name: str) -> str:
    """Return a header's addresses as "Name <address>" text, decoded."""
    decoded = header_text(message, name)
    if not decoded:
        return ""
    return _address_list(parse_addresses([decoded])) or decoded


_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
MAX_REFERENCES = 100


def referenced_ids(message: Message) -> list[str]:
    """Return the Message-IDs in In-Reply-To and References, oldest first.

    RFC 5322 section 3.6.4: References lists the thread from its first
    message; In-Reply-To names the parent (sometimes only there).  Text
    outside angle brackets (old clients put phrases there) is ignored.
    """
    found: dict[str, None] = {}
    for name in ("references", "in-reply-to"):
        for value in message.get_all(name) or []:
            for match in _MESSAGE_ID.finditer(_FOLD.sub("", str(value))):
                found.setdefault(match.group(1), None)
    return list(found)[-MAX_REFERENCES:]


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
    if not any("name" in str(part.get(header, "")).lower()
               for header in ("content-disposition", "content-type")):
        # Parsing parameters is a third of a plain message's extraction;
        # without the word "name" in either header there is none to find.
        return ""
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


def _rfc2231_value(value: tuple[str | None, str | None, str]) -> str:
    charset, _, text = value
    try:
        return text.encode("latin-1", "surrogateescape").decode(charset or "us-ascii")
    except (LookupError, UnicodeError):
        return str(text)


def part_text(part: Message, defects: list[str]) -> str:
    """Decode a text part by its charset, detecting it when it is wrong or missing."""
    payload = part_payload(part, defects) or b""
    return decode_body(payload, part.get_content_charset())
