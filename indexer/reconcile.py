"""Reconciliation: does the catalogue hold every message the vault stores?

Counts are kept per day of receipt (UTC), by the first delivery of each
message: how many messages the vault stores, how many the catalogue
holds a document for, and how many of those are *partially indexed*
(some part could not be read; its defects say which).  A message stored
but not indexed is a *gap*; the follower repairs gaps, and ``strongroom
status`` reports them while they exist.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

from indexer.catalogue import Catalogue
from indexer.extraction.reading import PARTIAL
from vault import VaultError
from vault.ingest import MESSAGES, Vault
from vault.receipts import receipt_time

# Defects that mean some of a message's text is not in the catalogue.
PARTIAL_MARKERS = (PARTIAL, "not extracted")


@dataclasses.dataclass
class DayCoverage:
    """Messages first received on one UTC day, stored and indexed."""

    day: dt.date
    stored: int = 0
    indexed: int = 0
    partial: int = 0

    @property
    def gap(self) -> int:
        """Return how many of the day's messages have no document."""
        return self.stored - self.indexed


@dataclasses.dataclass
class Coverage:
    """The catalogue measured against the vault.

    ``missing`` maps each stored message without a document to its
    receipt keys (what the follower indexes to repair it); ``unknown``
    counts documents of messages the vault no longer stores.
    """

    days: list[DayCoverage]
    missing: dict[str, list[str]]
    unknown: int = 0
    # Receipts that could not be read (damaged or gone): their messages
    # are not counted above; ``strongroom verify`` says more.
    unreadable: list[str] = dataclasses.field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(day.stored for day in self.days)

    @property
    def indexed(self) -> int:
        return sum(day.indexed for day in self.days)

    @property
    def partial(self) -> int:
        return sum(day.partial for day in self.days)


def is_partial(document: dict) -> bool:
    """Tell whether some part of a document's message could not be read."""
    return any(str(defect).startswith(PARTIAL_MARKERS) for defect in document["defects"])


class Reconciler:
    """Measure coverage, remembering the receipts it has read before.

    Receipts never change, so each is opened once per process; a later
    pass reads only the receipts that arrived since.
    """

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self._messages: dict[str, str] = {}
        self._lock = threading.Lock()

    def coverage(self, catalogue: Catalogue) -> Coverage:
        """Compare every stored message with the catalogue's documents."""
        unreadable: list[str] = []
        receipts = self._receipts_by_message(unreadable)
        documents = {document["id"]: is_partial(document) for document in catalogue.records()}
        days: dict[dt.date, DayCoverage] = {}
        missing: dict[str, list[str]] = {}
        for message_id, keys in receipts.items():
            day = receipt_time(keys[0]).date()
            counts = days.setdefault(day, DayCoverage(day))
            counts.stored += 1
            if message_id in documents:
                counts.indexed += 1
                counts.partial += documents[message_id]
            else:
                missing[message_id] = keys
        unknown = len(documents.keys() - receipts.keys())
        return Coverage(sorted(days.values(), key=lambda day: day.day), missing, unknown,
                        unreadable)

    def _receipts_by_message(self, unreadable: list[str]) -> dict[str, list[str]]:
        by_message: dict[str, list[str]] = {}
        with self._lock:
            for key in self.vault.receipts_after(""):
                message_id = self._messages.get(key)
                if message_id is None:
                    message_id = self._read(key)
                    if message_id is None:
                        unreadable.append(key)
                        continue
                    self._messages[key] = message_id
                by_message.setdefault(message_id, []).append(key)
        # Disposition deletes a message's receipts with it, so a receipt
        # listed here names a stored message.
        return by_message

    def _read(self, key: str) -> str | None:
        try:
            receipt = self.vault.read_receipt(key)
        except VaultError:
            return None
        return receipt.message_key.removeprefix(MESSAGES + "/")
