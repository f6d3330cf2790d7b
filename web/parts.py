"""A stored message seen as a reader sees it: text, HTML, attachments.

Parts are numbered once, here, and every route that serves a part
(inline image, attachment) addresses it by that number, so a URL can never
name a file path or a header value.  Numbers count the *leaves* of the
MIME tree depth first, from 0; a nested message (``message/rfc822``) is
one leaf, served whole, never descended into.  The walk is iterative:
hostile mail nests deeper than Python's stack.
"""

from __future__ import annotations

import dataclasses
import io
import re
import unicodedata
from email import policy
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser

from indexer.extract import fallback_filename, header_text, part_filename, part_text
from indexer.extraction.documents import html_to_text
from indexer.extraction.transfer import part_payload

MAX_PARTS = 500
MAX_FILENAME_CHARS = 150
NESTED_MESSAGE_TYPES = {"message/rfc822", "message/global"}
# Image types a browser shows without running anything.  SVG is absent on
# purpose: it is a document that can carry script (served only as a
# download, as application/octet-stream).
INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"}
# Declared types passed through on download.  Everything else, above all
# anything a browser would render as a document (HTML, SVG, XML, script),
# is sent as application/octet-stream.
INERT_DOWNLOAD_TYPES = INLINE_IMAGE_TYPES | {
    "application/pdf", "application/zip", "application/gzip", "text/plain",
    "text/csv", "text/calendar", "application/pgp-signature", "application/pkcs7-signature",
    "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "application/rtf",
    "audio/mpeg", "audio/ogg", "audio/wav", "video/mp4", "video/webm",
    "message/rfc822",
}
SAFE_DEFAULT_TYPE = "application/octet-stream"
# Controls, path and reserved characters, and the marks that reorder text:
# "invoice<RIGHT-TO-LEFT OVERRIDE>gnp.exe" reads as "invoiceexe.png".
_UNSAFE_NAME_CHARACTERS = re.compile(
    r'[\x00-\x1f\x7f/\\:*?"<>|\u200e\u200f\u202a-\u202e\u2066-\u2069]+')


@dataclasses.dataclass(frozen=True)
class Part:
    """One leaf of a message, as the attachment list shows it."""

    index: int
    content_type: str
    filename: str
    size: int
    content_id: str


class MessageParts:
    """Parse a message once and sort its leaves into text, HTML and files.

    The text is every unnamed inline ``text/plain`` leaf, the HTML the
    first unnamed inline ``text/html`` leaf; every other leaf is a file.
    """

    def __init__(self, raw: bytes) -> None:
        self.defects: list[str] = []
        try:
            self.message: Message | None = BytesParser(
                policy=policy.compat32).parsebytes(raw)
        except RecursionError:
            self.message = None
            self.defects.append("MIME nesting too deep to show its parts")
        self.leaves = leaves(self.message) if self.message is not None else []
        self._text_leaves: list[int] = []
        self.html_index: int | None = None
        self._sort()

    def _sort(self) -> None:
        for index, part in enumerate(self.leaves):
            if part_filename(part, []) or _disposition(part) == "attachment":
                continue
            content_type = part.get_content_type()
            if content_type == "text/plain":
                self._text_leaves.append(index)
            elif content_type == "text/html" and self.html_index is None:
                self.html_index = index

    @property
    def text(self) -> str:
        """The plain text; the HTML's text when there is no plain part."""
        pieces = [part_text(self.leaves[i], self.defects) for i in self._text_leaves]
        if not pieces and self.html_index is not None:
            return html_to_text(self.html)
        return "\n\n".join(pieces)

    @property
    def html(self) -> str:
        """The HTML body as sent (hostile), or ""."""
        if self.html_index is None:
            return ""
        return part_text(self.leaves[self.html_index], self.defects)

    def files(self) -> list[Part]:
        """Every leaf that is neither the text nor the HTML body."""
        shown = {*self._text_leaves, self.html_index}
        return [self.describe(index) for index in range(len(self.leaves))
                if index not in shown]

    def describe(self, index: int) -> Part:
        """Return what the attachment list says about leaf ``index``."""
        part = self.leaves[index]
        return Part(index=index, content_type=part.get_content_type(),
                    filename=self.filename(index), size=len(self.content(index)),
                    content_id=content_id(part))

    def filename(self, index: int) -> str:
        """Return a download name for leaf ``index``, safe in any file system."""
        part = self.leaves[index]
        name = safe_filename(part_filename(part, []))
        if not name:
            if part.get_content_type() in NESTED_MESSAGE_TYPES:
                return f"part-{index + 1}.eml"
            return fallback_filename(part, index)
        return name

    def content(self, index: int) -> bytes:
        """Return leaf ``index`` decoded; a nested message as its bytes."""
        part = self.leaves[index]
        if part.get_content_type() in NESTED_MESSAGE_TYPES:
            return nested_bytes(part)
        return part_payload(part, self.defects) or b""

    def inline_image(self, cid: str) -> int | None:
        """Return the index of the inline image with Content-ID ``cid``."""
        wanted = cid.strip().strip("<>")
        for index, part in enumerate(self.leaves):
            if wanted and content_id(part) == wanted:
                return index
        return None


def leaves(message: Message) -> list[Message]:
    """Return a message's leaves in depth-first order, at most MAX_PARTS."""
    found: list[Message] = []
    pending = [message]
    while pending and len(found) < MAX_PARTS:
        part = pending.pop()
        if part.is_multipart() and part.get_content_type() not in NESTED_MESSAGE_TYPES:
            children = [c for c in part.get_payload() if isinstance(c, Message)]
            pending.extend(reversed(children))
        else:
            found.append(part)
    return found


def content_id(part: Message) -> str:
    """Return a part's Content-ID without its angle brackets, or ""."""
    return header_text(part, "content-id").strip().strip("<>").strip()


def _disposition(part: Message) -> str:
    return header_text(part, "content-disposition").split(";")[0].strip().lower()


def nested_bytes(part: Message) -> bytes:
    """Return an attached message as bytes a mail program can open.

    compat32 keeps the nested message's headers as they came; writing
    them without refolding (``max_line_length=0``) and without ``>From``
    quoting changes as little as the parser allows.
    """
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
        if not inner.keys():
            return part_payload(inner, []) or b""
        buffer = io.BytesIO()
        BytesGenerator(buffer, mangle_from_=False,
                       policy=policy.compat32.clone(max_line_length=0)).flatten(inner)
        return buffer.getvalue()
    return part_payload(part, []) or b""


def safe_filename(name: str) -> str:
    """Return ``name`` without path parts, control or reserved characters.

    The result goes into a Content-Disposition header (werkzeug refuses a
    line break there) and into the reader's file system.
    """
    name = unicodedata.normalize("NFC", name)
    name = _UNSAFE_NAME_CHARACTERS.sub("_", name).strip(" ._")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and len(extension) <= 10:
            name = stem[:MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


def download_type(content_type: str) -> str:
    """Return the Content-Type to serve a file under: inert types only."""
    content_type = content_type.lower()
    return content_type if content_type in INERT_DOWNLOAD_TYPES else SAFE_DEFAULT_TYPE
