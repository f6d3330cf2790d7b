"""The audit trail: events in the control database, sealed into the vault.

Events are appended to the control database as they happen (quick to
write and to filter).  ``seal_pending`` then moves every unsealed event
into a *batch*, an object ``audit/<sequence>`` sealed like any other and
locked for the default retention period::

    {"format": 1, "sequence": 7, "previous": "<SHA-256 of batch 6's JSON>",
     "events": [{"id": 120, "at": "...", "actor": "...", "action": "...",
                 "target": "...", "detail": {...}}, ...]}

Each batch names the SHA-256 of the one before it, so a batch removed,
replaced or reordered breaks the chain, and an event edited in the
database no longer matches its sealed copy.  ``verify_chain`` walks the
batches and reports the first break.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

from vault import ObjectExistsError, VaultError
from vault.clock import now
from vault.control import ControlDB
from vault.ingest import Vault
from vault.sealing import seal

log = logging.getLogger(__name__)

AUDIT = "audit"
BATCH_FORMAT = 1
GENESIS = "0" * 64


def command_line_actor() -> str:
    """The audit identity of whoever runs a ``strongroom`` command: ``cli:<login>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def batch_key(sequence: int) -> str:
    """Return the object key of the batch with this sequence number."""
    return f"{AUDIT}/{sequence:012d}"


def seal_pending(control: ControlDB, vault: Vault) -> int:
    """Seal every unsealed event into one new batch; return how many events.

    Holds the control database's write lock throughout, so batches from
    several processes take turns and the chain never forks.  Safe to retry
    after any failure: a batch stored before a crash is adopted, not
    written again.
    """
    with control.connect(exclusive=True) as connection:
        rows = connection.execute(
            "SELECT id, at, actor, action, target, detail FROM audit"
            " WHERE batch IS NULL ORDER BY id"
        ).fetchall()
        if not rows:
            return 0
        head = connection.execute(
            "SELECT sequence, sha256 FROM audit_chain ORDER BY sequence DESC LIMIT 1"
        ).fetchone()
        sequence = (head["sequence"] + 1) if head else 1
        previous = head["sha256"] if head else GENESIS
        events = [_event(row) for row in rows]
        body = json.dumps({"format": BATCH_FORMAT, "sequence": sequence,
                           "previous": previous, "events": events},
                          sort_keys=True).encode("utf-8")
        key = batch_key(sequence)
        try:
            vault.store.put(key, seal(vault.keys, key, body),
                            retain_until=now() + vault.retention.default)
        except ObjectExistsError:
            # A crash after the put and before the commit: adopt what is
            # stored, and leave the remaining events for the next batch.
            body = vault.read_sealed(key)
            events = json.loads(body)["events"]
            log.warning("%s already stored; adopting it", key,
                        extra={"event": "audit.batch_adopted"})
        connection.executemany("UPDATE audit SET batch = ? WHERE id = ?",
                               [(sequence, event["id"]) for event in events])
        connection.execute(
            "INSERT INTO audit_chain (sequence, object_key, sha256) VALUES (?, ?, ?)",
            (sequence, key, hashlib.sha256(body).hexdigest()),
        )
    return len(events)


@dataclasses.dataclass
class ChainReport:
    """What walking the audit chain found."""

    batches: int = 0
    events: int = 0
    first_break: str | None = None
    unsealed: int = 0


def verify_chain(control: ControlDB, vault: Vault) -> ChainReport:
    """Walk every batch in order; stop at the first break and name it."""
    report = ChainReport()
    previous = GENESIS
    with control.connect() as connection:
        stored_rows = {row["id"]: _event(row) for row in connection.execute(
            "SELECT id, at, actor, action, target, detail FROM audit")}
        report.unsealed = connection.execute(
            "SELECT count(*) FROM audit WHERE batch IS NULL").fetchone()[0]
    for expected, key in enumerate(vault.store.list(AUDIT), start=1):
        try:
            body = vault.read_sealed(key)
            batch = json.loads(body)
        except (VaultError, ValueError) as err:
            report.first_break = f"{key}: cannot be opened: {err}"
            return report
        if key != batch_key(expected) or batch.get("sequence") != expected:
            report.first_break = f"{key}: expected batch {expected} here (a batch is missing)"
            return report
        if batch.get("previous") != previous:
            report.first_break = f"{key}: does not follow batch {expected - 1}"
            return report
        for event in batch["events"]:
            if stored_rows.get(event["id"]) != event:
                report.first_break = (
                    f"{key}: event {event['id']} in the control database differs "
                    "from its sealed copy")
                return report
        previous = hashlib.sha256(body).hexdigest()
        report.batches += 1
        report.events += len(batch["events"])
    return report


def _event(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "at": row["at"], "actor": row["actor"],
            "action": row["action"], "target": row["target"],
            "detail": json.loads(row["detail"])}
