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
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import (
    SMTP, AuthResult, Envelope as SMTPEnvelope, LoginPassword, Session,
)

from vault import ConfigError
from vault.ingest import Vault
from vault.ownership import Envelope

log = logging.getLogger(__name__)

OK_250 = "250 2.0.0 OK archived {receipt}"
OK_250_LMTP = "250 2.0.0 <{recipient}> archived {receipt}"
OK_235 = "235 2.7.0 Authentication successful"
ERR_421_SHUTDOWN = "421 4.3.2 {host} Archive shutting down; try again later"
ERR_451 = "451 4.3.0 Archive temporarily unable to store the message; try again later"
ERR_451_LMTP = "451 4.3.0 <{recipient}> archive temporarily unable to store the message"
ERR_452_RECIPIENTS = "452 4.5.3 Too many recipients"
ERR_454_AUTH = "454 4.7.0 Temporary authentication failure; try again later"
ERR_530_TLS = "530 5.7.0 Must issue a STARTTLS command first"
ERR_530_AUTH = ("530 5.7.0 Authentication required: client host {peer} must "
                "start TLS and authenticate as a journal sender")
ERR_535_AUTH = "535 5.7.8 Authentication credentials invalid"
ERR_550_UNTRUSTED = "550 5.7.1 Client host {peer} is not allowed to journal to this archive"
ERR_552_SIZE = "552 5.3.4 Message exceeds the archive's size limit of {limit} bytes"

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

# How often a stopping receiver looks whether messages in DATA are done.
DRAIN_POLL_SECONDS = 0.05

# aiosmtpd ends DATA only on CRLF "." CRLF and removes the stuffed dot from
# lines that follow a CRLF.  A sender that also treats a bare LF as a line
# end (as smtplib and Postfix do, RFC 5321 section 4.5.2) stuffs a dot after
# it too; remove that one as well so a bare-LF line of ".." is stored as ".".
_STUFFED_AFTER_BARE_LF = re.compile(rb"(?<!\r)\n\.")


def unstuff_bare_lf_lines(content: bytes) -> bytes:
    """Undo dot-stuffing on lines that end in a bare LF."""
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

    def is_trusted(self, peer: object) -> bool:
        """Tell whether the connecting peer is in a trusted network."""
        try:
            address = ipaddress.ip_address(_peer_host(peer))
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def refusal(self, session: Session) -> str | None:
        """Return the reply that refuses this session's mail, or None."""
        peer = _peer_host(session.peer)
        if self.require_tls and session.ssl is None:
            return ERR_530_TLS
        if self.trusts_networks and self.is_trusted(session.peer):
            return None
        if self.trusts_auth and session.authenticated:
            return None
        if self.trusts_auth:
            return ERR_530_AUTH.format(peer=peer)
        return ERR_550_UNTRUSTED.format(peer=peer)

    async def authenticate(self, session: Session, credentials: LoginPassword) -> str | None:
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
            log.warning("%s: failed AUTH as journal sender %r", _peer_host(session.peer),
                        name, extra={"event": "receiver.auth_failed"})
            return None
        log.info("%s: authenticated as journal sender %r", _peer_host(session.peer), name,
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
            log.warning("%s: refused MAIL FROM <%s>: %s", _peer_host(session.peer), address,
                        refused, extra={"event": "receiver.refused"})
            await self.record_refusal(session, [], refused)
            return refused
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope,
        address: str, options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return ERR_452_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope
    ) -> str:
        peer = _peer_host(session.peer)
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
        )
        try:
            receipt = await asyncio.to_thread(self.vault.archive, raw, delivery)
        except Exception:
            log.exception("%s: could not archive a %d-byte message from <%s>",
                          peer, len(raw), delivery.mail_from,
                          extra={"event": "receiver.deferred"})
            await self.record_refusal(session, recipients, ERR_451)
            return _reply(server, recipients, ERR_451, (
                lambda recipient: ERR_451_LMTP.format(recipient=recipient)))
        name = receipt.key.rpartition("/")[2]
        log.info("%s: accepted <%s> for %d recipient(s) as %s (%s, %s)", peer,
                 delivery.mail_from, len(recipients), name, _tls_version(session) or "no TLS",
                 f"journal sender {session.auth_data!r}" if session.authenticated
                 else "by network",
                 extra={"event": "receiver.accepted", "receipt": receipt.key,
                        "tls": _tls_version(session), "sender": session.auth_data})
        self.on_archived()
        return _reply(server, recipients, OK_250.format(receipt=name), (
            lambda recipient: OK_250_LMTP.format(recipient=recipient, receipt=name)))

    async def record_refusal(self, session: Session, recipients: list[str],
                             reply: str) -> None:
        """Count a 4xx/5xx answer against its journal source; never raise.

        The source is the journal address the copy was sent to or, when
        there is none, the peer (as ``vault.status`` names sources).
        """
        journal = [r.lower() for r in recipients if self.vault.rules.is_journal(r)]
        source = journal[0] if journal else _peer_host(session.peer)
        try:
            await asyncio.to_thread(self._on_refused, source, int(reply[:3]), reply)
        except Exception:
            log.exception("%s: could not record a %s answer", source, reply[:3],
                          extra={"event": "receiver.refusal_unrecorded"})

    def close(self) -> None:
        """Let go of the password-checking threads."""
        self._auth_pool.shutdown(wait=False, cancel_futures=True)


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


def _defer_password_check(server: SMTP, session: Session, envelope: SMTPEnvelope,
                          mechanism: str, credentials: Any) -> AuthResult:
    # aiosmtpd calls its authenticator synchronously on the event loop; a
    # memory-hard hash there would stall every session.  Hand the decoded
    # credentials back unjudged; ArchiveSMTP checks them in a thread.
    return AuthResult(success=False, handled=False, auth_data=credentials)


