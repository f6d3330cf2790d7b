"""Evidence exports: what a case's saved search found, streamed to a folder.

An export is a job.  Starting it runs the search once and freezes the
result in the folder (``.work/items.jsonl``), so that the export is of
exactly what the search found at that catalogue state, whatever arrives
later.  Running it writes the items in *volumes* of a fixed number of
messages; each volume is written under a temporary name, fsync'd and
renamed, then its record (``.work/VOLnnnn.json``) is written.  A job
interrupted by a crash or restart resumes at the first volume without a
record, so at most one volume is written twice.  Memory holds one message
and one volume's records at a time, whatever the export's size.

Layout of a finished export folder (see ``vault.custody`` for the control
files)::

    VOL0001.zip                 format zip: <custodian>/<message-id>.eml
    VOL0001.mbox                format mbox: mboxrd, one message after another
    NATIVES/VOL0001/<custodian>/<message-id>.eml
    loadfile.dat, loadfile.csv  format dat: one row per message
    manifest.json  custody.json  custody.sig  export-signing-key.pub
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import email.utils
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path
from typing import IO, Any

from vault import VaultError
from vault.cases import Case, Cases, Match, SavedSearch
from vault.clock import now
from vault.config import Settings
from vault.control import ControlDB
from vault.custody import (CUSTODY, MANIFEST, PUBLIC_KEY, SIGNATURE, fingerprint,
                           public_pem, sign, signing_key)
from vault.ingest import MESSAGES, Vault
from vault.roles import EXPORT_DOWNLOAD, EXPORT_RUN, Principal, require

log = logging.getLogger(__name__)

FORMATS = ("zip", "mbox", "dat")
CUSTODY_FORMAT = 1
PROGRESS_EVERY = 200
WORK = ".work"
# Concordance's defaults: fields separated by DC4 (shown as ¶), each
# quoted in þ, and newlines inside a field written as ®.
DAT_DELIMITER, DAT_QUOTE, DAT_NEWLINE = "\x14", "\u00fe", "\u00ae"
LOADFILE_FIELDS = ("BEGDOC", "CUSTODIAN", "ALL_CUSTODIANS", "FROM", "TO", "CC", "BCC",
                   "DATE_SENT", "SUBJECT", "MESSAGE_ID", "ATTACHMENT_NAMES",
                   "ATTACHMENT_COUNT", "FILE_PATH", "SHA256", "RECEIPTS")
_MBOX_FROM = re.compile(rb"^(>*From )", re.MULTILINE)
_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")

Progress = Callable[[int, int], Callable[[int], None]]
Record = Callable[..., None]


class ExportError(VaultError):
    """An export cannot start or go on; the message says why."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What a finished export holds."""

    job: int
    path: Path
    messages: int
    bytes: int
    fingerprint: str


