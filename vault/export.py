"""Evidence exports: what a case's saved search found, streamed to a folder.

An export is a job.  Starting it runs the search once and freezes the
result in the job's work folder (``.work/items.jsonl``), so that the
export is of exactly what the search found at that catalogue state,
whatever arrives later.  Running it writes the items in *volumes* of a
fixed number of messages to the export's location (a folder, or an S3
prefix: ``vault.export_locations``); once a volume is durable its record
(``.work/VOLnnnn.jsonl``: each item's manifest entry and each file's
SHA-256) is renamed into place.  A job interrupted by a crash or restart
resumes at the first volume without a record, so at most one volume is
written twice.  The manifest is streamed from the records and hashed as
it is written.  Memory holds one item, one message and (on S3) one upload
part at a time, whatever the export's size; the work folder is always
local.

A message whose stored object is damaged or missing does not stop the
export: it is left out, and its id and the reason go into its volume's
record and from there into the manifest's ``faults`` (and a load-file
row), the custody record's counts, the job row and the audit trail.  The
job then ends "completed with N fault(s)".  Being in the volume record,
a fault is kept by a resume and never recorded twice.

Layout of a finished export folder (see ``vault.custody`` for the control
files)::

    VOL0001.zip                 format zip: <custodian>/<message-id>.eml
    VOL0001.mbox                format mbox: mboxrd, one message after another
    NATIVES/VOL0001/<custodian>/<message-id>.eml
    loadfile.dat, loadfile.csv  format dat: one row per message
    manifest.json  custody.json  custody.sig  export-signing-key.pub
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from vault import VaultError
from vault.cases import Case, Cases, Match, SavedSearch
from vault.clock import now
from vault.config import Settings
from vault.control import ControlDB
from vault.custody import (CUSTODY, MANIFEST, PUBLIC_KEY, SIGNATURE, fingerprint,
                           public_pem, sign, signing_key)
from vault.export_locations import (S3_SCHEME, ExportLocation, HashingFile,
                                    LocationError, WrittenFile, open_location,
                                    stream_zip)
from vault.ingest import Vault
from vault.roles import EXPORT_DOWNLOAD, EXPORT_RUN, Principal, require
from vault.volumes import WRITERS, Writer, durable, volume_name

log = logging.getLogger(__name__)

FORMATS = ("zip", "mbox", "dat")
CUSTODY_FORMAT = 1
WORK = ".work"
# How many of the messages left out a finished job names in its result
# (the command line prints them); the manifest names every one.
FAULTS_SHOWN = 5
Progress = Callable[[int, int], Callable[[int], None]]


class ExportError(VaultError):
    """An export cannot start or go on; the message says why."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What a finished export holds."""

    job: int
    path: str
    messages: int
    bytes: int
    fingerprint: str
    faults: int = 0
    left_out: tuple[tuple[str, str], ...] = ()
    """The first FAULTS_SHOWN messages left out: (id, reason)."""


@dataclasses.dataclass(frozen=True)
class Download:
    """One export file on its way to a member: name, size if known, chunks."""

    name: str
    size: int | None
    mimetype: str
    chunks: Iterator[bytes]


