"""SMTP and LMTP sessions as the archive runs them.

aiosmtpd speaks the protocol; the classes here adjust it where a journal
archive needs something else: DATA read in large chunks rather than line
by line (``vault.data_section``), line length bounded by the message size,
size refusals with enhanced codes, a timeout that also bounds silence
inside DATA, AUTH checked off the event loop against journal senders, and
a shutdown that lets a message already in DATA finish.  Whether a session
may journal at all is its handler's decision (``vault.receiver``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from pathlib import Path
from typing import Any, AnyStr, Protocol

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import (
    MISSING, SMTP, AuthResult, Envelope as SMTPEnvelope, LoginPassword, Session,
)

from vault import ConfigError
from vault.data_section import read_data

log = logging.getLogger(__name__)

OK_235 = "235 2.7.0 Authentication successful"
ERR_421_SHUTDOWN = "421 4.3.2 {host} Archive shutting down; try again later"
ERR_454_AUTH = "454 4.7.0 Temporary authentication failure; try again later"
ERR_535_AUTH = "535 5.7.8 Authentication credentials invalid"
ERR_552_SIZE = "552 5.3.4 Message exceeds the archive's size limit of {limit} bytes"


class SessionHandler(Protocol):
    """What a session asks of the aiosmtpd handler behind it."""

    trusts_auth: bool

    async def authenticate(self, session: Session,
                           credentials: LoginPassword) -> str | None:
        """Return the journal sender's name if the credentials are right.

        Raises if they cannot be checked now (the session answers 454).
        """

    async def record_refusal(self, session: Session, recipients: list[str],
                             reply: str) -> None:
        """Count a 4xx/5xx answer for the operational view; never raise."""


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
        self, handler: SessionHandler, *, max_message_size: int,
        hostname: str, on_closed: Callable[[ArchiveSMTP], None] = lambda _: None,
        **kwargs: Any,
    ) -> None:
        self.line_length_limit = max_message_size
        self.is_in_data = False
        self._last_data = 0.0
        self.is_closing = False
        self.handler = handler
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
        assert self.session is not None
        # Counted against the journal address when the envelope names one,
        # as every other answer to a message is (``vault.status``).
        recipients = list(self.envelope.rcpt_tos) if self.envelope is not None else []
        await self.handler.record_refusal(
            self.session, recipients, self._stock_replies[status])
        await super().push(self._stock_replies[status])

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts its timer on each command only; inside DATA
        # note every chunk, so the timeout bounds a silence rather than the
        # whole message (RFC 5321 section 4.5.3.2.6).  Noting is cheaper
        # than a new timer per chunk: the timer looks when it fires.
        if self.is_in_data:
            self._last_data = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        silence = self.loop.time() - self._last_data
        if self.is_in_data and silence < self._timeout_duration:
            self._reset_timeout(self._timeout_duration - silence)
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's address parsing, without the class it defines on every
        # call (a tenth of a receiver's time at 10 kB per message).
        if not arg:
            return "", ""
        try:
            if arg.lstrip().startswith("<"):
                angle, rest = get_angle_addr(arg)
                addr: str = angle.addr_spec
            else:
                spec, rest = get_addr_spec(arg)
                addr = spec.addr_spec
        except HeaderParseError:
            return None, None
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    async def smtp_DATA(self, arg: str) -> None:
        self.is_in_data = True
        try:
            await self._receive_data(arg)
        finally:
            self.is_in_data = False
        if self.is_closing:
            self.say_goodbye()

    async def _receive_data(self, arg: str) -> None:
        # aiosmtpd's DATA with the message read in chunks (vault.data_section)
        # rather than line by line; its replies are kept, so push() maps them.
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except asyncio.IncompleteReadError:
            # The client closed its side in the middle of the message.
            self._writer.close()
            return
        if content is None:
            await self.push("552 Error: Too much mail data")
            self.envelope = self._create_envelope()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        # What aiosmtpd's _set_post_data_state does, typed.
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)

    async def auth_PLAIN(self, _: object, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: object, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_LOGIN(_, args))

    async def _check_credentials(self, result: AuthResult) -> AuthResult:
        credentials = result.auth_data
        if result.handled or not isinstance(credentials, LoginPassword):
            return result
        assert self.session is not None
        try:
            name = await self.handler.authenticate(self.session, credentials)
        except Exception:
            log.exception("%s: could not check a journal sender's password",
                          peer_host(self.session.peer),
                          extra={"event": "receiver.auth_unavailable"})
            await self.handler.record_refusal(self.session, [], ERR_454_AUTH)
            return AuthResult(success=False, handled=False, message=ERR_454_AUTH)
        if name is None:
            # A journal sender whose password changed stops journaling:
            # count it, so status shows the source refused, not silent.
            await self.handler.record_refusal(self.session, [], ERR_535_AUTH)
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


def peer_host(peer: object) -> str:
    """Return the address part of an aiosmtpd peer."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)
