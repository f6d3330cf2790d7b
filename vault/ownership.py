"""Decide which archive mailboxes own a message.

A message belongs to every local address that sent or received it: the
envelope sender and recipients, and - when the mail server journaled it to
a journal address, so the envelope names only the archive - the addresses
in its From, To, Cc, Bcc and Delivered-To headers.  Local means "in one of
the organisation's domains"; addresses are compared lower-cased.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vault.journal import JournalReport

log = logging.getLogger(__name__)

OWNER_HEADERS = ("from", "to", "cc", "bcc", "delivered-to")


@dataclasses.dataclass(frozen=True)
class Envelope:
    """What the SMTP transaction said about a message, apart from its bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    peer: str = ""
    helo: str = ""
    tls_version: str = ""      # e.g. "TLSv1.3"; empty when sent in clear
    journal_sender: str = ""   # the SMTP AUTH name; empty when trusted by network


@dataclasses.dataclass(frozen=True)
class OwnershipRules:
    """The organisation's domains and the addresses that receive journals."""

    domains: tuple[str, ...]
    journal_addresses: tuple[str, ...] = ("journal",)

    def is_local(self, address: str) -> bool:
        """Tell whether ``address`` is in one of the organisation's domains."""
        _, at, domain = address.rpartition("@")
        return bool(at) and domain.lower() in {d.lower() for d in self.domains}

    def is_journal(self, address: str) -> bool:
        """Tell whether ``address`` is a journal address.

        An entry with an ``@`` names one address; an entry without one names
        a local part in any domain (the default, ``journal``).
        """
        address = normalise(address)
        local_part = address.rpartition("@")[0]
        for entry in self.journal_addresses:
            entry = entry.lower()
            if address == entry or ("@" not in entry and local_part == entry):
                return True
        return False

    def owners(self, raw: bytes, envelope: Envelope) -> tuple[str, ...]:
        """Return the sorted local addresses that own ``raw``."""
        journaled = any(self.is_journal(rcpt) for rcpt in envelope.rcpt_tos)
        candidates = [envelope.mail_from, *envelope.rcpt_tos]
        if journaled:
            try:
                candidates += header_addresses(raw)
            except Exception:
                # Refusing the message would lose it; the envelope owners
                # still get it, and the log says whose headers were lost.
                log.exception("owner headers unreadable; envelope owners only",
                              extra={"event": "ownership.headers_unreadable"})
        return tuple(sorted({
            normalise(address)
            for address in candidates
            if self.is_local(address) and not self.is_journal(address)
        }))


    def report_owners(self, report: JournalReport) -> tuple[str, ...]:
        """Return the local addresses a journal report names, sorted.

        The report's own envelope (from the journaling agent to the
        journal address) says nothing about the original; the report's
        sender, recipients, expanded lists and forwarding targets do.
        """
        candidates = (report.sender, *report.recipients, *report.expanded,
                      *report.forwarded)
        return tuple(sorted({
            normalise(address) for address in candidates
            if self.is_local(address) and not self.is_journal(address)
        }))


def normalise(address: str) -> str:
    """Return the comparable form of an address: stripped, lower-cased."""
    return address.strip().strip("<>").lower()


def header_addresses(raw: bytes) -> list[str]:
    """Return every address in the owner headers of ``raw``.

    The legacy compat32 policy is used on purpose: it never raises on a
    malformed header, and a header we cannot read must not cost a message
    its owners elsewhere.
    """
    # The header parser still reads the body line by line: hand it only the
    # header block, which for a large message is most of the cost saved.
    end = _HEADER_END.search(raw)
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:end.end()] if end else raw)
    values = []
    for name in OWNER_HEADERS:
        for value in headers.get_all(name, []):
            values.append(str(value))
    return [address for _, address in parse_addresses(values) if "@" in address]


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BARE_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[A-Za-z0-9.-]+")


def parse_addresses(values: list[str]) -> list[tuple[str, str]]:
    """Return (display name, address) pairs from address header values.

    ``email.utils.getaddresses`` recurses once per malformed token and
    exhausts the stack on hostile headers (thousands of encoded words in
    one To field); such a header then falls back to picking out anything
    shaped like an address, so its owners are still found.
    """
    try:
        return getaddresses(values)
    except (RecursionError, ValueError, IndexError):
        return [("", match) for value in values for match in _BARE_ADDRESS.findall(value)]
