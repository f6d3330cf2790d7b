"""The SMTP receiver: journaled mail in, 250 only once it is durable.

Mail servers journal to the archive over SMTP.  The receiver accepts any
recipient from a trusted peer, hands the DATA octets to the vault off the
event loop, and answers 250 only after the message and its receipt are
durable; any failure before that is a 451, so the sender keeps the copy
queued and retries (RFC 5321 section 4.2.5).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope as SMTPEnvelope, Session

from vault.ingest import Vault
from vault.ownership import Envelope

log = logging.getLogger(__name__)

OK_250 = "250 2.0.0 OK archived {receipt}"
ERR_451 = "451 4.3.0 Archive temporarily unable to store the message; try again later"
ERR_452_RECIPIENTS = "452 4.5.3 Too many recipients"
ERR_550_UNTRUSTED = "550 5.7.1 Client host {peer} is not allowed to journal to this archive"

# aiosmtpd ends DATA only on CRLF "." CRLF and removes the stuffed dot from
# lines that follow a CRLF.  A sender that also treats a bare LF as a line
# end (as smtplib and Postfix do, RFC 5321 section 4.5.2) stuffs a dot after
# it too; remove that one as well so a bare-LF line of ".." is stored as ".".
_STUFFED_AFTER_BARE_LF = re.compile(rb"(?<!\r)\n\.")


def unstuff_bare_lf_lines(content: bytes) -> bytes:
    """Undo dot-stuffing on lines that end in a bare LF."""
    return _STUFFED_AFTER_BARE_LF.sub(b"\n", content)


class JournalHandler:
    """aiosmtpd handler that archives each transaction through the vault."""

    def __init__(
        self,
        vault: Vault,
        trusted_networks: tuple[str, ...],
        max_recipients: int,
        on_archived: Callable[[], None] = lambda: None,
    ) -> None:
        self.vault = vault
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]
        self.max_recipients = max_recipients
        self.on_archived = on_archived

    def is_trusted(self, peer: object) -> bool:
        """Tell whether the connecting peer may journal to the archive."""
        try:
            address = ipaddress.ip_address(_peer_host(peer))
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: SMTPEnvelope,
        address: str, options: list[str],
    ) -> str:
        if not self.is_trusted(session.peer):
            log.warning("%s: refused untrusted peer", _peer_host(session.peer),
                        extra={"event": "receiver.untrusted"})
            return ERR_550_UNTRUSTED.format(peer=_peer_host(session.peer))
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
        if not self.is_trusted(session.peer):
            return ERR_550_UNTRUSTED.format(peer=peer)
        raw = unstuff_bare_lf_lines(envelope.original_content or b"")
        delivery = Envelope(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            peer=peer,
            helo=session.host_name or "",
        )
        try:
            receipt = await asyncio.to_thread(self.vault.archive, raw, delivery)
        except Exception:
            log.exception("%s: could not archive a %d-byte message from <%s>",
                          peer, len(raw), delivery.mail_from,
                          extra={"event": "receiver.deferred"})
            return ERR_451
        self.on_archived()
        return OK_250.format(receipt=receipt.key.rpartition("/")[2])


class ArchiveSMTP(SMTP):
    """aiosmtpd's SMTP with line length bounded by message size, not 1000.

    RFC 5321 limits lines to 1000 octets, but real mail breaks that rule
    often, and refusing it would lose journal copies.
    """

    def __init__(
        self, handler: JournalHandler, *, max_message_size: int, **kwargs: Any
    ) -> None:
        self.line_length_limit = max_message_size
        super().__init__(
            handler,
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            **kwargs,
        )


class Receiver:
    """Run the SMTP listener on its own event loop in a background thread."""

    def __init__(self, handler: JournalHandler, host: str, port: int,
                 hostname: str, max_message_size: int) -> None:
        self.handler = handler
        self.host, self.port = host, port
        self.hostname = hostname
        self.max_message_size = max_message_size
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start listening; raise if the address cannot be bound."""
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error

    def stop(self) -> None:
        """Stop listening and wait for the loop to end."""
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def _factory(self) -> ArchiveSMTP:
        return ArchiveSMTP(
            self.handler,
            max_message_size=self.max_message_size,
            hostname=self.hostname,
            ident="Strongroom ESMTP",
            loop=self._loop,
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                self._loop.create_server(self._factory, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as err:
            self._error = err
            self._ready.set()
            return
        log.info("receiver listening on %s:%d", self.host, self.port,
                 extra={"event": "receiver.started"})
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()


def _peer_host(peer: object) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)
