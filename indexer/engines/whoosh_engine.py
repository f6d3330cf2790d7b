"""The Whoosh engine: pure Python, the archive's original catalogue.

Whoosh keeps a datetime's wall-clock time and drops its offset, so dates
reach it as naive UTC (case B22).  A second writer fails at once with a
lock error unless it is asked to wait (case B21): batches wait for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import regex
from whoosh import index, sorting
from whoosh import query as whoosh_query
from whoosh.analysis import LowercaseFilter, RegexTokenizer
from whoosh.fields import BOOLEAN, DATETIME, ID, KEYWORD, NUMERIC, STORED, TEXT, Schema
from whoosh.index import LockError
from whoosh.query import Every, Prefix, Query, Term

from indexer import query as query_tree
from indexer.catalogue import (FACET_SENDERS, SEARCH_FIELDS, WRITER_WAIT_SECONDS,
                               Facets, Page, document_of, record_of, searchable, utc_naive,
                               wait_for_writer)

log = logging.getLogger(__name__)

LOCK_STEP_SECONDS = 0.1


# Chinese and Japanese are written without spaces, so Whoosh's \w+ word
# would be a whole sentence and no word inside it could be found.  As in
# the tantivy engine, each Han, Hiragana or Katakana character is a token
# of its own, and a query's run of them becomes a phrase.  Other words
# keep Whoosh's standard shape (dotted names such as "plan.docx" stay one
# word).  The ``regex`` module is needed for the Unicode script classes.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
WORD_PATTERN = regex.compile(rf"[{_CJK}]|[^\W{_CJK}]+(?:\.[^\W{_CJK}]+)*")


def _analyzer():
    # No stop list: in an archive "the who" or "IT" may be exactly the query.
    return RegexTokenizer(WORD_PATTERN) | LowercaseFilter()


SCHEMA = Schema(
    id=ID(unique=True, stored=True),
    owners=KEYWORD(commas=True, lowercase=True),
    subject=TEXT(analyzer=_analyzer()),
    **{"from": TEXT(analyzer=_analyzer())},
    to=TEXT(analyzer=_analyzer()),
    cc=TEXT(analyzer=_analyzer()),
    bcc=TEXT(analyzer=_analyzer()),
    body=TEXT(analyzer=_analyzer()),
    attachment=TEXT(analyzer=_analyzer()),
    filename=TEXT(analyzer=_analyzer()),
    has_attachment=BOOLEAN,
    message_id=ID,
    references=KEYWORD,
    date=DATETIME(sortable=True),
    year=NUMERIC(sortable=True),
    sender_address=ID(sortable=True),
    size=NUMERIC,
    record=STORED,
)


class WhooshEngine:
    """One catalogue generation as a Whoosh index (see Engine)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if index.exists_in(str(self.path)):
            self._index = index.open_dir(str(self.path))
        else:
            self._index = index.create_in(str(self.path), SCHEMA)
        self._stop_waiting = threading.Event()

    def search(self, node: query_tree.Node, owners: frozenset[str] | None, *,
               offset: int, limit: int, sort: str, facets: bool) -> Page:
        query = compile_query(node)
        owner_filter = None
        if owners is not None:
            owner_filter = whoosh_query.Or([Term("owners", owner) for owner in sorted(owners)])
        groups = None
        if facets:
            groups = {"year": sorting.FieldFacet("year", maptype=sorting.Count),
                      "sender": sorting.FieldFacet("sender_address", maptype=sorting.Count)}
        sorted_by = {"sortedby": "date", "reverse": True} if sort == "date" else {}
        with self._index.searcher() as searcher:
            found = searcher.search(query, limit=offset + limit, filter=owner_filter,
                                    groupedby=groups, **sorted_by)
            records = [json.loads(hit["record"]) for hit in found[offset:offset + limit]]
            return Page(len(found), records, _facets(found) if facets else Facets())

    def matching_ids(self, node: query_tree.Node) -> list[str]:
        with self._index.searcher() as searcher:
            return [searcher.stored_fields(number)["id"]
                    for number in searcher.docs_for_query(compile_query(node))]

    def document(self, message_id: str) -> dict | None:
        with self._index.searcher() as searcher:
            return _stored(searcher.document(id=message_id))

    def records(self) -> Iterator[dict]:
        with self._index.searcher() as searcher:
            stored = [json.loads(fields["record"]) for fields in searcher.all_stored_fields()]
        return iter(document_of(record) for record in stored)

    def count(self) -> int:
        with self._index.searcher() as searcher:
            return searcher.doc_count()

    @contextlib.contextmanager
    def batch(self) -> Iterator[_WhooshBatch]:
        writer = self._writer()
        try:
            with writer.searcher() as searcher:
                yield _WhooshBatch(writer, searcher)
        except BaseException:
            writer.cancel()
            raise
        writer.commit()

    def _writer(self):
        def attempt():
            # Whoosh waits for the lock itself, in steps of this long, so
            # that a stop is heard between them.
            try:
                return self._index.writer(timeout=LOCK_STEP_SECONDS)
            except LockError:
                return None

        return wait_for_writer(attempt, self.path, seconds=WRITER_WAIT_SECONDS,
                               stopping=self._stop_waiting, pause=0)

    def stop_waiting(self) -> None:
        self._stop_waiting.set()

    def settle(self) -> None:
        # Each batch's writer commits and is gone; nothing is left running.
        return None

    def close(self) -> None:
        self._index.close()


