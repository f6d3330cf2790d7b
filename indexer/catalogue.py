"""The Whoosh catalogue: one document per stored message, found by owner.

Every end-user query carries the set of mailboxes the user may see; the
catalogue applies it as a filter inside the engine, so no result outside
that set is ever scored, counted or returned.  Dates are stored as naive
UTC because Whoosh drops an offset without converting it (case B22).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from pathlib import Path

from whoosh import highlight, index
from whoosh.analysis import StandardAnalyzer
from whoosh.fields import BOOLEAN, DATETIME, ID, KEYWORD, NUMERIC, STORED, TEXT, Schema
from whoosh import query as whoosh_query
from whoosh.query import Every, Or, Prefix, Query, Term
from whoosh.searching import Searcher

from indexer import QueryError
from indexer import query as query_tree

log = logging.getLogger(__name__)

# Search fields as users type them (``from:alice``); the default fields
# are searched by free text.
SEARCH_FIELDS = ("subject", "from", "to", "cc", "body", "attachment")
SNIPPET_STORED_CHARS = 100_000
WRITER_WAIT_SECONDS = 60.0
MATCH_START, MATCH_END = "\x02", "\x03"


def _analyzer():
    # No stop list: in an archive "the who" or "IT" may be exactly the query.
    return StandardAnalyzer(stoplist=None)


SCHEMA = Schema(
    id=ID(unique=True, stored=True),
    owners=KEYWORD(stored=True, commas=True, lowercase=True),
    subject=TEXT(stored=True, analyzer=_analyzer()),
    **{"from": TEXT(stored=True, analyzer=_analyzer())},
    to=TEXT(stored=True, analyzer=_analyzer()),
    cc=TEXT(stored=True, analyzer=_analyzer()),
    body=TEXT(analyzer=_analyzer()),
    preview=STORED,
    bcc=TEXT(analyzer=_analyzer()),
    attachment=TEXT(analyzer=_analyzer()),
    filename=TEXT(stored=True, analyzer=_analyzer()),
    has_attachment=BOOLEAN,
    message_id=ID(stored=True),
    references=KEYWORD(stored=True),  # In-Reply-To and References ids, for threads
    date=DATETIME(stored=True, sortable=True),
    size=NUMERIC(stored=True),
    receipts=STORED,
    defects=STORED,
)


MAX_WILDCARDS = 8


def compile_query(node: query_tree.Node) -> Query:
    """Compile the archive's query tree for Whoosh.

    Words are analysed exactly as the field analysed them at indexing, so
    "KESTREL-7f" becomes the phrase of its two words.  Dates reach Whoosh
    as naive UTC, the only form it keeps (case B22).
    """
    prefixes = {leaf.text for leaf in _leaves(node)
                if isinstance(leaf, query_tree.Text) and leaf.prefix}
    if len(prefixes) > MAX_WILDCARDS:
        raise QueryError(f"a query may use at most {MAX_WILDCARDS} wildcard words")
    return _compile(node)


def _compile(node: query_tree.Node) -> Query:
    if isinstance(node, query_tree.Text):
        fields = [node.field] if node.field else list(SEARCH_FIELDS)
        return _one_or_any([_text(field, node) for field in fields])
    if isinstance(node, query_tree.And):
        return whoosh_query.And([_compile(child) for child in node.children])
    if isinstance(node, query_tree.Or):
        return whoosh_query.Or([_compile(child) for child in node.children])
    if isinstance(node, query_tree.Not):
        return whoosh_query.And([Every(), whoosh_query.Not(_compile(node.child))])
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
    if field == "message_id":
        return Term("message_id", node.text.strip().strip("<>"))
    words = [token.text for token in SCHEMA[field].analyzer(node.text)]
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


def _leaves(node: query_tree.Node) -> list[query_tree.Node]:
    if isinstance(node, (query_tree.And, query_tree.Or)):
        return [leaf for child in node.children for leaf in _leaves(child)]
    if isinstance(node, query_tree.Not):
        return _leaves(node.child)
    return [node]


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result as the portal and the API show it."""

    id: str
    subject: str
    sender: str
    date: dt.datetime | None
    snippet: list[tuple[str, bool]]


@dataclasses.dataclass(frozen=True)
class Results:
    """A page of hits and the total number of matches."""

    total: int
    page: int
    per_page: int
    hits: list[Hit]


