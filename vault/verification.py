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
    faults: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        """Tell whether no fault was found."""
        return not self.faults

    def fault(self, key: str, problem: str) -> None:
        """Record one fault against one object."""
        self.faults.append(f"{key}: {problem}")


def verify(vault: Vault, *, catalogue_ids: set[str] | None = None,
           sample: int | None = None, progress: Progress = _no_progress) -> Report:
    """Check the whole vault (or a sample of its messages); never raises for damage."""
    report = Report()
    message_keys = set(vault.store.list(MESSAGES))
    report.messages = len(message_keys)
    received: dict[str, list[tuple[str, str, int]]] = {}
    reports_named: set[str] = set()

    receipt_keys = list(vault.store.list(RECEIPTS))
    report.receipts = len(receipt_keys)
    for key in progress(receipt_keys, "receipts", len(receipt_keys)):
        try:
            receipt = vault.read_receipt(key)
        except VaultError as err:
            report.fault(key, str(err))
            continue
        received.setdefault(receipt.message_key, []).append((key, receipt.sha256, receipt.size))
        if receipt.message_key not in message_keys:
            report.fault(key, f"names {receipt.message_key}, which is not stored")
        if receipt.report_key:
            reports_named.add(receipt.report_key)

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
        stored_ids = {key.removeprefix(MESSAGES + "/") for key in received.keys() & message_keys}
        for missing in sorted(stored_ids - catalogue_ids):
            report.fault(f"{MESSAGES}/{missing}", "stored but not in the catalogue")
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
