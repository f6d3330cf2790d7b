"""Commit a delivery's objects to the store: one at a time, or in groups.

A delivery is a list of *tiers* of puts: the message object (and a journal
report) first, its receipt after.  Committing returns only once every put
is durable, and a later tier is never visible before an earlier one.

``DirectCommitter`` puts each object on its own, through any store.
``GroupCommitter`` makes the deliveries of concurrent sessions durable
together on a ``LocalWormStore``: each caller writes its objects to
scratch space in its own thread and queues them; one flusher thread
publishes everything queued, in one sync of the files' data and one fsync
per directory, while more deliveries queue for the next flush (group
commit, as databases do for their logs).  A caller waits on a future, so
no thread is held per waiting delivery, and an asyncio session can await
it.  A batch fails or succeeds whole: every delivery in a failed batch
gets the error, so every sender is told 4xx.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from vault import MissingObjectError, ObjectExistsError, StoreError
from vault.store import LocalWormStore, ObjectStore, StagedObject

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Put:
    """One object of a delivery.

    ``is_shared`` marks a content-addressed object (a message, a journal
    report): if it is already stored, the delivery only needs its lock
    lengthened to ``retain_until``.  ``data`` None says it is known to be
    stored already: only the lock is lengthened, in the same commit.
    """

    key: str
    data: bytes | Iterable[bytes] | None
    retain_until: dt.datetime
    is_shared: bool = False


class Committer(Protocol):
    """Make a delivery's puts durable, tier after tier.

    ``submit`` returns a future that is done once every put is durable;
    its exception otherwise is StoreError (or ObjectExistsError for a
    taken key that is not shared, or MissingObjectError for a lock-only
    put whose object is gone), and the delivery must then be answered
    4xx.  ``commit`` is ``submit`` waited for, raising the same.  Both are
    safe to call from many threads at once.
    """

    def submit(self, tiers: Sequence[Sequence[Put]]
               ) -> concurrent.futures.Future[None]: ...

    def commit(self, tiers: Sequence[Sequence[Put]]) -> None: ...


class DirectCommitter:
    """Put every object on its own, in order: each put pays its own flush."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def commit(self, tiers: Sequence[Sequence[Put]]) -> None:
        """Put each object in turn; see Committer."""
        for tier in tiers:
            for put in tier:
                if put.data is None:
                    self.store.extend_retention(put.key, put.retain_until)
                    continue
                try:
                    self.store.put(put.key, put.data, retain_until=put.retain_until)
                except ObjectExistsError:
                    if not put.is_shared:
                        raise
                    self.store.extend_retention(put.key, put.retain_until)

    def submit(self, tiers: Sequence[Sequence[Put]]) -> concurrent.futures.Future[None]:
        """Commit here and now; return the outcome as a done future."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            self.commit(tiers)
        except Exception as err:
            done.set_exception(err)
        else:
            done.set_result(None)
        return done


@dataclasses.dataclass(eq=False)
class _Delivery:
    tiers: list[list[StagedObject]]
    durable: concurrent.futures.Future[None] = dataclasses.field(
        default_factory=concurrent.futures.Future)


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
        # The batch handed to the flusher, fixed when it was handed over.
        self._batch: list[_Delivery] | None = None
        self._is_flushing = False
        self._condition = threading.Condition()
        self._flusher: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Return how many staged deliveries wait for the next flush."""
        with self._condition:
            return len(self._waiting)

    def commit(self, tiers: Sequence[Sequence[Put]]) -> None:
        """Stage the puts here, then wait for their batch; see Committer."""
        self.submit(tiers).result()

    def submit(self, tiers: Sequence[Sequence[Put]]) -> concurrent.futures.Future[None]:
        """Stage the puts here and queue them for the flusher; see Committer.

        Staging happens in the calling thread and raises StoreError itself
        when the bytes cannot be written.
        """
        delivery = _Delivery(self._stage(tiers))
        with self._condition:
            self._waiting.append(delivery)
            if not self._is_flushing:
                # Nothing is being flushed: what waits now (usually just
                # this delivery) is flushed at once, without waiting to
                # gather more; what comes meanwhile makes the next batch.
                self._is_flushing = True
                self._batch = self._take_batch()
                if self._flusher is None:
                    # Daemon: a delivery still queued at exit was never
                    # answered 250, so its sender retries.
                    self._flusher = threading.Thread(
                        target=self._flush_forever, name="group-commit", daemon=True)
                    self._flusher.start()
                self._condition.notify()
        return delivery.durable

    def _take_batch(self) -> list[_Delivery]:
        batch = self._waiting[:self.max_batch]
        del self._waiting[:self.max_batch]
        return batch

    def _stage(self, tiers: Sequence[Sequence[Put]]) -> list[list[StagedObject]]:
        staged: list[list[StagedObject]] = []
        try:
            for tier in tiers:
                staged.append([])
                for put in tier:
                    if put.data is None:
                        staged[-1].append(
                            self.store.stage_lock(put.key, put.retain_until))
                        continue
                    staged[-1].append(self.store.stage(
                        put.key, put.data, retain_until=put.retain_until,
                        is_shared=put.is_shared))
        except BaseException:
            self.store.discard(item for tier in staged for item in tier)
            raise
        return staged

    def _flush_forever(self) -> None:
        while True:
            with self._condition:
                while self._batch is None:
                    self._condition.wait()
                batch, self._batch = self._batch, None
            self._flush(batch)
            with self._condition:
                if self._waiting:
                    self._batch = self._take_batch()
                else:
                    self._is_flushing = False

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
            if error is None:
                delivery.durable.set_result(None)
            else:
                delivery.durable.set_exception(_own_error(error))


def _own_error(error: BaseException) -> BaseException:
    # Each delivery gets its own exception: one instance raised in many
    # threads would share (and garble) one traceback.
    own: BaseException
    if isinstance(error, (ObjectExistsError, MissingObjectError)):
        own = type(error)(str(error))
    else:
        own = StoreError(f"group commit failed: {error}")
    own.__cause__ = error
    return own
