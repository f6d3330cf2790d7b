"""Follow the vault's receipts into the catalogue.

The follower lists receipts after its cursor, indexes each message once and
adds each receipt's owners to its document, commits a batch, and only then
moves the cursor.  A crash between commit and cursor leaves receipts that
are indexed again on restart; that is harmless, because adding a receipt
to a document that already has it changes nothing.

Batches are pipelined over two threads: the caller's reads the sealed
objects and feeds the extraction pool, a writer thread commits.  While
batch N commits (the engine's busiest moment), batch N+1 is read and
extracted; its documents wait in a bounded channel.  On two cores this
took the full path from 0.45 to about 0.7 of the bare engine's speed.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from indexer import IndexerError
from indexer.catalogue import CURSOR_NAME, SNIPPET_STORED_CHARS, Batch, Catalogue, utc
from indexer.extract import Extract
from indexer.extraction.parallel import ExtractionPool, extract_here, shared_pool
from indexer.reconcile import Reconciler
from vault import VaultError
from vault.ingest import MESSAGES, Vault
from vault.receipts import Receipt, receipt_time, time_prefix

log = logging.getLogger(__name__)

BATCH_RECEIPTS = 500
PLAUSIBLE_CLOCK_SKEW = dt.timedelta(days=1)
# How far behind its cursor the follower looks for receipts that became
# visible late; longer than any store write takes.
DEFAULT_OVERLAP = dt.timedelta(seconds=30)
DEFAULT_REPAIR_SECONDS = 600.0
READ_AHEAD_PER_THREAD = 4
# Characters of documents waiting for the writer while it commits the
# batch before: about 64 MB of Python text at most.
CHANNEL_CHARS = 16_000_000


class Follower:
    """Index receipts after a durable cursor, looking back over a window.

    Receipt keys carry the time they were made, but concurrent deliveries
    (or several receivers) can make a receipt visible after a later one:
    the follower therefore lists from ``overlap`` before its cursor each
    pass and skips receipts it has already indexed.
    """

    def __init__(self, vault: Vault, catalogue: Catalogue, cursor_path: Path | None = None,
                 overlap: dt.timedelta = DEFAULT_OVERLAP,
                 on_batch: Callable[[list[str]], None] = lambda keys: None,
                 pool: ExtractionPool | None = None,
                 batch_receipts: int = BATCH_RECEIPTS) -> None:
        self.vault = vault
        # Extraction runs in worker processes, one per CPU (see
        # indexer.extraction.parallel); the engine writes meanwhile.
        self.pool = pool or shared_pool()
        self.batch_receipts = batch_receipts
        self.on_batch = on_batch
        self.catalogue = catalogue
        # None: the cursor lives in the catalogue's current generation, so
        # that a reindex swaps index and cursor together.
        self._own_cursor = Path(cursor_path) if cursor_path is not None else None
        self.overlap = overlap
        self.wake = threading.Event()
        self._recent: set[str] = set()
        # Keys of receipts and messages that could not be read (damaged or
        # gone), so that a rebuild can say what it left out.
        self.unreadable: set[str] = set()
        self._generation: Path | None = None
        self.reconciler: Reconciler | None = None

    @property
    def cursor_path(self) -> Path:
        """Return where the cursor of the index being followed is kept."""
        return self._own_cursor or self.catalogue.cursor_path

    @property
    def cursor(self) -> str:
        """Return the key of the latest receipt indexed and committed."""
        return read_cursor(self.cursor_path)

    def catch_up(self, stop: threading.Event | None = None) -> int:
        """Index every receipt not yet indexed; return how many."""
        total = 0
        with ThreadPoolExecutor(1, thread_name_prefix="catalogue-writer") as writer:
            while stop is None or not stop.is_set():
                generation = self.catalogue.generation
                if generation != self._generation:
                    # A new index (reindex) has not seen what this one skips.
                    self._recent.clear()
                    self._generation = generation
                floor = overlap_floor(self.cursor, self.overlap)
                self._recent = {key for key in self._recent if key > floor}
                listed = (key for key in self.vault.receipts_after(floor)
                          if key not in self._recent)
                indexed, complete = self._index_listed(listed, writer, stop)
                total += indexed
                if complete:
                    # The listing ran out: listing again now would read the
                    # cursor's day once more to find, at most, receipts made
                    # meanwhile, which the next pass (woken by the receiver)
                    # finds.
                    break
        return total

    def _index_listed(self, listed: Iterator[str], writer: ThreadPoolExecutor,
                      stop: threading.Event | None) -> tuple[int, bool]:
        """Index ``listed`` in batches, each prepared while the last commits.

        Return how many receipts were indexed into the generation followed,
        and whether the listing was gone through (False when stopped, or
        when a reindex swapped generations and the listing must restart).
        """
        indexed = 0
        cursor = self.cursor
        in_flight: tuple[list[str], Future[Path]] | None = None
        failed = threading.Event()
        complete = True
        for keys in _batches(listed, self.batch_receipts):
            if stop is not None and stop.is_set():
                complete = False
                break
            queued = (keys, self._queue_batch(keys, writer, failed))
            if in_flight is not None:
                if not self._settle(*in_flight, cursor):
                    in_flight = queued
                    complete = False
                    break
                indexed += len(in_flight[0])
                cursor = max(cursor, in_flight[0][-1])
            in_flight = queued
        if in_flight is not None:
            if self._settle(*in_flight, cursor):
                indexed += len(in_flight[0])
            else:
                complete = False
        return indexed, complete

    def _settle(self, keys: list[str], written: Future[Path], cursor: str) -> bool:
        """Record a batch once committed; False if it went to another generation."""
        written_to = written.result()
        self.on_batch(keys)
        if written_to != self._generation:
            return False
        self._recent.update(keys)
        if keys[-1] > cursor:
            self._save_cursor(keys[-1], written_to)
        return True

    def repair(self) -> int:
        """Index every stored message the catalogue lacks; return how many.

        The follower's cursor only moves forward; a document lost behind
        it (an index restored from backup, a failed write, a deleted
        document) is found by comparing the vault with the catalogue.
        """
        if self.reconciler is None:
            self.reconciler = Reconciler(self.vault)
        coverage = self.reconciler.coverage(self.catalogue)
        keys = sorted(key for keys in coverage.missing.values() for key in keys)
        for start in range(0, len(keys), self.batch_receipts):
            self._index_batch(keys[start:start + self.batch_receipts])
        if coverage.missing:
            log.warning("repaired %d message(s) stored but not indexed",
                        len(coverage.missing), extra={"event": "follower.repaired"})
        return len(coverage.missing)

    def run(self, stop: threading.Event, interval: float,
            repair_interval: float = DEFAULT_REPAIR_SECONDS) -> None:
        """Catch up until ``stop`` is set, waking early when told of new mail.

        Every ``repair_interval`` seconds (and first after catching up at
        start) it also repairs gaps between the vault and the catalogue.
        """
        next_repair = 0.0
        while not stop.is_set():
            # Cleared before the pass, not after the wait: mail that comes
            # during the pass leaves the wake set, and the next pass starts
            # at once instead of a poll interval later.
            self.wake.clear()
            try:
                count = self.catch_up(stop)
                if time.monotonic() >= next_repair and not stop.is_set():
                    self.repair()
                    next_repair = time.monotonic() + repair_interval
                if count:
                    log.info("indexed %d receipt(s), cursor %s", count, self.cursor,
                             extra={"event": "follower.batch"})
            except Exception:
                log.exception("follower failed; retrying after %.1f s", interval,
                              extra={"event": "follower.error"})
            self.wake.wait(interval)

    def _index_batch(self, receipt_keys: list[str]) -> Path:
        """Index the receipts in one batch; return the generation written."""
        with ThreadPoolExecutor(1, thread_name_prefix="catalogue-writer") as writer:
            return self._queue_batch(receipt_keys, writer, threading.Event()).result()

    def _queue_batch(self, receipt_keys: list[str], writer: ThreadPoolExecutor,
                     failed: threading.Event) -> Future[Path]:
        """Extract a batch here and hand its documents to ``writer``.

        ``writer`` commits batches one after another in its one thread, so
        this batch is read and extracted while the one before commits; its
        documents wait in a bounded channel meanwhile.  Once one batch
        fails to commit (``failed``), the batches after it are discarded
        unwritten, so that the cursor never passes a batch not written.
        """
        planned = self._plan(self._read_receipts(receipt_keys))
        channel = _Channel(CHANNEL_CHARS)
        written = writer.submit(self._write_batch, planned, channel, failed)
        try:
            for document in self._documents(planned):
                channel.put(document, _size(document))
        except BaseException:
            channel.put(_ABORT, 0)
            raise
        channel.put(_END, 0)
        return written

    def _write_batch(self, planned: dict[str, _Planned], channel: _Channel,
                     failed: threading.Event) -> Path:
        """Write one batch's documents as they come, and commit them."""
        try:
            if failed.is_set():
                raise IndexerError("not written: an earlier batch failed")
            with self.catalogue.batch() as batch:
                for documents in channel:
                    if documents[-1] is _ABORT:
                        raise IndexerError("not written: reading the batch failed")
                    stored = batch.get_many([document["id"] for document in documents])
                    for document in documents:
                        self._merge_into(batch, planned[document["id"]], document,
                                         stored.get(document["id"]))
            return getattr(batch, "generation", self._generation)
        except BaseException:
            failed.set()
            channel.drain()
            raise

    @staticmethod
    def _merge_into(batch: Batch, plan: _Planned, document: dict,
                    stored: dict | None) -> None:
        """Add a document, or merge its receipts into ``stored``, the one indexed.

        The catalogue is asked in the batch that writes, rather than when
        the batch was planned: the batch before, committing meanwhile, may
        have indexed the same message.
        """
        if stored is not None:
            if all(key in stored["receipts"] for key, _ in plan.receipts):
                return
            document["owners"] = list(stored["owners"])
            document["receipts"] = list(stored["receipts"])
        for key, receipt in plan.receipts:
            if key not in document["receipts"]:
                document["receipts"] = [*document["receipts"], key]
            document["owners"] = sorted(set(document["owners"]) | set(receipt.owners))
        if stored is None:
            batch.add(document)
        else:
            batch.put(document)

    def _read_receipts(self, receipt_keys: list[str]) -> Iterator[tuple[str, Receipt]]:
        for key, reading in read_ahead(self.vault.read_receipt, receipt_keys,
                                       self.vault.store.parallel_reads):
            try:
                yield key, reading.result()
            except Exception:
                # One message must never hold up the rest; the repair
                # pass (or reindex) tries it again.
                log.exception("%s: receipt cannot be read; not indexed", key,
                              extra={"event": "follower.bad_receipt"})
                self.unreadable.add(key)

    def _plan(self, receipts: Iterable[tuple[str, Receipt]]) -> dict[str, _Planned]:
        """Group the receipts by message.

        Receipts already indexed are left out by the writer (see
        ``_merge_into``), after extraction: only those of the overlap
        window after a restart, which ``_recent`` no longer remembers.
        """
        planned: dict[str, _Planned] = {}
        for key, receipt in receipts:
            message_id = receipt.message_key.removeprefix(MESSAGES + "/")
            planned.setdefault(message_id, _Planned(receipt)).receipts.append((key, receipt))
        return planned

    def _documents(self, planned: dict[str, _Planned]) -> Iterator[dict]:
        """Extract the planned messages in the pool; yield their documents.

        Engines replace whole documents and keep no unstored field, so a
        new receipt for a known message means extracting it again.
        """
        extracted = self.pool.extract_all(self._raw_messages(planned))
        for message_id, found in extracted:
            plan = planned[message_id]
            try:
                yield new_document(plan.first, message_id, found)
            except Exception:
                log.exception("%s: not indexed", plan.first.message_key,
                              extra={"event": "follower.receipt_failed"})

    def _raw_messages(self, planned: dict[str, _Planned]) -> Iterator[tuple[str, bytes]]:
        keys = {plan.first.message_key: message_id for message_id, plan in planned.items()}
        for message_key, reading in read_ahead(self.vault.read_message, list(keys),
                                                 self.vault.store.parallel_reads):
            try:
                yield keys[message_key], reading.result()
            except VaultError:
                log.error("%s: message cannot be read; not indexed",
                          message_key, exc_info=True,
                          extra={"event": "follower.bad_message"})
                self.unreadable.add(message_key)

    def _new_document(self, receipt: Receipt, message_id: str) -> dict | None:
        """Return one message's document, extracted in this process.

        For callers that build documents one by one (the portal
        benchmark); the follower itself extracts in the pool.
        """
        try:
            raw = self.vault.read_message(receipt.message_key)
        except VaultError:
            log.error("%s: message cannot be read; not indexed", receipt.message_key,
                      exc_info=True, extra={"event": "follower.bad_message"})
            return None
        return new_document(receipt, message_id, extract_here(raw, self.pool.limits))

    def _save_cursor(self, key: str, generation: Path | None) -> None:
        path = self._own_cursor or (generation or self.catalogue.generation) / CURSOR_NAME
        scratch = path.with_suffix(".tmp")
        with open(scratch, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)


