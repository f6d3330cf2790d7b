"""The tantivy engine: the Rust search library through its official bindings.

Dates are kept as whole microseconds since the Unix epoch in UTC, in an
integer field, so no engine rule about time zones can apply (case B22).
Text is cut into words by ``\\w+`` and lower-cased, at indexing and for
queries alike (the analyser is used on both sides).  Only one writer may
hold an index, across processes (case B21): a batch takes the process's
own lock first, and waits out another process's writer.

A writer is kept between batches that follow each other closely (see
``TantivyEngine.batch``) and released once writing pauses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import regex
import tantivy
from tantivy import FieldType, Occur, Order, Query

from indexer import IndexerError
from indexer import query as query_tree
from indexer.catalogue import (FACET_SENDERS, SEARCH_FIELDS, WRITER_WAIT_SECONDS,
                               Facets, Page, document_of, record_of, searchable,
                               wait_for_writer)

log = logging.getLogger(__name__)

ANALYZER = "strongroom"
# Longer "words" are base64 or junk; tantivy's own limit is 64 KB.
MAX_WORD_CHARS = 100
WRITER_HEAP_BYTES = 64_000_000
WRITER_THREADS = 1
LOCK_RETRY_SECONDS = 0.05
# A writer is kept after its commit for the next batch, and released (its
# merges finished, the index lock freed) after this long without one...
WRITER_IDLE_SECONDS = 1.0
# ...or once it has been held this long, whatever the pace: another process
# (disposition, a second follower) waits for the lock meanwhile.  It then
# gets a few of its retries' time before this engine takes the lock again.
WRITER_HOLD_SECONDS = 10.0
WRITER_YIELD_SECONDS = 4 * LOCK_RETRY_SECONDS
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
TEXT_FIELDS = (*SEARCH_FIELDS, "bcc", "filename")
MAX_FACET_YEARS = 200


# Chinese and Japanese are written without spaces, so a run of letters is a
# whole sentence (often longer than MAX_WORD_CHARS, and then dropped) and no
# word inside it could be found.  Each Han, Hiragana or Katakana character
# is a token of its own instead; a query's run of them becomes a phrase,
# which finds exactly that run anywhere in the text.
#
# tantivy's own word splitter (letters and digits, Unicode-aware) does the
# rest.  Its regex tokenizer could do both in one pattern, but cost 4.5 ms
# per 100 kB of text against 0.3 ms: more than the rest of indexing a
# journal copy together.  So the CJK characters are spaced apart here, in
# C (``regex.sub``), and only in text that is not plain ASCII.
_CJK_CHARACTER = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}]")


def separate_cjk(text: str) -> str:
    """Return ``text`` with each Han, Hiragana and Katakana character spaced."""
    if text.isascii():
        return text
    return _CJK_CHARACTER.sub(r" \g<0> ", text)


def _analyzer() -> tantivy.TextAnalyzer:
    # No stop words and no stemming: an archive search finds the words
    # that were written.
    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.remove_long(MAX_WORD_CHARS))
            .build())


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("owners", tokenizer_name="raw")
    for name in TEXT_FIELDS:
        builder.add_text_field(name, tokenizer_name=ANALYZER)
    builder.add_text_field("message_id", tokenizer_name="raw")
    builder.add_text_field("references", tokenizer_name="raw")
    builder.add_text_field("sender_address", tokenizer_name="raw", fast=True)
    builder.add_boolean_field("has_attachment", indexed=True)
    builder.add_integer_field("date", indexed=True, fast=True)
    builder.add_unsigned_field("year", indexed=True, fast=True)
    builder.add_unsigned_field("size", indexed=True, fast=True)
    builder.add_bytes_field("record", stored=True)
    return builder.build()


SCHEMA = _schema()
WORDS = _analyzer()


class TantivyEngine:
    """One catalogue generation as a tantivy index (see Engine)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._index = tantivy.Index(SCHEMA, path=str(self.path), reuse=True)
        except ValueError as err:
            raise IndexerError(f"cannot open the catalogue {self.path}: {err}") from None
        self._index.register_tokenizer(ANALYZER, _analyzer())
        self._write_lock = threading.Lock()
        # The writer kept between batches, and a count of the batches that
        # took it (so that a stale release timer leaves a newer one alone).
        self._kept: _Kept | None = None
        self._keeping = 0
        self._yield_until = 0.0
        self._stop_waiting = threading.Event()

    def _searcher(self) -> tantivy.Searcher:
        # Costs a tenth of a millisecond, and makes a commit by another
        # writer (this process or another) visible at once.
        self._index.reload()
        return self._index.searcher()

    def search(self, node: query_tree.Node, owners: frozenset[str] | None, *,
               offset: int, limit: int, sort: str, facets: bool) -> Page:
        query = compile_query(node)
        if owners is not None:
            query = Query.boolean_query([
                (Occur.Must, query),
                (Occur.Must, Query.const_score_query(
                    Query.term_set_query(SCHEMA, "owners", sorted(owners)), 0.0)),
            ])
        searcher = self._searcher()
        if sort == "date":
            found = searcher.search(query, limit, count=True, offset=offset,
                                    order_by_field="date", order=Order.Desc)
        else:
            found = searcher.search(query, limit, count=True, offset=offset)
        records = [_record(searcher.doc(address)) for _, address in found.hits]
        counted = _facets(searcher, query) if facets and found.count else Facets()
        return Page(found.count or 0, records, counted)

    def matching_ids(self, node: query_tree.Node) -> list[str]:
        searcher = self._searcher()
        total = searcher.num_docs
        if not total:
            return []
        found = searcher.search(compile_query(node), total, count=False)
        return [searcher.doc(address).get_first("id") for _, address in found.hits]

    def document(self, message_id: str) -> dict | None:
        return _find(self._searcher(), message_id)

    def records(self) -> Iterator[dict]:
        searcher = self._searcher()
        total = searcher.num_docs
        if not total:
            return iter(())
        found = searcher.search(Query.all_query(), total, count=False)
        return (document_of(_record(searcher.doc(address))) for _, address in found.hits)

    def count(self) -> int:
        return self._searcher().num_docs

    @contextlib.contextmanager
    def batch(self) -> Iterator[_TantivyBatch]:
        """Open a batch on the kept writer, or a new one; commit it at the end.

        Making a writer and then waiting for the merges its commit starts
        cost the follower a tenth of a second per batch, and up to 0.4 s,
        while new mail waited behind it.  So after a commit the writer is
        kept for the next batch, its merges running meanwhile, and released
        only when writing pauses or has held the lock long enough (see
        WRITER_IDLE_SECONDS and WRITER_HOLD_SECONDS).  A batch that fails
        rolls back and releases it at once.
        """
        with self._write_lock:
            kept, self._kept = self._kept, None
            self._keeping += 1
            writer = kept.writer if kept is not None else self._new_writer()
            since = kept.since if kept is not None else time.monotonic()
            try:
                yield _TantivyBatch(writer, self._searcher())
                writer.commit()
            except BaseException:
                try:
                    writer.rollback()
                finally:
                    _finish(writer)
                raise
            if time.monotonic() - since < WRITER_HOLD_SECONDS:
                self._kept = _Kept(writer, since)
                self._release_later(self._keeping)
            else:
                _finish(writer)
                self._yield_until = time.monotonic() + WRITER_YIELD_SECONDS
            self._index.reload()

    def settle(self) -> None:
        """Let the kept writer's merges finish, and release the index lock."""
        with self._write_lock:
            kept, self._kept = self._kept, None
            if kept is not None:
                _finish(kept.writer)

    def _release_later(self, keeping: int) -> None:
        def release() -> None:
            with self._write_lock:
                # A batch since has taken the writer (and set a timer of its own).
                if self._keeping == keeping and self._kept is not None:
                    kept, self._kept = self._kept, None
                    _finish(kept.writer)

        timer = threading.Timer(WRITER_IDLE_SECONDS, release)
        timer.name = "catalogue-writer-release"
        timer.daemon = True
        timer.start()

    def _new_writer(self) -> tantivy.IndexWriter:
        # Let a process waiting for the lock take it between two holds.
        pause = self._yield_until - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        return self._writer()

    def stop_waiting(self) -> None:
        """Make a batch waiting for another process's writer give up now."""
        self._stop_waiting.set()

    def _writer(self) -> tantivy.IndexWriter:
        def attempt() -> tantivy.IndexWriter | None:
            try:
                return self._index.writer(heap_size=WRITER_HEAP_BYTES,
                                          num_threads=WRITER_THREADS)
            except ValueError as err:
                if "LockBusy" not in str(err):
                    raise IndexerError(f"cannot write the catalogue {self.path}: {err}") from None
                return None

        return wait_for_writer(attempt, self.path, seconds=WRITER_WAIT_SECONDS,
                               stopping=self._stop_waiting, pause=LOCK_RETRY_SECONDS)

    def close(self) -> None:
        # tantivy releases its files when the last reference goes; the
        # kept writer holds the index lock until released.
        self.settle()


