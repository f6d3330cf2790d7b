"""The archive's query language, parsed into a tree no engine owns.

The portal, the API and eDiscovery all speak this language; each search
engine compiles the tree for itself, so none of them speaks an engine's
dialect.  The language (also on the portal's help page)::

    invoice                      a word, anywhere
    "quarterly figures"          a phrase
    invoic*                      words starting with "invoic"
    a b / a AND b                both;  a OR b  either;  NOT a / -a  without
    ( ... )                      grouping
    from: to: cc: bcc: subject: body: attachment: filename: message-id:
    references:
                                 a word or "phrase" in one field
                                 (attachment: searches names and text,
                                 filename: names only)
    date:2024  date:2024-03  date:2024-03-05
    after:DATE  before:DATE      on or after / before the start of DATE;
                                 DATE may be 2024-03-01, "1 March 2024",
                                 today, yesterday
    has:attachment               messages with attachments
    larger:5MB  smaller:100KB    by size

Dates are read in the searcher's time zone and turned into UTC instants.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from zoneinfo import ZoneInfo

from dateutil import parser as date_parser
from dateutil.relativedelta import relativedelta

from indexer import QueryError

FIELDS = {
    "from": "from", "to": "to", "cc": "cc", "bcc": "bcc", "subject": "subject",
    "body": "body", "attachment": "attachment", "filename": "filename",
    "message-id": "message_id", "references": "references",
}
MAX_QUERY_CHARS = 2000
MAX_NODES = 200
# Each wildcard word expands to every matching term; a few are enough.
MAX_WILDCARDS = 8
MIN_PREFIX_CHARS = 2
_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*"?)|([^\s()"]+))')
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(b|kb|k|mb|m|gb|g)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6,
               "g": 10**9, "gb": 10**9}


@dataclasses.dataclass(frozen=True)
class Text:
    """Words in one field (None: the default fields)."""

    field: str | None
    text: str
    phrase: bool = False
    prefix: bool = False


@dataclasses.dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclasses.dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclasses.dataclass(frozen=True)
class Not:
    child: Node


@dataclasses.dataclass(frozen=True)
class DateRange:
    """Messages dated from ``start`` (inclusive) to ``end`` (exclusive), UTC."""

    start: dt.datetime | None
    end: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class SizeRange:
    """Messages of at least ``minimum`` and less than ``maximum`` bytes."""

    minimum: int | None
    maximum: int | None


@dataclasses.dataclass(frozen=True)
class HasAttachment:
    """Messages with at least one attachment."""


@dataclasses.dataclass(frozen=True)
class Everything:
    """Every message (the owner filter still applies)."""


Node = Text | And | Or | Not | DateRange | SizeRange | HasAttachment | Everything


def parse(text: str, *, zone: str = "UTC", today: dt.date | None = None) -> Node:
    """Parse a query; raise QueryError saying what could not be read."""
    text = (text or "").strip()
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    if not text or text == "*":
        return Everything()
    try:
        tzinfo = ZoneInfo(zone)
    except (KeyError, ValueError):
        raise QueryError(f"unknown time zone {zone!r}") from None
    reader = _Reader(_tokens(text), tzinfo, today or dt.datetime.now(tzinfo).date())
    node = reader.expression()
    if reader.position < len(reader.tokens):
        raise QueryError(f"unexpected {reader.tokens[reader.position][1]!r}")
    if _count(node) > MAX_NODES:
        raise QueryError(f"the query has more than {MAX_NODES} parts")
    if len({leaf.text for leaf in leaves(node) if isinstance(leaf, Text) and leaf.prefix}) \
            > MAX_WILDCARDS:
        raise QueryError(f"a query may use at most {MAX_WILDCARDS} wildcard words")
    return node


def leaves(node: Node) -> list[Node]:
    """Return the leaves of ``node``, left to right."""
    if isinstance(node, (And, Or)):
        return [leaf for child in node.children for leaf in leaves(child)]
    if isinstance(node, Not):
        return leaves(node.child)
    return [node]


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _TOKEN.finditer(text):
        opening, closing, quoted, word = match.groups()
        if opening:
            tokens.append(("(", opening))
        elif closing:
            tokens.append((")", closing))
        elif quoted is not None:
            if len(quoted) < 2 or not quoted.endswith('"') or quoted.endswith('\\"'):
                raise QueryError("a quotation mark is not closed")
            tokens.append(("quoted", quoted[1:-1].replace('\\"', '"')))
        elif word:
            tokens.append(("word", word))
    return tokens


class _Reader:
    def __init__(self, tokens: list[tuple[str, str]], zone: dt.tzinfo, today: dt.date) -> None:
        self.tokens = tokens
        self.position = 0
        self.zone = zone
        self.today = today

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def expression(self) -> Node:
        children = [self.conjunction()]
        while self.peek() == ("word", "OR"):
            self.take()
            children.append(self.conjunction())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def conjunction(self) -> Node:
        children = [self.unary()]
        while (token := self.peek()) is not None and token[0] != ")" and token != ("word", "OR"):
            if token == ("word", "AND"):
                self.take()
            children.append(self.unary())
        return children[0] if len(children) == 1 else And(tuple(children))

    def unary(self) -> Node:
        token = self.peek()
        if token is None:
            raise QueryError("the query ends where a word was expected")
        if token == ("word", "NOT"):
            self.take()
            return Not(self.unary())
        if token[0] == "word" and token[1].startswith("-") and len(token[1]) > 1:
            self.tokens[self.position] = ("word", token[1][1:])
            return Not(self.unary())
        return self.atom()

    def atom(self) -> Node:
        kind, value = self.take()
        if kind == "(":
            node = self.expression()
            if self.peek() is None or self.take()[0] != ")":
                raise QueryError("a bracket is not closed")
            return node
        if kind == ")":
            raise QueryError("a closing bracket has no opening one")
        if kind == "quoted":
            return Text(None, value, phrase=True)
        name, colon, rest = value.partition(":")
        if colon and name.lower() in FIELDS | {"date": 0, "after": 0, "before": 0,
                                                "has": 0, "larger": 0, "smaller": 0}:
            if not rest:
                token = self.peek()
                if token is None or token[0] != "quoted":
                    raise QueryError(f"{name}: needs a value")
                rest = self.take()[1]
                return self.field(name.lower(), rest, quoted=True)
            return self.field(name.lower(), rest, quoted=False)
        return _word(None, value)

    def field(self, name: str, value: str, *, quoted: bool) -> Node:
        if name == "references":
            # Message-IDs are typed with or without their angle brackets.
            value = value.strip().strip("<>")
        if name in FIELDS:
            if quoted:
                return Text(FIELDS[name], value, phrase=True)
            return _word(FIELDS[name], value)
        if name == "has":
            if value.lower() not in ("attachment", "attachments"):
                raise QueryError(f"has:{value} is not known; try has:attachment")
            return HasAttachment()
        if name in ("larger", "smaller"):
            size = _size(value)
            return SizeRange(size, None) if name == "larger" else SizeRange(None, size)
        start, end = self.period(value)
        if name == "date":
            return DateRange(start, end)
        return DateRange(start, None) if name == "after" else DateRange(None, start)

    def period(self, value: str) -> tuple[dt.datetime, dt.datetime]:
        """Return the UTC instants that start and end the period ``value`` names."""
        try:
            return self._period(value)
        except (ValueError, OverflowError):
            # Year 0, or a period running past year 9999.
            raise QueryError(f"cannot use the date {value!r}: it is outside the "
                             "calendar this archive searches") from None

    def _period(self, value: str) -> tuple[dt.datetime, dt.datetime]:
        text = value.strip().lower()
        if text in ("today", "yesterday"):
            day = self.today - dt.timedelta(days=1 if text == "yesterday" else 0)
            return self._instant(day), self._instant(day + dt.timedelta(days=1))
        if re.fullmatch(r"[0-9]{4}", text):
            first = dt.date(int(text), 1, 1)
            return self._instant(first), self._instant(first + relativedelta(years=1))
        month = re.fullmatch(r"([0-9]{4})-([0-9]{1,2})", text)
        if month and 1 <= int(month.group(2)) <= 12:
            first = dt.date(int(month.group(1)), int(month.group(2)), 1)
            return self._instant(first), self._instant(first + relativedelta(months=1))
        try:
            day = date_parser.parse(value, dayfirst=False, yearfirst=True,
                                    default=dt.datetime(self.today.year, 1, 1)).date()
        except (ValueError, OverflowError):
            raise QueryError(f"cannot read the date {value!r}") from None
        return self._instant(day), self._instant(day + dt.timedelta(days=1))

    def _instant(self, day: dt.date) -> dt.datetime:
        local = dt.datetime(day.year, day.month, day.day, tzinfo=self.zone)
        return local.astimezone(dt.timezone.utc)


def _word(field: str | None, value: str) -> Text:
    if value.startswith(("*", "?")):
        raise QueryError("a word may not start with * or ?; put the wildcard at the end")
    if value.endswith("*") and len(value) > 1 and "*" not in value[:-1]:
        if len(re.findall(r"\w", value[:-1].split()[-1])) < MIN_PREFIX_CHARS:
            # "a*" would expand to a good share of every word there is.
            raise QueryError(f"a wildcard needs at least {MIN_PREFIX_CHARS} letters "
                             "before the *")
        return Text(field, value[:-1], prefix=True)
    return Text(field, value)


# No message comes near a petabyte; engines keep sizes in 64 bits.
MAX_SIZE = 2 ** 50


def _size(value: str) -> int:
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise QueryError(f"cannot read the size {value!r}; write e.g. 5MB or 100KB")
    unit = match.group(2).lower() if match.group(2) else None
    size = float(match.group(1)) * _SIZE_UNITS[unit]
    if size > MAX_SIZE:
        raise QueryError(f"the size {value!r} is larger than any message")
    return int(size)


def _count(node: Node) -> int:
    if isinstance(node, (And, Or)):
        return 1 + sum(_count(child) for child in node.children)
    if isinstance(node, Not):
        return 1 + _count(node.child)
    return 1
