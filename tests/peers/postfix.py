"""A private Postfix instance that journals every message to the archive.

This is the deployment the archive is built for, in miniature: Postfix
accepts mail for a local domain, delivers the local copy, and sends one more
copy of every message (``always_bcc``) to a journal address that its
transport table routes to Strongroom's SMTP receiver.

The instance is Postfix's own second-instance mechanism, ``postfix -c DIR``:
its configuration, queue and log live under a directory the test owns, it
listens only on loopback, and /etc/postfix/main.cf is neither read nor
written. Postfix's master daemon must start as root; because every Postfix
command here runs as root, the directory need not be listed in the default
instance's ``alternate_config_directories`` (only set-gid commands run by
other users check that list).

Layout under ``root``::

    etc/main.cf, etc/master.cf   the instance's configuration
    spool/                       queue_directory (created by Postfix)
    maillog                      every daemon's log lines (maillog_file)

The data_directory is a fresh directory in the system's temporary
directory instead, removed by stop(): the master opens its lock file there
as the unprivileged ``postfix`` user, who cannot search pytest's private
(mode 0700) temporary directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.conftest import require
from tests.harness import free_port

JOURNAL_ADDRESS = "journal@archive.test"
LOCAL_DOMAIN = "example.com"

# Postfix installs its commands in command_directory, which is often
# outside an unprivileged user's PATH.
COMMAND_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
)

COMMAND_TIMEOUT = 60
START_TIMEOUT = 30
STOP_GRACE = 5

# Retry deferred mail within seconds, not Postfix's production minutes,
# so a receiver that answered 4xx once does not stall a test.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue_directory}
data_directory = {data_directory}
syslog_name = postfix-strongroom-test
maillog_file = {maillog_file}
maillog_file_prefixes = {root}

myhostname = mta.{local_domain}
mydomain = {local_domain}
myorigin = $mydomain
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8

# Every local recipient is accepted and its copy discarded: the test reads
# mail from the archive, not from mailboxes.
mydestination = {local_domain}
local_recipient_maps =
local_transport = discard:
alias_maps =
alias_database =
biff = no

# The journal: one more envelope recipient on every message, routed to the
# archive on loopback. Nothing else may leave the instance.
always_bcc = {journal_address}
transport_maps = inline:{{ {journal_domain}=smtp:[127.0.0.1]:{archive_port} }}
default_transport = error:no route beyond this test instance
relay_transport = $default_transport
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_peername_lookup = no

# Pass header bytes through unchanged, so a test can find what it sent.
local_header_rewrite_clients =

queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""

# The services Postfix needs, none of them chrooted (a chroot would need
# copies of /etc files inside the test's queue directory).
MASTER_CF = """\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class PostfixError(RuntimeError):
    """A Postfix command failed or the instance misbehaved."""


def postfix_command(name: str) -> str | None:
    """Return the path of a Postfix command, or None if it is not installed."""
    return shutil.which(name, path=COMMAND_PATH)


def require_postfix() -> None:
    """Skip the test (fail it under CI=true) when Postfix cannot run here."""
    require(
        postfix_command("postfix") is not None,
        "postfix is not installed (scripts/install-peers installs it)",
    )
    require(os.geteuid() == 0, "Postfix's master daemon must start as root")


