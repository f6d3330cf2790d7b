"""Restore archived messages into their owner's mailbox over IMAP.

A restore APPENDs each message (RFC 3501 section 6.3.11) with its original
bytes, its original date as the internal date and the configured flags, to
a folder created when absent.  The portal logs in either as the user, with
an IMAP password the user types for this one restore and that is kept only
in memory while the login happens, or as a master user configured by the
administrator (SASL PLAIN with the user as authorization identity, RFC 4616
section 2).  Ownership is checked again for every message as it is read.

Large restores run in a background thread (a ``RestoreJob``) whose progress
the portal shows; the outcome of every restore goes to the audit log, and
every job is written through to the control database (``RestoreLedger``)
so that its status page still answers after a restart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import logging
import secrets
import threading
from email.parser import BytesHeaderParser
from email.policy import compat32
from collections.abc import Callable
from pathlib import Path

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from werkzeug.exceptions import NotFound

from vault import VaultError
from vault.clock import now
from vault.config import RestoreSettings
from web.accounts import User
from web.archive import Archive, ArchiveDamaged
from web.mailbox import (Mailbox, RestoreError, RestoreLoginError, credentials_for,
                         reason_of)
from web.restore_jobs import RestoreLedger, StoredRestore

__all__ = ["RestoreError", "RestoreJob", "Restorer", "folder_name", "internal_date"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 1024 * 1024
CONCURRENT_JOBS = 2
KEPT_JOBS = 200
# A MULTIAPPEND batch: enough messages to spare most per-command syncs,
# few enough bytes to keep a restore's memory small.
BATCH_MESSAGES = 25
BATCH_BYTES = 8 * 1024 * 1024


def folder_name(pattern: str, moment: dt.datetime) -> str:
    """Fill the configured folder pattern for a restore started at ``moment``."""
    utc = moment.astimezone(dt.timezone.utc)
    return pattern.format(date=utc.strftime("%Y-%m-%d"), time=utc.strftime("%H%M%S"))


def internal_date(raw: bytes, received_at: Callable[[], dt.datetime | None]
                  ) -> dt.datetime | None:
    """Return when the message arrived, as the mailbox would have dated it.

    The top Received header is the time the organisation's own server took
    the message (each hop prepends its trace, RFC 5321 section 4.4), which
    is the internal date the original mailbox gave it (case B29); then the
    Date header; then ``received_at()``, the archive's own receipt time,
    looked up only for a message that has neither.  A time without a zone
    (RFC 5322 "-0000") is taken as UTC.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
    received = headers.get_all("Received") or []
    candidates = [str(received[0]).rpartition(";")[2]] if received else []
    candidates.append(str(headers.get("Date", "")))
    for text in candidates:
        try:
            date = email.utils.parsedate_to_datetime(text.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if date.tzinfo is None:
            date = date.replace(tzinfo=dt.timezone.utc)
        if 1970 <= date.year < 10000:
            return date
    return received_at()


@dataclasses.dataclass
class RestoreJob:
    """The progress and outcome of one restore, as its status page shows it."""

    id: str
    user_id: int
    actor: str
    folder: str
    message_ids: list[str]
    credentials: str
    started_at: dt.datetime
    restored: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    error: str = ""
    server_folder: str = ""
    finished_at: dt.datetime | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    @property
    def total(self) -> int:
        return len(self.message_ids)

    @property
    def processed(self) -> int:
        return self.restored + len(self.failures)

    @property
    def is_running(self) -> bool:
        return not self.done.is_set()

    @property
    def is_interrupted(self) -> bool:
        return False

    @property
    def outcome(self) -> str:
        """Return how the finished job ended: restored, partial or failed."""
        if self.error or not self.restored:
            return "failed"
        return "partial" if self.failures else "restored"


class Restorer:
    """Start restores in the background and keep their progress."""

    def __init__(self, archive: Archive, settings: RestoreSettings, home: Path) -> None:
        self.archive = archive
        self.settings = settings
        self.home = home
        self._jobs: dict[str, RestoreJob] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(CONCURRENT_JOBS)
        self.ledger = RestoreLedger(archive.control)

    @property
    def is_enabled(self) -> bool:
        return bool(self.settings.imap_host)

    def start(self, user: User, message_ids: list[str], password: str) -> RestoreJob:
        """Log in to the user's mailbox and start restoring in the background.

        Raises RestoreError (nothing restored) when the login fails.  The
        password is used for the login only and is not kept.
        """
        credentials = credentials_for(self.settings, self.home, user, password)
        mailbox = Mailbox(self.settings, self.home)
        try:
            mailbox.open(credentials)
        except RestoreError as err:
            action = ("restore.login_failure" if isinstance(err, RestoreLoginError)
                      else "restore.failure")
            self.archive.control.audit(user.address, action, login=credentials.login,
                                       credentials=credentials.description,
                                       count=len(message_ids), error=str(err))
            raise
        started = now()
        job = RestoreJob(secrets.token_urlsafe(16), user.id, user.address,
                         folder_name(self.settings.folder, started), list(message_ids),
                         credentials.description, started)
        self.archive.control.audit(user.address, "restore.start", job.folder,
                                   job=job.id, count=job.total,
                                   credentials=job.credentials)
        try:
            self.ledger.begin(job)
        except BaseException:
            mailbox.close()
            raise
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        worker = threading.Thread(target=self._run, args=(job, user, mailbox),
                                  name=f"restore-{job.id[:8]}", daemon=True)
        worker.start()
        return job

    def job(self, job_id: str, user: User) -> RestoreJob | StoredRestore | None:
        """Return a restore of ``user``'s; another user's is None.

        A job of this process is shown live; an older one, or one this
        process has forgotten, as the control database remembers it.
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            return job if job.user_id == user.id else None
        return self.ledger.load(job_id, user.id)

    def recover(self) -> list[StoredRestore]:
        """Mark the jobs an earlier process left running as interrupted."""
        return self.ledger.interrupt_unfinished()

    def _forget_old(self) -> None:
        finished = sorted((job for job in self._jobs.values() if not job.is_running),
                          key=lambda job: job.started_at)
        while len(self._jobs) > KEPT_JOBS and finished:
            del self._jobs[finished.pop(0).id]

    def _run(self, job: RestoreJob, user: User, mailbox: Mailbox) -> None:
        try:
            with self._slots:
                self._restore(job, user, mailbox)
        except Exception as err:
            log.exception("restore %s for %s stopped", job.id, job.actor,
                          extra={"event": "restore.crashed"})
            job.error = f"The restore stopped: {reason_of(err)}."
        finally:
            mailbox.close()
            job.finished_at = now()
            self._audit_outcome(job)
            self._record(job, final=True)
            job.done.set()

    def _record(self, job: RestoreJob, *, final: bool = False) -> None:
        # The database copy is for after a restart; a failure to write it
        # must not stop the restore that is running now.
        try:
            self.ledger.progress(job, state=job.outcome if final else "running")
        except Exception:
            log.exception("restore %s: its progress could not be recorded", job.id,
                          extra={"event": "restore.record_failed"})

    def _restore(self, job: RestoreJob, user: User, mailbox: Mailbox) -> None:
        try:
            folder = mailbox.ensure_folder(job.folder)
        except (OSError, IMAPClientError) as err:
            job.error = f"The folder {job.folder} could not be created: {reason_of(err)}."
            return
        job.server_folder = folder
        ready: list[tuple[str, bytes, dt.datetime | None]] = []
        for index, message_id in enumerate(job.message_ids):
            prepared = self._prepare(job, user, message_id)
            if prepared is not None:
                ready.append(prepared)
            is_last = index + 1 == job.total
            if ready and (is_last or len(ready) >= BATCH_MESSAGES
                          or sum(len(raw) for _, raw, _ in ready) >= BATCH_BYTES):
                self._append(job, user, mailbox, folder, ready)
                ready = []
                self._record(job)
            if mailbox.client is None:
                job.failures.extend((rest, "not attempted: the connection was lost")
                                    for rest in job.message_ids[index + 1:])
                return

    def _prepare(self, job: RestoreJob, user: User, message_id: str
                 ) -> tuple[str, bytes, dt.datetime | None] | None:
        """Read one message the user owns, or record why it cannot be."""
        try:
            raw = self.archive.open_message(user, message_id)
        except NotFound:
            self.archive.control.audit(user.address, "restore.refused", message_id)
            job.failures.append((message_id, "not in your archive"))
            return None
        except ArchiveDamaged:
            job.failures.append((message_id, "its stored copy failed the integrity check"))
            return None
        return message_id, raw, internal_date(raw, lambda: self._received_at(message_id))

    def _still_owned(self, job: RestoreJob, user: User,
                     ready: list[tuple[str, bytes, dt.datetime | None]]
                     ) -> list[tuple[str, bytes, dt.datetime | None]]:
        """Keep the messages the user may read now, not when the job began.

        A mailbox shared with the user and taken back while the job runs
        closes to it at once, as it does to a signed-in page; so does
        every message of an account disabled meanwhile.
        """
        now = self.archive.accounts.get(user_id=user.id)
        mailboxes = now.mailboxes if now is not None else frozenset()
        kept = []
        for item in ready:
            if self.archive.catalogue.is_visible(item[0], mailboxes):
                kept.append(item)
                continue
            self.archive.control.audit(user.address, "restore.refused", item[0])
            job.failures.append((item[0], "not in your archive any more"))
        return kept

    def _append(self, job: RestoreJob, user: User, mailbox: Mailbox, folder: str,
                ready: list[tuple[str, bytes, dt.datetime | None]]) -> None:
        """APPEND a batch: in one MULTIAPPEND if it can, else one by one."""
        ready = self._still_owned(job, user, ready)
        if len(ready) > 1 and mailbox.can_append_many():
            try:
                if mailbox.append_many(folder, [(raw, when) for _, raw, when in ready]):
                    job.restored += len(ready)
                    return
            except (OSError, IMAPClientAbortError):
                mailbox.client = None
            # RFC 3502 section 3: a refused MULTIAPPEND saves none of its
            # messages, so sending them one by one finds the refused one.
        for message_id, raw, when in ready:
            if mailbox.client is None:
                job.failures.append((message_id, "the connection to the mail server was lost"))
                continue
            if not self._still_owned(job, user, [(message_id, raw, when)]):
                continue
            try:
                mailbox.append(folder, raw, when)
                job.restored += 1
            except (OSError, IMAPClientAbortError) as err:
                mailbox.client = None
                job.failures.append((message_id, "the connection to the mail server was "
                                                 f"lost: {reason_of(err)}"))
            except IMAPClientError as err:
                job.failures.append((message_id, f"the mail server refused it: {reason_of(err)}"))

    def _received_at(self, message_id: str) -> dt.datetime | None:
        document = self.archive.catalogue.document(message_id) or {}
        for key in document.get("receipts", [])[:1]:
            try:
                return self.archive.vault.read_receipt(key).received_at
            except VaultError:
                log.warning("receipt %s cannot be read", key,
                            extra={"event": "restore.receipt_unreadable"})
        return None

    def _audit_outcome(self, job: RestoreJob) -> None:
        outcome = job.outcome
        failed = {message_id for message_id, _ in job.failures}
        self.archive.control.audit(
            job.actor, "restore", job.server_folder or job.folder, job=job.id, outcome=outcome,
            restored=job.restored, failed=len(job.failures), error=job.error,
            failures=[{"message": m, "reason": r} for m, r in job.failures],
            messages=[m for m in job.message_ids[:job.processed] if m not in failed],
        )
        log.info("restore %s for %s into %s: %d restored, %d failed", job.id, job.actor,
                 job.server_folder or job.folder, job.restored, len(job.failures),
                 extra={"event": "restore.finished"})
