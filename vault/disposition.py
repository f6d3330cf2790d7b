"""Disposition: delete what the archive no longer has to keep, and say so.

A message may go only when its own lock has passed, no legal hold covers
it, and the same is true of every receipt that names it.  Its catalogue
document goes first (so nothing half-deleted is ever found), then its
receipts, then the message; a run cut short leaves objects that the next
run finishes.  The audit trail records what was destroyed - counts and
object keys, never content.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vault.clock import now
from vault.control import ControlDB
from vault.holds import Holds
from vault.ingest import MESSAGES, Vault
from vault.receipts import RECEIPTS


@dataclasses.dataclass
class PurgeReport:
    """What a purge deleted (or, dry, would delete) and what it kept."""

    messages: list[str] = dataclasses.field(default_factory=list)
    receipts: list[str] = dataclasses.field(default_factory=list)
    kept_retained: int = 0
    kept_held: int = 0


def purge(vault: Vault, control: ControlDB, holds: Holds, *, actor: str,
          dry_run: bool, remove_documents: Callable[[list[str]], None]) -> PurgeReport:
    """Delete every message (and its receipts) past retention and not held."""
    at = now()
    report = PurgeReport()
    naming: dict[str, list[str]] = {}
    for key in vault.store.list(RECEIPTS):
        receipt = vault.read_receipt(key)
        naming.setdefault(receipt.message_key, []).append(key)
        if receipt.report_key and vault.store.exists(receipt.report_key):
            # A journal report goes with the delivery it evidences.
            naming[receipt.message_key].append(receipt.report_key)

    def keeps(key: str) -> str | None:
        lock = vault.store.lock(key)
        if lock.legal_hold or holds.is_held(key):
            return "held"
        if lock.is_locked(at):
            return "retained"
        return None

    stored = set(vault.store.list(MESSAGES))
    for message_key in sorted(stored | naming.keys()):
        objects = naming.get(message_key, []) + ([message_key] if message_key in stored else [])
        reasons = {keeps(key) for key in objects} - {None}
        if "held" in reasons:
            report.kept_held += 1
        elif reasons:
            report.kept_retained += 1
        else:
            report.receipts += naming.get(message_key, [])
            if message_key in stored:
                report.messages.append(message_key)
    if dry_run or not (report.messages or report.receipts):
        return report

    remove_documents([key.removeprefix(MESSAGES + "/") for key in report.messages])
    for key in dict.fromkeys(report.receipts + report.messages):
        vault.store.delete(key)
    control.audit(actor, "purge", "", messages=report.messages, receipts=report.receipts,
                  kept_retained=report.kept_retained, kept_held=report.kept_held)
    return report