def read_ahead(read: Callable[[str], Any], keys: list[str], parallel: int
               ) -> Iterator[tuple[str, Future[Any]]]:
    """Yield ``(key, future of read(key))`` in order, ``parallel`` reads at once.

    A store whose reads wait on the network (S3) is read ahead in threads,
    which keeps the pool of extractors fed; at most ``READ_AHEAD_PER_THREAD``
    objects per thread are held before the caller takes them.  With
    ``parallel`` 1 each object is read in line when the caller asks for it.
    """
    if parallel <= 1:
        for key in keys:
            reading: Future[Any] = Future()
            try:
                reading.set_result(read(key))
            except Exception as err:
                reading.set_exception(err)
            yield key, reading
        return
    pending: collections.deque[tuple[str, Future[Any]]] = collections.deque()
    readers = _readers(parallel)
    for key in keys:
        pending.append((key, readers.submit(read, key)))
        if len(pending) >= READ_AHEAD_PER_THREAD * parallel:
            yield pending.popleft()
    yield from pending


_reader_threads: dict[int, ThreadPoolExecutor] = {}
_reader_lock = threading.Lock()


def _readers(threads: int) -> ThreadPoolExecutor:
    with _reader_lock:
        if threads not in _reader_threads:
            _reader_threads[threads] = ThreadPoolExecutor(threads,
                                                          thread_name_prefix="vault-read")
        return _reader_threads[threads]