class Catalogue:
    """Open (or create) the Whoosh index under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if index.exists_in(str(self.path)):
            self._index = index.open_dir(str(self.path))
        else:
            self._index = index.create_in(str(self.path), SCHEMA)
        self._write_lock = threading.Lock()

    def writer(self):
        """Return a writer, waiting up to a minute for another to finish.

        The follower writes in short batches; operator commands (purge)
        wait their turn instead of failing on Whoosh's lock (case B21).
        """
        return self._index.writer(timeout=WRITER_WAIT_SECONDS)

    def matching_ids(self, text: str) -> list[str]:
        """Return the id of every document matching ``text``, in any mailbox.

        Privileged: for operator commands (holds) only; end-user paths
        always go through ``search`` with their owners.
        """
        query = self.parse(text)
        with self._index.searcher() as searcher:
            return [searcher.stored_fields(number)["id"]
                    for number in searcher.docs_for_query(query)]

    def delete(self, message_ids: list[str]) -> None:
        """Remove documents (after disposition)."""
        writer = self.writer()
        try:
            for message_id in message_ids:
                writer.delete_by_term("id", message_id)
        except BaseException:
            writer.cancel()
            raise
        writer.commit()

    def document(self, message_id: str, searcher: Searcher | None = None) -> dict | None:
        """Return the stored fields of one message's document, if indexed."""
        if searcher is not None:
            return searcher.document(id=message_id)
        with self._index.searcher() as own:
            return own.document(id=message_id)

    def ids(self) -> set[str]:
        """Return the message id of every document."""
        with self._index.searcher() as searcher:
            return {fields["id"] for fields in searcher.all_stored_fields()}

    def count(self) -> int:
        """Return the number of documents."""
        with self._index.searcher() as searcher:
            return searcher.doc_count()

    def search(self, text: str, *, owners: frozenset[str], page: int = 1,
               per_page: int = 20, zone: str = "UTC") -> Results:
        """Find documents owned by any of ``owners`` that match ``text``.

        Raises QueryError for a query that cannot be read.
        """
        query = self.parse(text, zone)
        if not owners:
            return Results(0, page, per_page, [])
        owner_filter = Or([Term("owners", owner.lower()) for owner in sorted(owners)])
        with self._index.searcher() as searcher:
            found = searcher.search_page(
                query, page, pagelen=per_page, filter=owner_filter,
                sortedby="date", reverse=True, terms=True,
            )
            found.results.fragmenter = highlight.ContextFragmenter(surround=60)
            found.results.formatter = _SentinelFormatter()
            hits = [_hit(hit) for hit in found]
            return Results(len(found), page, per_page, hits)

    def search_ids(self, text: str, *, owners: frozenset[str], limit: int,
                   zone: str = "UTC") -> tuple[int, list[str]]:
        """Return how many documents of ``owners`` match, and the newest ids.

        The same filter as ``search``, without snippets: for acting on a
        whole result (restore).  Raises QueryError like ``search``.
        """
        query = self.parse(text, zone)
        if not owners:
            return 0, []
        owner_filter = Or([Term("owners", owner.lower()) for owner in sorted(owners)])
        with self._index.searcher() as searcher:
            found = searcher.search(query, limit=limit, filter=owner_filter,
                                    sortedby="date", reverse=True)
            return len(found), [hit["id"] for hit in found]

    def is_visible(self, message_id: str, owners: frozenset[str]) -> bool:
        """Tell whether any of ``owners`` owns the message (the second check)."""
        document = self.document(message_id)
        if document is None:
            return False
        return bool(set(document["owners"].split(",")) & {o.lower() for o in owners})

    def parse(self, text: str, zone: str = "UTC") -> Query:
        """Parse the archive's query language and compile it for Whoosh.

        Raises QueryError, saying what could not be read.
        """
        return compile_query(query_tree.parse(text, zone=zone))


class _SentinelFormatter(highlight.Formatter):
    """Mark matched terms with control characters the portal turns into <mark>."""

    between = " … "

    def format_token(self, text, token, replace=False):
        return MATCH_START + highlight.get_text(text, token, replace) + MATCH_END


def _hit(hit) -> Hit:
    preview = hit.get("preview", "")
    fragment = hit.highlights("body", text=preview, top=2) or preview[:200]
    return Hit(
        id=hit["id"],
        subject=hit.get("subject", ""),
        sender=hit.get("from", ""),
        date=hit.get("date"),
        snippet=split_snippet(fragment),
    )


def split_snippet(fragment: str) -> list[tuple[str, bool]]:
    """Split a highlighted fragment into (text, is_match) runs."""
    runs: list[tuple[str, bool]] = []
    for piece in fragment.split(MATCH_START):
        matched, _, rest = piece.partition(MATCH_END)
        if rest or MATCH_END in piece:
            runs.append((matched, True))
            if rest:
                runs.append((rest, False))
        elif matched:
            runs.append((matched, False))
    return runs


def utc_naive(moment: dt.datetime | None) -> dt.datetime | None:
    """Return ``moment`` in UTC without tzinfo, the only form Whoosh keeps."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
