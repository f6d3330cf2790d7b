"""Legal holds from cases: what a saved search finds, and future mail.

Holds placed from a case are ordinary named holds (``vault.holds``) whose
names start ``case:<case>:``, covering each message and its receipts; a
message two cases hold stays held until both release.  A case may also
hold all *future* mail of its custodians: the follower hands each indexed
batch to ``hold_new_deliveries``.  Releasing is per case, and needs a
second person when the settings say so (``vault.approvals``).
"""

from __future__ import annotations

from typing import Any

from vault.approvals import (HOLD_RELEASE, ApprovalError, Request, approving,
                             file_request)
from vault.cases import FUTURE, Case, CaseError, Cases, SavedSearch
from vault.control import ControlDB
from vault.holds import Holds
from vault.ingest import MESSAGES, Vault
from vault.roles import HOLD_PLACE, Principal, require

HOLD_PREFIX = "case:"


class CaseHolds:
    """Hold what a case's searches find, and release per case."""

    def __init__(self, cases: Cases, holds: Holds, vault: Vault) -> None:
        self.cases = cases
        self.holds = holds
        self.vault = vault
        self.control = cases.control

    def hold_search(self, case: Case, search: SavedSearch, actor: Principal) -> int:
        """Hold every message the search matches, with its receipts."""
        require(actor, HOLD_PLACE)
        matches = self.cases.run(case, search, actor)
        keys = [key for match in matches
                for key in (f"{MESSAGES}/{match.message_id}", *match.receipts)]
        name = self._new_hold_name(case, search.name)
        held = self.holds.place(name, search.text, keys, actor=actor.address)
        with self.control.connect() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO case_holds (hold_name, case_id, search_id)"
                " VALUES (?, ?, ?)", (name, case.id, search.id))
        state = self.cases.search(case, search.name).state
        self.control.audit(actor.address, "case.held", case.name, search=search.name,
                           hold=name, messages=len(matches), objects=held,
                           documents=state.get("documents"), cursor=state.get("cursor"))
        return len(matches)

    def hold_future(self, case: Case, actor: Principal) -> None:
        """Hold all mail the custodians receive from now on."""
        require(actor, HOLD_PLACE)
        name = self._new_hold_name(case, FUTURE)
        self.holds.place(name, "future mail of " + ", ".join(case.custodians), [],
                         actor=actor.address)
        with self.control.connect() as connection:
            connection.execute("INSERT INTO case_holds (hold_name, case_id) VALUES (?, ?)",
                               (name, case.id))
            connection.execute("UPDATE cases SET hold_future = 1 WHERE id = ?", (case.id,))
        self.control.audit(actor.address, "case.held_future", case.name, hold=name,
                           custodians=list(case.custodians))

    def active_holds(self, case: Case) -> list[dict[str, Any]]:
        """Return the case's holds that are not released, with their counts.

        ``objects`` counts every object held (messages and their receipts),
        ``messages`` the messages alone, which is what a reader means.
        """
        with self.control.connect() as connection:
            return [dict(row) for row in connection.execute(
                "SELECT holds.name, holds.placed_by, holds.placed_at,"
                " (SELECT count(*) FROM hold_objects WHERE hold_name = holds.name)"
                "  AS objects,"
                " (SELECT count(*) FROM hold_objects WHERE hold_name = holds.name"
                "  AND object_key LIKE ?) AS messages"
                " FROM case_holds JOIN holds ON holds.name = hold_name"
                " WHERE case_id = ? AND released_at IS NULL ORDER BY placed_at",
                (f"{MESSAGES}/%", case.id))]

    def release(self, case: Case, actor: Principal, *, two_person: bool) -> int | None:
        """Release every hold of the case, or file a request for a second person.

        Returns the request id when the two-person rule applies, else None.
        """
        require(actor, HOLD_RELEASE)
        if not self.active_holds(case):
            raise CaseError(f"case {case.name} holds nothing")
        if two_person:
            return file_request(self.control, HOLD_RELEASE, HOLD_PREFIX + case.name, actor)
        self._release_now(case, actor.address)
        return None

    def approve(self, request_id: int, approver: Principal) -> Request:
        """Carry out a pending release as its second person."""
        with approving(self.control, request_id, approver) as request:
            if request.action != HOLD_RELEASE:
                raise CaseError(f"request {request_id} is not a hold release")
            name = request.target.removeprefix(HOLD_PREFIX)
            case = self.cases.named(name)
            if case is None:
                raise CaseError(f"no case named {name!r}")
            # The second person judges this case's release, so they must be
            # able to see the case: a member, like every other case action
            # (docs/ediscovery.md, "Who may approve").  The case is not
            # named, as "no case" is not for a non-member elsewhere.
            try:
                self.cases.get(name, approver)
            except CaseError:
                raise ApprovalError(
                    f"request {request_id}: {approver.address} is not a member of its "
                    "case; a case manager can add them first") from None
            self._release_now(case, approver.address, requested_by=request.requested_by)
        return request

    def _release_now(self, case: Case, actor: str, requested_by: str = "") -> None:
        cleared = 0
        names = [hold["name"] for hold in self.active_holds(case)]
        for name in names:
            cleared += self.holds.release(name, actor)
        with self.control.connect() as connection:
            connection.execute("UPDATE cases SET hold_future = 0 WHERE id = ?", (case.id,))
        self.control.audit(actor, "case.released", case.name, holds=names,
                           cleared=cleared, requested_by=requested_by or actor)

    def _new_hold_name(self, case: Case, label: str) -> str:
        # A released hold's name is never reused (vault.holds refuses it),
        # so holding again after a release numbers the new hold.
        base = f"{HOLD_PREFIX}{case.name}:{label}"
        with self.control.connect() as connection:
            taken = {row["name"]: row["released_at"] for row in connection.execute(
                "SELECT name, released_at FROM holds WHERE name = ? OR name LIKE ?",
                (base, base + "#%"))}
        if base not in taken or taken[base] is None:
            return base
        number = 2
        while f"{base}#{number}" in taken and taken[f"{base}#{number}"] is not None:
            number += 1
        return f"{base}#{number}"


def hold_new_deliveries(control: ControlDB, vault: Vault, receipt_keys: list[str]) -> int:
    """Add newly indexed deliveries to the future-mail holds of their custodians.

    Called by the follower after each batch; returns how many deliveries
    it held.  Cheap when no case holds future mail: one query, no reads.
    """
    with control.connect() as connection:
        rows = connection.execute(
            "SELECT holds.name AS hold, mailbox FROM cases"
            " JOIN case_holds ON case_holds.case_id = cases.id"
            " JOIN holds ON holds.name = hold_name AND released_at IS NULL"
            " JOIN case_custodians ON case_custodians.case_id = cases.id"
            " WHERE hold_future = 1 AND hold_name LIKE ?", ("%:" + FUTURE + "%",)).fetchall()
    if not rows:
        return 0
    holding: dict[str, set[str]] = {}
    for row in rows:
        holding.setdefault(row["mailbox"], set()).add(row["hold"])
    per_hold: dict[str, list[str]] = {}
    held = 0
    for key in receipt_keys:
        receipt = vault.read_receipt(key)
        names = set().union(*(holding.get(owner, set()) for owner in receipt.owners))
        for name in names:
            per_hold.setdefault(name, []).extend([receipt.message_key, key])
        held += bool(names)
    for name, keys in per_hold.items():
        Holds(control, vault.store).place(name, "", keys, actor="follower")
    return held
