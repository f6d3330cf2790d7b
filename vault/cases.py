"""eDiscovery cases: matters with custodians, saved searches and holds.

A *case* is a named matter: a description, its *custodians* (the
mailboxes whose mail is in question), its *members* (the people who work
on it and may see its exports) and notes.  A *saved search* is the
archive's query language plus a custodian and date scope; each time it
runs it records the catalogue state it ran against (how many documents
the catalogue held and the follower's cursor, the latest receipt
indexed), so that a count given to a court can be explained later.

Holds placed from a case live in ``vault.case_holds``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from vault import VaultError
from vault.clock import now
from vault.control import ControlDB
from vault.roles import CASE_MANAGE, CASE_VIEW, MAIL_ANY, Principal, in_scope, require

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# The name of the hold on the custodians' future mail (vault.case_holds).
FUTURE = "custodians"


class CaseError(VaultError):
    """A case operation was refused or names something absent."""


class CatalogueView(Protocol):
    """What cases need of the catalogue: its privileged, read-only calls."""

    def matching_ids(self, text: str) -> list[str]: ...

    def document(self, message_id: str) -> dict[str, Any] | None: ...

    def count(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class Case:
    """One matter."""

    id: int
    name: str
    description: str
    created_by: str
    created_at: str
    hold_future: bool
    custodians: tuple[str, ...]
    members: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SavedSearch:
    """A query with its scope, and the catalogue state of its last run."""

    id: int
    case_id: int
    name: str
    query: str
    custodians: tuple[str, ...]
    date_from: str
    date_to: str
    created_by: str
    created_at: str
    state: dict[str, Any]

    @property
    def text(self) -> str:
        """Return the query with its date scope, in the query language."""
        parts = [f"({self.query})"] if self.query.strip() else []
        if self.date_from:
            parts.append(f"after:{self.date_from}")
        if self.date_to:
            parts.append(f"before:{self.date_to}")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Match:
    """One message a saved search found, with its owners in scope."""

    message_id: str
    custodians: tuple[str, ...]
    receipts: tuple[str, ...]
    size: int


@dataclasses.dataclass(frozen=True)
class Preview:
    """Counts and a sample, shown before anything is held or exported."""

    messages: int
    bytes: int
    by_custodian: dict[str, int]
    sample: list[dict[str, str]]
    state: dict[str, Any]


class Cases:
    """Keep cases in the control database and run their searches."""

    def __init__(self, control: ControlDB, catalogue: CatalogueView,
                 cursor_path: Path | None = None) -> None:
        self.control = control
        self.catalogue = catalogue
        # None: the follower's cursor in the catalogue's current generation.
        self.cursor_path = Path(cursor_path) if cursor_path is not None else None

    def create(self, name: str, description: str, custodians: Iterable[str],
               actor: Principal, members: Iterable[str] = ()) -> Case:
        """Open a new case; its creator is its first member."""
        require(actor, CASE_MANAGE)
        if not _NAME.fullmatch(name):
            raise CaseError(f"case name {name!r}: use letters, digits, '.', '_' or '-'")
        mailboxes = sorted({mailbox.strip().lower() for mailbox in custodians if mailbox.strip()})
        self._check_scope(actor, mailboxes)
        with self.control.connect() as connection:
            if connection.execute("SELECT 1 FROM cases WHERE name = ?", (name,)).fetchone():
                raise CaseError(f"a case named {name!r} exists already")
            case_id = connection.execute(
                "INSERT INTO cases (name, description, created_by, created_at)"
                " VALUES (?, ?, ?, ?)",
                (name, description, actor.address, now().isoformat())).lastrowid
            connection.executemany(
                "INSERT INTO case_custodians (case_id, mailbox) VALUES (?, ?)",
                [(case_id, mailbox) for mailbox in mailboxes])
            connection.executemany(
                "INSERT OR IGNORE INTO case_members (case_id, address) VALUES (?, ?)",
                [(case_id, member.lower()) for member in (actor.address, *members)])
        self.control.audit(actor.address, "case.created", name, custodians=mailboxes,
                           members=sorted({actor.address, *members}))
        return self.get(name, actor)

    def get(self, name: str, viewer: Principal) -> Case:
        """Return the case if ``viewer`` may see it (a member with case.view)."""
        require(viewer, CASE_VIEW)
        case = self._load(name)
        if case is None or viewer.address not in case.members or not _within(viewer, case):
            raise CaseError(f"no case named {name!r}")
        return case

    def visible(self, viewer: Principal) -> list[Case]:
        """Return the cases ``viewer`` is a member of."""
        require(viewer, CASE_VIEW)
        with self.control.connect() as connection:
            names = [row["name"] for row in connection.execute(
                "SELECT name FROM cases JOIN case_members ON case_id = id"
                " WHERE address = ? ORDER BY created_at DESC", (viewer.address,))]
        return [case for case in map(self._load, names)
                if case is not None and _within(viewer, case)]

    def add_member(self, case: Case, address: str, actor: Principal) -> None:
        """Let another person work on (and download from) the case."""
        require(actor, CASE_MANAGE)
        with self.control.connect() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO case_members (case_id, address) VALUES (?, ?)",
                (case.id, address.lower()))
        self.control.audit(actor.address, "case.member_added", case.name,
                           member=address.lower())

    def add_custodian(self, case: Case, mailbox: str, actor: Principal) -> None:
        """Add a mailbox to the case's custodians."""
        require(actor, CASE_MANAGE)
        self._check_scope(actor, [mailbox.lower()])
        with self.control.connect() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO case_custodians (case_id, mailbox) VALUES (?, ?)",
                (case.id, mailbox.lower()))
        self.control.audit(actor.address, "case.custodian_added", case.name,
                           custodian=mailbox.lower())

    def add_note(self, case: Case, text: str, actor: Principal) -> None:
        """Append a note to the case file."""
        require(actor, CASE_MANAGE)
        with self.control.connect() as connection:
            connection.execute(
                "INSERT INTO case_notes (case_id, author, at, text) VALUES (?, ?, ?, ?)",
                (case.id, actor.address, now().isoformat(), text))
        self.control.audit(actor.address, "case.note_added", case.name)

    def notes(self, case: Case) -> list[dict[str, Any]]:
        """Return the case's notes, oldest first."""
        with self.control.connect() as connection:
            return [dict(row) for row in connection.execute(
                "SELECT author, at, text FROM case_notes WHERE case_id = ? ORDER BY id",
                (case.id,))]

    def add_search(self, case: Case, name: str, query: str, actor: Principal, *,
                   custodians: Iterable[str] = (), date_from: str = "",
                   date_to: str = "") -> SavedSearch:
        """Save a search; custodians default to all of the case's."""
        require(actor, CASE_MANAGE)
        if not _NAME.fullmatch(name) or name == FUTURE:
            raise CaseError(f"search name {name!r}: use letters, digits, '.', '_' or '-'"
                            f" (and not {FUTURE!r}, the future-mail hold's name)")
        for label, value in (("from", date_from), ("to", date_to)):
            if value and not _DATE.fullmatch(value):
                raise CaseError(f"date {label} {value!r}: expected YYYY-MM-DD")
        scope = sorted({c.strip().lower() for c in custodians if c.strip()})
        outside = set(scope) - set(case.custodians)
        if outside:
            raise CaseError(f"not custodians of {case.name}: {', '.join(sorted(outside))}")
        search = SavedSearch(0, case.id, name, query, tuple(scope), date_from, date_to,
                             actor.address, now().isoformat(), {})
        if not search.text:
            raise CaseError("a saved search needs a query or a date scope")
        next(self._matching(case, search), None)  # an unreadable query fails here
        with self.control.connect() as connection:
            if connection.execute("SELECT 1 FROM case_searches WHERE case_id = ? AND name = ?",
                                  (case.id, name)).fetchone():
                raise CaseError(f"case {case.name} has a search named {name!r} already")
            connection.execute(
                "INSERT INTO case_searches (case_id, name, query, custodians, date_from,"
                " date_to, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (case.id, name, query, json.dumps(scope), date_from, date_to,
                 actor.address, search.created_at))
        self.control.audit(actor.address, "case.search_saved", case.name, search=name,
                           query=query, custodians=scope, date_from=date_from,
                           date_to=date_to)
        return self.search(case, name)

    def search(self, case: Case, name: str) -> SavedSearch:
        """Return one saved search of the case."""
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT * FROM case_searches WHERE case_id = ? AND name = ?",
                (case.id, name)).fetchone()
        if row is None:
            raise CaseError(f"case {case.name} has no search named {name!r}")
        return _saved_search(row)

    def searches(self, case: Case) -> list[SavedSearch]:
        """Return the case's saved searches, oldest first."""
        with self.control.connect() as connection:
            rows = connection.execute(
                "SELECT * FROM case_searches WHERE case_id = ? ORDER BY id",
                (case.id,)).fetchall()
        return [_saved_search(row) for row in rows]

    def run(self, case: Case, search: SavedSearch, actor: Principal) -> list[Match]:
        """Run a saved search across mailboxes; record the catalogue state.

        Returns the matches in message-id order, so that two runs against
        the same catalogue state list the same messages in the same order.
        """
        return list(self.stream(case, search, actor))

    def stream(self, case: Case, search: SavedSearch, actor: Principal) -> Iterator[Match]:
        """Yield what ``run`` returns one match at a time (for exports).

        The catalogue state is taken before the first match and recorded,
        with the count, after the last: a caller that stops early records
        nothing.
        """
        require(actor, MAIL_ANY)
        state = self.catalogue_state()
        return self._stream(case, search, actor, state)

    def _stream(self, case: Case, search: SavedSearch, actor: Principal,
                state: dict[str, Any]) -> Iterator[Match]:
        matched = 0
        for match in self._matching(case, search):
            if in_scope(actor, match.custodians):
                matched += 1
                yield match
        state["matched"] = matched
        with self.control.connect() as connection:
            connection.execute("UPDATE case_searches SET state = ? WHERE id = ?",
                               (json.dumps(state, sort_keys=True), search.id))

    def preview(self, case: Case, search: SavedSearch, actor: Principal,
                sample: int = 10) -> Preview:
        """Count what a search finds, per custodian, with a few examples."""
        matches = self.run(case, search, actor)
        by_custodian: dict[str, int] = {}
        for match in matches:
            for custodian in match.custodians:
                by_custodian[custodian] = by_custodian.get(custodian, 0) + 1
        examples = []
        for match in matches[:sample]:
            document = self.catalogue.document(match.message_id) or {}
            examples.append({"id": match.message_id,
                             "subject": str(document.get("subject", "")),
                             "from": str(document.get("from", "")),
                             "date": str(document.get("date", ""))})
        state = self.search(case, search.name).state
        self.control.audit(actor.address, "case.previewed", case.name, search=search.name,
                           messages=len(matches), documents=state.get("documents"),
                           cursor=state.get("cursor"))
        return Preview(len(matches), sum(m.size for m in matches), by_custodian,
                       examples, state)

    def catalogue_state(self) -> dict[str, Any]:
        """Return what the catalogue held: documents and the follower's cursor."""
        path = self.cursor_path or Path(getattr(self.catalogue, "cursor_path"))
        try:
            cursor = path.read_text("ascii").strip()
        except FileNotFoundError:
            cursor = ""
        return {"documents": self.catalogue.count(), "cursor": cursor,
                "at": now().isoformat()}

    def _matching(self, case: Case, search: SavedSearch) -> Iterator[Match]:
        scope = set(search.custodians or case.custodians)
        # The engines return every matching id at once (about 120 bytes
        # each: 12 MB at 100,000 matches), the one part of an export whose
        # memory still grows with its size; paging belongs in the catalogue
        # interface.  Everything after this is one at a time.
        found = self.catalogue.matching_ids(search.text)
        found.sort()
        for message_id in found:
            document = self.catalogue.document(message_id) or {}
            owners = owners_of(document)
            custodians = tuple(sorted(scope & set(owners))) if scope else tuple(owners)
            if scope and not custodians:
                continue
            yield Match(message_id, custodians, tuple(document.get("receipts", ())),
                        int(document.get("size") or 0))

    def _check_scope(self, actor: Principal, mailboxes: list[str]) -> None:
        for mailbox in mailboxes:
            if not in_scope(actor, [mailbox]):
                raise CaseError(f"{mailbox} is outside the domains {actor.address} "
                                "may work on")

    def named(self, name: str) -> Case | None:
        """Return the case called ``name`` without checking who asks.

        For the approval of a request already checked by its own rules.
        """
        return self._load(name)

    def _load(self, name: str) -> Case | None:
        with self.control.connect() as connection:
            row = connection.execute("SELECT * FROM cases WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            custodians = [r["mailbox"] for r in connection.execute(
                "SELECT mailbox FROM case_custodians WHERE case_id = ? ORDER BY mailbox",
                (row["id"],))]
            members = [r["address"] for r in connection.execute(
                "SELECT address FROM case_members WHERE case_id = ? ORDER BY address",
                (row["id"],))]
        return Case(row["id"], row["name"], row["description"], row["created_by"],
                    row["created_at"], bool(row["hold_future"]), tuple(custodians),
                    tuple(members))


def _saved_search(row: Any) -> SavedSearch:
    return SavedSearch(row["id"], row["case_id"], row["name"], row["query"],
                       tuple(json.loads(row["custodians"])), row["date_from"],
                       row["date_to"], row["created_by"], row["created_at"],
                       json.loads(row["state"]))


def owners_of(document: dict[str, Any]) -> list[str]:
    """Return a catalogue document's owners (a list; older forms were text)."""
    owners = document.get("owners") or []
    if isinstance(owners, str):
        owners = owners.split(",")
    return [owner for owner in owners if owner]


def _within(viewer: Principal, case: Case) -> bool:
    # A domain-scoped officer sees a case (its searches, holds and export
    # files) only while every custodian is inside their scope: narrowing
    # the scope closes the cases that reach beyond it.
    return all(in_scope(viewer, [mailbox]) for mailbox in case.custodians)