class _Kept:
    """A writer kept between batches, and since when it holds the lock."""

    def __init__(self, writer: tantivy.IndexWriter, since: float) -> None:
        self.writer = writer
        self.since = since


def _finish(writer: tantivy.IndexWriter) -> None:
    """Wait for the writer's merges and release it (and the index lock)."""
    try:
        writer.wait_merging_threads()
    except Exception:
        # The merged segments are lost, not the committed ones; the next
        # writer's commits start new merges.
        log.exception("catalogue merges did not finish",
                      extra={"event": "catalogue.merge_failed"})


class _TantivyBatch:
    def __init__(self, writer: tantivy.IndexWriter, searcher: tantivy.Searcher) -> None:
        self.writer = writer
        self.searcher = searcher

    def get(self, message_id: str) -> dict | None:
        return _find(self.searcher, message_id)

    def get_many(self, message_ids: list[str]) -> dict[str, dict]:
        # One search for them all: the follower asks for every document
        # it writes, and nearly all are new.
        if not message_ids:
            return {}
        found = self.searcher.search(Query.term_set_query(SCHEMA, "id", message_ids),
                                     len(message_ids), count=False)
        documents = (document_of(_record(self.searcher.doc(address)))
                     for _, address in found.hits)
        return {document["id"]: document for document in documents}

    def put(self, document: dict) -> None:
        # Delete then add in one commit: tantivy applies a delete to the
        # documents added before it, so exactly the new one remains.
        self.writer.delete_documents_by_term("id", document["id"])
        self.writer.add_document(_tantivy_document(document))

    def add(self, document: dict) -> None:
        self.writer.add_document(_tantivy_document(document))

    def delete(self, message_id: str) -> None:
        self.writer.delete_documents_by_term("id", message_id)