class _WhooshBatch:
    def __init__(self, writer, searcher) -> None:
        self.writer = writer
        self.searcher = searcher

    def get(self, message_id: str) -> dict | None:
        return _stored(self.searcher.document(id=message_id))

    def get_many(self, message_ids: list[str]) -> dict[str, dict]:
        found = {message_id: self.get(message_id) for message_id in message_ids}
        return {message_id: stored for message_id, stored in found.items() if stored}

    def put(self, document: dict) -> None:
        self.writer.update_document(**_fields(document))

    def add(self, document: dict) -> None:
        self.writer.add_document(**_fields(document))

    def delete(self, message_id: str) -> None:
        self.writer.delete_by_term("id", message_id)


def _fields(document: dict) -> dict:
    """Return a document as the Whoosh schema's field values."""
    fields = {name: searchable(document[name]) for name in (*SEARCH_FIELDS, "bcc", "filename")}
    fields.update((name, document[name]) for name in ("message_id", "sender_address"))
    fields["references"] = document.get("references", "")
    date = utc_naive(document["date"])
    if date is not None:
        fields["date"] = date
        fields["year"] = date.year
    return dict(
        id=document["id"], owners=",".join(document["owners"]),
        has_attachment=document["has_attachment"], size=document["size"],
        record=json.dumps(record_of(document)), **fields)


def _stored(fields: dict | None) -> dict | None:
    return document_of(json.loads(fields["record"])) if fields else None


def _facets(found) -> Facets:
    years = found.groups("year")
    senders = found.groups("sender")
    return Facets(
        years=tuple(sorted(((int(year), count) for year, count in years.items()
                            if year is not None), reverse=True)),
        senders=tuple(sorted(((sender, count) for sender, count in senders.items()
                              if sender), key=lambda item: (-item[1], item[0]))
                      [:FACET_SENDERS]),
    )


def compile_query(node: query_tree.Node) -> Query:
    """Compile the archive's query tree for Whoosh.

    Words are analysed exactly as the field analysed them at indexing, so
    "KESTREL-7f" becomes the phrase of its two words.  Dates reach Whoosh
    as naive UTC, the only form it keeps (case B22).
    """
    if isinstance(node, query_tree.Text):
        fields = [node.field] if node.field else list(SEARCH_FIELDS)
        return _one_or_any([_text(field, node) for field in fields])
    if isinstance(node, query_tree.And):
        return whoosh_query.And([compile_query(child) for child in node.children])
    if isinstance(node, query_tree.Or):
        return whoosh_query.Or([compile_query(child) for child in node.children])
    if isinstance(node, query_tree.Not):
        return whoosh_query.And([Every(), whoosh_query.Not(compile_query(node.child))])
    if isinstance(node, query_tree.DateRange):
        return whoosh_query.DateRange("date", utc_naive(node.start), utc_naive(node.end),
                                      endexcl=True)
    if isinstance(node, query_tree.SizeRange):
        top = node.maximum - 1 if node.maximum is not None else None
        return whoosh_query.NumericRange("size", node.minimum, top)
    if isinstance(node, query_tree.HasAttachment):
        return Term("has_attachment", True)
    return Every()


def _text(field: str, node: query_tree.Text) -> Query:
    if field in ("message_id", "references"):
        return Term(field, node.text.strip().strip("<>"))
    words = [token.text for token in SCHEMA[field].analyzer(searchable(node.text))]
    if not words:
        return whoosh_query.NullQuery
    if node.prefix:
        parts: list[Query] = [Term(field, word) for word in words[:-1]]
        return _one_or_all([*parts, Prefix(field, words[-1])])
    if len(words) == 1:
        return Term(field, words[0])
    return whoosh_query.Phrase(field, words)


def _one_or_any(queries: list[Query]) -> Query:
    return queries[0] if len(queries) == 1 else whoosh_query.Or(queries)


def _one_or_all(queries: list[Query]) -> Query:
    return queries[0] if len(queries) == 1 else whoosh_query.And(queries)
