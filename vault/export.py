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

import dataclasses
import fcntl
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from vault import VaultError
from vault.cases import Case, Cases, Match, SavedSearch
from vault.clock import now
from vault.config import Settings
from vault.control import ControlDB
from vault.custody import (CUSTODY, MANIFEST, PUBLIC_KEY, SIGNATURE, fingerprint,
                           public_pem, sign, signing_key)
from vault.ingest import Vault
from vault.roles import EXPORT_DOWNLOAD, EXPORT_RUN, Principal, require
from vault.volumes import WRITERS, Writer, durable, volume_name

log = logging.getLogger(__name__)

FORMATS = ("zip", "mbox", "dat")
CUSTODY_FORMAT = 1
WORK = ".work"
Progress = Callable[[int, int], Callable[[int], None]]


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
        with durable(work / "items.jsonl") as handle:
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
        with durable(work / "job.json") as handle:
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
        if "\0" in relative:
            raise ExportError(f"no file {relative!r} in export {job}")
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
        written = [n for n in range(1, volumes + 1) if (work / volume_name(n, "jsonl")).is_file()]
        done = min(total, len(written) * self.volume_messages)
        tick = progress(total, done) if progress else (lambda count: None)
        writer = WRITERS[row["format"]](self.vault)
        for number, items in enumerate(self._volumes(work), start=1):
            if number in written:
                continue
            # The volume's record is renamed into place only when the
            # volume itself is durable: its presence marks the volume done.
            with durable(work / volume_name(number, "jsonl")) as handle:
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

    def _finish(self, job: int, folder: Path, record: dict[str, Any], writer: Writer,
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
        with durable(folder / PUBLIC_KEY, binary=True) as handle:
            handle.write(public_pem(key))
        with durable(folder / CUSTODY, binary=True) as handle:
            handle.write(body)
        with durable(folder / SIGNATURE, binary=True) as handle:
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


def _write_manifest(folder: Path, volume_files: list[Path], job: int
                    ) -> tuple[int, int, int, int]:
    """Stream manifest.json from the volume records; return counts and totals."""
    from vault.custody import CONTROL_FILES, file_sha256, walk_files

    messages = message_bytes = files = file_bytes = 0
    # Written inside .work/ (which the file listing skips) and moved out.
    with durable(folder / MANIFEST, scratch=folder / WORK / MANIFEST) as handle:
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


def _records(volume_files: list[Path]) -> Iterator[dict[str, Any]]:
    """Yield the item records of every volume, in order, one at a time."""
    for path in volume_files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def _sha256_file(path: Path) -> str:
    from vault.custody import file_sha256

    return file_sha256(path)[0]


