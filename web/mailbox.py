"""The user's mailbox on the IMAP server, as a restore writes to it.

One ``Mailbox`` is one connection: TLS as configured (certificate and name
always verified), a login as the user or as the configured master user,
the target folder created in the server's own hierarchy, and messages
APPENDed with CRLF line ends, one at a time or in MULTIAPPEND batches.
Errors become ``RestoreError`` with a sentence the user can read; no
password is ever put in a message or a log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import ssl
from pathlib import Path

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from vault.config import RestoreSettings
from web.accounts import User

log = logging.getLogger(__name__)
# At DEBUG imapclient logs the protocol, message bytes and the AUTHENTICATE
# exchange included; none of that may reach the portal's log.
logging.getLogger("imapclient").setLevel(logging.INFO)

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
    if any(ord(character) < 0x20 or character == "\x7f" for character in password):
        # imaplib quotes a password but leaves line breaks in it, and a
        # line break would end the LOGIN command and start another.
        raise RestoreLoginError("A mailbox password cannot contain line breaks or other "
                                "control characters.")
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
                               f"({reason_of(err)}). Nothing was restored.") from None
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
                               f"({reason_of(err)}). Nothing was restored.") from None

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


def reason_of(err: Exception) -> str:
    """Return an error's text, short and readable, for a user or the audit."""
    text = str(err) or type(err).__name__
    return text.removeprefix("b'").removesuffix("'")[:200]
