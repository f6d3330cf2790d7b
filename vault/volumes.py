"""Export volumes: how each format lays a run of messages down on disk.

A *volume* is a fixed number of consecutive items of an export job
(``vault.export``).  Each format has a writer that writes one volume to an
export location (``vault.export_locations``: a folder or an S3 prefix)
and reports each message's manifest entry (and, for the load file, its
row) and each file's SHA-256 to a ``Record`` as it goes, so nothing
accumulates in memory:

- zip: ``VOLnnnn.zip`` of original ``.eml`` files under
  ``<custodian>/<message-id>.eml``, stored (not deflated) so that the bytes
  inside are the archived bytes;
- mbox: ``VOLnnnn.mbox`` in mboxrd form (RFC 4155 "From " separator lines;
  any line starting with zero or more '>' and "From " gains one '>');
- dat: ``NATIVES/VOLnnnn/<custodian>/<message-id>.eml`` plus, once every
  volume is written, ``loadfile.dat`` (Concordance: UTF-8 with a BOM, fields
  in þ separated by DC4, newlines inside a field as ®) and the same rows in
  ``loadfile.csv``.

A message the archive cannot read (its object damaged or gone) is a
*fault*, not the end of the export: the writer leaves it out, reports it
to the ``Record`` with a short reason, and goes on with the next.  The
load file keeps a row for it with no file and the reason in
``EXPORT_FAULT``, so that the review platform shows the gap.
"""

from __future__ import annotations

import csv
import datetime as dt
import email.utils
import hashlib
import io
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path
from typing import IO, Any, Protocol

from vault import IntegrityError, MissingObjectError, VaultError
from vault.export_locations import ExportLocation, WrittenFile
from vault.ingest import MESSAGES, Vault

log = logging.getLogger(__name__)

# Concordance's defaults: fields separated by DC4 (shown as ¶), each
# quoted in þ, and newlines inside a field written as ®.
DAT_DELIMITER, DAT_QUOTE, DAT_NEWLINE = "\x14", "\u00fe", "\u00ae"
LOADFILE_FIELDS = ("BEGDOC", "CUSTODIAN", "ALL_CUSTODIANS", "FROM", "TO", "CC", "BCC",
                   "DATE_SENT", "SUBJECT", "MESSAGE_ID", "ATTACHMENT_NAMES",
                   "ATTACHMENT_COUNT", "FILE_PATH", "SHA256", "RECEIPTS",
                   "EXPORT_FAULT")
# A fault's reason is the integrity error's own words, cut to this: enough
# to tell a flipped byte from a truncation, never a stack trace.
FAULT_REASON_CHARS = 160
_MBOX_FROM = re.compile(rb"^(>*From )", re.MULTILINE)
_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")


class Record(Protocol):
    """Where a writer reports what it wrote (the volume's record)."""

    def item(self, entry: dict[str, Any], row: list[str] | None = None) -> None:
        """Note one message's manifest entry (and load-file row)."""

    def file(self, written: WrittenFile) -> None:
        """Note one file of the export, with its SHA-256 and size."""

    def fault(self, entry: dict[str, Any], row: list[str] | None = None) -> None:
        """Note one message left out (id, reason, receipts, custodians)."""


