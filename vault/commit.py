"""Commit a delivery's objects to the store: one at a time, or in groups.

A delivery is a list of *tiers* of puts: the message object (and a journal
report) first, its receipt after.  Committing returns only once every put
is durable, and a later tier is never visible before an earlier one.

``DirectCommitter`` puts each object on its own, through any store.
``GroupCommitter`` makes the deliveries of concurrent sessions durable
together on a ``LocalWormStore``: each caller seals and writes its objects
to scratch space in its own thread, then whichever caller finds no flush
running publishes everything waiting, in one sync of the files' data and
one fsync per directory, while the others wait for it (group commit, as
databases do for their logs).  A batch fails or succeeds whole: every
delivery in a failed batch gets the error, so every sender is told 4xx.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from vault import ObjectExistsError, StoreError
from vault.store import LocalWormStore, ObjectStore, StagedObject

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Put:
    """One object of a delivery.

    ``is_shared`` marks a content-addressed object (a message, a journal
    report): if it is already stored, the delivery only needs its lock
    lengthened to ``retain_until``.
    """

    key: str
    data: bytes | Iterable[bytes]
    retain_until: dt.datetime
    is_shared: bool = False


class Committer(Protocol):
    """Make a delivery's puts durable, tier after tier.

    ``commit`` returns once every put is durable; it raises StoreError (or
    ObjectExistsError for a taken key that is not shared) otherwise, and
    the delivery must then be answered 4xx.  Safe to call from many
    threads at once.
    """

    def commit(self, tiers: Sequence[Sequence[Put]]) -> None: ...


class DirectCommitter:
    """Put every object on its own, in order: each put pays its own flush."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def commit(self, tiers: Sequence[Sequence[Put]]) -> None:
        """Put each object in turn; see Committer."""
        for tier in tiers:
            for put in tier:
                try:
                    self.store.put(put.key, put.data, retain_until=put.retain_until)
                except ObjectExistsError:
                    if not put.is_shared:
                        raise
                    self.store.extend_retention(put.key, put.retain_until)


@dataclasses.dataclass(eq=False)
class _Delivery:
    tiers: list[list[StagedObject]]
    is_done: bool = False
    error: BaseException | None = None


class GroupCommitter:
    """Publish the deliveries of concurrent callers in shared batches.

    At most ``max_batch`` deliveries go into one batch.  ``batches`` and
    ``deliveries`` count what has been committed, for tests and the
    benchmark.
    """

    def __init__(self, store: LocalWormStore, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.store = store
        self.max_batch = max_batch
        self.batches = 0
        self.deliveries = 0
        self._waiting: list[_Delivery] = []
        self._is_flushing = False
        self._condition = threading.Condition()

    @property
    def waiting(self) -> int:
        """Return how many staged deliveries wait for the next flush."""
        with self._condition:
            return len(self._waiting)

    def commit(self, tiers: Sequence[Sequence[Put]]) -> None:
        """Stage the puts here, then publish them with whatever else waits."""
        delivery = _Delivery(self._stage(tiers))
        with self._condition:
            self._waiting.append(delivery)
        while not self._take_turn(delivery):
            pass
        # Each caller raises its own exception: one instance raised in many
        # threads would share (and garble) one traceback.
        if isinstance(delivery.error, ObjectExistsError):
            raise ObjectExistsError(str(delivery.error)) from delivery.error
        if delivery.error is not None:
            raise StoreError(f"group commit failed: {delivery.error}") from delivery.error

    def _stage(self, tiers: Sequence[Sequence[Put]]) -> list[list[StagedObject]]:
        staged: list[list[StagedObject]] = []
        try:
            for tier in tiers:
                staged.append([])
                for put in tier:
                    staged[-1].append(self.store.stage(
                        put.key, put.data, retain_until=put.retain_until,
                        is_shared=put.is_shared))
        except BaseException:
            self.store.discard(item for tier in staged for item in tier)
            raise
        return staged

    def _take_turn(self, delivery: _Delivery) -> bool:
        # Wait while another caller flushes; if this delivery is still not
        # done, lead the next flush.  Return whether it is done.
        with self._condition:
            while self._is_flushing and not delivery.is_done:
                self._condition.wait()
            if delivery.is_done:
                return True
            self._is_flushing = True
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
        try:
            self._flush(batch)
        finally:
            with self._condition:
                self._is_flushing = False
                self._condition.notify_all()
        return delivery.is_done

    def _flush(self, batch: list[_Delivery]) -> None:
        depth = max(len(delivery.tiers) for delivery in batch)
        tiers = [[item for delivery in batch if level < len(delivery.tiers)
                  for item in delivery.tiers[level]] for level in range(depth)]
        error: BaseException | None = None
        try:
            self.store.publish(tiers)
        except Exception as err:
            error = err
            log.error("group commit of %d deliveries failed: %s", len(batch), err,
                      extra={"event": "vault.commit_failed"})
        self.batches += 1
        self.deliveries += len(batch)
        log.debug("group commit: %d deliveries in one batch", len(batch),
                  extra={"event": "vault.committed"})
        for delivery in batch:
            delivery.error = error
            delivery.is_done = True
