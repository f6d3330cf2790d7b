"""The catalogue: one document per stored message, found by owner.

The catalogue speaks to a search engine through :class:`Engine`; the
portal, the API, the CLI and the follower speak only to
:class:`Catalogue`, which parses the archive's query language into its
own tree (:mod:`indexer.query`) and hands the tree to the engine to
compile.  Every end-user search carries the owner set it may see; the
engine applies it as a filter inside its own query, so no result outside
that set is ever scored, counted or returned.

A *document* is a plain dict with these keys (the engine-neutral form):

    id              the message object's name (hex HMAC of its bytes)
    owners          sorted list of mailboxes that may see it
    subject, from, to, cc, bcc, body, attachment, filename
                    searchable text (attachment: names and text)
    message_id      the Message-ID without angle brackets
    references      the ids of In-Reply-To and References, space-separated
    date            aware datetime in UTC (case B22: never a local time)
    size            bytes of the stored message
    has_attachment  bool
    sender_address  the sender's address, lower case (for facets)
    receipts        keys of the deliveries indexed into it
    defects         what extraction could not read (see PARTIAL)
    preview         the first part of the body, for snippets

``bcc``, ``body`` and ``attachment`` are searched but not returned by
``document``.

On disk the catalogue is a directory of *generations*, each a whole index
with its own follower cursor, and a ``current`` symbolic link naming the
one in use::

    catalogue/
        current -> tantivy-20261204T190000-1a2b
        tantivy-20261204T190000-1a2b/   index files, cursor
        whoosh-20261201T080000-9f8e/    an older generation

``reindex`` builds a new generation beside the current one and renames a
new link over ``current``; every open catalogue notices the change on its
next call and reopens, so search keeps answering throughout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import secrets
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from indexer import IndexerError, QueryError
from indexer import query as query_tree
from indexer.snippets import snippet_runs, snippet_words

log = logging.getLogger(__name__)

ENGINES = ("tantivy", "whoosh")
DEFAULT_ENGINE = "tantivy"
SORTS = ("date", "relevance")
CURRENT = "current"
CURSOR_NAME = "cursor"
# Search fields as users type them (``from:alice``); free text searches
# the default fields.
SEARCH_FIELDS = ("subject", "from", "to", "cc", "body", "attachment")
SNIPPET_STORED_CHARS = 100_000
WRITER_WAIT_SECONDS = 60.0
FACET_SENDERS = 10
# Generations kept besides the current one, so that a process still
# reading the previous one finishes undisturbed.
KEEP_OLD_GENERATIONS = 1
# Fields every document returns from ``document``; the rest are searched
# but not kept.
RECORD_FIELDS = ("id", "owners", "subject", "from", "to", "cc", "filename",
                 "message_id", "date", "size", "has_attachment",
                 "sender_address", "receipts", "defects", "preview", "references",
                 "from_header")
# Fields added to RECORD_FIELDS later: a document built without one (an
# older caller) reads as "".
LATER_RECORD_FIELDS = ("references", "from_header")


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result as the portal and the API show it.

    ``date`` is naive and in UTC.
    """

    id: str
    subject: str
    sender: str
    date: dt.datetime | None
    snippet: list[tuple[str, bool]]


@dataclasses.dataclass(frozen=True)
class Facets:
    """Hit counts for narrowing a search: by year, and by the top senders."""

    years: tuple[tuple[int, int], ...] = ()
    senders: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Results:
    """A page of hits, the total number of matches and the facets."""

    total: int
    page: int
    per_page: int
    hits: list[Hit]
    sort: str = "date"
    facets: Facets = Facets()


@dataclasses.dataclass(frozen=True)
class Page:
    """What an engine returns for one page: records, total, facets."""

    total: int
    records: list[dict]
    facets: Facets


