"""The whole shared mail corpus through a real archive: sent, kept, found.

Every corpus message (see ``tests/corpus.py``) is journaled over SMTP to a
fresh ``strongroom serve`` with one envelope, so one local mailbox owns all
of it. The archive must then give each message back byte for byte in its wire
form, find it by a word of its Subject, and list every message, parseable or
not, by its envelope sender. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import email
import hashlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from email import policy
from email.header import decode_header, make_header
from typing import NamedTuple

import pytest

from tests.corpus import CorpusMessage, iter_messages, wire_form

pytestmark = pytest.mark.corpus

SENDER = "corpus-sender@example.net"
OWNER = "corpus@example.com"
ENVELOPE_QUERY = f"from:{SENDER}"
SMTP_CONNECTIONS = 4
HTTP_CONNECTIONS = 4
PER_PAGE = 200  # the API's largest page
INDEX_TIMEOUT = 240.0
INDEX_STALL = 60.0
SHOWN_PER_PROBLEM = 40

# A search word: four or more letters or digits, not glued by a dot,
# apostrophe, "@" or "/" to more word characters, which tokenizers keep as
# one token ("v4.0", "user@host") or split unpredictably ("don't"), nor by
# a replacement character or escaped byte to a neighbour: raw 8-bit header
# bytes that Python could not decode may well be decoded by the archive.
SUBJECT_WORD = re.compile(
    r"(?<![\w.'’@/\ufffd\udc80-\udcff])[^\W_]{4,}"
    r"(?![\w.'’@/\ufffd\udc80-\udcff])")
# An RFC 2047 encoded word that Python left undecoded (bad charset or
# encoding); the archive may decode it, so no word is taken from it.
ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# Search engines drop common function words from queries and documents.
FUNCTION_WORDS = frozenset(
    "about been from have into that their them then there they this when "
    "what which will with were your".split())


class StoredMessage(NamedTuple):
    """A message as downloaded from the archive: its id and size."""

    id: str
    size: int


@pytest.mark.timeout(600)
def test_every_corpus_message_is_kept_byte_for_byte_and_found(
        archive_server, corpus_dir):
    # A 250 means a durable copy that reads back as sent and can be found.
    messages = list(iter_messages(corpus_dir))
    token = archive_server.add_user(OWNER)
    problems: dict[str, list[str]] = defaultdict(list)
    figures: dict[str, float] = {}

    started = time.monotonic()
    sent = send_all(archive_server, messages, problems)
    figures["send"] = time.monotonic() - started
    expected = group_by_sha256(sent)

    started = time.monotonic()
    indexed = wait_for_index(archive_server, token, len(expected))
    figures["index catch-up"] = time.monotonic() - started
    if indexed < len(expected):
        problems["index incomplete"].append(
            f"{ENVELOPE_QUERY!r} lists {indexed} of {len(expected)} distinct "
            f"messages after {figures['index catch-up']:.0f} s")

    started = time.monotonic()
    stored = download_listed(archive_server, token, problems)
    compare_bytes(expected, stored, sent, problems)
    figures["download"] = time.monotonic() - started

    started = time.monotonic()
    unparseable = check_subject_search(
        archive_server, token, sent, expected, stored, problems)
    figures["subject searches"] = time.monotonic() - started

    print_summary(messages, sent, expected, unparseable, figures, problems)
    assert not problems, describe(problems)


def send_all(server, messages: list[CorpusMessage],
             problems: dict[str, list[str]]) -> dict[str, bytes]:
    """Journal every message over concurrent SMTP connections.

    Returns the wire form of each message the archive answered 250 to.
    """
    def send(message: CorpusMessage) -> tuple[str, bytes, str | None]:
        wire = wire_form(message.raw)
        try:
            server.send(wire, SENDER, [OWNER])
        except Exception as err:  # every failure is a finding, named below
            return message.name, wire, f"{type(err).__name__}: {err}"
        return message.name, wire, None

    sent = {}
    with ThreadPoolExecutor(SMTP_CONNECTIONS) as pool:
        for name, wire, failure in pool.map(send, messages):
            if failure is None:
                sent[name] = wire
            else:
                problems["no 250 reply"].append(f"{name}: {failure}")
    return sent


def group_by_sha256(sent: dict[str, bytes]) -> dict[str, list[str]]:
    """Group message names by the SHA-256 of their wire form.

    The archive stores identical bytes once, so each group is one message.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for name, wire in sent.items():
        groups[sha256(wire)].append(name)
    return dict(groups)