@dataclasses.dataclass
class _Planned:
    """A message to index in this batch: its first receipt, and all of them."""

    first: Receipt
    receipts: list[tuple[str, Receipt]] = dataclasses.field(default_factory=list)


def read_cursor(path: Path) -> str:
    """Return the cursor kept at ``path`` ("" before the first commit)."""
    try:
        return path.read_text("ascii").strip()
    except FileNotFoundError:
        return ""


def overlap_floor(cursor: str, overlap: dt.timedelta) -> str:
    """Return the key prefix ``overlap`` before ``cursor``: through it, all is indexed.

    Receipts made within the overlap may become visible (and be indexed)
    after the cursor passed their time, so only those before it are sure.
    """
    if not cursor:
        return ""
    try:
        return time_prefix(receipt_time(cursor) - overlap)
    except ValueError:
        log.warning("cursor %r is not a receipt key; starting over", cursor)
        return ""


def _batches(keys: Iterable[str], size: int) -> Iterator[list[str]]:
    """Yield ``keys`` in lists of ``size`` (the last may be shorter)."""
    iterator = iter(keys)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


_END = {"id": "", "end": True}
_ABORT = {"id": "", "abort": True}


def _size(document: dict) -> int:
    # The long fields; the rest are a few hundred characters at most.
    return len(document["body"]) + len(document["attachment"]) + 1000