class Exporter:
    """Start, run and resume export jobs for one archive."""

    def __init__(self, control: ControlDB, cases: Cases, vault: Vault, *,
                 export_root: Path, key_path: Path, volume_messages: int) -> None:
        self.control = control
        self.cases = cases
        self.vault = vault
        self.export_root = Path(export_root)
        self.key_path = Path(key_path)
        self.volume_messages = volume_messages

    @classmethod
    def for_settings(cls, settings: Settings, control: ControlDB, cases: Cases,
                     vault: Vault | None = None) -> Exporter:
        """Return an exporter configured by the ``[ediscovery]`` settings."""
        from vault.ingest import open_vault

        return cls(control, cases, vault or open_vault(settings),
                   export_root=settings.path(settings.ediscovery.export_path),
                   key_path=settings.path(settings.ediscovery.signing_key_file),
                   volume_messages=settings.ediscovery.volume_messages)

    def start(self, case: Case, search: SavedSearch, actor: Principal, format: str,
              destination: str | Path | None = None) -> int:
        """Run the search, freeze its result in a new folder; return the job id."""
        require(actor, EXPORT_RUN)
        if format not in FORMATS:
            raise ExportError(f"unknown export format {format!r}; choose from "
                              + ", ".join(FORMATS))
        matches = self.cases.run(case, search, actor)
        state = self.cases.search(case, search.name).state
        return self.create_job(case, search, matches, state, actor, format, destination)

    def create_job(self, case: Case, search: SavedSearch, matches: Iterable[Match],
                   state: dict[str, Any], actor: Principal, format: str,
                   destination: str | Path | None = None) -> int:
        """Freeze ``matches`` (a search's result at ``state``) as a new job."""
        require(actor, EXPORT_RUN)
        with self.control.connect() as connection:
            job = connection.execute(
                "INSERT INTO exports (case_id, search_id, format, path, total, operator,"
                " created_at) VALUES (?, ?, ?, '', 0, ?, ?)",
                (case.id, search.id, format, actor.address,
                 now().isoformat())).lastrowid
            assert job is not None
            base = Path(destination) if destination else self.export_root / case.name
            folder = base / f"export-{job:06d}-{search.name}-{format}"
            connection.execute("UPDATE exports SET path = ? WHERE id = ?", (str(folder), job))
        work = folder / WORK
        work.mkdir(parents=True, exist_ok=False)
        total = 0
        with _durable(work / "items.jsonl") as handle:
            for match in matches:
                handle.write(json.dumps(dataclasses.asdict(match), sort_keys=True) + "\n")
                total += 1
        self._set(job, total=total)
        job_record = {
            "job": job, "format": format, "operator": actor.address,
            "started_at": now().isoformat(),
            "case": {"name": case.name, "description": case.description,
                     "custodians": list(case.custodians)},
            "search": {"name": search.name, "query": search.query, "text": search.text,
                       "custodians": list(search.custodians),
                       "date_from": search.date_from, "date_to": search.date_to},
            "catalogue_state": state,
        }
        with _durable(work / "job.json") as handle:
            handle.write(json.dumps(job_record, sort_keys=True))
        self.control.audit(actor.address, "export.started", case.name, job=job,
                           search=search.name, format=format, messages=total,
                           path=str(folder), documents=state.get("documents"),
                           cursor=state.get("cursor"))
        return int(job)

    def run(self, job: int, actor: Principal, progress: Progress | None = None
            ) -> ExportResult:
        """Write every volume not yet written, then sign; resumable."""
        require(actor, EXPORT_RUN)
        row = self.job(job)
        if row["state"] == "done":
            raise ExportError(f"export job {job} is finished already")
        folder = Path(row["path"])
        work = folder / WORK
        if not (work / "job.json").is_file():
            raise ExportError(f"export job {job}: {work} is gone; start a new export")
        with open(work / "lock", "a") as lock:
            # One runner per job, across threads and processes: a resume
            # asked for while the job still runs is refused, not doubled.
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExportError(f"export job {job} is running already") from None
            self._set(job, state="running", error="")
            try:
                return self._run(job, folder, row, actor, progress)
            except BaseException as err:
                self._set(job, state="failed", error=f"{type(err).__name__}: {err}"[:500])
                log.exception("export job %d failed", job, extra={"event": "export.failed"})
                raise

    def run_in_background(self, job: int, actor: Principal) -> threading.Thread:
        """Run a job on a thread of its own; its row shows the progress."""
        def work() -> None:
            try:
                self.run(job, actor)
            except Exception:
                pass  # recorded on the job row and logged by run

        thread = threading.Thread(target=work, name=f"export-{job}", daemon=True)
        thread.start()
        return thread

    def job(self, job: int) -> dict[str, Any]:
        """Return the job's row."""
        with self.control.connect() as connection:
            row = connection.execute("SELECT * FROM exports WHERE id = ?", (job,)).fetchone()
        if row is None:
            raise ExportError(f"no export job {job}")
        return dict(row)

    def jobs(self, case: Case) -> list[dict[str, Any]]:
        """Return the case's export jobs, newest first."""
        with self.control.connect() as connection:
            return [dict(row) for row in connection.execute(
                "SELECT exports.*, case_searches.name AS search FROM exports"
                " JOIN case_searches ON case_searches.id = search_id"
                " WHERE exports.case_id = ? ORDER BY exports.id DESC", (case.id,))]

    def download_path(self, case: Case, job: int, relative: str, actor: Principal, *,
                      folder: bool = False) -> Path:
        """Return a file (or, with ``folder``, a folder) of a finished export.

        The caller has checked that ``actor`` is a member of ``case``.
        """
        require(actor, EXPORT_DOWNLOAD)
        row = self.job(job)
        if row["case_id"] != case.id or row["state"] != "done":
            raise ExportError(f"no finished export {job} in case {case.name}")
        root = Path(row["path"]).resolve()
        target = (root / relative).resolve()
        if root not in target.parents or not (target.is_dir() if folder else target.is_file()):
            raise ExportError(f"no file {relative!r} in export {job}")
        self.control.audit(actor.address, "export.downloaded", case.name, job=job,
                           file=relative)
        return target

    def _run(self, job: int, folder: Path, row: dict[str, Any], actor: Principal,
             progress: Progress | None) -> ExportResult:
        work = folder / WORK
        record = json.loads((work / "job.json").read_text("utf-8"))
        total = row["total"]
        volumes = max(1, -(-total // self.volume_messages))
        written = [n for n in range(1, volumes + 1) if (work / _volume(n, "jsonl")).is_file()]
        done = min(total, len(written) * self.volume_messages)
        tick = progress(total, done) if progress else (lambda count: None)
        writer = _WRITERS[row["format"]](self.vault)
        for number, items in enumerate(self._volumes(work), start=1):
            if number in written:
                continue
            # The volume's record is renamed into place only when the
            # volume itself is durable: its presence marks the volume done.
            with _durable(work / _volume(number, "jsonl")) as handle:
                def note(entry: dict[str, Any], row: list[str] | None = None) -> None:
                    handle.write(json.dumps({"item": entry, "row": row}, sort_keys=True)
                                 + "\n")

                writer.write(folder, number, items, tick, note)
            done += len(items)
            self._set(job, done=done)
        return self._finish(job, folder, record, writer, actor)

    def _volumes(self, work: Path) -> Iterator[list[dict[str, Any]]]:
        with open(work / "items.jsonl", encoding="utf-8") as handle:
            batch: list[dict[str, Any]] = []
            for line in handle:
                batch.append(json.loads(line))
                if len(batch) == self.volume_messages:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _finish(self, job: int, folder: Path, record: dict[str, Any], writer: _Writer,
                actor: Principal) -> ExportResult:
        work = folder / WORK
        volume_files = sorted(work.glob("VOL*.jsonl"))
        writer.finish(folder, _records(volume_files))
        messages, message_bytes, files, file_bytes = _write_manifest(folder, volume_files,
                                                                     job)
        key = signing_key(self.key_path)
        public = key.public_key()
        custody = {
            **record, "format_version": CUSTODY_FORMAT, "export_format": record["format"],
            "finished_at": now().isoformat(), "finished_by": actor.address,
            "counts": {"messages": messages, "files": files, "volumes": len(volume_files)},
            "totals": {"message_bytes": message_bytes, "file_bytes": file_bytes},
            "manifest_sha256": _sha256_file(folder / MANIFEST),
            "signing_key": {"algorithm": "Ed25519", "fingerprint": fingerprint(public),
                            "public_key": PUBLIC_KEY},
        }
        custody.pop("format")
        body = json.dumps(custody, sort_keys=True, indent=1).encode("utf-8")
        with _durable(folder / PUBLIC_KEY, binary=True) as handle:
            handle.write(public_pem(key))
        with _durable(folder / CUSTODY, binary=True) as handle:
            handle.write(body)
        with _durable(folder / SIGNATURE, binary=True) as handle:
            handle.write(sign(key, body))
        shutil.rmtree(work)
        self._set(job, state="done", done=messages, bytes=message_bytes,
                  finished_at=custody["finished_at"])
        self.control.audit(actor.address, "export.finished", record["case"]["name"],
                           job=job, search=record["search"]["name"], messages=messages,
                           bytes=message_bytes, files=files,
                           manifest_sha256=custody["manifest_sha256"],
                           fingerprint=fingerprint(public))
        log.info("export job %d: %d messages, %d bytes in %s", job, messages,
                 message_bytes, folder, extra={"event": "export.finished"})
        return ExportResult(job, folder, messages, message_bytes, fingerprint(public))

    def _set(self, job: int, **values: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        with self.control.connect() as connection:
            connection.execute(f"UPDATE exports SET {columns} WHERE id = ?",
                               (*values.values(), job))


class _Writer:
    """Write one volume of items; the base keeps what every format shares."""

    suffix = ""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def write(self, folder: Path, number: int, items: list[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        """Write volume ``number``, recording each item's manifest entry."""
        raise NotImplementedError

    def finish(self, folder: Path, records: Iterator[dict[str, Any]]) -> None:
        """Write files that span volumes (load files); nothing by default."""

    def read(self, item: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """Return a message's bytes and its manifest entry (without where)."""
        raw = self.vault.read_message(f"{MESSAGES}/{item['message_id']}")
        entry = {"id": item["message_id"], "sha256": hashlib.sha256(raw).hexdigest(),
                 "size": len(raw), "receipts": list(item["receipts"]),
                 "custodians": list(item["custodians"])}
        return raw, entry


class _ZipWriter(_Writer):
    """A zip of original .eml files, one folder per custodian."""

    def write(self, folder: Path, number: int, items: list[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        name = _volume(number, "zip")
        with _durable(folder / name, binary=True) as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for item in items:
                    raw, entry = self.read(item)
                    entry.update(path=name, entry=f"{_custodian_folder(item)}/"
                                                  f"{item['message_id']}.eml")
                    archive.writestr(zipfile.ZipInfo(entry["entry"], _zip_time(item)), raw)
                    record(entry)
                    tick(1)


class _MboxWriter(_Writer):
    """One mboxrd file per volume (lines starting ">*From " gain one '>')."""

    def write(self, folder: Path, number: int, items: list[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        name = _volume(number, "mbox")
        offset = 0
        with _durable(folder / name, binary=True) as handle:
            for ordinal, item in enumerate(items, start=1):
                raw, entry = self.read(item)
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
                record(entry)
                tick(1)


class _DatWriter(_Writer):
    """Native .eml files and a Concordance DAT (and CSV) load file."""

    def write(self, folder: Path, number: int, items: list[dict[str, Any]],
              tick: Callable[[int], None], record: Record) -> None:
        volume = f"NATIVES/{_volume(number, '')}".rstrip(".")
        scratch = folder / (volume + ".part")
        if scratch.exists():
            shutil.rmtree(scratch)
        for item in items:
            raw, entry = self.read(item)
            relative = f"{_custodian_folder(item)}/{item['message_id']}.eml"
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            with _durable(scratch / relative, binary=True, atomic=False) as handle:
                handle.write(raw)
            entry.update(path=f"{volume}/{relative}", entry="")
            record(entry, self._row(raw, item, entry))
            tick(1)
        if (folder / volume).exists():
            shutil.rmtree(folder / volume)
        os.replace(scratch, folder / volume)
        _fsync_directory(folder / "NATIVES")

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
            "; ".join(item["receipts"]),
        ]

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

    def finish(self, folder: Path, records: Iterator[dict[str, Any]]) -> None:
        number = 0
        with _durable(folder / "loadfile.dat", binary=True) as dat, \
                _durable(folder / "loadfile.csv", binary=True) as raw_csv:
            text_csv = io.TextIOWrapper(raw_csv, encoding="utf-8", newline="")
            writer = csv.writer(text_csv)
            dat.write("\ufeff".encode("utf-8") + _dat_line(LOADFILE_FIELDS))
            writer.writerow(LOADFILE_FIELDS)
            for line in records:
                row = line["row"]
                number += 1
                row[0] = f"SR{number:08d}"
                dat.write(_dat_line(row))
                writer.writerow(row)
            text_csv.flush()
            text_csv.detach()


_WRITERS: dict[str, type[_Writer]] = {"zip": _ZipWriter, "mbox": _MboxWriter,
                                      "dat": _DatWriter}


def _write_manifest(folder: Path, volume_files: list[Path], job: int
                    ) -> tuple[int, int, int, int]:
    """Stream manifest.json from the volume records; return counts and totals."""
    from vault.custody import CONTROL_FILES, file_sha256, walk_files

    messages = message_bytes = files = file_bytes = 0
    # Written inside .work/ (which the file listing skips) and moved out.
    with _durable(folder / MANIFEST, scratch=folder / WORK / MANIFEST) as handle:
        handle.write('{"format": 1, "job": %d, "items": [' % job)
        for line in _records(volume_files):
            entry = line["item"]
            handle.write(("\n" if not messages else ",\n") + json.dumps(entry, sort_keys=True))
            messages += 1
            message_bytes += entry["size"]
        handle.write('\n], "files": [')
        for relative in walk_files(folder):
            if relative in CONTROL_FILES or relative.startswith(WORK + "/"):
                continue
            sha256, size = file_sha256(folder / relative)
            handle.write(("\n" if not files else ",\n") + json.dumps(
                {"path": relative, "sha256": sha256, "size": size}, sort_keys=True))
            files += 1
            file_bytes += size
        handle.write("\n]}\n")
    return messages, message_bytes, files, file_bytes


class _durable:
    """Open a file to write; on success fsync it and (atomically) put it in place."""

    def __init__(self, path: Path, *, binary: bool = False, atomic: bool = True,
                 scratch: Path | None = None) -> None:
        self.path = Path(path)
        self.scratch = self.path.with_name(self.path.name + ".part") if atomic else self.path
        self.scratch = scratch or self.scratch
        self.binary = binary

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
                os.fsync(self.handle.fileno())
        finally:
            self.handle.close()
        if kind is None and self.scratch != self.path:
            os.replace(self.scratch, self.path)
            _fsync_directory(self.path.parent)
        elif kind is not None and self.scratch != self.path:
            self.scratch.unlink(missing_ok=True)


def _records(volume_files: list[Path]) -> Iterator[dict[str, Any]]:
    """Yield the item records of every volume, in order, one at a time."""
    for path in volume_files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _volume(number: int, suffix: str) -> str:
    return f"VOL{number:04d}.{suffix}"


def _sha256_file(path: Path) -> str:
    from vault.custody import file_sha256

    return file_sha256(path)[0]


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