def _tantivy_document(document: dict) -> tantivy.Document:
    entry = tantivy.Document()
    entry.add_text("id", document["id"])
    for owner in document["owners"]:
        entry.add_text("owners", owner)
    for name in TEXT_FIELDS:
        if document[name]:
            entry.add_text(name, separate_cjk(searchable(document[name])))
    if document["message_id"]:
        entry.add_text("message_id", document["message_id"])
    for reference in document.get("references", "").split():
        entry.add_text("references", reference)
    if document["sender_address"]:
        entry.add_text("sender_address", document["sender_address"])
    entry.add_boolean("has_attachment", document["has_attachment"])
    if document["date"] is not None:
        entry.add_integer("date", micros(document["date"]))
        entry.add_unsigned("year", document["date"].year)
    entry.add_unsigned("size", max(0, document["size"]))
    entry.add_bytes("record", pack_record(record_of(document)))
    return entry


def pack_record(record: dict) -> bytes:
    """Return a record as stored: JSON, then a NUL, then the preview as UTF-8.

    The preview is up to 100,000 characters of body; through ``json.dumps``
    it cost 0.3 ms per large message, the largest part of writing one, with
    the interpreter held all along.  Kept apart, it is copied out as it is.
    JSON never holds a raw NUL, so the first one ends it.  Lone surrogates
    (undecodable header bytes) survive through "surrogatepass".
    """
    fields = dict(record)
    preview = fields.pop("preview", "")
    return b"%s\0%s" % (json.dumps(fields).encode("ascii"),
                        preview.encode("utf-8", "surrogatepass"))


