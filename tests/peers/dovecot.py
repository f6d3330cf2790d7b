"""A private Dovecot IMAP server that receives the portal's restores.

The instance is started with ``dovecot -F -c CONFIG`` from a configuration
written here: it listens only on 127.0.0.1 on a free port, authenticates
users from a passwd-file (plain passwords: these are throw-away test
accounts), and keeps its runtime files, logs and every mailbox under one
fresh directory in the system's temporary directory.  Nothing under
/etc/dovecot is read or written.  The test owns the process and stop()
ends it.

Dovecot's login and auth processes drop to the ``dovenull`` and ``dovecot``
users, and mail is accessed as ``nobody`` (Dovecot refuses uid 0 for mail),
so the directory is searchable by all (mode 0755) rather than inside
pytest's private temporary directories; the passwd files are readable by
the ``dovecot`` group only.

Layout under ``root``::

    dovecot.conf           the instance's configuration
    users, masters         passwd-files: mailbox users, master users
    run/                   base_dir (sockets, pid file)
    state/                 state_dir
    mail/<user>/Maildir/   each user's mail (Maildir++, separator ".")
    dovecot.log            every process's log lines

``settings`` is more configuration text, appended.  With ``certificate`` and ``key`` (PEM files) the instance also offers
STARTTLS on the IMAP port and TLS from the first byte on ``imaps_port``.

A master user logs in as any user either as ``user*master`` with the
master's password, or with SASL PLAIN naming the user as authorization
identity (RFC 4616).
"""

from __future__ import annotations

import datetime as dt
import grp
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from imapclient import IMAPClient

from tests.conftest import require
from tests.harness import free_port

DOVECOT = "/usr/sbin/dovecot"
MAIL_USER = "nobody"
DH_PARAMETERS = "/usr/share/dovecot/dh.pem"
START_TIMEOUT = 30
STOP_GRACE = 10

CONFIG = """\
instance_name = strongroom-test-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{tls}
# Loopback only, and throw-away accounts: plain passwords without TLS.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_master_user_separator = *
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u/Maildir
namespace inbox {{
  inbox = yes
}}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/masters
  master = yes
  # The user logged in as must exist too: look them up in the next passdb.
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
"""


class DovecotError(RuntimeError):
    """The Dovecot instance could not start or misbehaved."""


def require_dovecot() -> None:
    """Skip the test (fail it under CI=true) when Dovecot cannot run here."""
    require(Path(DOVECOT).is_file(),
            "dovecot is not installed (scripts/install-peers installs dovecot-imapd)")
    import os

    require(os.geteuid() == 0, "Dovecot's master process must start as root")


class Dovecot:
    """A Dovecot instance with ``users`` ({login: password}) on loopback.

    ``masters`` ({name: password}) are master users who may log in as
    anyone.  Use it as a context manager, or call stop() in a ``finally``.
    """

    def __init__(self, users: dict[str, str],
                 masters: dict[str, str] | None = None, *,
                 certificate: Path | None = None, key: Path | None = None,
                 settings: str = "") -> None:
        self.users = dict(users)
        self.settings = settings
        self.masters = dict(masters or {})
        self.certificate = certificate
        self.key = key
        self.port = free_port()
        self.imaps_port = free_port() if certificate else 0
        self.host = "127.0.0.1"
        self.root: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        """Return what the instance has logged so far."""
        assert self.root is not None
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def configure(self) -> None:
        """Write the configuration and passwd-files under a fresh root."""
        self.root = Path(tempfile.mkdtemp(prefix="strongroom-dovecot-"))
        self.root.chmod(0o755)
        for name in ("run", "state"):
            (self.root / name).mkdir(mode=0o755)
        mail = self.root / "mail"
        mail.mkdir(mode=0o755)
        shutil.chown(mail, user=MAIL_USER)

        mail_user = pwd.getpwnam(MAIL_USER)
        tls = "ssl = no"
        if self.certificate is not None:
            # Dovecot reads "<path" settings as root, before dropping privileges.
            tls = (f"ssl = yes\nssl_cert = <{self.certificate}\nssl_key = <{self.key}\n"
                   f"ssl_dh = <{DH_PARAMETERS}")
        (self.root / "dovecot.conf").write_text(CONFIG.format(
            root=self.root, port=self.port, imaps_port=self.imaps_port, tls=tls,
            uid=mail_user.pw_uid, gid=mail_user.pw_gid,
        ) + self.settings)
        group = grp.getgrnam("dovecot").gr_gid
        for name, accounts in (("users", self.users), ("masters", self.masters)):
            path = self.root / name
            path.write_text("".join(f"{login}:{{PLAIN}}{password}\n"
                                    for login, password in accounts.items()))
            path.chmod(0o640)
            shutil.chown(path, group=group)

    def start(self) -> None:
        """Start ``dovecot -F`` and return once it accepts IMAP connections."""
        self.configure()
        assert self.root is not None
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr", "wb"),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise DovecotError(
                    f"dovecot exited ({self.process.returncode}):\n"
                    f"{(self.root / 'stderr').read_text(errors='replace')}\n{self.log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as probe:
                    if probe.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot did not answer on {self.port}\n{self.log}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the instance and remove its directory; safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_GRACE)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def client(self, login: str) -> IMAPClient:
        """Return an IMAP connection logged in as ``login``."""
        client = IMAPClient(self.host, self.port, ssl=False, timeout=30)
        client.login(login, self.users[login])
        return client

    def folder_messages(self, login: str, folder: str
                        ) -> list[tuple[bytes, dt.datetime, tuple[bytes, ...]]]:
        """Return (bytes, INTERNALDATE, flags) of every message in a folder.

        Dates keep the offset the server gave, for exact comparison.
        """
        with self.client(login) as client:
            client.normalise_times = False
            client.select_folder(folder, readonly=True)
            found = client.fetch(client.search("ALL"),
                                 ["BODY.PEEK[]", "INTERNALDATE", "FLAGS"])
            return [(data[b"BODY[]"], data[b"INTERNALDATE"], data[b"FLAGS"])
                    for _, data in sorted(found.items())]

    def folders(self, login: str) -> list[str]:
        """Return the names of a user's folders."""
        with self.client(login) as client:
            return [name for _, _, name in client.list_folders()]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