def wait_for_index(server, token: str, count: int) -> int:
    """Poll the envelope search until it counts ``count`` messages.

    Gives up after INDEX_TIMEOUT, or after INDEX_STALL without progress.
    """
    deadline = time.monotonic() + INDEX_TIMEOUT
    last_total, last_progress = -1, time.monotonic()
    while True:
        total = server.search(token, ENVELOPE_QUERY, per_page="1")["total"]
        now = time.monotonic()
        if total != last_total:
            last_total, last_progress = total, now
        if total >= count or now > deadline or now - last_progress > INDEX_STALL:
            return total
        time.sleep(0.5)


def search_all(server, token: str, query: str) -> list[dict]:
    """Return every result of a search, page by page.

    Raises AssertionError when the pages do not add up to the total, for
    example because the API ignores ``page``.
    """
    results: dict[str, dict] = {}
    page = 1
    while True:
        found = server.search(token, query, page=str(page), per_page=str(PER_PAGE))
        new = {hit["id"]: hit for hit in found["results"] if hit["id"] not in results}
        results.update(new)
        if len(results) >= found["total"] or not new:
            break
        page += 1
    assert len(results) == found["total"], (
        f"{query!r}: pages gave {len(results)} distinct ids, total says "
        f"{found['total']}")
    return list(results.values())


def download_listed(server, token: str, problems: dict[str, list[str]]
                    ) -> dict[str, StoredMessage]:
    """Download every message the envelope search lists, keyed by SHA-256."""
    ids = [hit["id"] for hit in search_all(server, token, ENVELOPE_QUERY)]

    def download(message_id: str) -> tuple[str, int, bytes]:
        status, body = server.raw(token, message_id)
        return message_id, status, body

    stored: dict[str, StoredMessage] = {}
    for message_id, status, body in parallel(download, ids):
        if status != 200:
            problems["download failed"].append(
                f"id {message_id}: HTTP {status} {body[:200]!r}")
        else:
            stored[sha256(body)] = StoredMessage(message_id, len(body))
    return stored


def compare_bytes(expected: dict[str, list[str]],
                  stored: dict[str, StoredMessage],
                  sent: dict[str, bytes], problems: dict[str, list[str]]) -> None:
    """Match downloaded bytes to sent wire forms, explaining mismatches."""
    variants = wire_variants(sent)
    altered = {}
    for digest, message in stored.items():
        if digest in expected:
            continue
        if digest in variants:
            name, change = variants[digest]
            altered[name] = f"id {message.id} is its wire form {change}"
        else:
            problems["stored bytes match no sent message"].append(
                f"id {message.id} ({message.size} bytes)")
    for digest, names in expected.items():
        if digest in stored:
            continue
        changes = [altered[name] for name in names if name in altered]
        if changes:
            problems["not given back byte for byte"].append(
                f"{', '.join(names)}: {changes[0]}")
        else:
            problems["not listed by the envelope sender"].append(
                f"{', '.join(names)} ({len(sent[names[0]])} wire bytes)")


def wire_variants(sent: dict[str, bytes]) -> dict[str, tuple[str, str]]:
    """Map the SHA-256 of likely corruptions of a wire form to (name, change)."""
    variants = {}
    for name, wire in sent.items():
        changes = {
            "without its final CRLF": wire[:-2],
            "with LF line endings": wire.replace(b"\r\n", b"\n"),
            "with an extra CRLF": wire + b"\r\n",
            "still dot-stuffed": wire.replace(b"\r\n.", b"\r\n.."),
        }
        for change, variant in changes.items():
            variants[sha256(variant)] = (name, change)
    return variants


