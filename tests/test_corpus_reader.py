"""The corpus reader: wire form, mbox framing, and what counts as a message."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from tests.corpus import (
    BULK_MANIFEST,
    CorpusError,
    iter_bulk,
    iter_messages,
    skip_reason,
    skipped_files,
    split_mbox,
    unquote_mboxrd,
    wire_form,
)

MIMEKIT_MBOX = "jstedfast-mimekit/mbox"


@pytest.mark.parametrize(("raw", "wire"), [
    (b"A: 1\n\nbody\n", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\r\rbody\r", b"A: 1\r\n\r\nbody\r\n"),
    (b"A: 1\r\n\r\nbody\r\n", b"A: 1\r\n\r\nbody\r\n"),
    (b"a\r\r\nb\n\rc", b"a\r\n\r\nb\r\n\r\nc\r\n"),
    (b"no ending", b"no ending\r\n"),
    (b".\n..x\n", b".\r\n..x\r\n"),
    (b"", b"\r\n"),
    (b" ", b" \r\n"),
])
def test_wire_form_ends_every_line_in_crlf(raw, wire):
    # RFC 5321 §2.3.8: in DATA a line ends in CRLF, whatever the file used.
    assert wire_form(raw) == wire
    assert wire_form(wire) == wire


def test_split_mbox_drops_from_lines_and_their_separators():
    # The From_ line and the line ending before the next one are framing.
    mbox = (b"From a@example.net Mon Jan  1 00:00:00 2024\nSubject: one\n\n"
            b"first\n\nFrom b Mon Jan  1 00:00:01 2024\nSubject: two\n\n"
            b"second\n\n")
    assert split_mbox(mbox) == [
        (0, b"Subject: one\n\nfirst\n"),
        (mbox.index(b"From b"), b"Subject: two\n\nsecond\n"),
    ]


def test_split_mbox_keeps_a_last_line_without_blank_separator():
    # At the end of the file only a trailing blank line is framing.
    assert split_mbox(b"From -\nA: 1\n\nx\n") == [(0, b"A: 1\n\nx\n")]
    assert split_mbox(b"From -\nA: 1\n\nx") == [(0, b"A: 1\n\nx")]


def test_split_mbox_reads_crlf_mailboxes_and_skips_a_byte_order_mark():
    mbox = b"\xef\xbb\xbfFrom -\r\nA: 1\r\n\r\nx\r\n\r\nFrom -\r\nA: 2\r\n\r\n"
    second = mbox.index(b"From -", 4)
    assert split_mbox(mbox) == [(3, b"A: 1\r\n\r\nx\r\n"), (second, b"A: 2\r\n")]


def test_split_mbox_splits_at_from_lines_without_blank_line_before():
    # mboxo: any line starting "From " starts a message (as MimeKit reads it).
    messages = split_mbox(b"From -\nA: 1\n\nx\nFrom -\nA: 2\n\ny\n")
    assert [message for _, message in messages] == [b"A: 1\n\nx", b"A: 2\n\ny\n"]


def test_split_mbox_refuses_data_that_is_no_mailbox():
    with pytest.raises(CorpusError):
        split_mbox(b"Subject: not a mailbox\n\n")


def test_unquote_mboxrd_removes_one_quote_from_quoted_from_lines():
    quoted = b">From a\n>>From b\n> From c\nx >From d\n>Fromage\n"
    assert unquote_mboxrd(quoted) == b"From a\n>From b\n> From c\nx >From d\n>Fromage\n"


@pytest.mark.parametrize(("path", "kind", "raw", "reason"), [
    ("mime4j/testmsgs/x.msg", "message", b"Subject: s\n\n", None),
    ("mime4j/testmsgs/x.out", "other", b"Subject: s\n\n", "expected output"),
    ("mime4j/testmsgs/x_decoded_1_2.txt", "message", b"x", "expected output"),
    ("mimekit/mbox/content-length-summary.txt", "message", b"From -\n",
     "expected output"),
    ("mimekit/tnef/winmail/Untitled Attachment.1", "message", b"A: b\n",
     "reference file"),
    ("zbateson/emails/files/aaa.txt", "message", b"x", "reference file"),
    ("mikel/attachments/test.pdf", "other", b"%PDF", "reference file"),
    ("notmuch/README", "message", b"x", "licence or readme"),
    ("stalwart/eml/malformed/COPYING", "message", b"x", "licence or readme"),
    ("extractor/unicode.msg", "other", bytes.fromhex("d0cf11e0a1b11ae1"),
     "Outlook OLE compound file"),
    ("mikel/emails/sample_output_multipart", "message", b"", "empty file"),
    ("tnefparse/minimal.tnef", "other", b"\x78\x9f", "catalogue kind other"),
    ("notmuch/default/cur/01:2,", "message", b"From: a\n\n", None),
])
def test_skip_reason_names_files_that_are_not_messages(path, kind, raw, reason):
    assert skip_reason({"path": path, "kind": kind}, raw) == reason


@pytest.mark.corpus
def test_bulk_split_reproduces_every_manifest_row(corpus_dir):
    # SOURCES.md: a correct mboxrd reader reproduces every length and sha256.
    with open(corpus_dir / BULK_MANIFEST, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    messages = list(iter_bulk(corpus_dir))
    assert len(messages) == len(rows) == 1506
    for (name, raw), row in zip(messages, rows, strict=True):
        assert name == f"bulk/usrp-users/{row['mbox']}#{row['index']}"
        assert hashlib.sha256(raw).hexdigest() == row["sha256"], name


@pytest.mark.corpus
def test_mbox_split_agrees_with_mimekit_offsets(corpus_dir):
    # MimeKit's own offsets: each message runs from after its From_ line to
    # the line ending before the next one.
    folder = corpus_dir / MIMEKIT_MBOX
    offsets = json.loads((folder / "content-length.unix-offsets.json").read_text())
    data = (folder / "content-length.mbox.txt").read_bytes()
    expected = [(entry["mboxMarkerOffset"],
                 data[entry["beginOffset"]:entry["endOffset"]])
                for entry in offsets]
    assert split_mbox(data) == expected


@pytest.mark.corpus
def test_unquoted_from_lines_start_messages_in_mboxo(corpus_dir):
    # MimeKit's TestUnmungedFromLines expects four messages in this file.
    data = (corpus_dir / MIMEKIT_MBOX / "unmunged.mbox.txt").read_bytes()
    markers = [data[offset:data.index(b"\n", offset)]
               for offset, _ in split_mbox(data)]
    assert markers == [b"From -", b"From Russia with love"] * 2


@pytest.mark.corpus
def test_corpus_messages_have_unique_names_and_exclude_skipped_files(corpus_dir):
    messages = list(iter_messages(corpus_dir))
    names = [name for name, _ in messages]
    assert len(names) == len(set(names))
    assert all(raw for _, raw in messages)
    skipped = {path for path, _ in skipped_files(corpus_dir)}
    assert not skipped & {name.partition("#")[0] for name in names}
