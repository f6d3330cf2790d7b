"""The operational view: what each journal source has sent, and when.

A journal source is the journal address a copy was sent to or, for
envelope relay, the peer that sent it.  For each source seen in the last
week: messages and bytes in the last hour and day, the time of its last
message, and how many deliveries it was answered 4xx (deferred) or 5xx
(refused) in the last day.  A source whose mail stopped shows as silent,
so a journaling rule that quietly broke is visible.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from vault import VaultError
from vault.clock import now
from vault.control import ControlDB
from vault.ingest import Vault
from vault.receipts import Receipt, time_prefix

log = logging.getLogger(__name__)

WEEK = dt.timedelta(days=7)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


@dataclasses.dataclass
class SourceStatus:
    """Counters for one journal source."""

    source: str
    messages_hour: int = 0
    bytes_hour: int = 0
    messages_day: int = 0
    bytes_day: int = 0
    last_message: dt.datetime | None = None
    deferred_day: int = 0
    refused_day: int = 0

    def is_silent(self, at: dt.datetime) -> bool:
        """Tell whether the source sent mail this week but none this hour."""
        return self.last_message is not None and at - self.last_message > HOUR


def journal_source(receipt: Receipt, vault: Vault) -> str:
    """Name the source of a delivery: its journal address, else its peer."""
    for rcpt in receipt.rcpt_tos:
        if vault.rules.is_journal(rcpt):
            return rcpt.lower()
    return receipt.peer or "unknown"


def collect(vault: Vault, control: ControlDB) -> list[SourceStatus]:
    """Return the status of every source seen in the last week, by name.

    A receipt that cannot be read (damaged, or gone) is left out of the
    counts: one bad object must not blind the view of every source.  The
    catalogue's coverage (``indexer.reconcile``) names every such receipt.
    """
    at = now()
    sources: dict[str, SourceStatus] = {}
    for key in vault.receipts_after(time_prefix(at - WEEK)):
        try:
            receipt = vault.read_receipt(key)
        except VaultError as err:
            log.error("%s: receipt cannot be read: %s", key, err,
                      extra={"event": "status.bad_receipt"})
            continue
        name = journal_source(receipt, vault)
        status = sources.setdefault(name, SourceStatus(name))
        age = at - receipt.received_at
        if age <= DAY:
            status.messages_day += 1
            status.bytes_day += receipt.size
        if age <= HOUR:
            status.messages_hour += 1
            status.bytes_hour += receipt.size
        if status.last_message is None or receipt.received_at > status.last_message:
            status.last_message = receipt.received_at
    with control.connect() as connection:
        rows = connection.execute(
            "SELECT source, code FROM refusals WHERE at >= ?", ((at - DAY).isoformat(),))
        for row in rows:
            status = sources.setdefault(row["source"], SourceStatus(row["source"]))
            if 400 <= row["code"] < 500:
                status.deferred_day += 1
            else:
                status.refused_day += 1
    return sorted(sources.values(), key=lambda status: status.source)
