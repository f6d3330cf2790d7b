"""Restore jobs kept in the control database, so their status outlives ``serve``.

The running process keeps each job in memory for its live progress and
writes it through to ``restore_jobs`` (one row a job: owner, folder,
state, counts, times) and ``restore_failures`` (one row a message not
restored, with the reason): when it starts, after every batch APPENDed
and when it ends.  A process that starts finds any job still marked
``running`` - its process ended mid-restore - and marks it
``interrupted``, keeping what was done, and audits that; the audit trail
keeps every finished job's outcome too.

This assumes one portal process per control database, which is what
``strongroom serve`` runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sqlite3
from typing import TYPE_CHECKING


from vault.clock import now
from vault.control import ControlDB

if TYPE_CHECKING:
    from web.restore import RestoreJob

log = logging.getLogger(__name__)

RUNNING = "running"
INTERRUPTED = "interrupted"


@dataclasses.dataclass(frozen=True)
class StoredRestore:
    """A restore as the database remembers it; reads like a RestoreJob."""

    id: str
    user_id: int
    actor: str
    folder: str
    state: str
    total: int
    restored: int
    failures: list[tuple[str, str]]
    error: str
    started_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def processed(self) -> int:
        return self.restored + len(self.failures)

    @property
    def is_running(self) -> bool:
        return self.state == RUNNING

    @property
    def is_interrupted(self) -> bool:
        return self.state == INTERRUPTED


class RestoreLedger:
    """Write restore jobs through to the control database and read them back."""

    def __init__(self, control: ControlDB) -> None:
        self.control = control

    def begin(self, job: RestoreJob) -> None:
        """Record a job that is about to run."""
        at = job.started_at.isoformat()
        with self.control.connect() as connection:
            connection.execute(
                "INSERT INTO restore_jobs (id, user_id, actor, folder, total, started_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.user_id, job.actor, job.folder, job.total, at, at))

    def progress(self, job: RestoreJob, *, state: str = RUNNING) -> None:
        """Record a job's counts and new failures; a final ``state`` ends it.

        Only a job still running is changed: one that a newer process
        already declared interrupted stays so.
        """
        at = now().isoformat()
        with self.control.connect(exclusive=True) as connection:
            recorded = connection.execute(
                "SELECT count(*) FROM restore_failures WHERE job_id = ?",
                (job.id,)).fetchone()[0]
            changed = connection.execute(
                "UPDATE restore_jobs SET state = ?, restored = ?, failed = ?, error = ?,"
                " server_folder = ?, updated_at = ?, finished_at = ?"
                " WHERE id = ? AND state = ?",
                (state, job.restored, len(job.failures), job.error, job.server_folder, at,
                 None if state == RUNNING else at, job.id, RUNNING)).rowcount
            if changed:
                connection.executemany(
                    "INSERT INTO restore_failures (job_id, message_id, reason)"
                    " VALUES (?, ?, ?)",
                    [(job.id, message_id, reason)
                     for message_id, reason in list(job.failures)[recorded:]])

    def interrupt_unfinished(self) -> list[StoredRestore]:
        """Mark every job left running by an earlier process as interrupted.

        Each is audited (``restore.interrupted``, under the job's owner,
        as the outcome of a finished job is) with what it had done.
        """
        at = now().isoformat()
        with self.control.connect(exclusive=True) as connection:
            if not _has_jobs_table(connection):
                return []  # a database older than this table: nothing ran
            ids = [row["id"] for row in connection.execute(
                "SELECT id FROM restore_jobs WHERE state = ?", (RUNNING,))]
            connection.execute(
                "UPDATE restore_jobs SET state = ?, finished_at = ?, updated_at = ?"
                " WHERE state = ?", (INTERRUPTED, at, at, RUNNING))
        jobs = [job for job in map(self._read, ids) if job is not None]
        for job in jobs:
            self.control.audit(
                job.actor, "restore.interrupted", job.folder, job=job.id,
                restored=job.restored, failed=len(job.failures),
                not_attempted=job.total - job.processed)
            log.warning("restore %s was interrupted after %d of %d messages", job.id,
                        job.processed, job.total, extra={"event": "restore.interrupted"})
        return jobs

    def load(self, job_id: str, user_id: int) -> StoredRestore | None:
        """Return the job if ``user_id`` owns it; anyone else's is None."""
        job = self._read(job_id)
        return job if job is not None and job.user_id == user_id else None

    def _read(self, job_id: str) -> StoredRestore | None:
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT * FROM restore_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            failures = [(r["message_id"], r["reason"]) for r in connection.execute(
                "SELECT message_id, reason FROM restore_failures WHERE job_id = ?"
                " ORDER BY id", (job_id,))]
        return StoredRestore(
            id=row["id"], user_id=row["user_id"], actor=row["actor"], folder=row["folder"],
            state=row["state"], total=row["total"], restored=row["restored"],
            failures=failures, error=row["error"],
            started_at=dt.datetime.fromisoformat(row["started_at"]),
            finished_at=(dt.datetime.fromisoformat(row["finished_at"])
                         if row["finished_at"] else None))


def _has_jobs_table(connection: sqlite3.Connection) -> bool:
    return connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'restore_jobs'"
    ).fetchone() is not None