class Batch(Protocol):
    """Changes to an index that become visible together, or not at all.

    ``get`` sees committed documents only; ``get_many`` is ``get`` for
    several ids at once, returning those found.  ``put`` replaces any document
    with the same id (so putting twice leaves one); ``add`` is ``put`` for
    a document that ``get`` has just shown absent and that this batch has
    not put, which spares the engine the search for one to replace.  Nothing is visible
    before the batch's ``with`` block ends without an exception; an
    exception discards the whole batch.
    """

    def get(self, message_id: str) -> dict | None: ...

    def get_many(self, message_ids: list[str]) -> dict[str, dict]: ...

    def put(self, document: dict) -> None: ...

    def add(self, document: dict) -> None: ...

    def delete(self, message_id: str) -> None: ...


class Engine(Protocol):
    """A search engine holding one generation of the catalogue.

    Engines receive documents in the neutral form (dates aware UTC) and
    query trees from :mod:`indexer.query`; they compile the tree in their
    own dialect.  ``owners`` None means every mailbox and is used only by
    privileged callers; otherwise the engine must filter by it inside the
    query.  ``batch`` waits up to WRITER_WAIT_SECONDS for a writer held by
    another process and raises IndexerError after that; an engine may keep
    its writer (and the lock) for a while after a batch, until ``settle``.
    """

    def search(self, node: query_tree.Node, owners: frozenset[str] | None, *,
               offset: int, limit: int, sort: str, facets: bool) -> Page: ...

    def matching_ids(self, node: query_tree.Node) -> list[str]: ...

    def document(self, message_id: str) -> dict | None: ...

    def records(self) -> Iterator[dict]: ...

    def count(self) -> int: ...

    def batch(self) -> contextlib.AbstractContextManager[Batch]: ...

    def settle(self) -> None: ...

    def stop_waiting(self) -> None: ...

    def close(self) -> None: ...


_Writer = TypeVar("_Writer")


def wait_for_writer(attempt: Callable[[], _Writer | None], path: Path, *, seconds: float,
                    stopping: threading.Event, pause: float) -> _Writer:
    """Return a writer from ``attempt``, which gives None while another holds the lock.

    Tried again after ``pause`` (0 for an engine whose attempt waits
    itself) until ``seconds`` have passed, or ``stopping`` is set (a
    service stopping); either raises IndexerError.
    """
    deadline = time.monotonic() + seconds
    while True:
        writer = attempt()
        if writer is not None:
            return writer
        if time.monotonic() > deadline:
            raise IndexerError(f"the catalogue {path} stayed locked by another writer "
                               f"for {seconds:.0f} s")
        if stopping.wait(pause):
            raise IndexerError(f"stopped waiting for the catalogue {path}, "
                               "locked by another writer")


def open_engine(name: str, path: Path) -> Engine:
    """Open (or create) the index of engine ``name`` in ``path``."""
    if name == "tantivy":
        from indexer.engines.tantivy_engine import TantivyEngine

        return TantivyEngine(path)
    if name == "whoosh":
        from indexer.engines.whoosh_engine import WhooshEngine

        return WhooshEngine(path)
    raise IndexerError(f"unknown catalogue engine {name!r}; expected one of {ENGINES}")