class ArchiveSMTP(SMTP):
    """aiosmtpd's SMTP as the archive needs it.

    Lines are bounded by the message size, not by 1000 octets: RFC 5321
    limits them, but real mail breaks that rule often, and refusing it
    would lose journal copies.  The timeout bounds silence, also inside
    DATA.  A session can be told to close for a shutdown: it answers 421
    at once, or right after the reply to a message already in DATA.
    """

    ident = "Strongroom ESMTP"

    def __init__(
        self, handler: JournalHandler, *, max_message_size: int,
        hostname: str, on_closed: Callable[[ArchiveSMTP], None] = lambda _: None,
        **kwargs: Any,
    ) -> None:
        self.line_length_limit = max_message_size
        self.is_in_data = False
        self.is_closing = False
        self._on_closed = on_closed
        size_refusal = ERR_552_SIZE.format(limit=max_message_size)
        # A line longer than the size limit makes the message too big too.
        self._stock_replies = {
            "552 Error: message size exceeds fixed maximum message size": size_refusal,
            "552 Error: Too much mail data": size_refusal,
            "500 Line too long (see RFC5321 4.5.3.1.6)": size_refusal,
        }
        super().__init__(
            handler,
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            auth_require_tls=True,
            authenticator=_defer_password_check,
            auth_exclude_mechanism=() if handler.trusts_auth else ("PLAIN", "LOGIN"),
            **kwargs,
        )

    async def push(self, status: AnyStr) -> None:
        # Give aiosmtpd's size refusals enhanced codes (RFC 3463) and the
        # limit, and count them: a sender bounces what we refuse.
        if not isinstance(status, str) or status not in self._stock_replies:
            await super().push(status)
            return
        assert self.session is not None and isinstance(self.event_handler, JournalHandler)
        await self.event_handler.record_refusal(self.session, [], self._stock_replies[status])
        await super().push(self._stock_replies[status])

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts its timer on each command only; inside DATA
        # restart it on every chunk, so the timeout bounds a silence rather
        # than the whole message (RFC 5321 section 4.5.3.2.6).
        if self.is_in_data:
            self._reset_timeout()
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        self.is_in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.is_in_data = False
        if self.is_closing:
            self.say_goodbye()

    async def auth_PLAIN(self, _: object, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: object, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_LOGIN(_, args))

    async def _check_credentials(self, result: AuthResult) -> AuthResult:
        credentials = result.auth_data
        if result.handled or not isinstance(credentials, LoginPassword):
            return result
        assert self.session is not None
        assert isinstance(self.event_handler, JournalHandler)
        try:
            name = await self.event_handler.authenticate(self.session, credentials)
        except Exception:
            log.exception("%s: could not check a journal sender's password",
                          _peer_host(self.session.peer),
                          extra={"event": "receiver.auth_unavailable"})
            return AuthResult(success=False, handled=False, message=ERR_454_AUTH)
        if name is None:
            return AuthResult(success=False, handled=False, message=ERR_535_AUTH)
        # Record the sender's name and nothing else: aiosmtpd's success
        # path would keep the credentials in the session.
        self.session.authenticated = True
        # aiosmtpd annotates auth_data as None, but documents it as free.
        self.session.auth_data = name  # type: ignore[assignment]
        await self.push(OK_235)
        return AuthResult(success=False, handled=True)

    def close_for_shutdown(self) -> None:
        """Answer 421 and close now, or after the reply to DATA in progress."""
        self.is_closing = True
        if not self.is_in_data:
            self.say_goodbye()

    def say_goodbye(self) -> None:
        """Send 421 and close the connection (RFC 5321 section 3.8)."""
        if self.transport is None or self.transport.is_closing():
            return
        assert isinstance(self.transport, asyncio.WriteTransport)
        self.transport.write(ERR_421_SHUTDOWN.format(host=self.hostname).encode() + b"\r\n")
        self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self._on_closed(self)
        super().connection_lost(error)


class ArchiveLMTP(ArchiveSMTP, LMTP):
    """The archive's session over LMTP: LHLO, and one reply per recipient."""

    ident = "Strongroom LMTP"


def server_tls_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """Load the receiver's certificate and key for STARTTLS.

    Raises ConfigError naming the files when they cannot be used.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"settings receiver.tls_certificate and receiver.tls_key: cannot use "
            f"{certificate} with {key}: {err}"
        ) from None
    return context


class Receiver:
    """Run the SMTP (and LMTP) listeners on an event loop in a thread.

    ``stop`` is graceful: no new sessions, 421 to idle ones, and up to
    ``shutdown_grace`` seconds for messages already in DATA to be archived
    and answered.
    """

    def __init__(self, handler: JournalHandler, host: str, port: int,
                 hostname: str, max_message_size: int, *,
                 lmtp: tuple[str, int] | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 timeout: float = 300.0, shutdown_grace: float = 30.0) -> None:
        self.handler = handler
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
            log.exception("receiver did not stop cleanly", extra={"event": "receiver.stop_failed"})
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
        server = await self._loop.create_server(
            self._factory(ArchiveSMTP), self.host, self.port)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        log.info("receiver listening for SMTP on %s:%d", self.host, self.port,
                 extra={"event": "receiver.started"})
        if self.lmtp is not None:
            server = await self._loop.create_server(
                self._factory(ArchiveLMTP), *self.lmtp)
            self._servers.append(server)
            self.lmtp_port = server.sockets[0].getsockname()[1]
            log.info("receiver listening for LMTP on %s:%d", self.lmtp[0], self.lmtp_port,
                     extra={"event": "receiver.started"})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._listen())
        except OSError as err:
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        # Archiving threads still running finish before the loop closes.
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()


def _peer_host(peer: object) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)
