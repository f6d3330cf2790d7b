"""A large message's parts, found by scanning its bytes rather than parsing it.

``MessageParts`` builds the whole MIME tree, which costs several times the
message in memory, so the reading pages parse messages only up to
``reading.FULL_VIEW_BYTES``.  For larger ones this module finds the same
leaves by looking for the boundary delimiter lines (RFC 2046 section
5.1.1) in the raw bytes: each leaf is its parsed header block and the
offsets of its body.  A file is then decoded from those offsets a chunk at
a time, so listing and downloading attachments takes memory for the
message's bytes plus a chunk, whatever their size.

Leaves are numbered as ``MessageParts`` numbers them (depth first, from 0,
a nested message one leaf, at most ``MAX_PARTS``), and sorted the same
way into text, HTML and files, so a page and its download agree.  As the
parser does, the line break before a delimiter belongs to the delimiter,
a multipart without a boundary is one leaf, and the parts of a
``multipart/digest`` default to ``message/rfc822``.
"""

from __future__ import annotations

import binascii
import dataclasses
import io
import re
from collections.abc import Iterator
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32

from indexer.extract import fallback_filename, part_filename
from indexer.extraction.transfer import part_payload
from web.parts import (MAX_PARTS, NESTED_MESSAGE_TYPES, MessageParts, Part, _disposition,
                       content_id, safe_filename)

# Bytes of encoded body decoded at a time.
CHUNK_BYTES = 256 * 1024
# A part's header block longer than this is cut there (the rest is body).
MAX_PART_HEADER_BYTES = 64 * 1024
MAX_DEPTH = 100
# The transfer encodings email.message decodes besides base64 and QP.
UUENCODINGS = ("x-uuencode", "uuencode", "uue", "x-uue")
# email.feedparser's notion of a header line: a field name and a colon,
# a continuation, or the Unix "From " line.
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_LINE_BREAK = re.compile(rb"\r\n|\n|\r")
# What may follow "--boundary" on a delimiter line (RFC 2046 5.1.1).
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?=[\r\n]|\Z)")
_LINE_WHITESPACE = b" \t\r\n"
_BASE64_CHARACTERS = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                      b"0123456789+/=")
_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/=]+")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]+(=*)")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf: its headers, and where its body lies in the message."""

    headers: Message
    start: int
    body_start: int
    body_end: int

    @property
    def encoding(self) -> str:
        return str(self.headers.get("content-transfer-encoding", "")).strip().lower()


class ScannedParts:
    """The leaves of a message found by scanning; reads like MessageParts."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.found = scan(raw)
        # The reading routes ask for ``leaves[i].get_content_type()``.
        self.leaves = [leaf.headers for leaf in self.found]
        self.defects: list[str] = []
        self._body_leaves = self._sort()

    def _sort(self) -> set[int]:
        body, has_html = set(), False
        for index, part in enumerate(self.leaves):
            if part_filename(part, []) or _disposition(part) == "attachment":
                continue
            content_type = part.get_content_type()
            if content_type == "text/plain" or (content_type == "text/html"
                                                and not has_html):
                has_html = has_html or content_type == "text/html"
                body.add(index)
        return body

    def files(self) -> list[Part]:
        """Every leaf that is neither the text nor the HTML body."""
        return [self.describe(index) for index in range(len(self.found))
                if index not in self._body_leaves]

    def describe(self, index: int) -> Part:
        """Return what the attachment list says about leaf ``index``."""
        part = self.leaves[index]
        size = sum(len(chunk) for chunk in self.chunks(index))
        return Part(index=index, content_type=part.get_content_type(),
                    filename=self.filename(index), size=size, content_id=content_id(part))

    def filename(self, index: int) -> str:
        """Return the download name ``MessageParts.filename`` would give."""
        part = self.leaves[index]
        name = safe_filename(part_filename(part, []))
        if name:
            return name
        if part.get_content_type() in NESTED_MESSAGE_TYPES:
            return f"part-{index + 1}.eml"
        return fallback_filename(part, index)

    def chunks(self, index: int) -> Iterator[bytes]:
        """Yield leaf ``index`` decoded, a chunk at a time.

        A nested message is served as it was sent, undecoded but for its
        transfer encoding.
        """
        leaf = self.found[index]
        body = memoryview(self.raw)[leaf.body_start:leaf.body_end]
        if leaf.encoding == "base64":
            return decode_base64_chunks(body)
        if leaf.encoding == "quoted-printable":
            return decode_qp_chunks(body)
        if leaf.encoding in UUENCODINGS:
            return iter([self._decode_whole(leaf)])
        # 7bit, 8bit, binary, and (as the parser does) any unknown encoding.
        return (bytes(body[at:at + CHUNK_BYTES]) for at in range(0, len(body), CHUNK_BYTES))

    def open(self, index: int) -> io.BufferedReader:
        """Return leaf ``index`` decoded as a readable file, for send_file."""
        return io.BufferedReader(_ChunkReader(self.chunks(index)), CHUNK_BYTES)

    def _decode_whole(self, leaf: Leaf) -> bytes:
        # uuencode is rare and line-framed: the parser decodes this one part.
        part = BytesParser(policy=compat32).parsebytes(
            bytes(memoryview(self.raw)[leaf.start:leaf.body_end]))
        return part_payload(part, self.defects) or b""


