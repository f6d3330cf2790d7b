"""Read the shared mail corpus as the messages a mail server would journal.

The corpus (``SOURCES.md`` and ``CATALOG.csv`` at its root) is a set of
third-party test inputs. This module turns it into *corpus messages*: pairs of
a stable name and the message bytes exactly as stored on disk.

Which files are messages
    ``CATALOG.csv`` marks each file ``message`` or ``other``, from byte
    patterns; it is a finder aid, not an oracle. Every ``other`` row is left
    out, and so are ``message`` rows that are really licences or READMEs,
    upstream expected-output files (mime4j ``.out``/``.xml``/``_decoded_*``,
    MimeKit ``*-summary.txt`` and offsets JSON, TNEF ``.list``), reference
    files a message was built from or decodes to (``emails/files/``,
    ``attachments/``, the folders of files extracted from a ``.tnef``), empty
    files, and Outlook ``.msg`` compound files (recognised by their OLE
    signature, because mime4j's ``.msg`` files are plain RFC 5322).
    :func:`skipped_files` names each left-out file with its reason.

Mailboxes
    A file named ``*.mbox``, ``*.mbox.txt`` or ``mailbox/mbox-N`` is split
    at every line that starts with ``From `` (the mboxo rule that Python's
    :mod:`mailbox` and MimeKit's parser share; MimeKit's ``unmunged`` test
    expects its unquoted ``From Russia with love`` lines to start messages).
    The From_ line is framing and is dropped, and so is the line ending just
    before the next From_ line, or one blank line at the end of the file.
    A UTF-8 byte order mark before the first From_ line is ignored. Nothing
    is unquoted in these mboxo files: ``>From`` quoting is lossy there.
    Files that merely begin with a From_ line (``torture.eml`` and other
    single messages saved from a mailbox) stay whole: the corpus keeps them
    that way, and an archive must take them as they come. The degenerate
    one- and two-byte ``mailbox/size-N`` files are single messages too.

    The bulk set (``bulk/usrp-users/mbox/*.mbox``) is mboxrd: the same split,
    then one ``>`` is removed from each line matching ``^>+From ``. Every
    message is checked against ``bulk/usrp-users/manifest.csv`` (offset of
    its From_ line, length, SHA-256); a difference raises
    :class:`CorpusError`, so a test never runs on a misread corpus.

Names
    A single-message file is named by its path under the corpus root; a
    message from a mailbox by that path, ``#`` and its 0-based position
    (the bulk manifest's ``index``), e.g.
    ``bulk/usrp-users/mbox/usrp-users-2024-01.mbox#17``.

Wire form
    A file on disk is not what an MTA sends. In DATA every line ends in CRLF
    and the content ends with one (RFC 5321 §2.3.8, §4.1.1.4), so a sending
    server converts bare LF and bare CR line endings and ends an unterminated
    last line. :func:`wire_form` applies exactly that conversion. The archive
    stores the DATA octets after dot-unstuffing and nothing else, so the
    bytes it must give back for a corpus message are ``wire_form(raw)``.
    Python's :mod:`smtplib` dot-stuffs bytes but leaves their line endings
    alone, which is why tests send ``wire_form(raw)`` and not ``raw``.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

CATALOG = "CATALOG.csv"
BULK = "bulk/usrp-users"
BULK_MANIFEST = f"{BULK}/manifest.csv"

CRLF = b"\r\n"
UTF8_BOM = b"\xef\xbb\xbf"
# Signature of an OLE2 compound file, the container of Outlook .msg files.
OLE_SIGNATURE = bytes.fromhex("d0cf11e0a1b11ae1")

LINE_ENDING = re.compile(rb"\r\n|\r|\n")
FROM_LINE = re.compile(rb"^From ", re.MULTILINE)
QUOTED_FROM_LINE = re.compile(rb"^>(>*From )", re.MULTILINE)
MAILBOX_PATH = re.compile(r"\.mbox(\.txt)?$|(^|/)mailbox/mbox-\d+$")

# Left-out files, by reason, tried in order on every catalogue path.
SKIP_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("licence or readme", re.compile(
        r"(^|/)(UPSTREAM-[^/]*|COPYING|README(\.[^/]*)?|[^/]*LICEN[CS]E[^/]*)$")),
    ("expected output", re.compile(
        r"\.(json|out|xml|list)$|_decoded[^/]*$|-summary\.txt$")),
    ("reference file", re.compile(
        r"(^|/)(emails/files|attachments)/|(^|/)tnef/[^/]+/")),
)


class CorpusError(Exception):
    """The corpus on disk disagrees with its own catalogue or manifest."""


class CorpusMessage(NamedTuple):
    """One message of the corpus: a stable name and its bytes as stored."""

    name: str
    raw: bytes


def wire_form(raw: bytes) -> bytes:
    """Return the DATA octets an MTA sends for ``raw``: CRLF line endings.

    Every CRLF, bare LF and bare CR becomes CRLF, and a last line without an
    ending gets one; empty input becomes one empty line, as smtplib sends it.
    """
    wire = LINE_ENDING.sub(CRLF, raw)
    if not wire.endswith(CRLF):
        wire += CRLF
    return wire


def iter_messages(corpus_dir: Path) -> Iterator[CorpusMessage]:
    """Yield every corpus message: catalogue files first, then the bulk set.

    Raises :class:`CorpusError` when a bulk message differs from the manifest.
    """
    for row in read_catalog(corpus_dir):
        path = row["path"]
        raw = (corpus_dir / path).read_bytes()
        if skip_reason(row, raw) is not None:
            continue
        if MAILBOX_PATH.search(path):
            for index, (_, message) in enumerate(split_mbox(raw)):
                yield CorpusMessage(f"{path}#{index}", message)
        else:
            yield CorpusMessage(path, raw)
    yield from iter_bulk(corpus_dir)


def skipped_files(corpus_dir: Path) -> list[tuple[str, str]]:
    """List the catalogue files that are not messages, with the reason."""
    skipped = []
    for row in read_catalog(corpus_dir):
        raw = (corpus_dir / row["path"]).read_bytes()
        reason = skip_reason(row, raw)
        if reason is not None:
            skipped.append((row["path"], reason))
    return skipped


def read_catalog(corpus_dir: Path) -> list[dict[str, str]]:
    """Read ``CATALOG.csv``, leaving out rows of the bulk set (see manifest)."""
    # Paths contain commas (Maildir flags such as ":2,S"), hence csv.
    with open(corpus_dir / CATALOG, newline="", encoding="utf-8") as catalog:
        rows = list(csv.DictReader(catalog))
    return [row for row in rows if not row["path"].startswith("bulk/")]


def skip_reason(row: dict[str, str], raw: bytes) -> str | None:
    """Say why a catalogue file is not a corpus message, or None if it is."""
    for reason, pattern in SKIP_RULES:
        if pattern.search(row["path"]):
            return reason
    if raw.startswith(OLE_SIGNATURE):
        return "Outlook OLE compound file"
    if row["kind"] != "message":
        return f"catalogue kind {row['kind']}"
    if not raw:
        return "empty file"
    return None


def split_mbox(data: bytes) -> list[tuple[int, bytes]]:
    """Split an mbox at its From_ lines into (From_ line offset, message).

    Nothing is unquoted; see the module docstring for the framing rules.
    Raises :class:`CorpusError` when the data does not start with From_.
    """
    start = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    if not data.startswith(b"From ", start):
        raise CorpusError("mailbox does not start with a From_ line")
    # finditer(data, start) would not let "^" match at start, hence the slice.
    markers = [start + match.start() for match in FROM_LINE.finditer(data[start:])]
    messages = []
    for marker, end in zip(markers, markers[1:] + [len(data)], strict=True):
        first_line_end = data.find(b"\n", marker, end)
        body_start = end if first_line_end < 0 else first_line_end + 1
        message = drop_separator(data[body_start:end], at_eof=end == len(data))
        messages.append((marker, message))
    return messages


def drop_separator(message: bytes, *, at_eof: bool) -> bytes:
    """Remove the line ending that frames a message inside an mbox.

    Before the next From_ line it is always framing; at the end of the file
    only a trailing blank line is.
    """
    if at_eof and not message.endswith((b"\n\n", b"\r\n\r\n")):
        return message
    for ending in (CRLF, b"\n"):
        if message.endswith(ending):
            return message[: -len(ending)]
    return message


def unquote_mboxrd(message: bytes) -> bytes:
    """Remove one ``>`` from every line that matches ``^>+From ``."""
    return QUOTED_FROM_LINE.sub(rb"\1", message)


def iter_bulk(corpus_dir: Path) -> Iterator[CorpusMessage]:
    """Yield the bulk set's messages, each checked against the manifest."""
    rows_by_mbox: dict[str, list[dict[str, str]]] = {}
    with open(corpus_dir / BULK_MANIFEST, newline="", encoding="utf-8") as manifest:
        for row in csv.DictReader(manifest):
            rows_by_mbox.setdefault(row["mbox"], []).append(row)
    for mbox, rows in rows_by_mbox.items():
        path = f"{BULK}/{mbox}"
        messages = split_mbox((corpus_dir / path).read_bytes())
        if len(messages) != len(rows):
            raise CorpusError(
                f"{path}: {len(messages)} messages, manifest lists {len(rows)}")
        for position, (offset, quoted) in enumerate(messages):
            raw = unquote_mboxrd(quoted)
            check_manifest_row(path, rows[position], (position, offset), raw)
            yield CorpusMessage(f"{path}#{position}", raw)


def check_manifest_row(path: str, row: dict[str, str],
                       place: tuple[int, int], raw: bytes) -> None:
    """Raise :class:`CorpusError` unless a bulk message matches its row.

    ``place`` is the message's position in its mbox and the offset of its
    From_ line.
    """
    expected = (int(row["index"]), int(row["from_line_offset"]),
                int(row["length"]), row["sha256"])
    found = (*place, len(raw), hashlib.sha256(raw).hexdigest())
    if found != expected:
        raise CorpusError(
            f"{path}#{place[0]}: (index, From_ offset, length, sha256) is "
            f"{found}, manifest says {expected}")
