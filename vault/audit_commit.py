"""Write the audit events of concurrent callers in shared transactions.

Every access is audited before it is answered, and an audit event is only
written once it is durable: the control database commits with SQLite's
``synchronous=FULL``, one fsync of the write-ahead log per transaction.
One transaction per event would let a single disk flush (tens of
milliseconds) pace every search of the portal, since SQLite has one writer
at a time.

``AuditCommitter`` therefore commits events in groups, as
``vault.commit.GroupCommitter`` does for deliveries: each caller queues its
event, and whichever caller finds no commit running writes everything
queued in one transaction while the others wait for it.  ``append`` returns
only once the caller's own event is committed; if the transaction fails,
every caller in it gets an ``AuditError`` and must refuse what it was about
to do.  Durability is unchanged: the database's synchronous setting is
left as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from vault import VaultError

log = logging.getLogger(__name__)

# Enough to absorb a busy portal's queue in one commit while keeping one
# transaction (and so one failure) small.
DEFAULT_MAX_BATCH = 256

INSERT_EVENT = ("INSERT INTO audit (at, actor, action, target, detail)"
                " VALUES (?, ?, ?, ?, ?)")

# (at, actor, action, target, detail as JSON), the columns of INSERT_EVENT.
EventRow = tuple[str, str, str, str, str]
Connect = Callable[[], AbstractContextManager[sqlite3.Connection]]


class AuditError(VaultError):
    """An audit event could not be recorded; the access must be refused."""


@dataclasses.dataclass(eq=False)
class _Pending:
    row: EventRow
    is_done: bool = False
    error: BaseException | None = None


class AuditCommitter:
    """Commit the audit events of concurrent threads in shared transactions.

    ``connect`` opens a connection that commits when its block ends (as
    ``ControlDB.connect`` does).  ``commits`` and ``events`` count what
    has been written, for tests and benchmarks.
    """

    def __init__(self, connect: Connect, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.connect = connect
        self.max_batch = max_batch
        self.commits = 0
        self.events = 0
        self._waiting: list[_Pending] = []
        self._is_committing = False
        self._condition = threading.Condition()

    @property
    def waiting(self) -> int:
        """Return how many events wait for the next commit."""
        with self._condition:
            return len(self._waiting)

    def append(self, row: EventRow) -> None:
        """Queue one event and return once it is durable; raise AuditError if not."""
        pending = _Pending(row)
        with self._condition:
            self._waiting.append(pending)
        while not self._take_turn(pending):
            pass
        if pending.error is not None:
            # A new exception per caller: one instance raised in several
            # threads would share (and garble) its traceback.
            raise AuditError(
                f"the audit event could not be recorded: {pending.error}") from pending.error

    def _take_turn(self, pending: _Pending) -> bool:
        # Wait while another caller commits; if this event is still not
        # written, lead the next commit.  Return whether it is written.
        with self._condition:
            while self._is_committing and not pending.is_done:
                self._condition.wait()
            if pending.is_done:
                return True
            self._is_committing = True
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
        try:
            self._commit(batch)
        finally:
            with self._condition:
                self._is_committing = False
                self._condition.notify_all()
        return pending.is_done

    def _commit(self, batch: list[_Pending]) -> None:
        error: BaseException | None = None
        try:
            with self.connect() as connection:
                connection.executemany(INSERT_EVENT, [pending.row for pending in batch])
        except Exception as err:
            error = err
            log.error("could not record %d audit events: %s", len(batch), err,
                      extra={"event": "audit.write_failed"})
        else:
            self.commits += 1
            self.events += len(batch)
        for pending in batch:
            pending.error = error
            pending.is_done = True