def check_subject_search(server, token: str, sent: dict[str, bytes],
                         expected: dict[str, list[str]],
                         stored: dict[str, StoredMessage],
                         problems: dict[str, list[str]]) -> list[str]:
    """Search each stored message by a word of its Subject.

    Messages that share the chosen word share one search. Returns the names
    of messages whose Subject Python cannot read.
    """
    subjects, unparseable = read_subjects(sent, expected)
    frequency = Counter(
        word.lower() for subject in subjects.values()
        for word in set(SUBJECT_WORD.findall(ENCODED_WORD.sub(" ", subject))))
    digests_by_word: dict[str, list[str]] = defaultdict(list)
    for digest, subject in subjects.items():
        word = pick_word(subject, frequency)
        if word is not None and digest in stored:
            digests_by_word[word.lower()].append(digest)

    def search(word: str) -> tuple[str, set[str]]:
        hits = search_all(server, token, f"subject:{word}")
        return word, {hit["id"] for hit in hits}

    for word, found in parallel(search, list(digests_by_word)):
        for digest in digests_by_word[word]:
            if stored[digest].id not in found:
                problems["not found by a Subject word"].append(
                    f"{', '.join(expected[digest])}: subject:{word} misses id "
                    f"{stored[digest].id} (Subject {subjects[digest]!r})")
    return unparseable


def read_subjects(sent: dict[str, bytes], expected: dict[str, list[str]]
                  ) -> tuple[dict[str, str], list[str]]:
    """Decode the Subject of each distinct message that has one."""
    subjects, unparseable = {}, []
    for digest, names in expected.items():
        try:
            subject = decoded_subject(sent[names[0]])
        except Exception:  # the archive must cope; only record it
            unparseable.extend(names)
            continue
        if subject:
            subjects[digest] = subject
    return subjects, unparseable


def decoded_subject(wire: bytes) -> str | None:
    """Return the decoded Subject, trying policy.default and then compat32."""
    try:
        subject = email.message_from_bytes(wire, policy=policy.default)["subject"]
        return None if subject is None else str(subject)
    except Exception:  # a defect policy.default raises on; compat32 is laxer
        pass
    subject = email.message_from_bytes(wire, policy=policy.compat32)["subject"]
    if subject is None:
        return None
    try:
        return str(make_header(decode_header(subject)))
    except (LookupError, UnicodeError, email.errors.HeaderParseError):
        return str(subject)


def pick_word(subject: str, frequency: Counter) -> str | None:
    """Choose the Subject word most likely to find this message alone.

    ASCII words first (every decoder agrees on them), then the rarest.
    """
    words = [word for word in SUBJECT_WORD.findall(ENCODED_WORD.sub(" ", subject))
             if word.lower() not in FUNCTION_WORDS]
    if not words:
        return None
    return min(words, key=lambda word: (
        not word.isascii(), frequency[word.lower()]))


def parallel(work: Callable, items: Iterable) -> Iterable:
    """Run ``work`` over ``items`` on a few HTTP connections, in order."""
    with ThreadPoolExecutor(HTTP_CONNECTIONS) as pool:
        yield from pool.map(work, items)


def sha256(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def print_summary(messages, sent, expected, unparseable, figures, problems):
    """Print the corpus figures and the problems found (shown with -s)."""
    wire_bytes = sum(len(wire) for wire in sent.values())
    print(f"\ncorpus: {len(messages)} messages, {len(expected)} distinct "
          f"wire forms, {wire_bytes:,} wire bytes sent "
          f"({sum(len(m.raw) for m in messages):,} bytes on disk)")
    for step, seconds in figures.items():
        print(f"  {step}: {seconds:.1f} s")
    if figures["send"]:
        print(f"  send rate: {len(sent) / figures['send']:.1f} messages/s, "
              f"{wire_bytes / figures['send'] / 1e6:.2f} MB/s")
    print(f"  Subject unreadable by Python's email package: {len(unparseable)}")
    for kind, entries in problems.items():
        print(f"PROBLEM {kind}: {len(entries)}")
        for entry in entries:
            print(f"  {entry}")


def describe(problems: dict[str, list[str]]) -> str:
    """Summarise problems for the assertion message, a few of each kind."""
    lines = []
    for kind, entries in problems.items():
        lines.append(f"{kind}: {len(entries)}")
        lines.extend(f"  {entry}" for entry in entries[:SHOWN_PER_PROBLEM])
    return "\n".join(lines)