def message_parts(raw: bytes, full_view_bytes: int) -> MessageParts | ScannedParts:
    """Return a parsed message up to ``full_view_bytes``, a scanned one past it."""
    return MessageParts(raw) if len(raw) <= full_view_bytes else ScannedParts(raw)


def open_part(parts: MessageParts | ScannedParts, index: int) -> io.BufferedIOBase:
    """Return leaf ``index`` as a readable file, streamed when scanned."""
    if isinstance(parts, ScannedParts):
        return parts.open(index)
    return io.BytesIO(parts.content(index))


def scan(raw: bytes) -> list[Leaf]:
    """Return a message's leaves in depth-first order, at most MAX_PARTS.

    The walk keeps its own stack: hostile mail nests deeper than Python's.
    """
    pending: list[tuple[int, int, str, int]] = [(0, len(raw), "text/plain", 0)]
    found: list[Leaf] = []
    while pending and len(found) < MAX_PARTS:
        start, end, default_type, depth = pending.pop()
        headers, body_start = _read_headers(raw, start, end)
        if default_type != "text/plain":
            headers.set_default_type(default_type)
        children = _children(raw, headers, body_start, end) if depth < MAX_DEPTH else []
        if children:
            child_type = ("message/rfc822" if headers.get_content_type() == "multipart/digest"
                          else "text/plain")
            pending.extend((child_start, child_end, child_type, depth + 1)
                           for child_start, child_end in reversed(children))
        else:
            found.append(Leaf(headers, start, body_start, end))
    return found


def _children(raw: bytes, headers: Message, start: int, end: int) -> list[tuple[int, int]]:
    """Return the spans of an entity's children, or [] for a leaf."""
    if headers.get_content_type() == "message/delivery-status":
        # The parser reads a delivery status (RFC 3464) as a list of
        # header blocks, each a part of its own.
        return _header_blocks(raw, start, end)
    if (headers.get_content_maintype() == "message"
            and headers.get_content_type() not in NESTED_MESSAGE_TYPES):
        # Other message/* bodies (partial, feedback-report...) are parsed
        # as one enclosed message, whose own leaves are shown.
        return [(start, end)] if start < end else []
    boundary = headers.get_boundary() if headers.get_content_maintype() == "multipart" else None
    if not boundary:
        return []
    return _split(raw, start, end, boundary.encode("ascii", "surrogateescape"))


