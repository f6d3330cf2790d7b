"""Legal holds: named reasons to keep objects beyond their retention.

A hold names the objects it covers (messages and their receipts).  The
store's own legal-hold flag (S3 Object Lock legal hold, or the local
store's lock record) is set while at least one active hold covers an
object, and cleared only when the last one is released.  The control
database records which holds cover which objects; purge consults both.
"""

from __future__ import annotations

from collections.abc import Iterable

from vault import VaultError
from vault.clock import now
from vault.control import ControlDB
from vault.store import ObjectStore


class HoldError(VaultError):
    """A hold operation was refused; the message says why."""


class Holds:
    """Place and release named legal holds."""

    def __init__(self, control: ControlDB, store: ObjectStore) -> None:
        self.control = control
        self.store = store

    def place(self, name: str, query: str, object_keys: Iterable[str], actor: str) -> int:
        """Hold every object in ``object_keys`` under ``name``; return how many.

        Placing an active hold again adds objects to it.  Safe to retry:
        the flag is set on every covered object each time.
        """
        keys = sorted(set(object_keys))
        with self.control.connect(exclusive=True) as connection:
            row = connection.execute("SELECT released_at FROM holds WHERE name = ?",
                                     (name,)).fetchone()
            if row is not None and row["released_at"] is not None:
                raise HoldError(f"hold {name!r} was released; choose a new name")
            if row is None:
                connection.execute(
                    "INSERT INTO holds (name, query, placed_by, placed_at) VALUES (?, ?, ?, ?)",
                    (name, query, actor, now().isoformat()))
            connection.executemany(
                "INSERT OR IGNORE INTO hold_objects (hold_name, object_key) VALUES (?, ?)",
                [(name, key) for key in keys])
        for key in keys:
            self.store.set_legal_hold(key, True)
        self.control.audit(actor, "hold.placed", name, query=query, objects=len(keys))
        return len(keys)

    def release(self, name: str, actor: str) -> int:
        """Release ``name``; clear the flag where no other hold remains.

        Returns the number of objects whose legal hold was cleared.
        """
        with self.control.connect(exclusive=True) as connection:
            row = connection.execute("SELECT released_at FROM holds WHERE name = ?",
                                     (name,)).fetchone()
            if row is None:
                raise HoldError(f"no hold named {name!r}")
            if row["released_at"] is not None:
                raise HoldError(f"hold {name!r} is already released")
            connection.execute(
                "UPDATE holds SET released_by = ?, released_at = ? WHERE name = ?",
                (actor, now().isoformat(), name))
            freed = [r["object_key"] for r in connection.execute(
                "SELECT object_key FROM hold_objects AS mine WHERE hold_name = ?"
                " AND NOT EXISTS (SELECT 1 FROM hold_objects AS other JOIN holds"
                "  ON holds.name = other.hold_name"
                "  WHERE other.object_key = mine.object_key AND holds.released_at IS NULL)",
                (name,))]
        for key in freed:
            self.store.set_legal_hold(key, False)
        self.control.audit(actor, "hold.released", name, cleared=len(freed))
        return len(freed)

    def is_held(self, key: str) -> bool:
        """Tell whether any active hold covers ``key``."""
        with self.control.connect() as connection:
            return connection.execute(
                "SELECT 1 FROM hold_objects JOIN holds ON holds.name = hold_objects.hold_name"
                " WHERE object_key = ? AND released_at IS NULL LIMIT 1", (key,)
            ).fetchone() is not None

    def active(self) -> list[dict[str, object]]:
        """Return every hold with its object count, newest first."""
        with self.control.connect() as connection:
            rows = connection.execute(
                "SELECT holds.*, count(object_key) AS objects FROM holds"
                " LEFT JOIN hold_objects ON hold_name = name GROUP BY name"
                " ORDER BY placed_at DESC").fetchall()
        return [dict(row) for row in rows]
