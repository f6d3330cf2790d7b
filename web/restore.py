"""Restore archived messages into their owner's mailbox over IMAP.

A restore APPENDs each message (RFC 3501 section 6.3.11) with its original
bytes, its original date as the internal date and the configured flags, to
a folder created when absent.  The portal logs in either as the user, with
an IMAP password the user types for this one restore and that is kept only
in memory while the login happens, or as a master user configured by the
administrator (SASL PLAIN with the user as authorization identity, RFC 4616
section 2).  Ownership is checked again for every message as it is read.

Large restores run in a background thread (a ``RestoreJob``) whose progress
the portal shows; the outcome of every restore goes to the audit log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import logging
import re
import secrets
import ssl
import threading
from email.parser import BytesHeaderParser
from email.policy import compat32
from collections.abc import Callable
from pathlib import Path

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from werkzeug.exceptions import NotFound

from vault import VaultError
from vault.clock import now
from vault.config import RestoreSettings
from web.accounts import User
from web.archive import Archive, ArchiveDamaged

log = logging.getLogger(__name__)
# At DEBUG imapclient logs the protocol, message bytes and the AUTHENTICATE
# exchange included; none of that may reach the portal's log.
logging.getLogger("imapclient").setLevel(logging.INFO)

MAX_HEADER_BYTES = 1024 * 1024
CONCURRENT_JOBS = 2
KEPT_JOBS = 200
# A MULTIAPPEND batch: enough messages to spare most per-command syncs,
# few enough bytes to keep a restore's memory small.
BATCH_MESSAGES = 25
BATCH_BYTES = 8 * 1024 * 1024
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")


class RestoreError(Exception):
    """A restore could not start; the message is for the person restoring.

    ``status`` is the HTTP status the portal answers with.
    """

    status = 502


class RestoreLoginError(RestoreError):
    """The IMAP server refused the credentials, or none were given."""

    status = 400


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Who the portal logs in to IMAP as; the password never prints."""

    login: str
    password: str = dataclasses.field(repr=False)
    master_user: str = ""

    @property
    def description(self) -> str:
        """Say how the login is made, for the audit log."""
        return "master user" if self.master_user else "own password"


def credentials_for(settings: RestoreSettings, home: Path, user: User,
                    password: str) -> Credentials:
    """Return the login for ``user``: the master user when configured."""
    local = user.address.partition("@")[0]
    login = settings.login.format(address=user.address, local=local)
    if settings.master_user:
        return Credentials(login, read_master_password(home / settings.master_password_file),
                           settings.master_user)
    if not password:
        raise RestoreLoginError("Type the password of your mailbox to restore into it.")
    return Credentials(login, password)


def read_master_password(path: Path) -> str:
    """Read the master user's password from its file (first line)."""
    try:
        if path.stat().st_mode & 0o077:
            log.warning("restore.master_password_file %s is readable by others; "
                        "make it mode 0600", path, extra={"event": "restore.secret_exposed"})
        return path.read_text("utf-8").splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError) as err:
        log.error("restore.master_password_file %s cannot be read: %s", path,
                  type(err).__name__, extra={"event": "restore.misconfigured"})
        raise RestoreError("Restore is not available: the archive's mail server "
                           "login is misconfigured. Please tell your administrator.") from None


def folder_name(pattern: str, moment: dt.datetime) -> str:
    """Fill the configured folder pattern for a restore started at ``moment``."""
    utc = moment.astimezone(dt.timezone.utc)
    return pattern.format(date=utc.strftime("%Y-%m-%d"), time=utc.strftime("%H%M%S"))