class JournalingPostfix:
    """A Postfix instance under ``root`` that journals to ``archive_port``.

    Use it as a context manager, or call stop() in a ``finally``: stop() is
    safe to call at any point and more than once.  ``settings`` are more
    main.cf parameters, written after (so overriding) the defaults above:
    TLS or SASL toward the archive, for instance.
    """

    def __init__(self, root: Path, archive_port: int, *,
                 journal_address: str = JOURNAL_ADDRESS,
                 local_domain: str = LOCAL_DOMAIN,
                 settings: dict[str, str] | None = None) -> None:
        self.root = Path(root).absolute()
        self.archive_port = archive_port
        self.journal_address = journal_address
        self.local_domain = local_domain
        self.settings = dict(settings or {})
        self.smtpd_port = free_port()
        self.config_directory = self.root / "etc"
        self.queue_directory = self.root / "spool"
        self.data_directory: Path | None = None
        self.maillog = self.root / "maillog"
        self.started = False

    def configure(self) -> None:
        """Write main.cf and master.cf and create the instance's directories.

        Modes are set explicitly, whatever the process umask: daemons that
        have dropped to the ``postfix`` user open queue subdirectories
        relative to the queue directory, so it must be searchable (0755).
        """
        for directory in (self.config_directory, self.queue_directory):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        if self.data_directory is None:
            self.data_directory = Path(
                tempfile.mkdtemp(prefix="strongroom-postfix-data-")
            )
            shutil.chown(self.data_directory, user="postfix")

        journal_domain = self.journal_address.rpartition("@")[2]
        extra = "".join(f"{name} = {value}\n" for name, value in self.settings.items())
        (self.config_directory / "main.cf").write_text(MAIN_CF.format(
            queue_directory=self.queue_directory,
            data_directory=self.data_directory,
            maillog_file=self.maillog,
            root=self.root,
            local_domain=self.local_domain,
            journal_address=self.journal_address,
            journal_domain=journal_domain,
            archive_port=self.archive_port,
        ) + extra)
        (self.config_directory / "master.cf").write_text(
            MASTER_CF.format(smtpd_port=self.smtpd_port)
        )
        for name in ("main.cf", "master.cf"):
            (self.config_directory / name).chmod(0o644)

    def start(self) -> None:
        """Configure and start the instance; return once smtpd answers.

        ``postfix start`` creates the queue directories (post-install
        create-missing) and waits until the master daemon has initialised.
        """
        self.started = True
        self.configure()
        self.run("postfix", "start")

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(
                    ("127.0.0.1", self.smtpd_port), timeout=1
                ).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise PostfixError(
                        f"smtpd did not listen on {self.smtpd_port}\n"
                        f"{self.log_text()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the instance and remove its data directory.

        ``postfix stop`` kills the master's process group itself if the
        master has not exited after five seconds; if the command fails or
        hangs, the master is killed here. Raises PostfixError after killing
        it, so a test notices an instance that would not stop.
        """
        if not self.started:
            return
        self.started = False
        master_pid = self.master_pid()
        try:
            stopped = subprocess.run(
                [self.command("postfix"), "-c", str(self.config_directory),
                 "stop"],
                capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                check=False,
            )
            report = stopped.stdout + stopped.stderr
        except subprocess.TimeoutExpired:
            report = f"postfix stop did not return in {COMMAND_TIMEOUT} s"
        finally:
            lingering = master_pid is not None and not wait_for_exit(
                master_pid, STOP_GRACE
            )
            if lingering:
                # The master is a session leader (setsid): its pid names
                # the process group of this instance's daemons only.
                os.killpg(master_pid, signal.SIGKILL)
            if self.data_directory is not None:
                shutil.rmtree(self.data_directory, ignore_errors=True)
                self.data_directory = None
        if lingering:
            raise PostfixError(
                f"master {master_pid} outlived postfix stop and was killed:"
                f"\n{report}"
            )

    def flush(self) -> None:
        """Ask the instance to retry all deferred mail now."""
        self.run("postqueue", "-f")

    def queue(self) -> list[dict]:
        """Return the queued messages as ``postqueue -j`` describes them."""
        listing = self.run("postqueue", "-j")
        return [json.loads(line) for line in listing.splitlines() if line]

    def submit(self, raw: bytes, mail_from: str, rcpt_tos: list[str]) -> str:
        """Send one message to the instance's smtpd; return its queue id."""
        with smtplib.SMTP("127.0.0.1", self.smtpd_port, timeout=60) as client:
            client.ehlo(f"client.{self.local_domain}")
            client.mail(mail_from)
            for rcpt in rcpt_tos:
                code, reply = client.rcpt(rcpt)
                if code != 250:
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
            code, reply = client.data(raw)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        queued = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
        if queued is None:
            raise PostfixError(f"no queue id in the reply to DATA: {reply!r}")
        return queued.group(1).decode()

    def wait_for_delivery(self, queue_id: str, recipient: str,
                          timeout: float = 30.0) -> str:
        """Wait until ``recipient``'s copy of ``queue_id`` is sent; return
        the reply that the next hop gave.

        A deferred copy is retried at once with flush(), at most once a
        second. Raises PostfixError with the log if the copy bounces or
        ``timeout`` seconds pass.
        """
        line = re.compile(
            rf"{queue_id}: to=<{re.escape(recipient)}>.*"
            rf" status=(\w+) \((.*)\)$", re.MULTILINE,
        )
        deadline = time.monotonic() + timeout
        next_flush = time.monotonic()
        while time.monotonic() < deadline:
            statuses = line.findall(self.log_text())
            if statuses and statuses[-1][0] == "sent":
                return statuses[-1][1]
            if statuses and statuses[-1][0] == "bounced":
                break
            if statuses and time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + 1
            time.sleep(0.05)
        raise PostfixError(
            f"{queue_id} to {recipient} was not sent within {timeout} s:\n"
            f"{self.log_text()}"
        )

    def wait_for_status(self, queue_id: str, recipient: str, status: str,
                        timeout: float = 30.0) -> str:
        """Wait until the log gives ``recipient``'s copy of ``queue_id``
        the delivery ``status`` (sent, deferred, bounced); return its reason.

        Unlike wait_for_delivery this never flushes the queue. Raises
        PostfixError with the log if ``timeout`` seconds pass.
        """
        line = re.compile(
            rf"{queue_id}: to=<{re.escape(recipient)}>.*"
            rf" status={re.escape(status)} \((.*)\)$", re.MULTILINE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = line.search(self.log_text())
            if found:
                return found.group(1)
            time.sleep(0.05)
        raise PostfixError(
            f"{queue_id} to {recipient} was not {status} within {timeout} s:\n"
            f"{self.log_text()}"
        )

    def wait_until_empty(self, timeout: float = 30.0) -> None:
        """Wait until the queue holds no message; raise PostfixError if not."""
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"queue not empty after {timeout} s: {self.queue()}\n"
                    f"{self.log_text()}"
                )
            self.flush()
            time.sleep(0.2)

    def run(self, command: str, *args: str) -> str:
        """Run a Postfix command against this instance; return its output."""
        completed = subprocess.run(
            [self.command(command), "-c", str(self.config_directory), *args],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if completed.returncode != 0:
            raise PostfixError(
                f"{command} {' '.join(args)} failed ({completed.returncode}):"
                f"\n{completed.stdout}{completed.stderr}\n{self.log_text()}"
            )
        return completed.stdout

    def command(self, name: str) -> str:
        """Return the path of Postfix command ``name``."""
        path = postfix_command(name)
        if path is None:
            raise PostfixError(f"{name} is not installed")
        return path

    def master_pid(self) -> int | None:
        """Return the master daemon's pid from its pid file, if any."""
        try:
            return int((self.queue_directory / "pid" / "master.pid")
                       .read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log_text(self) -> str:
        """Return the instance's log so far (empty if none was written)."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for process ``pid`` to end.

    Return whether it ended. The master releases the lock that ``postfix
    stop`` watches a moment before the process is gone.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