def _lines(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of each line, its line break included."""
    at = start
    while at < end:
        found = _LINE_BREAK.search(raw, at, end)
        line_end = found.end() if found else end
        yield at, line_end
        at = line_end


def _is_blank(raw: bytes, start: int, end: int) -> bool:
    return raw[start:end] in (b"\r\n", b"\n", b"\r")


def _read_headers(raw: bytes, start: int, end: int) -> tuple[Message, int]:
    """Parse the header block at ``start``; return it and where the body starts."""
    limit = min(end, start + MAX_PART_HEADER_BYTES)
    at = start
    for line_start, line_end in _lines(raw, start, limit):
        if _is_blank(raw, line_start, line_end):
            return _parse_headers(raw[start:line_start]), line_end
        if not _HEADER_LINE.match(raw, line_start, line_end):
            # The parser's rule: the first line that is not a header (nor
            # a continuation) begins the body, blank line or not.
            break
        at = line_end
    return _parse_headers(raw[start:at]), at


def _parse_headers(block: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(block)


def _header_blocks(raw: bytes, start: int, end: int) -> list[tuple[int, int]]:
    blocks, block_start = [], None
    for line_start, line_end in _lines(raw, start, end):
        if _is_blank(raw, line_start, line_end):
            if block_start is not None:
                blocks.append((block_start, line_start))
            block_start = None
        elif block_start is None:
            block_start = line_start
    if block_start is not None:
        blocks.append((block_start, end))
    return blocks


def _split(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Return the (start, end) of each body part between the delimiters.

    No delimiter at all makes the multipart a leaf, as the parser does.
    """
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    for at, after, is_close in _delimiters(raw, start, end, b"--" + boundary):
        if part_start is not None:
            parts.append((part_start, _before_line_break(raw, at, part_start)))
        if is_close:
            return parts
        part_start = _after_line_break(raw, after, end)
    if part_start is not None and part_start < end:
        parts.append((part_start, end))   # no closing delimiter: runs to the end
    return parts


def _delimiters(raw: bytes, start: int, end: int, marker: bytes
                ) -> Iterator[tuple[int, int, bool]]:
    """Yield (start, end, is_close) of each delimiter line's delimiter.

    A plain find for the marker, then a check that it starts a line, is
    many times faster than a regular expression that must look behind.
    """
    at = raw.find(marker, start, end)
    while at >= 0:
        if at == start or raw[at - 1:at] in (b"\r", b"\n"):
            tail = _DELIMITER_TAIL.match(raw, at + len(marker), end)
            if tail:
                yield at, tail.end(), bool(tail.group(1))
        at = raw.find(marker, at + 1, end)


def _before_line_break(raw: bytes, at: int, floor: int) -> int:
    # RFC 2046 5.1.1: the CRLF before a delimiter is part of the delimiter.
    for line_break in (b"\r\n", b"\n", b"\r"):
        if at - len(line_break) >= floor and raw[at - len(line_break):at] == line_break:
            return at - len(line_break)
    return at


def _after_line_break(raw: bytes, at: int, end: int) -> int:
    for line_break in (b"\r\n", b"\n", b"\r"):
        if raw.startswith(line_break, at, end):
            return at + len(line_break)
    return at


def decode_base64_chunks(encoded: memoryview) -> Iterator[bytes]:
    """Decode base64 as ``transfer.decode_base64`` does, a chunk at a time.

    Runs end at their ``=`` padding (separately padded chunks, case B13);
    an unfinished run carries over into the next chunk, decoded in whole
    quanta of four characters.
    """
    carry = b""
    for at in range(0, len(encoded), CHUNK_BYTES):
        # Line breaks are nearly all the noise there is: drop them fast.
        text = bytes(encoded[at:at + CHUNK_BYTES]).translate(None, _LINE_WHITESPACE)
        if text.translate(None, _BASE64_CHARACTERS):
            text = _BASE64_NOISE.sub(b"", text)
        text = carry + text
        carry = b""
        runs = list(_BASE64_RUN.finditer(text))
        pieces = []
        for number, run in enumerate(runs):
            if number == len(runs) - 1 and not run.group(1) and run.end() == len(text):
                whole = (len(run.group()) // 4) * 4
                pieces.append(binascii.a2b_base64(run.group()[:whole]))
                carry = run.group()[whole:]
            else:
                pieces.append(_decode_run(run.group()))
        yield b"".join(pieces)
    if carry:
        yield _decode_run(carry)


def _decode_run(run: bytes) -> bytes:
    data = run.rstrip(b"=")
    if len(data) % 4 == 1:
        data = data[:-1]
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def decode_qp_chunks(encoded: memoryview) -> Iterator[bytes]:
    """Decode quoted-printable a chunk of whole lines at a time."""
    at = 0
    while at < len(encoded):
        cut = min(at + CHUNK_BYTES, len(encoded))
        if cut < len(encoded):
            newline = bytes(encoded[at:cut]).rfind(b"\n")
            cut = at + newline + 1 if newline >= 0 else cut
        yield binascii.a2b_qp(bytes(encoded[at:cut]))
        at = cut


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