class _Channel:
    """Documents from the extracting thread to the writing one, bounded.

    ``put`` waits while more than ``limit`` characters of documents are
    queued (one document is always let through, however large).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: collections.deque[tuple[dict, int]] = collections.deque()
        self._queued = 0
        self._finished = False
        self._changed = threading.Condition()

    def put(self, document: dict, size: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: not self._items
                                   or self._queued + size <= self.limit)
            self._items.append((document, size))
            self._queued += size
            if len(self._items) == 1:
                self._changed.notify_all()

    def take(self) -> list[dict]:
        """Wait for documents; take all those queued (fewer thread switches)."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._items))
            taken = [document for document, _ in self._items]
            self._items.clear()
            self._queued = 0
            self._finished = taken[-1] is _END or taken[-1] is _ABORT
            self._changed.notify_all()
            return taken

    def __iter__(self) -> Iterator[list[dict]]:
        """Yield the documents in lists as they come, up to the end.

        A list that ends with ``_ABORT`` is the last; ``_END`` is not yielded.
        """
        while not self._finished:
            documents = self.take()
            if documents[-1] is _END:
                documents.pop()
            if documents:
                yield documents

    def drain(self) -> None:
        """Take and drop documents up to the batch's end, so ``put`` never hangs."""
        while not self._finished:
            self.take()


def new_document(receipt: Receipt, message_id: str, found: Extract) -> dict:
    """Return the document of a message as extracted, without owners yet."""
    sender = found.sender or receipt.mail_from
    if receipt.mail_from and receipt.mail_from.lower() not in sender.lower():
        sender = f"{sender} {receipt.mail_from}".strip()
    return {
        "id": message_id,
        "owners": [],
        "subject": found.subject,
        "from": sender,
        "from_header": found.sender,
        "to": found.to,
        "cc": found.cc,
        "body": found.body,
        "preview": found.body[:SNIPPET_STORED_CHARS],
        "bcc": found.bcc,
        # attachment: finds names and text; filename: names only.
        "attachment": " ".join(found.attachments) + "\n" + found.attachment_text,
        "filename": " ".join(found.attachments),
        "has_attachment": bool(found.attachments),
        "message_id": found.message_id.strip().strip("<>"),
        "references": " ".join(found.references),
        "date": utc(plausible_date(found, receipt)),
        "sender_address": found.sender_address or receipt.mail_from,
        "size": receipt.size,
        "receipts": [],
        "defects": found.defects,
    }


def plausible_date(found: Extract, receipt: Receipt) -> dt.datetime:
    """Return the Date header's time, unless it is absent or implausible.

    Results sort by date, so a sender-written date far in the future would
    pin a message to the top of every list; such a date (more than a day
    after the archive received it, or before 1970) gives way to the time
    of receipt, and the document records why.
    """
    date = found.date
    if date is None:
        return receipt.received_at
    if date > receipt.received_at + PLAUSIBLE_CLOCK_SKEW or date.year < 1970:
        found.defects.append(f"implausible Date header {date.isoformat()}")
        return receipt.received_at
    return date
