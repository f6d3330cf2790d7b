"""The SMTP and LMTP receiver: journaled mail in, 250 only once it is durable.

Mail servers journal to the archive over SMTP, or hand it over as a local
delivery over LMTP (RFC 2033).  The receiver accepts any recipient from a
trusted journal source, hands the DATA octets to the vault off the event
loop, and answers 250 only after the message and its receipt are durable;
any failure before that is a 451, so the sender keeps the copy queued and
retries (RFC 5321 section 4.2.5).

A journal source is trusted by its network, by SMTP AUTH as a journal
sender (PLAIN or LOGIN, offered only inside TLS), or either, as the
``trust`` mode says.  Anyone else is refused at MAIL FROM, and nothing they
send is stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import re
import ssl
import threading
from collections.abc import Callable

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope as SMTPEnvelope, LoginPassword, Session

from vault.ingest import Vault
from vault.ownership import Envelope
from vault.receipts import Receipt
from vault.transport import ArchiveLMTP, ArchiveSMTP, peer_host

log = logging.getLogger(__name__)

OK_250 = "250 2.0.0 OK archived {receipt}"
OK_250_LMTP = "250 2.0.0 <{recipient}> archived {receipt}"
ERR_451 = "451 4.3.0 Archive temporarily unable to store the message; try again later"
ERR_451_LMTP = "451 4.3.0 <{recipient}> archive temporarily unable to store the message"
ERR_452_RECIPIENTS = "452 4.5.3 Too many recipients"
# RFC 5321 section 4.1.2: no control characters anywhere in a path; a NUL
# in an address would also reach the log and every receipt as it came.
ERR_501_CONTROLS = "501 5.1.3 Bad {what} address: control characters are not allowed"
# Command lines are decoded keeping undecodable bytes as lone surrogates;
# an address with one is not UTF-8 (RFC 6531 allows UTF-8 only), could not
# be written to a receipt faithfully, and stopped the catalogue's engine.
ERR_501_NOT_UTF8 = "501 5.1.3 Bad {what} address: not ASCII or UTF-8"
ERR_530_TLS = "530 5.7.0 Must issue a STARTTLS command first"
ERR_530_AUTH = ("530 5.7.0 Authentication required: client host {peer} must "
                "start TLS and authenticate as a journal sender")
ERR_550_UNTRUSTED = ("550 5.7.1 Client host {peer} is not allowed to journal to "
                     "this archive")

TRUST_MODES = {
    "networks": (True, False),
    "auth": (False, True),
    "networks-or-auth": (True, True),
}

# Checks a journal sender's name and password; blocking (a memory-hard
# hash), so it runs off the event loop.
Authenticate = Callable[[str, str], bool]

# Records one 4xx/5xx answer: journal source, reply code, reply text.
# Blocking (a database write), so it runs off the event loop too.
RecordRefusal = Callable[[str, int, str], None]

# Each password check holds tens of MiB of Argon2 memory for tens of
# milliseconds: bound how many run at once, whoever is knocking.
AUTH_WORKERS = 2

# Threads that seal messages and stage them for their group commit (the
# session awaits the commit itself).  Without group commit (S3, or turned
# off) a thread also waits for its own puts, so there are many more of them
# than cores; a pool only starts a thread when none is idle.
ARCHIVE_WORKERS = 64

# Peers whose trust is remembered (they are few: the mail servers).
TRUSTED_HOSTS_REMEMBERED = 1024

# How often a stopping receiver looks whether messages in DATA are done.
DRAIN_POLL_SECONDS = 0.05

# aiosmtpd ends DATA only on CRLF "." CRLF and removes the stuffed dot from
# lines that follow a CRLF.  A sender that also treats a bare LF as a line
# end (as smtplib and Postfix do, RFC 5321 section 4.5.2) stuffs a dot after
# it too; remove that one as well so a bare-LF line of ".." is stored as ".".
_STUFFED_AFTER_BARE_LF = re.compile(rb"(?<!\r)\n\.")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bad_address(address: str, what: str) -> str | None:
    """Return the 501 for an address RFC 5321/6531 do not allow, else None."""
    if _CONTROL.search(address) is not None:
        return ERR_501_CONTROLS.format(what=what)
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return ERR_501_NOT_UTF8.format(what=what)
    return None


def unstuff_bare_lf_lines(content: bytes) -> bytes:
    """Undo dot-stuffing on lines that end in a bare LF."""
    # Most messages have no line starting with a dot: a plain search says
    # so much faster than the look-behind.
    if b"\n." not in content:
        return content
    return _STUFFED_AFTER_BARE_LF.sub(b"\n", content)


class JournalHandler:
    """aiosmtpd handler that admits journal sources and archives their mail.

    ``trust`` is one of TRUST_MODES; a mode with "auth" needs
    ``authenticate``.  With ``require_tls`` nothing is accepted from a
    session that has not started TLS.  Every refusal and deferral of a
    message is passed to ``on_refused`` for the operational view.
    """

    def __init__(
        self,
        vault: Vault,
        trusted_networks: tuple[str, ...],
        max_recipients: int,
        on_archived: Callable[[], None] = lambda: None,
        *,
        trust: str = "networks",
        require_tls: bool = False,
        authenticate: Authenticate | None = None,
        on_refused: RecordRefusal = lambda source, code, reply: None,
    ) -> None:
        self.vault = vault
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]
        self._trusted_hosts: dict[str, bool] = {}
        self.max_recipients = max_recipients
        self.on_archived = on_archived
        self.trusts_networks, self.trusts_auth = TRUST_MODES[trust]
        if self.trusts_auth and authenticate is None:
            raise ValueError(f"trust {trust!r} needs an authenticate function")
        self.require_tls = require_tls
        self._authenticate = authenticate
        self._on_refused = on_refused
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(
            AUTH_WORKERS, thread_name_prefix="receiver-auth")
        self._archive_pool = concurrent.futures.ThreadPoolExecutor(
            ARCHIVE_WORKERS, thread_name_prefix="receiver-archive")

    def is_trusted(self, peer: object) -> bool:
        """Tell whether the connecting peer is in a trusted network."""
        host = peer_host(peer)
        # Asked at MAIL and at DATA of every message: remember the answer.
        known = self._trusted_hosts.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        is_trusted = any(address in network for network in self.trusted)
        if len(self._trusted_hosts) >= TRUSTED_HOSTS_REMEMBERED:
            self._trusted_hosts.clear()
        self._trusted_hosts[host] = is_trusted
        return is_trusted

    def refusal(self, session: Session) -> str | None:
        """Return the reply that refuses this session's mail, or None."""
        peer = peer_host(session.peer)
        if self.require_tls and session.ssl is None:
            return ERR_530_TLS
        if self.trusts_networks and self.is_trusted(session.peer):
            return None
        if self.trusts_auth and session.authenticated:
            return None
        if self.trusts_auth:
            return ERR_530_AUTH.format(peer=peer)
        return ERR_550_UNTRUSTED.format(peer=peer)

    async def authenticate(self, session: Session,
                           credentials: LoginPassword) -> str | None:
        """Return the journal sender's name if its password is right.

        Raises whatever the password check raises: the caller answers 454.
        """
        try:
            name = credentials.login.decode("utf-8")
            password = credentials.password.decode("utf-8")
        except UnicodeDecodeError:
            return None
        assert self._authenticate is not None
        loop = asyncio.get_running_loop()
        is_valid = await loop.run_in_executor(
            self._auth_pool, self._authenticate, name, password)
        if not is_valid:
            log.warning("%s: failed AUTH as journal sender %r", peer_host(session.peer),
                        name, extra={"event": "receiver.auth_failed"})
            return None
        log.info("%s: authenticated as journal sender %r", peer_host(session.peer), name,
                 extra={"event": "receiver.authenticated"})
        return name

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope,
        hostname: str, responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.trusts_auth:
            return responses
        # aiosmtpd lists AUTH inside TLS even with no mechanism to offer.
        return [line for line in responses if not line.startswith("250-AUTH")]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope,
        address: str, options: list[str],
    ) -> str:
        refused = self.refusal(session)
        if refused is not None:
            log.warning("%s: refused MAIL FROM <%s>: %s", peer_host(session.peer), address,
                        refused, extra={"event": "receiver.refused"})
            await self.record_refusal(session, [], refused)
            return refused
        bad = _bad_address(address, "sender")
        if bad is not None:
            return bad
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope,
        address: str, options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return ERR_452_RECIPIENTS
        bad = _bad_address(address, "recipient")
        if bad is not None:
            return bad
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope
    ) -> str:
        peer = peer_host(session.peer)
        recipients = list(envelope.rcpt_tos)
        refused = self.refusal(session)
        if refused is not None:
            refusal: str = refused
            return _reply(server, recipients, refusal, lambda _: refusal)
        raw = unstuff_bare_lf_lines(envelope.original_content or b"")
        delivery = Envelope(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(recipients),
            peer=peer,
            helo=session.host_name or "",
            tls_version=_tls_version(session) or "",
            journal_sender=_journal_sender(session) or "",
        )
        try:
            # Sealed in a thread; then the session, not a thread, waits for
            # the group commit that makes it durable.
            receipt, durable = await asyncio.get_running_loop().run_in_executor(
                self._archive_pool, self.vault.deliver, raw, delivery)
            await asyncio.wrap_future(durable)
        except Exception:
            log.exception("%s: could not archive a %d-byte message from <%s>",
                          peer, len(raw), delivery.mail_from,
                          extra={"event": "receiver.deferred"})
            await self.record_refusal(session, recipients, ERR_451)
            return _reply(server, recipients, ERR_451, (
                lambda recipient: ERR_451_LMTP.format(recipient=recipient)))
        name = receipt.key.rpartition("/")[2]
        self._log_accepted(session, delivery, receipt)
        self.on_archived()
        return _reply(server, recipients, OK_250.format(receipt=name), (
            lambda recipient: OK_250_LMTP.format(recipient=recipient, receipt=name)))

    def _log_accepted(self, session: Session, delivery: Envelope,
                      receipt: Receipt) -> None:
        # How the copy came matters to an auditor as much as that it came.
        tls = _tls_version(session)
        sender = _journal_sender(session)
        log.info("%s: accepted <%s> for %d recipient(s) as %s, message %s (%d bytes, "
                 "owners %s%s; %s, %s)",
                 delivery.peer, delivery.mail_from, len(delivery.rcpt_tos), receipt.key,
                 receipt.message_key, receipt.size, ",".join(receipt.owners) or "-",
                 f", journal report {receipt.report_key}" if receipt.report_key else "",
                 tls or "no TLS",
                 f"journal sender {sender!r}" if sender else "trusted network",
                 extra={"event": "receiver.accepted", "receipt": receipt.key,
                        "tls": tls, "sender": sender})

    async def record_refusal(self, session: Session, recipients: list[str],
                             reply: str) -> None:
        """Count a 4xx/5xx answer against its journal source; never raise.

        The source is the journal address the copy was sent to or, when
        there is none, the peer (as ``vault.status`` names sources).
        """
        journal = [r.lower() for r in recipients if self.vault.rules.is_journal(r)]
        source = journal[0] if journal else peer_host(session.peer)
        try:
            await asyncio.to_thread(self._on_refused, source, int(reply[:3]), reply)
        except Exception:
            log.exception("%s: could not record a %s answer", source, reply[:3],
                          extra={"event": "receiver.refusal_unrecorded"})

    def close(self) -> None:
        """Let go of the worker threads; archiving already begun finishes."""
        self._auth_pool.shutdown(wait=False, cancel_futures=True)
        self._archive_pool.shutdown(wait=False)


