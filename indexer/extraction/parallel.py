"""Extract many messages at once, one whole message per worker process.

Extraction is Python (the email parser, charset detection, HTML and
attachment readers) and holds the GIL, so a follower that extracted in
its own process indexed at a third of its engine's speed.  The
:class:`ExtractionPool` sends whole messages to sandbox workers (see
:mod:`~.sandbox`: fresh interpreters, memory capped, no network), as many
as the host has CPUs, and returns the extracts in the order given.

Inside a worker the attachments are read in-process under an alarm
(:class:`~.sandbox.InProcessDeadline`): the worker is already the
confined, killable process that a part reader needs.  A message whose
worker overruns the message's deadline, dies or runs out of memory is
extracted again in the calling process the careful way, each binary part
in a sandbox of its own under its own deadline, so the part that failed
is recorded as partially indexed and the rest of the message is read.

Messages travel to the workers in chunks (one round trip for up to
``CHUNK_MESSAGES`` small messages).  Memory: at most ``window`` messages,
and about ``IN_FLIGHT_BYTES`` of raw bytes (beyond that, one chunk), are
held between reading and indexing.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from indexer.extract import Extract, extract
from indexer.extraction.reading import DEFAULT_LIMITS, Limits
from indexer.extraction.sandbox import (WORKER_MEMORY_BYTES, InProcessDeadline, Sandbox,
                                        SandboxError)

log = logging.getLogger(__name__)

Tag = TypeVar("Tag")

IN_FLIGHT_BYTES = 256 * 1024 * 1024
# Messages queued per worker: three round trips, enough to keep each
# busy while the caller reads the next ones and indexes the last ones.
QUEUED_PER_WORKER = 48
# A worker starts in about 0.3 s; recycled every 1,000 calls (the part
# readers' rate), that would cost as much as the extraction itself.
MESSAGES_PER_WORKER = 20_000
# Messages sent to a worker in one round trip: each trip costs the
# caller about as much as reading a message from the vault.
CHUNK_MESSAGES = 16
CHUNK_BYTES = 1024 * 1024
# Time beyond the attachments' budget for parsing the message itself.
PARSE_SECONDS = 30.0


class ExtractionPool:
    """Extract messages in ``workers`` processes (one per CPU by default).

    ``workers=0`` extracts in the calling thread instead, one message at a
    time (for tests, and hosts where processes are scarce).
    """

    def __init__(self, workers: int | None = None, limits: Limits = DEFAULT_LIMITS,
                 memory_bytes: int = WORKER_MEMORY_BYTES) -> None:
        self.workers = (os.cpu_count() or 1) if workers is None else max(0, workers)
        self.limits = limits
        self.window = max(1, self.workers * QUEUED_PER_WORKER)
        self._sandbox = Sandbox(max(1, self.workers), memory_bytes,
                                calls_per_worker=MESSAGES_PER_WORKER)
        self._threads = ThreadPoolExecutor(max(1, self.workers),
                                           thread_name_prefix="extraction")

    def extract_all(self, messages: Iterable[tuple[Tag, bytes]]
                    ) -> Iterator[tuple[Tag, Extract]]:
        """Yield ``(tag, extract)`` for each ``(tag, raw)``, in order.

        ``messages`` is read lazily, only as far as the window allows.
        Never raises for bad mail (see :func:`indexer.extract.extract`).
        """
        if not self.workers:
            yield from ((tag, extract_here(raw, self.limits)) for tag, raw in messages)
            return
        pending: collections.deque[_Chunk[Tag]] = collections.deque()
        chunk: _Chunk[Tag] = _Chunk()
        for tag, raw in messages:
            chunk.add(tag, raw)
            if len(chunk.raws) < CHUNK_MESSAGES and chunk.size < CHUNK_BYTES:
                continue
            pending.append(self._submit(chunk))
            chunk = _Chunk()
            while (sum(len(queued.raws) for queued in pending) > self.window
                   or sum(queued.size for queued in pending) > IN_FLIGHT_BYTES):
                yield from self._results(pending.popleft())
        if chunk.raws:
            pending.append(self._submit(chunk))
        while pending:
            yield from self._results(pending.popleft())

    def close(self) -> None:
        """Stop the workers (the pool starts new ones if used again)."""
        self._sandbox.close()

    def _submit(self, chunk: _Chunk[Tag]) -> _Chunk[Tag]:
        timeout = (self.limits.message_seconds + PARSE_SECONDS) * len(chunk.raws)
        chunk.future = self._threads.submit(
            self._sandbox.run, extract_in_worker, (chunk.raws, self.limits), timeout)
        return chunk

    def _results(self, chunk: _Chunk[Tag]) -> Iterator[tuple[Tag, Extract]]:
        assert chunk.future is not None
        try:
            found: list[Extract] = chunk.future.result()
        except SandboxError as err:
            log.warning("extraction worker failed (%s); extracting its %d message(s) "
                        "part by part", err, len(chunk.raws),
                        extra={"event": "extract.retried"})
            found = [extract_here(raw, self.limits) for raw in chunk.raws]
        return zip(chunk.tags, found)


class _Chunk(Generic[Tag]):
    """Messages sent to a worker in one call (one round trip, not many)."""

    def __init__(self) -> None:
        self.tags: list[Tag] = []
        self.raws: list[bytes] = []
        self.size = 0
        self.future: Future[list[Extract]] | None = None

    def add(self, tag: Tag, raw: bytes) -> None:
        self.tags.append(tag)
        self.raws.append(raw)
        self.size += len(raw)


def extract_here(raw: bytes, limits: Limits) -> Extract:
    """Extract one message in this process, each binary part sandboxed.

    ``extract`` never raises for bad mail; should a bug make it raise,
    the message is still indexed by its envelope, marked as such.
    """
    try:
        return extract(raw, limits)
    except Exception as err:
        log.exception("extraction failed", extra={"event": "extract.bug"})
        return Extract(defects=[f"not extracted: {type(err).__name__}"])


def extract_in_worker(raws: list[bytes], limits: Limits) -> list[Extract]:
    """Extract messages inside a worker (the pool's remote call)."""
    deadline = InProcessDeadline()
    return [extract(raw, limits, deadline) for raw in raws]


_shared: ExtractionPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> ExtractionPool:
    """Return the process's extraction pool, creating it on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ExtractionPool()
        return _shared