class Catalogue:
    """The archive's catalogue under ``path``, in generations, on ``engine``."""

    def __init__(self, path: Path, engine: str = DEFAULT_ENGINE, *,
                 pinned: str | None = None) -> None:
        if engine not in ENGINES:
            raise IndexerError(f"unknown catalogue engine {engine!r}")
        self.path = Path(path)
        self.engine_name = engine
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pinned = pinned
        self._generation = ""
        self._engine: Engine | None = None
        if pinned:
            # A generation being built by reindex: never follows ``current``.
            self._engine = open_engine(engine, self.path / pinned)
            self._generation = pinned
        else:
            self._open_current()

    def pinned(self, generation: Path) -> Catalogue:
        """Return a catalogue on ``generation`` alone, whatever is current."""
        return Catalogue(self.path, self.engine_name, pinned=generation.name)

    # Generations -----------------------------------------------------------

    @property
    def generation(self) -> Path:
        """Return the directory of the generation in use."""
        self._engine_now()
        return self.path / self._generation

    @property
    def cursor_path(self) -> Path:
        """Return the follower cursor of the current generation."""
        return self.generation / CURSOR_NAME

    def _open_current(self) -> None:
        name = _read_current(self.path)
        if not name:
            # No index yet: a new generation, which the follower fills.
            name = self.new_generation().name
            swap_current(self.path, name)
        # The current generation is opened with the engine that built it
        # (its name's first word).  Taking the configured engine's word
        # instead made any process started with another engine in its
        # config (a read-only `status` among them) swap in a new, empty
        # index: search found nothing, and a hold placed then held nothing.
        # Changing engines is a `reindex`, which swaps when the new is full.
        built_by = name.split("-")[0]
        if built_by not in ENGINES:
            raise IndexerError(f"catalogue {self.path}: current generation {name!r} "
                               "names no known engine")
        if built_by != self.engine_name:
            log.warning("catalogue %s is a %s index, the config names %s: searching the %s "
                        "index until `strongroom reindex` builds a %s one", self.path,
                        built_by, self.engine_name, built_by, self.engine_name,
                        extra={"event": "catalogue.engine_differs"})
        self._engine = open_engine(built_by, self.path / name)
        self._generation = name

    def _engine_now(self) -> Engine:
        # One readlink per call: cheap, and it makes a reindex's swap
        # visible to every process at its next search.
        with self._lock:
            if not self._pinned and _read_current(self.path) != self._generation:
                # The old engine is left to the garbage collector: a batch
                # or search in another thread may still be using it.
                self._open_current()
                log.info("catalogue switched to generation %s", self._generation,
                         extra={"event": "catalogue.reopened"})
            assert self._engine is not None
            return self._engine

    def new_generation(self) -> Path:
        """Create an empty generation directory (not yet current)."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        directory = self.path / f"{self.engine_name}-{stamp}-{secrets.token_hex(3)}"
        directory.mkdir()
        return directory

    def prune(self) -> None:
        """Remove generations older than the current and the one before it."""
        current = _read_current(self.path)
        generations = sorted(
            (entry for entry in self.path.iterdir()
             if entry.is_dir() and not entry.is_symlink() and entry.name != current
             and entry.name.split("-")[0] in ENGINES),
            key=lambda entry: entry.stat().st_mtime, reverse=True)
        for old in generations[KEEP_OLD_GENERATIONS:]:
            shutil.rmtree(old, ignore_errors=True)

    # Searching -------------------------------------------------------------

    def search(self, text: str | query_tree.Node, *, owners: frozenset[str],
               page: int = 1, per_page: int = 20, zone: str = "UTC",
               sort: str = "date", facets: bool = True) -> Results:
        """Find documents owned by any of ``owners`` that match ``text``.

        ``text`` is the archive's query language or an already parsed
        tree.  Raises QueryError for a query that cannot be read or an
        unknown ``sort``.
        """
        if sort not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)}")
        node = text if not isinstance(text, str) else query_tree.parse(text, zone=zone)
        if not owners:
            return Results(0, page, per_page, [], sort)
        owner_set = frozenset(owner.lower() for owner in owners)
        found = self._engine_now().search(
            node, owner_set, offset=(page - 1) * per_page, limit=per_page,
            sort=sort, facets=facets)
        words = snippet_words(node)
        hits = [_hit(record, words) for record in found.records]
        return Results(found.total, page, per_page, hits, sort, found.facets)

    def search_every_mailbox(self, text: str | query_tree.Node, *, page: int = 1,
                             per_page: int = 20, zone: str = "UTC", sort: str = "date",
                             facets: bool = True) -> Results:
        """Search across all mailboxes, for the auditor roles only (issue #6).

        Never reachable from an end user's request: the portal and the API
        call ``search`` with the user's owners.
        """
        if sort not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)}")
        node = text if not isinstance(text, str) else query_tree.parse(text, zone=zone)
        found = self._engine_now().search(
            node, None, offset=(page - 1) * per_page, limit=per_page, sort=sort,
            facets=facets)
        words = snippet_words(node)
        return Results(found.total, page, per_page,
                       [_hit(record, words) for record in found.records], sort, found.facets)

    def matching_ids(self, text: str) -> list[str]:
        """Return the id of every document matching ``text``, in any mailbox.

        Privileged: for operator commands (holds) only; end-user paths
        always go through ``search`` with their owners.
        """
        return self._engine_now().matching_ids(query_tree.parse(text))

    def document(self, message_id: str) -> dict | None:
        """Return one message's document (without bcc, body, attachment)."""
        return self._engine_now().document(message_id)

    def search_ids(self, text: str, *, owners: frozenset[str], limit: int,
                   zone: str = "UTC") -> tuple[int, list[str]]:
        """Return how many documents of ``owners`` match, and the newest ids.

        The same filter as ``search``, without snippets: for acting on a
        whole result (restore).  Raises QueryError like ``search``.
        """
        node = query_tree.parse(text, zone=zone)
        if not owners:
            return 0, []
        owner_set = frozenset(owner.lower() for owner in owners)
        found = self._engine_now().search(node, owner_set, offset=0, limit=limit,
                                          sort="date", facets=False)
        return found.total, [record["id"] for record in found.records]

    def is_visible(self, message_id: str, owners: frozenset[str]) -> bool:
        """Tell whether any of ``owners`` owns the message (the second check)."""
        document = self.document(message_id)
        if document is None:
            return False
        return bool(set(document["owners"]) & {owner.lower() for owner in owners})

    def ids(self) -> set[str]:
        """Return the message id of every document."""
        return {record["id"] for record in self._engine_now().records()}

    def records(self) -> Iterator[dict]:
        """Yield every document (as ``document`` returns them)."""
        return self._engine_now().records()

    def count(self) -> int:
        """Return the number of documents."""
        return self._engine_now().count()

    # Writing ---------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """Open a batch of changes committed together when the block ends.

        Documents put are normalised first: dates to UTC, owners to sorted
        lower case, text fields to strings.
        """
        with self._lock:
            engine, generation = self._engine_now(), self.path / self._generation
        with engine.batch() as engine_batch:
            yield _NormalisingBatch(engine_batch, generation)

    def delete(self, message_ids: list[str]) -> None:
        """Remove documents (after disposition)."""
        with self.batch() as batch:
            for message_id in message_ids:
                batch.delete(message_id)

    def settle(self) -> None:
        """Finish what the writes so far left running, and free the index lock.

        An engine may keep its writer, and the lock that goes with it,
        between batches that come close together; this releases it now.
        """
        with self._lock:
            engine = self._engine
        if engine is not None:
            engine.settle()

    def stop_waiting(self) -> None:
        """Make a batch that waits for another process's lock give up now.

        For a service stopping: its follower's batch would otherwise wait
        out WRITER_WAIT_SECONDS before the process could end.
        """
        with self._lock:
            engine = self._engine
        if engine is not None:
            engine.stop_waiting()

    def close(self) -> None:
        """Release the engine's files."""
        with self._lock:
            if self._engine is not None:
                self._engine.close()


class _NormalisingBatch:
    """A batch that puts documents in the neutral form before the engine."""

    def __init__(self, inner: Batch, generation: Path) -> None:
        self.inner = inner
        # The generation the batch writes to; its cursor goes there too.
        self.generation = generation

    def get(self, message_id: str) -> dict | None:
        return self.inner.get(message_id)

    def get_many(self, message_ids: list[str]) -> dict[str, dict]:
        return self.inner.get_many(message_ids)

    def put(self, document: dict) -> None:
        self.inner.put(normalise(document))

    def add(self, document: dict) -> None:
        self.inner.add(normalise(document))

    def delete(self, message_id: str) -> None:
        self.inner.delete(message_id)


# Characters that change how text looks or joins but not which word it is:
# soft hyphen, zero-width space and (non-)joiner, word joiner, invisible
# operators, byte order mark, combining grapheme joiner, Mongolian vowel
# separator, and the bidirectional marks and controls.  Written inside a
# word they hid it from search ("in<ZWJ>voice" is not "invoice").
_INVISIBLE = dict.fromkeys([0x00AD, 0x034F, 0x180E, *range(0x200B, 0x2010),
                            *range(0x202A, 0x202F), *range(0x2060, 0x2065),
                            *range(0x2066, 0x206A), 0xFEFF])


def searchable(text: str) -> str:
    """Return ``text`` as every engine indexes and queries it.

    Unicode-equivalent spellings become one (NFKC: composed and decomposed
    accents, full-width and half-width forms, ligatures such as "ﬁ"),
    invisible characters go, and case folds fully ("Straße" is
    "strasse").  Engines apply it to the words of documents and of
    queries alike, never to what is stored for display.
    """
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text.translate(_INVISIBLE)).casefold()


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """Return ``text`` with lone surrogates replaced by U+FFFD.

    Bytes that decode as nothing are kept as lone surrogates by Python's
    "surrogateescape" (an 8-bit envelope address in an older receipt, say);
    no engine takes them, and tantivy refused the whole batch for one.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def normalise(document: dict) -> dict:
    """Return ``document`` with every field in its neutral form."""
    normal = {name: valid_text(value) if isinstance(value, str) else value
              for name, value in document.items()}
    normal["date"] = utc(document.get("date"))
    normal["owners"] = sorted({valid_text(owner).lower()
                               for owner in document.get("owners", ())})
    for name in (*SEARCH_FIELDS, "bcc", "filename", "message_id", "preview",
                 "sender_address"):
        value = normal.get(name) or ""
        normal[name] = value if isinstance(value, str) else valid_text(str(value))
    normal["sender_address"] = normal["sender_address"].lower()
    normal["size"] = int(document.get("size") or 0)
    normal["has_attachment"] = bool(document.get("has_attachment"))
    normal["receipts"] = list(document.get("receipts", ()))
    normal["defects"] = [valid_text(str(defect)) for defect in document.get("defects", ())]
    return normal


def record_of(document: dict) -> dict:
    """Return the stored part of a document, JSON-ready (date as ISO text)."""
    record = {name: document.get(name, "") if name in LATER_RECORD_FIELDS
              else document[name] for name in RECORD_FIELDS}
    record["date"] = document["date"].isoformat() if document["date"] else None
    return record


def document_of(record: dict) -> dict:
    """Read a stored record back into a document (date aware UTC)."""
    document = dict(record)
    date = record.get("date")
    document["date"] = dt.datetime.fromisoformat(date) if date else None
    return document


def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """Return ``moment`` as an aware UTC datetime; naive is taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def utc_naive(moment: dt.datetime | None) -> dt.datetime | None:
    """Return ``moment`` in UTC without tzinfo."""
    aware = utc(moment)
    return aware.replace(tzinfo=None) if aware else None


def _hit(record: dict, words: tuple[set[str], tuple[str, ...]]) -> Hit:
    document = document_of(record)
    return Hit(
        id=document["id"],
        subject=document.get("subject", ""),
        # The From header alone: ``from`` also holds the envelope sender
        # (so that from: finds it), which belongs on the message page.
        # Records indexed before ``from_header`` existed have only ``from``.
        sender=document.get("from_header") or document.get("from", ""),
        date=utc_naive(document["date"]),
        snippet=snippet_runs(document.get("preview", ""), words),
    )


def _read_current(path: Path) -> str:
    try:
        return os.readlink(path / CURRENT)
    except FileNotFoundError:
        return ""


def swap_current(path: Path, generation: str) -> None:
    """Point ``current`` at ``generation`` in one atomic rename."""
    scratch = path / f".{CURRENT}-{secrets.token_hex(4)}"
    os.symlink(generation, scratch)
    os.replace(scratch, path / CURRENT)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_catalogue(settings) -> Catalogue:
    """Open the catalogue that the archive's settings describe."""
    return Catalogue(settings.path(settings.catalogue.path), settings.catalogue.engine)
