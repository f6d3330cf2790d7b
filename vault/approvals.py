"""The two-person rule: a destructive action waits for a second person.

When the settings ask for it, releasing a case's holds and running a
disposition only *request* the action.  A different person, who holds the
same capability, approves the request and the action runs then, in the
approver's session, with both names in the audit trail.  The requester
can never approve their own request, whatever role they hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from vault import VaultError
from vault.clock import now
from vault.control import ControlDB
from vault.roles import Principal, require

HOLD_RELEASE = "hold.release"
DISPOSITION = "disposition.run"
ACTIONS = (HOLD_RELEASE, DISPOSITION)


class ApprovalError(VaultError):
    """A request cannot be approved (or made); the message says why."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One pending (or decided) request for a destructive action."""

    id: int
    action: str
    target: str
    requested_by: str
    requested_at: str
    state: str
    decided_by: str | None


def file_request(control: ControlDB, action: str, target: str, actor: Principal) -> int:
    """Record ``actor``'s request for ``action`` on ``target``; return its id."""
    if action not in ACTIONS:
        raise ApprovalError(f"unknown action {action!r}")
    require(actor, action)
    with control.connect() as connection:
        pending = connection.execute(
            "SELECT id FROM approvals WHERE action = ? AND target = ? AND state = 'pending'",
            (action, target)).fetchone()
        if pending is not None:
            raise ApprovalError(f"request {pending['id']} for {action} {target!r} "
                                "is already waiting for approval")
        request_id = connection.execute(
            "INSERT INTO approvals (action, target, requested_by, requested_at)"
            " VALUES (?, ?, ?, ?)",
            (action, target, actor.address, now().isoformat())).lastrowid
    assert request_id is not None
    control.audit(actor.address, "approval.requested", target, requested=action,
                  request=request_id)
    return int(request_id)


@contextlib.contextmanager
def approving(control: ControlDB, request_id: int, approver: Principal) -> Iterator[Request]:
    """Claim a pending request for ``approver`` while the caller carries it out.

    The request is marked executed before the block runs, so that two
    approvers racing cannot both run it; if the block raises, the request
    goes back to pending and the error propagates.
    """
    with control.connect(exclusive=True) as connection:
        row = connection.execute("SELECT * FROM approvals WHERE id = ?",
                                 (request_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no request {request_id}")
        if row["state"] != "pending":
            raise ApprovalError(f"request {request_id} is already {row['state']}")
        if row["requested_by"] == approver.address:
            raise ApprovalError(
                f"request {request_id} needs a second person: {approver.address} "
                "made it and cannot approve it")
        require(approver, row["action"])
        connection.execute(
            "UPDATE approvals SET state = 'executed', decided_by = ?, decided_at = ?"
            " WHERE id = ?", (approver.address, now().isoformat(), request_id))
    request = Request(row["id"], row["action"], row["target"], row["requested_by"],
                      row["requested_at"], "executed", approver.address)
    try:
        yield request
    except BaseException:
        with control.connect() as connection:
            connection.execute(
                "UPDATE approvals SET state = 'pending', decided_by = NULL,"
                " decided_at = NULL WHERE id = ?", (request_id,))
        raise
    control.audit(approver.address, "approval.granted", request.target,
                  approved=request.action, request=request_id,
                  requested_by=request.requested_by)


def pending(control: ControlDB, target: str | None = None) -> list[Request]:
    """Return the requests still waiting, oldest first."""
    query = "SELECT * FROM approvals WHERE state = 'pending'"
    parameters: tuple[str, ...] = ()
    if target is not None:
        query += " AND target = ?"
        parameters = (target,)
    with control.connect() as connection:
        rows = connection.execute(query + " ORDER BY id", parameters).fetchall()
    return [Request(row["id"], row["action"], row["target"], row["requested_by"],
                    row["requested_at"], row["state"], row["decided_by"]) for row in rows]