def internal_date(raw: bytes, received_at: Callable[[], dt.datetime | None]
                  ) -> dt.datetime | None:
    """Return the message's Date header, else ``received_at()``.

    A Date without a zone (RFC 5322 "-0000") is taken as UTC.  The
    receipt time is looked up only for a message without a usable Date.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
    try:
        date = email.utils.parsedate_to_datetime(str(headers.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        date = None
    if date is not None and date.tzinfo is None:
        date = date.replace(tzinfo=dt.timezone.utc)
    if date is not None and 1970 <= date.year < 10000:
        return date
    return received_at()


def imap_bytes(raw: bytes) -> bytes:
    """Return the message with CRLF line ends, as APPEND requires.

    RFC 3501 section 4.3 messages end lines in CRLF; some servers refuse
    bare LF or CR.  A message already in CRLF passes unchanged.
    """
    outside_crlf = raw.replace(b"\r\n", b"")
    if b"\n" not in outside_crlf and b"\r" not in outside_crlf:
        return raw
    return _BARE_LF.sub(b"\r\n", _BARE_CR.sub(b"\r\n", raw))


class Mailbox:
    """One IMAP connection to the mailbox a restore goes to."""

    def __init__(self, settings: RestoreSettings, home: Path) -> None:
        self.settings = settings
        self.home = home
        self.client: IMAPClient | None = None

    def open(self, credentials: Credentials) -> None:
        """Connect and log in; raise RestoreError with a reason a user can read."""
        where = f"{self.settings.imap_host}:{self.settings.imap_port}"
        try:
            self.client = self._connect()
        except (OSError, IMAPClientError) as err:
            log.warning("restore: cannot reach the IMAP server %s: %s", where, err,
                        extra={"event": "restore.unreachable"})
            raise RestoreError(f"The mail server {where} could not be reached "
                               f"({_reason(err)}). Nothing was restored.") from None
        try:
            if credentials.master_user:
                self.client.plain_login(credentials.master_user, credentials.password,
                                        authorization_identity=credentials.login)
            else:
                self.client.login(credentials.login, credentials.password)
        except LoginError:
            self.close()
            if credentials.master_user:
                raise RestoreLoginError(
                    f"The mail server refused the archive's login for {credentials.login}. "
                    "Nothing was restored; please tell your administrator.") from None
            raise RestoreLoginError(
                f"The mail server refused the login for {credentials.login}: "
                "check the password of your mailbox. Nothing was restored.") from None
        except (OSError, IMAPClientError) as err:
            self.close()
            raise RestoreError(f"The mail server {where} failed during login "
                               f"({_reason(err)}). Nothing was restored.") from None

    def _connect(self) -> IMAPClient:
        settings = self.settings
        context = None
        if settings.tls != "none":
            cafile = str(self.home / settings.ca_file) if settings.ca_file else None
            context = ssl.create_default_context(cafile=cafile)
        client = IMAPClient(settings.imap_host, settings.imap_port,
                            ssl=settings.tls == "implicit", ssl_context=context,
                            timeout=settings.timeout_seconds)
        if settings.tls == "starttls":
            try:
                client.starttls(context)
            except BaseException:
                # A failed handshake may have closed the socket already;
                # the handshake's error is the one to report.
                with contextlib.suppress(OSError):
                    client.shutdown()
                raise
        return client

    def ensure_folder(self, name: str) -> str:
        """Create the folder if absent and return its name on the server.

        The configured name uses "/" between levels; the server's own
        separator and personal namespace prefix (RFC 2342) replace it.
        """
        assert self.client is not None
        prefix, separator = "", "/"
        if self.client.has_capability("NAMESPACE"):
            personal = self.client.namespace().personal
            if personal:
                prefix, separator = personal[0][0], personal[0][1] or "/"
        levels = [level for level in name.split("/") if level]
        folder = prefix + separator.join(level.replace(separator, "-") for level in levels)
        if not self.client.folder_exists(folder):
            self.client.create_folder(folder)
            self.client.subscribe_folder(folder)
        return folder

    def append(self, folder: str, raw: bytes, when: dt.datetime | None) -> None:
        """APPEND one message with the configured flags."""
        assert self.client is not None
        flags = [flag.encode("ascii") for flag in self.settings.flags]
        self.client.append(folder, imap_bytes(raw), flags, when)

    def can_append_many(self) -> bool:
        """Tell whether the server takes several messages in one APPEND."""
        return self.client is not None and self.client.has_capability("MULTIAPPEND")

    def append_many(self, folder: str, messages: list[tuple[bytes, dt.datetime | None]]
                    ) -> bool:
        """APPEND several messages at once (RFC 3502); False if refused.

        One command, and on most servers one disk sync, for the batch:
        several times faster than an APPEND per message.
        """
        assert self.client is not None
        flags = [flag.encode("ascii") for flag in self.settings.flags]
        batch = [{"msg": imap_bytes(raw), "flags": flags,
                  **({"date": when} if when is not None else {})} for raw, when in messages]
        try:
            status, _ = self.client.multiappend(folder, batch)
        except IMAPClientAbortError:
            raise
        except IMAPClientError:
            return False
        return status == "OK"

    def close(self) -> None:
        """Log out, ignoring a connection that is already gone."""
        if self.client is None:
            return
        try:
            self.client.logout()
        except (OSError, IMAPClientError):
            pass
        self.client = None


def _reason(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text.removeprefix("b'").removesuffix("'")[:200]


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


class Restorer:
    """Start restores in the background and keep their progress."""

    def __init__(self, archive: Archive, settings: RestoreSettings, home: Path) -> None:
        self.archive = archive
        self.settings = settings
        self.home = home
        self._jobs: dict[str, RestoreJob] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(CONCURRENT_JOBS)

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
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        worker = threading.Thread(target=self._run, args=(job, user, mailbox),
                                  name=f"restore-{job.id[:8]}", daemon=True)
        worker.start()
        return job

    def job(self, job_id: str, user: User) -> RestoreJob | None:
        """Return a restore of ``user``'s; another user's is None."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.user_id == user.id else None

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
            job.error = f"The restore stopped: {_reason(err)}."
        finally:
            mailbox.close()
            job.finished_at = now()
            self._audit_outcome(job)
            job.done.set()

    def _restore(self, job: RestoreJob, user: User, mailbox: Mailbox) -> None:
        try:
            folder = mailbox.ensure_folder(job.folder)
        except (OSError, IMAPClientError) as err:
            job.error = f"The folder {job.folder} could not be created: {_reason(err)}."
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
                self._append(job, mailbox, folder, ready)
                ready = []
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

    def _append(self, job: RestoreJob, mailbox: Mailbox, folder: str,
                ready: list[tuple[str, bytes, dt.datetime | None]]) -> None:
        """APPEND a batch: in one MULTIAPPEND if it can, else one by one."""
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
            try:
                mailbox.append(folder, raw, when)
                job.restored += 1
            except (OSError, IMAPClientAbortError) as err:
                mailbox.client = None
                job.failures.append((message_id, "the connection to the mail server was "
                                                 f"lost: {_reason(err)}"))
            except IMAPClientError as err:
                job.failures.append((message_id, f"the mail server refused it: {_reason(err)}"))

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
        outcome = "failed" if job.error or not job.restored else (
            "partial" if job.failures else "restored")
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