class Exporter:
    """Start, run and resume export jobs for one archive.

    ``export_base`` is where new exports go: a folder, or ``s3://BUCKET/
    PREFIX`` with ``s3_client`` making the clients.  ``export_root`` is a
    local folder in every case: an S3 export keeps its work records there
    (``export_root/CASE/export-.../.work``) until it is finished.
    """

    def __init__(self, control: ControlDB, cases: Cases, vault: Vault, *,
                 export_root: Path, key_path: Path, volume_messages: int,
                 export_base: str = "", s3_client: Callable[[], Any] | None = None
                 ) -> None:
        self.control = control
        self.cases = cases
        self.vault = vault
        self.export_root = Path(export_root)
        self.export_base = export_base or str(self.export_root)
        self.s3_client = s3_client
        self.key_path = Path(key_path)
        self.volume_messages = volume_messages

    @classmethod
    def for_settings(cls, settings: Settings, control: ControlDB, cases: Cases,
                     vault: Vault | None = None) -> Exporter:
        """Return an exporter configured by the ``[ediscovery]`` settings."""
        from vault.ingest import open_vault

        ediscovery = settings.ediscovery
        base, client = "", None
        if ediscovery.export_kind == "s3":
            base = f"{S3_SCHEME}{ediscovery.export_bucket}/{ediscovery.export_prefix}"

            def client() -> Any:
                from vault.s3store import s3_client

                return s3_client(ediscovery.export_endpoint_url or None,
                                 ediscovery.export_region or settings.store.region or None)

        return cls(control, cases, vault or open_vault(settings),
                   export_root=settings.path(ediscovery.export_path),
                   key_path=settings.path(ediscovery.signing_key_file),
                   volume_messages=ediscovery.volume_messages,
                   export_base=base, s3_client=client)

    def start(self, case: Case, search: SavedSearch, actor: Principal, format: str,
              destination: str | Path | None = None) -> int:
        """Run the search, freeze its result in a new job; return the job id."""
        require(actor, EXPORT_RUN)
        if format not in FORMATS:
            raise ExportError(f"unknown export format {format!r}; choose from "
                              + ", ".join(FORMATS))
        matches = self.cases.stream(case, search, actor)
        return self.create_job(case, search, matches, None, actor, format, destination)

    def create_job(self, case: Case, search: SavedSearch, matches: Iterable[Match],
                   state: dict[str, Any] | None, actor: Principal, format: str,
                   destination: str | Path | None = None) -> int:
        """Freeze ``matches`` (a search's result at ``state``) as a new job.

        ``matches`` is read once, one at a time, straight to the job's
        items file.  With ``state`` None it is the state the search
        recorded once the last match was read.
        """
        require(actor, EXPORT_RUN)
        base = str(destination) if destination else self.export_base
        if base.startswith(S3_SCHEME) and self.s3_client is None:
            raise ExportError(f"{base}: exporting to S3 needs ediscovery.export_kind = "
                              "'s3' and its settings")
        with self.control.connect() as connection:
            job = connection.execute(
                "INSERT INTO exports (case_id, search_id, format, path, total, operator,"
                " created_at) VALUES (?, ?, ?, '', 0, ?, ?)",
                (case.id, search.id, format, actor.address,
                 now().isoformat())).lastrowid
            assert job is not None
            name = f"export-{job:06d}-{search.name}-{format}"
            if base.startswith(S3_SCHEME):
                uri = f"{base.rstrip('/')}/{case.name}/{name}/"
            else:
                uri = str(Path(destination) / name if destination
                          else self.export_root / case.name / name)
            connection.execute("UPDATE exports SET path = ? WHERE id = ?", (uri, job))
        work = self._work(uri)
        work.mkdir(parents=True, exist_ok=False)
        total = 0
        with durable(work / "items.jsonl") as handle:
            for match in matches:
                handle.write(json.dumps(dataclasses.asdict(match), sort_keys=True) + "\n")
                total += 1
        if state is None:
            state = self.cases.search(case, search.name).state
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
        with durable(work / "job.json") as handle:
            handle.write(json.dumps(job_record, sort_keys=True))
        self.control.audit(actor.address, "export.started", case.name, job=job,
                           search=search.name, format=format, messages=total,
                           path=uri, documents=state.get("documents"),
                           cursor=state.get("cursor"))
        return int(job)

    def run(self, job: int, actor: Principal, progress: Progress | None = None
            ) -> ExportResult:
        """Write every volume not yet written, then sign; resumable."""
        require(actor, EXPORT_RUN)
        row = self.job(job)
        if row["state"] == "done":
            raise ExportError(f"export job {job} is finished already")
        work = self._work(row["path"])
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
                return self._run(job, self.location(row["path"]), work, row, actor,
                                 progress)
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

    def location(self, uri: str) -> ExportLocation:
        """Return the location a job's ``path`` names."""
        return open_location(uri, self.s3_client)

    def files(self, job: dict[str, Any]) -> list[str]:
        """List what a member can download from a finished job: the
        top-level files, and each volume of natives as one zip."""
        if job["state"] != "done":
            return []
        try:
            location = self.location(job["path"])
            names, _ = location.listing()
            natives = location.listing("NATIVES")[1]
        except LocationError as err:
            log.warning("export job %d: cannot list %s: %s", job["id"], job["path"], err)
            return []
        return names + [f"NATIVES/{name}.zip" for name in natives]

    def download(self, case: Case, job: int, relative: str, actor: Principal) -> Download:
        """Return one file of a finished export as a stream, audited.

        ``NATIVES/VOLnnnn.zip`` is that folder of natives, zipped as it is
        sent.  The caller has checked that ``actor`` is a member of ``case``.
        """
        require(actor, EXPORT_DOWNLOAD)
        row = self.job(job)
        if row["case_id"] != case.id or row["state"] != "done":
            raise ExportError(f"no finished export {job} in case {case.name}")
        location = self.location(row["path"])
        natives = re.fullmatch(r"NATIVES/(VOL[0-9]{4})\.zip", relative)
        if natives and any(location.listing(relative.removesuffix(".zip"))):
            chunks = stream_zip(location, relative.removesuffix(".zip"))
            sent = Download(f"{natives.group(1)}.zip", None, "application/zip", chunks)
        else:
            size = location.size(relative)
            if size is None:
                raise ExportError(f"no file {relative!r} in export {job}")
            # The name goes into a Content-Disposition header: plain characters only.
            name = re.sub(r"[^A-Za-z0-9._-]", "_", relative.rpartition("/")[2])
            sent = Download(name, size, "application/octet-stream",
                            location.chunks(relative))
        self.control.audit(actor.address, "export.downloaded", case.name, job=job,
                           file=relative)
        return sent

    def fetch(self, case: Case, job: int, destination: Path, actor: Principal) -> Path:
        """Copy a finished export (say from S3) into a new local folder, streamed.

        The folder then verifies with ``verify-export`` like one written
        locally.  Every object under the export's prefix is copied, listed
        or not, so that an object added there shows up as extra.
        """
        require(actor, EXPORT_DOWNLOAD)
        row = self.job(job)
        if row["case_id"] != case.id or row["state"] != "done":
            raise ExportError(f"no finished export {job} in case {case.name}")
        location = self.location(row["path"])
        folder = Path(destination) / str(row["path"]).rstrip("/").rpartition("/")[2]
        if folder.exists():
            raise ExportError(f"{folder} exists already; fetch into an empty place")
        files = total = 0
        for relative, _ in location.files():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with durable(target, binary=True, sync=False) as handle:
                for chunk in location.chunks(relative):
                    handle.write(chunk)
                    total += len(chunk)
            files += 1
        self.control.audit(actor.address, "export.fetched", case.name, job=job,
                           files=files, bytes=total, to=str(folder))
        return folder

    def _work(self, uri: str) -> Path:
        if not uri.startswith(S3_SCHEME):
            return Path(uri) / WORK
        case, name = uri.rstrip("/").split("/")[-2:]
        return self.export_root / case / name / WORK

    def _run(self, job: int, location: ExportLocation, work: Path, row: dict[str, Any],
             actor: Principal, progress: Progress | None) -> ExportResult:
        record = json.loads((work / "job.json").read_text("utf-8"))
        total = row["total"]
        volumes = max(1, -(-total // self.volume_messages))
        written = {n for n in range(1, volumes + 1)
                   if (work / volume_name(n, "jsonl")).is_file()}
        done = min(total, len(written) * self.volume_messages)
        faults = sum(1 for _ in _records(sorted(work.glob("VOL*.jsonl")), "fault"))
        tick = progress(total, done) if progress else (lambda count: None)
        writer = WRITERS[row["format"]](self.vault)
        location.abandon_partial()
        for number, items in self._volumes(work, written):
            # The volume's record is renamed into place only when the
            # volume itself is durable: its presence marks the volume done.
            with durable(work / volume_name(number, "jsonl")) as handle:
                note = _VolumeRecord(handle)
                writer.write(location, number, items, tick, note)
            done += note.items
            faults += note.faults
            self._set(job, done=done, faults=faults)
        return self._finish(job, location, work, record, writer, actor)

    def _volumes(self, work: Path, skip: set[int]
                 ) -> Iterator[tuple[int, Iterator[dict[str, Any]]]]:
        """Yield each volume still to write, its items read one at a time."""
        with open(work / "items.jsonl", encoding="utf-8") as handle:
            for number in itertools.count(1):
                lines = itertools.islice(handle, self.volume_messages)
                first = next(lines, None)
                if first is None:
                    return
                if number in skip:
                    collections.deque(lines, maxlen=0)
                    continue
                yield number, (json.loads(line) for line in itertools.chain([first], lines))
                collections.deque(lines, maxlen=0)  # whatever the writer left

    def _finish(self, job: int, location: ExportLocation, work: Path,
                record: dict[str, Any], writer: Writer, actor: Principal) -> ExportResult:
        volume_files = sorted(work.glob("VOL*.jsonl"))
        spanning = writer.finish(location, _records(volume_files, "item", "fault"))
        with location.create(MANIFEST) as handle:
            totals = _write_manifest(handle, volume_files, spanning, job)
        manifest = handle.written()
        messages, message_bytes = totals.messages, totals.message_bytes
        key = signing_key(self.key_path)
        public = key.public_key()
        custody = {
            **record, "format_version": CUSTODY_FORMAT, "export_format": record["format"],
            "finished_at": now().isoformat(), "finished_by": actor.address,
            "counts": {"messages": messages, "files": totals.files,
                       "volumes": len(volume_files), "faults": totals.faults},
            "totals": {"message_bytes": message_bytes, "file_bytes": totals.file_bytes},
            "manifest_sha256": manifest.sha256,
            "signing_key": {"algorithm": "Ed25519", "fingerprint": fingerprint(public),
                            "public_key": PUBLIC_KEY},
        }
        custody.pop("format")
        body = json.dumps(custody, sort_keys=True, indent=1).encode("utf-8")
        for name, content in ((PUBLIC_KEY, public_pem(key)), (CUSTODY, body),
                              (SIGNATURE, sign(key, body))):
            with location.create(name) as handle:
                handle.write(content)
        shutil.rmtree(work)
        _remove_empty_parent(work.parent)
        self._set(job, state="done", done=messages, bytes=message_bytes,
                  faults=totals.faults, finished_at=custody["finished_at"])
        self.control.audit(actor.address, "export.finished", record["case"]["name"],
                           job=job, search=record["search"]["name"], messages=messages,
                           bytes=message_bytes, files=totals.files, faults=totals.faults,
                           manifest_sha256=custody["manifest_sha256"],
                           fingerprint=fingerprint(public))
        log.info("export job %d: %d messages, %d bytes in %s", job, messages,
                 message_bytes, location.uri, extra={"event": "export.finished"})
        if totals.faults:
            log.error("export job %d: %d message(s) could not be read and are left out "
                      "(named in %s): %s", job, totals.faults, MANIFEST,
                      ", ".join(message for message, _ in totals.left_out),
                      extra={"event": "export.faults"})
        return ExportResult(job, location.uri, messages, message_bytes, fingerprint(public),
                            totals.faults, tuple(totals.left_out))

    def _set(self, job: int, **values: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        with self.control.connect() as connection:
            connection.execute(f"UPDATE exports SET {columns} WHERE id = ?",
                               (*values.values(), job))


class _VolumeRecord:
    """A volume's record: one JSON line per item (entry, load-file row),
    per message left out (fault entry, load-file row) and per file (path,
    SHA-256, size), written as the volume is.  ``items`` counts both kinds
    of message: every one the volume has dealt with."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.items = 0
        self.faults = 0

    def item(self, entry: dict[str, Any], row: list[str] | None = None) -> None:
        self.handle.write(json.dumps({"item": entry, "row": row}, sort_keys=True) + "\n")
        self.items += 1

    def fault(self, entry: dict[str, Any], row: list[str] | None = None) -> None:
        self.handle.write(json.dumps({"fault": entry, "row": row}, sort_keys=True) + "\n")
        self.items += 1
        self.faults += 1

    def file(self, written: WrittenFile) -> None:
        self.handle.write(json.dumps({"file": written.entry()}, sort_keys=True) + "\n")


@dataclasses.dataclass
class _ManifestTotals:
    """What the manifest lists: counts, byte totals, the first faults."""

    messages: int = 0
    message_bytes: int = 0
    files: int = 0
    file_bytes: int = 0
    faults: int = 0
    left_out: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _write_manifest(handle: HashingFile, volume_files: list[Path],
                    spanning: list[WrittenFile], job: int) -> _ManifestTotals:
    """Stream manifest.json from the volume records; return counts and totals.

    ``faults`` is always present, empty when every message was exported,
    so that a reader can tell "none left out" from an older manifest.
    """
    totals = _ManifestTotals()
    handle.write(b'{"format": 1, "job": %d, "items": [' % job)
    for line in _records(volume_files):
        entry = line["item"]
        _write_entry(handle, entry, totals.messages)
        totals.messages += 1
        totals.message_bytes += entry["size"]
    handle.write(b'\n], "files": [')
    listed = itertools.chain(_records(volume_files, "file"),
                             ({"file": written.entry()} for written in spanning))
    for line in listed:
        _write_entry(handle, line["file"], totals.files)
        totals.files += 1
        totals.file_bytes += line["file"]["size"]
    handle.write(b'\n], "faults": [')
    for line in _records(volume_files, "fault"):
        _write_entry(handle, line["fault"], totals.faults)
        totals.faults += 1
        if len(totals.left_out) < FAULTS_SHOWN:
            totals.left_out.append((line["fault"]["id"], line["fault"]["reason"]))
    handle.write(b"\n]}\n")
    return totals


def _write_entry(handle: HashingFile, entry: dict[str, Any], before: int) -> None:
    """Write one entry of a manifest list, after ``before`` others."""
    handle.write((("\n" if not before else ",\n")
                  + json.dumps(entry, sort_keys=True)).encode("utf-8"))


def _records(volume_files: list[Path], *kinds: str) -> Iterator[dict[str, Any]]:
    """Yield the records of every volume of the given kinds ("item" if
    none given; "file", "fault"), in order, one at a time."""
    wanted = kinds or ("item",)
    for path in volume_files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                parsed = json.loads(line)
                if any(kind in parsed for kind in wanted):
                    yield parsed


def _remove_empty_parent(folder: Path) -> None:
    # An S3 export's local work folder (CASE/export-...) holds nothing else.
    with contextlib.suppress(OSError):
        folder.rmdir()