def _reply(server: SMTP, recipients: list[str], smtp_reply: str,
           lmtp_reply: Callable[[str], str]) -> str:
    # SMTP answers DATA once; LMTP once per accepted recipient, in RCPT
    # order (RFC 2033 section 4.2).
    if not isinstance(server, LMTP):
        return smtp_reply
    return "\r\n".join(lmtp_reply(recipient) for recipient in recipients)


def _tls_version(session: Session) -> str | None:
    ssl_object = (session.ssl or {}).get("ssl_object")
    return ssl_object.version() if ssl_object is not None else None


def _journal_sender(session: Session) -> str | None:
    # ArchiveSMTP keeps only the authenticated sender's name in auth_data.
    if not session.authenticated or not isinstance(session.auth_data, str):
        return None
    return session.auth_data


class Receiver:
    """Run the SMTP (and LMTP) listeners on an event loop in a thread.

    ``stop`` is graceful: no new sessions, 421 to idle ones, and up to
    ``shutdown_grace`` seconds for messages already in DATA to be archived
    and answered.  With ``reuse_port`` the listeners share their addresses
    with other receivers (SO_REUSEPORT; see ``web.receivers``).
    """

    def __init__(self, handler: JournalHandler, host: str, port: int,
                 hostname: str, max_message_size: int, *,
                 lmtp: tuple[str, int] | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 timeout: float = 300.0, shutdown_grace: float = 30.0,
                 reuse_port: bool = False) -> None:
        self.handler = handler
        self.reuse_port = reuse_port
        self.host, self.port = host, port
        self.lmtp = lmtp
        self.lmtp_port: int | None = None
        self.hostname = hostname
        self.max_message_size = max_message_size
        self.tls_context = tls_context
        self.timeout = timeout
        self.shutdown_grace = shutdown_grace
        self.sessions: set[ArchiveSMTP] = set()
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start listening; raise if an address cannot be bound."""
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error

    def stop(self) -> None:
        """Stop gracefully (see the class) and wait for the loop to end."""
        if not self._thread.is_alive():
            return
        drained = asyncio.run_coroutine_threadsafe(self._drain(), self._loop)
        try:
            drained.result(timeout=self.shutdown_grace + 10)
        except Exception:
            log.exception("receiver did not stop cleanly",
                          extra={"event": "receiver.stop_failed"})
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self.handler.close()

    async def _drain(self) -> None:
        for server in self._servers:
            server.close()
        in_data = sum(session.is_in_data for session in self.sessions)
        log.info("receiver stopping: %d session(s) open, %d in DATA", len(self.sessions),
                 in_data, extra={"event": "receiver.stopping"})
        for session in list(self.sessions):
            session.close_for_shutdown()

        deadline = self._loop.time() + self.shutdown_grace
        while any(s.is_in_data for s in self.sessions) and self._loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        unfinished = [s for s in self.sessions if s.is_in_data]
        if unfinished:
            log.warning("receiver closed %d session(s) still in DATA after %.0f s; their "
                        "senders will retry", len(unfinished), self.shutdown_grace,
                        extra={"event": "receiver.drain_timeout"})
        for session in list(self.sessions):
            session.say_goodbye()
        # Let the closed sessions run connection_lost before the loop ends.
        deadline = self._loop.time() + 1.0
        while self.sessions and self._loop.time() < deadline:
            await asyncio.sleep(0.01)

    def _factory(self, protocol: type[ArchiveSMTP]) -> Callable[[], ArchiveSMTP]:
        def new_session() -> ArchiveSMTP:
            session = protocol(
                self.handler,
                max_message_size=self.max_message_size,
                hostname=self.hostname,
                ident=protocol.ident,
                tls_context=self.tls_context,
                timeout=self.timeout,
                loop=self._loop,
                on_closed=self.sessions.discard,
            )
            self.sessions.add(session)
            return session
        return new_session

    async def _listen(self) -> None:
        # With reuse_port several receiver processes listen on one address.
        reuse_port = self.reuse_port or None
        server = await self._loop.create_server(
            self._factory(ArchiveSMTP), self.host, self.port, reuse_port=reuse_port)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        log.info("receiver listening for SMTP on %s:%d", self.host, self.port,
                 extra={"event": "receiver.started"})
        if self.lmtp is not None:
            server = await self._loop.create_server(
                self._factory(ArchiveLMTP), *self.lmtp, reuse_port=reuse_port)
            self._servers.append(server)
            self.lmtp_port = server.sockets[0].getsockname()[1]
            log.info("receiver listening for LMTP on %s:%d", self.lmtp[0], self.lmtp_port,
                     extra={"event": "receiver.started"})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._listen())
        except OSError as err:
            for server in self._servers:
                server.close()
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        # Archiving threads still running finish before the loop closes.
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()