class Writer:
    """Write one volume of items; the base keeps what every format shares."""

    suffix = ""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def write(self, location: ExportLocation, number: int, items: Iterable[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        """Write volume ``number``, recording each item's manifest entry."""
        raise NotImplementedError

    def finish(self, location: ExportLocation, records: Iterator[dict[str, Any]]
               ) -> list[WrittenFile]:
        """Write files that span volumes (load files); nothing by default."""
        return []

    def readable(self, items: Iterable[dict[str, Any]], tick: Callable[[int], None],
                 record: Record) -> Iterator[tuple[dict[str, Any], bytes, dict[str, Any]]]:
        """Yield each item that can be read, its bytes and its manifest entry.

        Every item is ticked; one that cannot be read is a fault (``read``).
        """
        for item in items:
            read = self.read(item, record)
            tick(1)
            if read is not None:
                yield item, *read

    def read(self, item: dict[str, Any], record: Record
             ) -> tuple[bytes, dict[str, Any]] | None:
        """Return a message's bytes and its manifest entry (without where).

        A message whose object is damaged or missing is reported to
        ``record`` as a fault and None returned.  Any other error (a store
        that cannot be reached, a full disk) is raised: the job fails, and
        a resume tries the volume again.
        """
        key = f"{MESSAGES}/{item['message_id']}"
        try:
            raw = self.vault.read_message(key)
        except (IntegrityError, MissingObjectError) as err:
            reason = fault_reason(key, err)
            log.warning("%s: cannot be read, left out of the export: %s", key, reason,
                        extra={"event": "export.message_unreadable"})
            entry = {"id": item["message_id"], "reason": reason,
                     "receipts": list(item["receipts"]),
                     "custodians": list(item["custodians"])}
            record.fault(entry, self.fault_row(item, entry))
            return None
        entry = {"id": item["message_id"], "sha256": hashlib.sha256(raw).hexdigest(),
                 "size": len(raw), "receipts": list(item["receipts"]),
                 "custodians": list(item["custodians"])}
        return raw, entry

    def fault_row(self, item: dict[str, Any], fault: dict[str, Any]) -> list[str] | None:
        """Return the load-file row of a message left out; None without a load file."""
        return None


class _ZipWriter(Writer):
    """A zip of original .eml files, one folder per custodian."""

    def write(self, location: ExportLocation, number: int, items: Iterable[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        name = volume_name(number, "zip")
        with location.create(name) as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for item, raw, entry in self.readable(items, tick, record):
                    entry.update(path=name, entry=f"{_custodian_folder(item)}/"
                                                  f"{item['message_id']}.eml")
                    archive.writestr(zipfile.ZipInfo(entry["entry"], _zip_time(item)), raw)
                    record.item(entry)
        record.file(handle.written())


class _MboxWriter(Writer):
    """One mboxrd file per volume (lines starting ">*From " gain one '>')."""

    def write(self, location: ExportLocation, number: int, items: Iterable[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        name = volume_name(number, "mbox")
        offset = ordinal = 0
        with location.create(name) as handle:
            for item, raw, entry in self.readable(items, tick, record):
                ordinal += 1
                separator = _from_line(raw)
                stored = _MBOX_FROM.sub(rb">\1", raw)
                handle.write(separator)
                offset += len(separator)
                handle.write(stored)
                entry.update(path=name, entry=f"#{ordinal}", mbox_offset=offset,
                             mbox_length=len(stored))
                ending = b"\n\n" if not stored.endswith(b"\n") else b"\n"
                handle.write(ending)
                offset += len(stored) + len(ending)
                record.item(entry)
        record.file(handle.written())


class _DatWriter(Writer):
    """Native .eml files and a Concordance DAT (and CSV) load file."""

    def write(self, location: ExportLocation, number: int, items: Iterable[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        volume = f"NATIVES/{volume_name(number, '')}".rstrip(".")
        with location.natives(volume) as put:
            for item, raw, entry in self.readable(items, tick, record):
                written = put(f"{_custodian_folder(item)}/{item['message_id']}.eml", raw)
                entry.update(path=written.path, entry="")
                record.item(entry, self._row(raw, item, entry))
                record.file(written)

    def _row(self, raw: bytes, item: dict[str, Any], entry: dict[str, Any]) -> list[str]:
        message = BytesParser(policy=compat32).parsebytes(raw)
        to, cc = _header(message, "To"), _header(message, "Cc")
        named = {address.lower() for _, address in email.utils.getaddresses([to, cc])}
        bcc = [_header(message, "Bcc")] if message.get("Bcc") else []
        bcc += sorted(self._envelope_recipients(item) - named)
        attachments = [_decoded(part.get_filename() or "") for part in message.walk()
                       if part.get_filename()]
        custodians = list(item["custodians"])
        return [
            "", custodians[0] if custodians else "", "; ".join(custodians),
            _header(message, "From"), to, cc, "; ".join(filter(None, bcc)),
            _date_sent(message), _header(message, "Subject"),
            _header(message, "Message-ID"), "; ".join(attachments),
            str(len(attachments)), entry["path"], entry["sha256"],
            "; ".join(item["receipts"]), "",
        ]

    def fault_row(self, item: dict[str, Any], fault: dict[str, Any]) -> list[str] | None:
        # What the search knew of the message: its owners and receipts.
        # Its headers are inside the object that could not be read.
        custodians = list(item["custodians"])
        row = [""] * len(LOADFILE_FIELDS)
        row[1:3] = [custodians[0] if custodians else "", "; ".join(custodians)]
        row[-2:] = ["; ".join(item["receipts"]),
                    f"message {fault['id']}: {fault['reason']}"]
        return row

    def _envelope_recipients(self, item: dict[str, Any]) -> set[str]:
        # Bcc recipients appear in no header: the journal report and the
        # envelope of each receipt are where the archive learned of them.
        recipients: set[str] = set()
        for key in item["receipts"]:
            try:
                receipt = self.vault.read_receipt(key)
            except VaultError:
                continue
            recipients.update(r.lower() for r in (*receipt.rcpt_tos,
                                                  *receipt.report_recipients))
        journal = {r for r in recipients if r.split("@")[0] == "journal"}
        return recipients - journal

    def finish(self, location: ExportLocation, records: Iterator[dict[str, Any]]
               ) -> list[WrittenFile]:
        number = 0
        with location.create("loadfile.dat") as dat, \
                location.create("loadfile.csv") as raw_csv:
            buffered = io.BufferedWriter(raw_csv)
            text_csv = io.TextIOWrapper(buffered, encoding="utf-8", newline="")
            writer = csv.writer(text_csv)
            dat.write("\ufeff".encode("utf-8") + _dat_line(LOADFILE_FIELDS))
            writer.writerow(LOADFILE_FIELDS)
            for line in records:
                row = line["row"]
                number += 1
                row[0] = f"SR{number:08d}"
                dat.write(_dat_line(row))
                # The DAT keeps every value exactly; the CSV is the copy a
                # reviewer opens in a spreadsheet, where a sender-written
                # "=HYPERLINK(...)" subject would run as a formula.
                writer.writerow([spreadsheet_safe(str(cell)) for cell in row])
            text_csv.flush()
            text_csv.detach()
            buffered.detach()
        return [dat.written(), raw_csv.written()]


WRITERS: dict[str, type[Writer]] = {"zip": _ZipWriter, "mbox": _MboxWriter,
                                      "dat": _DatWriter}


class durable:
    """Open a file to write; on success fsync it and (atomically) put it in place."""

    def __init__(self, path: Path, *, binary: bool = False, atomic: bool = True,
                 scratch: Path | None = None, sync: bool = True) -> None:
        self.path = Path(path)
        self.scratch = self.path.with_name(self.path.name + ".part") if atomic else self.path
        self.scratch = scratch or self.scratch
        self.binary = binary
        self.sync = sync

    def __enter__(self) -> Any:
        if self.binary:
            self.handle: IO[Any] = open(self.scratch, "wb")
        else:
            self.handle = open(self.scratch, "w", encoding="utf-8")
        return self.handle

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        try:
            if kind is None:
                self.handle.flush()
                if self.sync:
                    os.fsync(self.handle.fileno())
        finally:
            self.handle.close()
        if kind is None and self.scratch != self.path:
            os.replace(self.scratch, self.path)
            fsync_directory(self.path.parent)
        elif kind is not None and self.scratch != self.path:
            self.scratch.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def volume_name(number: int, suffix: str) -> str:
    return f"VOL{number:04d}.{suffix}"


def fault_reason(key: str, err: VaultError) -> str:
    """Return why ``key`` could not be read, in a few words."""
    if isinstance(err, MissingObjectError):
        return "missing: no object is stored under its key"
    detail = str(err).removeprefix(f"{key}: ")
    return f"damaged: {detail}"[:FAULT_REASON_CHARS]


def _custodian_folder(item: dict[str, Any]) -> str:
    custodians = item["custodians"]
    return _UNSAFE.sub("_", custodians[0]) if custodians else "_unassigned"


def _zip_time(item: dict[str, Any]) -> tuple[int, int, int, int, int, int]:
    """Return the time of the first receipt (when the archive received it).

    Read straight from the key's digits (``receipts/YYYY/MM/DD/HHMMSS...``),
    which is many times cheaper than strptime per message; zip keeps two
    seconds' resolution and no date before 1980.
    """
    try:
        _, year, month, day, clock = item["receipts"][0].split("/")[:5]
        moment = (int(year), int(month), int(day), int(clock[0:2]), int(clock[2:4]),
                  int(clock[4:6]) // 2 * 2)
    except (IndexError, ValueError):
        return (1980, 1, 1, 0, 0, 0)
    return moment if moment[0] >= 1980 else (1980, 1, 1, 0, 0, 0)


def _from_line(raw: bytes) -> bytes:
    # RFC 4155: "From " and the envelope sender, then a timestamp in the
    # fixed asctime form; the Date header gives the time where it can.
    # Only the header block is parsed; the body can be megabytes.
    end = raw.find(b"\n\n")
    crlf = raw.find(b"\r\n\r\n")
    end = min(e for e in (end, crlf, len(raw)) if e >= 0)
    message = BytesParser(policy=compat32).parsebytes(raw[:end + 1], headersonly=True)
    sender = email.utils.parseaddr(_header(message, "From"))[1] or "MAILER-DAEMON"
    sender = _UNSAFE.sub("_", sender)
    moment = _parsed_date(message) or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return f"From {sender} {moment:%a %b %d %H:%M:%S %Y}\n".encode("ascii")


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    return "" if value is None else _decoded(str(value))


def _decoded(value: str) -> str:
    try:
        return " ".join(str(make_header(decode_header(value))).split())
    except (ValueError, LookupError, UnicodeError):
        return " ".join(value.split())


def _parsed_date(message: Message) -> dt.datetime | None:
    try:
        moment = email.utils.parsedate_to_datetime(str(message.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _date_sent(message: Message) -> str:
    moment = _parsed_date(message)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def _dat_line(values: Any) -> bytes:
    fields = (DAT_QUOTE + str(value).replace("\r\n", DAT_NEWLINE).replace(
        "\n", DAT_NEWLINE).replace(DAT_QUOTE, "") + DAT_QUOTE for value in values)
    return (DAT_DELIMITER.join(fields) + "\r\n").encode("utf-8")


def spreadsheet_safe(value: str) -> str:
    """Return ``value`` so that no spreadsheet runs it as a formula.

    A cell that starts with = + - @ or a tab or carriage return is prefixed
    with a quote (OWASP "CSV injection"); archived mail is hostile and its
    subjects and addresses are the sender's own text.
    """
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
