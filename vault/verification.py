"""Verify the vault: every object opens, every message is what it claims.

Checks, each fault naming the object it concerns:

- every sealed object (message and receipt) authenticates under its key;
- every message's key equals the keyed HMAC of its opened bytes, and each
  receipt's SHA-256 and size match the message it names;
- every receipt names a stored message, and every message has a receipt;
- the catalogue holds a document for every message and none for anything
  else (when the caller passes the catalogue's document ids).

With ``sample`` only that many randomly chosen messages are opened (their
receipts are still all read, since the cross-checks need them).

The archive may be receiving while it is verified.  A message is stored
before its receipt, so receipts are listed first and messages second:
every receipt listed names a message already stored.  A message stored
after the receipts were listed has its receipt listed on a second look,
and one whose receipts all came after the catalogue's cursor (less the
caller's margin) is not yet indexed, which is counted, not a fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
from collections.abc import Callable, Iterable

from vault import VaultError
from vault.ingest import MESSAGES, REPORTS, Vault
from vault.receipts import RECEIPTS

Progress = Callable[[Iterable[str], str, int | None], Iterable[str]]


def _no_progress(items: Iterable[str], label: str, total: int | None) -> Iterable[str]:
    return items


@dataclasses.dataclass
class Report:
    """What verification found."""

    messages: int = 0
    receipts: int = 0
    opened: int = 0
    # Stored messages whose receipts are all newer than the catalogue's
    # cursor: the follower has not reached them yet.
    not_yet_indexed: int = 0
    faults: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        """Tell whether no fault was found."""
        return not self.faults

    def fault(self, key: str, problem: str) -> None:
        """Record one fault against one object."""
        self.faults.append(f"{key}: {problem}")


def verify(vault: Vault, *, catalogue_ids: set[str] | None = None,
           indexed_through: str = "", sample: int | None = None,
           progress: Progress = _no_progress) -> Report:
    """Check the whole vault (or a sample of its messages); never raises for damage.

    ``catalogue_ids`` are the catalogue's documents, read before this
    runs; ``indexed_through`` the receipt key through which the catalogue
    is known complete (its cursor less the follower's overlap): a message
    with no receipt at or before it is not yet indexed, not missing.
    """
    report = Report()
    receipt_keys = list(vault.store.list(RECEIPTS))
    message_keys = set(vault.store.list(MESSAGES))
    report.messages = len(message_keys)
    received: dict[str, list[tuple[str, str, int]]] = {}
    reports_named: set[str] = set()

    def read(key: str) -> str | None:
        """Read one receipt into ``received``; return the message it names."""
        try:
            receipt = vault.read_receipt(key)
        except VaultError as err:
            report.fault(key, str(err))
            return None
        received.setdefault(receipt.message_key, []).append((key, receipt.sha256, receipt.size))
        if receipt.report_key:
            reports_named.add(receipt.report_key)
        return receipt.message_key

    report.receipts = len(receipt_keys)
    for key in progress(receipt_keys, "receipts", len(receipt_keys)):
        named = read(key)
        if named is not None and named not in message_keys:
            report.fault(key, f"names {named}, which is not stored")

    if message_keys - received.keys():
        # Delivered while the two listings ran: their receipts came after
        # (and may name messages stored after the listing, so no check).
        listed = set(receipt_keys)
        later = [key for key in vault.store.list(RECEIPTS) if key not in listed]
        report.receipts += len(later)
        for key in later:
            read(key)
    for key in sorted(message_keys - received.keys()):
        report.fault(key, "stored but no receipt names it")
    report_keys = set(vault.store.list(REPORTS))
    for key in sorted(reports_named - report_keys):
        report.fault(key, "named by a receipt but not stored")
    for key in sorted(report_keys):
        if key not in reports_named:
            report.fault(key, "stored but no receipt names it")
        try:
            vault.read_sealed(key)
        except VaultError as err:
            report.fault(key, str(err))

    chosen = sorted(message_keys)
    if sample is not None and sample < len(chosen):
        chosen = sorted(random.sample(chosen, sample))
    for key in progress(chosen, "messages", len(chosen)):
        _check_message(vault, key, received.get(key, []), report)

    if catalogue_ids is not None:
        for key in sorted(received.keys() & message_keys):
            if key.removeprefix(MESSAGES + "/") in catalogue_ids:
                continue
            if indexed_through and min(r[0] for r in received[key]) > indexed_through:
                report.not_yet_indexed += 1
            else:
                report.fault(key, "stored but not in the catalogue")
        for extra in sorted(catalogue_ids - {k.removeprefix(MESSAGES + "/") for k in message_keys}):
            report.fault(f"catalogue/{extra}", "in the catalogue but not stored")
    return report


def _check_message(vault: Vault, key: str, receipts: list[tuple[str, str, int]],
                   report: Report) -> None:
    try:
        raw = vault.read_message(key)
    except VaultError as err:
        report.fault(key, str(err))
        return
    report.opened += 1
    if not hmac.compare_digest(vault.message_key(raw), key):
        report.fault(key, "content does not match its key (identity HMAC differs)")
    digest = hashlib.sha256(raw).hexdigest()
    for receipt_key, sha256, size in receipts:
        if sha256 != digest or size != len(raw):
            report.fault(receipt_key, f"SHA-256/size differ from {key}")