def unpack_record(stored: bytes) -> dict:
    """Read a stored record back; records kept as JSON alone still read."""
    head, separator, preview = stored.partition(b"\0")
    record: dict = json.loads(head)
    if separator:
        record["preview"] = preview.decode("utf-8", "surrogatepass")
    return record


def _record(entry: tantivy.Document) -> dict:
    return unpack_record(entry.get_first("record"))


def _find(searcher: tantivy.Searcher, message_id: str) -> dict | None:
    found = searcher.search(Query.term_query(SCHEMA, "id", message_id), 1, count=False)
    if not found.hits:
        return None
    return document_of(_record(searcher.doc(found.hits[0][1])))


def _facets(searcher: tantivy.Searcher, query: Query) -> Facets:
    counted = searcher.aggregate(query, {
        "years": {"terms": {"field": "year", "size": MAX_FACET_YEARS}},
        "senders": {"terms": {"field": "sender_address", "size": FACET_SENDERS}},
    })
    years = [(int(bucket["key"]), bucket["doc_count"])
             for bucket in counted["years"]["buckets"]]
    senders = [(str(bucket["key"]), bucket["doc_count"])
               for bucket in counted["senders"]["buckets"]]
    return Facets(years=tuple(sorted(years, reverse=True)),
                  senders=tuple(sorted(senders, key=lambda item: (-item[1], item[0]))))


def micros(moment: dt.datetime) -> int:
    """Return an aware datetime as whole microseconds since the epoch (UTC)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def compile_query(node: query_tree.Node) -> Query:
    """Compile the archive's query tree for tantivy."""
    if isinstance(node, query_tree.Text):
        fields = [node.field] if node.field else list(SEARCH_FIELDS)
        return _one_or_any([_text(field, node) for field in fields])
    if isinstance(node, query_tree.And):
        return Query.boolean_query([(Occur.Must, compile_query(child))
                                    for child in node.children])
    if isinstance(node, query_tree.Or):
        return _one_or_any([compile_query(child) for child in node.children])
    if isinstance(node, query_tree.Not):
        # A query of exclusions alone matches nothing in tantivy.
        return Query.boolean_query([(Occur.Must, Query.all_query()),
                                    (Occur.MustNot, compile_query(node.child))])
    if isinstance(node, query_tree.DateRange):
        return _range("date", FieldType.Integer,
                      micros(node.start) if node.start else None,
                      micros(node.end) if node.end else None)
    if isinstance(node, query_tree.SizeRange):
        return _range("size", FieldType.Unsigned, node.minimum, node.maximum)
    if isinstance(node, query_tree.HasAttachment):
        return Query.term_query(SCHEMA, "has_attachment", True)
    return Query.all_query()


def _range(field: str, kind: FieldType, lower: int | None, upper: int | None) -> Query:
    # Ranges are half-open: from ``lower`` inclusive to ``upper`` exclusive.
    if lower is None and upper is None:
        return Query.all_query()
    if kind == FieldType.Unsigned and upper is not None and upper <= 0:
        return Query.empty_query()
    return Query.range_query(SCHEMA, field, kind, lower, upper,
                             include_lower=True, include_upper=upper is None)


def _text(field: str, node: query_tree.Text) -> Query:
    if field in ("message_id", "references"):
        return Query.term_query(SCHEMA, field, node.text.strip().strip("<>"))
    words = WORDS.analyze(separate_cjk(searchable(node.text)))
    if not words:
        return Query.empty_query()
    if node.prefix:
        parts = [Query.term_query(SCHEMA, field, word) for word in words[:-1]]
        # Analysed words are letters and digits only, so nothing in them
        # needs escaping in the pattern.
        parts.append(Query.regex_query(SCHEMA, field, words[-1] + ".*"))
        return _one_or_all(parts)
    if len(words) == 1:
        return Query.term_query(SCHEMA, field, words[0])
    return Query.phrase_query(SCHEMA, field, words)


def _one_or_any(queries: list[Query]) -> Query:
    if len(queries) == 1:
        return queries[0]
    return Query.boolean_query([(Occur.Should, query) for query in queries])


def _one_or_all(queries: list[Query]) -> Query:
    if len(queries) == 1:
        return queries[0]
    return Query.boolean_query([(Occur.Must, query) for query in queries])
