# parse_message must give exactly what the standard library's parser gives,
# on every message of the corpus and of the fixtures, and on the header
# blocks that decide between its shortcut and the full parse.

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest

from indexer.extraction import parsing
from indexer.extraction.parsing import parse_message
from tests.corpus import iter_messages, wire_form

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def standard(raw: bytes) -> Message:
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def assert_same(raw: bytes) -> None:
    ours, theirs = parse_message(raw), standard(raw)
    for mine, expected in zip(ours.walk(), theirs.walk(), strict=True):
        assert mine.get_unixfrom() == expected.get_unixfrom()
        assert mine._headers == expected._headers  # the raw (name, value) list
        assert [type(d) for d in mine.defects] == [type(d) for d in expected.defects]
        assert (mine.preamble, mine.epilogue) == (expected.preamble, expected.epilogue)
        if not expected.is_multipart():
            assert mine.get_payload() == expected.get_payload()


SHORTCUT = [
    b"From: a@example.com\r\nSubject: hi\r\n\r\nbody line\r\n.\r\nmore\r\n",
    b"From: a@example.com\nSubject: folded\n  on two lines\n\nLF only\n",
    b"Subject: no final newline\r\n\r\nlast line",
    b"Subject: empty body\r\n\r\n",
    b"Subject: mixed\n\r\nbody starts after LF CR LF\r\n",
    b"From sender@example.com Thu Jan  1 00:00:00 2026\nSubject: envelope line\n\nbody\n",
    b"Subject: body holds\r\n\r\n\r\nleading blank lines and a bare \r in it\r\n",
    b"Subject: 8-bit \xe9t\xe9\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n"
    b"\xe9\xff\x00\r\n",
    b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n",
    b"Content-Type: text/plain; charset=\"unterminated\r\n\r\nbody\r\n",
]

FULL = [
    # A line that is not a header ends the block: the feed parser records a
    # defect and reads it as the body's first line.
    b"Subject: hi\r\nnot a header line\r\nX-After: 1\r\n\r\nbody\r\n",
    # A bare CR splits lines for the feed parser.
    b"Subject: bare\rX-Hidden: 1\r\n\r\nbody\r\n",
    b"Subject: bare CR at the end\r\r\nbody\r\n",
    # A From_ line inside or at the end of the block.
    b"Subject: hi\r\nFrom someone else\r\n\r\nbody\r\n",
    b"Subject: hi\r\nFrom x\r\nTo: b@example.com\r\n\r\nbody\r\n",
    # No blank line at all; a blank line first.
    b"Subject: only headers\r\n",
    b"\r\n\r\nbody without headers\r\n",
    b"",
    b"\n",
    # Parts the feed parser parses further.
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b--\r\n",
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n",
    b"Content-Type: Multipart/Alternative; boundary=\"x\"\r\n\r\n--x\r\n\r\na\r\n--x--\r\n",
    b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
]


@pytest.mark.parametrize("raw", SHORTCUT + FULL)
def test_the_same_message_as_the_standard_parser(raw):
    assert_same(raw)


@pytest.mark.parametrize("raw", SHORTCUT)
def test_single_part_mail_takes_the_shortcut(raw, monkeypatch):
    whole = []
    monkeypatch.setattr(parsing, "_parse_fully", lambda data: whole.append(data))
    parse_message(raw)
    assert whole == []


@pytest.mark.parametrize("raw", FULL)
def test_anything_else_is_parsed_whole(raw, monkeypatch):
    whole = []
    real = parsing._parse_fully
    monkeypatch.setattr(parsing, "_parse_fully",
                        lambda data: whole.append(data) or real(data))
    parse_message(raw)
    assert whole == [raw]


def test_fixtures_parse_the_same():
    files = sorted(path for path in FIXTURES.rglob("*") if path.suffix == ".eml")
    assert len(files) >= 20
    for path in files:
        assert_same(path.read_bytes())


def test_corpus_parses_the_same(corpus_dir):
    count = 0
    for message in iter_messages(corpus_dir):
        for raw in {message.raw, wire_form(message.raw)}:
            assert_same(raw)
        count += 1
    assert count > 1000
