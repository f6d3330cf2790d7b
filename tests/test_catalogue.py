# The follower turns receipts into one document per message, owned by the
# union of its deliveries, and never indexes a message twice.

from __future__ import annotations

import datetime as dt

import pytest

from indexer.catalogue import Catalogue
from indexer.extraction.parallel import ExtractionPool
from indexer.follow import Follower
from tests.conftest import CASES
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.store import LocalWormStore

BOB = frozenset({"bob@example.com"})


@pytest.fixture
def vault(tmp_path):
    return Vault(LocalWormStore(tmp_path / "store"), LocalKeyFile.create(tmp_path / "k.json"),
                 OwnershipRules(domains=("example.com",)))


@pytest.fixture
def catalogue(tmp_path, engine):
    return Catalogue(tmp_path / "catalogue", engine)


@pytest.fixture
def follower(vault, catalogue, tmp_path):
    return Follower(vault, catalogue, tmp_path / "cursor")


def deliver(vault, name, *rcpts, sender="alice@example.com"):
    return vault.archive((CASES / name).read_bytes(), Envelope(sender, rcpts))


def test_b09_broken_parameter_is_archived_searchable_and_recorded(vault, catalogue, follower):
    receipt = deliver(vault, "B09.eml", "bob@example.com")
    follower.catch_up()

    results = catalogue.search("PELICAN-B09", owners=BOB)
    assert results.total == 1
    document = catalogue.document(results.hits[0].id)
    assert document["filename"] == "part-2.pdf"
    assert "content-type parameter name has no value" in document["defects"]
    assert vault.read_message(receipt.message_key) == (CASES / "B09.eml").read_bytes()


def test_b22_dates_are_indexed_in_utc(vault, catalogue, follower):
    deliver(vault, "B22.eml", "bob@example.com")
    follower.catch_up()
    [hit] = catalogue.search("*", owners=BOB).hits
    assert hit.date == dt.datetime(2025, 1, 7, 7, 30)
    assert catalogue.search("date:20250107", owners=BOB).total == 1
    assert catalogue.search("date:20250106", owners=BOB).total == 0


def test_second_delivery_adds_owners_to_the_one_document(vault, catalogue, follower):
    first = deliver(vault, "B16.eml", "bob@example.com")
    follower.catch_up()
    second = deliver(vault, "B16.eml", "carol@example.com")
    follower.catch_up()

    assert first.message_key == second.message_key
    assert catalogue.count() == 1
    [hit] = catalogue.search("AVOCET", owners=frozenset({"carol@example.com"})).hits
    assert catalogue.document(hit.id)["owners"] == [
        "alice@example.com", "bob@example.com", "carol@example.com"]
    assert catalogue.search("AVOCET", owners=BOB).total == 1


def test_reindexing_from_an_old_cursor_duplicates_nothing(vault, catalogue, follower):
    for name in ("B16.eml", "B09.eml", "B22.eml"):
        deliver(vault, name, "bob@example.com")
    assert follower.catch_up() == 3
    follower.cursor_path.unlink()
    restarted = Follower(vault, Catalogue(catalogue.path, catalogue.engine_name),
                         follower.cursor_path)
    assert restarted.catch_up() == 3
    assert restarted.catch_up() == 0
    assert catalogue.count() == 3
    assert len(catalogue.document(catalogue.search("AVOCET", owners=BOB).hits[0].id)["receipts"]) == 1


def test_owner_filter_applies_to_every_query(vault, catalogue, follower):
    deliver(vault, "B16.eml", "bob@example.com")
    follower.catch_up()
    nobody = frozenset({"mallory@example.com"})
    for query in ("*", "AVOCET", "owners:bob@example.com", "from:prizes", "NOT zzz"):
        assert catalogue.search(query, owners=nobody).total == 0, query
    assert catalogue.search("*", owners=frozenset()).total == 0


def test_hostile_structure_is_indexed_not_fatal(vault, catalogue, follower):
    # Thousands of encoded words in To and multipart nesting deeper than
    # Python's stack: both once stopped extraction with RecursionError.
    junk = "\r\n\t=?utf-8?Q?date=3E2017-08-20T10:08:28.617=3C/pr?=" * 3000
    nested = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'
                     for i in range(3000))
    raw = (f"From: alice@example.com\r\nTo: bob@example.com,{junk}\r\n"
           f"Subject: GANNET deep\r\nMIME-Version: 1.0\r\n{nested}"
           "Content-Type: text/plain\r\n\r\nGANNET body\r\n").encode()
    vault.archive(raw, Envelope("alice@example.com", ("bob@example.com",)))
    deliver(vault, "B16.eml", "bob@example.com")
    assert follower.catch_up() == 2
    assert catalogue.search("subject:GANNET", owners=BOB).total == 1
    assert catalogue.search("AVOCET", owners=BOB).total == 1


def test_a_message_that_fails_to_extract_is_indexed_by_its_envelope(vault, catalogue, tmp_path,
                                                                    monkeypatch):
    import indexer.extraction.parallel as parallel

    deliver(vault, "B09.eml", "bob@example.com")
    deliver(vault, "B16.eml", "bob@example.com")
    real_extract = parallel.extract
    # A bug cannot be planted in worker processes: extract in this one.
    follower = Follower(vault, catalogue, tmp_path / "cursor", pool=ExtractionPool(workers=0))

    def extract_fails_on_b09(raw, limits):
        if b"PELICAN-B09" in raw:
            raise RuntimeError("simulated extraction bug")
        return real_extract(raw, limits)

    monkeypatch.setattr(parallel, "extract", extract_fails_on_b09)
    assert follower.catch_up() == 2
    assert catalogue.search("AVOCET", owners=BOB).total == 1
    # Its words are lost to the bug, but its envelope still finds it.
    assert catalogue.search("PELICAN", owners=BOB).total == 0
    assert catalogue.search("from:alice@example.com", owners=BOB).total == 2


def test_receipt_that_becomes_visible_late_is_still_indexed(vault, catalogue, follower, monkeypatch):
    # Concurrent deliveries: a receipt keyed a few seconds before the
    # cursor appears only after the follower has moved past it.
    from vault import ingest
    from vault.receipts import receipt_key

    deliver(vault, "B16.eml", "bob@example.com")
    assert follower.catch_up() == 1
    late = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    monkeypatch.setattr(ingest, "receipt_key", lambda _: receipt_key(late))
    deliver(vault, "B09.eml", "bob@example.com")

    assert follower.catch_up() == 1
    assert catalogue.search("PELICAN-B09", owners=BOB).total == 1
    assert follower.catch_up() == 0


def test_queries_name_user_fields_only_and_cannot_scan_everything(vault, catalogue, follower):
    from indexer import QueryError

    deliver(vault, "B16.eml", "bob@example.com")
    follower.catch_up()
    assert catalogue.search("AVOC*", owners=BOB).total == 1
    assert catalogue.search("AV* AVOC*", owners=BOB).total == 1
    # Internal fields are not addressable: these are just words.
    assert catalogue.search("owners:bob@example.com", owners=BOB).total == 0
    assert catalogue.search("preview:AVOCET", owners=BOB).total == 0
    for query in ("*VOCET", "?VOCET", "a* AVOC*",
                  " OR ".join(f"wo{n}*" for n in range(9))):
        with pytest.raises(QueryError):
            catalogue.search(query, owners=BOB)


def test_words_inside_an_attachment_are_found_with_attachment_not_filename(vault, catalogue, follower):
    import io

    import docx

    document = docx.Document()
    document.add_paragraph("The merger code name is CORMORANT-44.")
    buffer = io.BytesIO()
    document.save(buffer)
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "bob@example.com"
    message["Subject"] = "plans"
    message.set_content("See the attached plan.")
    message.add_attachment(buffer.getvalue(), maintype="application",
                           subtype="vnd.openxmlformats-officedocument.wordprocessingml.document",
                           filename="plan.docx")
    vault.archive(message.as_bytes(), Envelope("alice@example.com", ("bob@example.com",)))
    follower.catch_up()
    assert catalogue.search("attachment:CORMORANT-44", owners=BOB).total == 1
    assert catalogue.search("CORMORANT-44", owners=BOB).total == 1
    assert catalogue.search("filename:CORMORANT-44", owners=BOB).total == 0
    assert catalogue.search("filename:plan.docx", owners=BOB).total == 1


def test_a_japanese_word_inside_a_sentence_is_found(vault, catalogue, follower):
    # Japanese has no spaces: the subject below is one \w+ run of 40
    # characters.  Both engines index each character and search a run as
    # a phrase, so a word inside the sentence is found, in order only.
    subject = "東京本社の定例会議は来週の月曜日に延期されましたのでご確認ください"
    raw = ("From: alice@example.com\r\nTo: bob@example.com\r\n"
           "Subject: =?UTF-8?B?" + __import__("base64").b64encode(subject.encode()).decode()
           + "?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "see subject\r\n").encode()
    vault.archive(raw, Envelope("alice@example.com", ("bob@example.com",)))
    follower.catch_up()
    assert catalogue.search(f"subject:{subject}", owners=BOB).total == 1
    assert catalogue.search("定例会議", owners=BOB).total == 1
    assert catalogue.search("subject:月曜日", owners=BOB).total == 1
    assert catalogue.search("会議定例", owners=BOB).total == 0
    assert catalogue.search("定例会談", owners=BOB).total == 0
    [hit] = catalogue.search("定例会議", owners=BOB).hits
    assert hit.subject == subject


def test_receipts_of_one_message_in_consecutive_batches_make_one_document(vault, catalogue,
                                                                          tmp_path):
    # Batches of one receipt: the second batch is read and extracted while
    # the first commits, so only the writing batch can know the message
    # is already indexed.
    for recipient in ("bob@example.com", "carol@example.com", "dave@example.com"):
        deliver(vault, "B16.eml", recipient)
        deliver(vault, "B22.eml", recipient)
    follower = Follower(vault, catalogue, tmp_path / "cursor", batch_receipts=1)
    assert follower.catch_up() == 6
    assert catalogue.count() == 2
    [hit] = catalogue.search("AVOCET", owners=frozenset({"dave@example.com"})).hits
    document = catalogue.document(hit.id)
    assert len(document["receipts"]) == 3
    assert document["owners"] == ["alice@example.com", "bob@example.com",
                                  "carol@example.com", "dave@example.com"]


def test_a_batch_that_fails_to_commit_stops_the_batches_after_it(vault, catalogue, tmp_path,
                                                                 monkeypatch):
    names = ("B16.eml", "B09.eml", "B22.eml", "B13.eml")
    for name in names:
        deliver(vault, name, "bob@example.com")
    follower = Follower(vault, catalogue, tmp_path / "cursor", batch_receipts=1)
    written = []
    real_batch = Catalogue.batch

    def failing_second(self):
        written.append(len(written) + 1)
        if len(written) == 2:
            raise OSError("disk full")
        return real_batch(self)

    monkeypatch.setattr(Catalogue, "batch", failing_second)
    with pytest.raises(OSError, match="disk full"):
        follower.catch_up()
    # The first batch is indexed and the cursor on it; the third, already
    # extracted, was never written, so the cursor cannot pass the second.
    assert catalogue.count() == 1
    assert follower.cursor == sorted(vault.receipts_after(""))[0]
    monkeypatch.setattr(Catalogue, "batch", real_batch)
    assert follower.catch_up() == 3
    assert catalogue.count() == 4


def test_words_beside_cjk_and_with_underscores_are_found(vault, catalogue, follower):
    # CJK characters next to Latin letters and digits, with no space
    # between, are still words of their own; an identifier with an
    # underscore is found as written.
    raw = ("From: alice@example.com\r\nTo: bob@example.com\r\nSubject: build_number 42\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "Q3予算2025年度report_final\r\n").encode()
    vault.archive(raw, Envelope("alice@example.com", ("bob@example.com",)))
    follower.catch_up()
    for found in ("build_number", "subject:build_number", "予算", "年度", "Q3", "report_final"):
        assert catalogue.search(found, owners=BOB).total == 1, found
    for missing in ("算予", "build_numbers", "final_report"):
        assert catalogue.search(missing, owners=BOB).total == 0, missing


def test_unicode_spellings_of_a_word_and_invisible_characters_do_not_hide_it(
        vault, catalogue, follower):
    # A sender could hide a word from compliance search with a zero-width
    # joiner or a soft hyphen inside it, or write it in another Unicode
    # spelling of the same letters; each is found by the plain word, and a
    # query written the other way finds the plain word too.
    body = ("in\u200dvoice pay\u200bment con\u00adtract re\u0301sume\u0301 "
            "\uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 \ufb01nance Stra\u00dfe "
            "\uff76\uff80\uff76\uff85 plainword")
    raw = ("From: alice@example.com\r\nTo: bob@example.com\r\nSubject: hidden\u2060words\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           f"{body}\r\n").encode()
    vault.archive(raw, Envelope("alice@example.com", ("bob@example.com",)))
    follower.catch_up()
    for found in ("invoice", "payment", "contract", "r\u00e9sum\u00e9", "fullwidth",
                  "finance", "strasse", "STRASSE", "stra\u00dfe", "\u30ab\u30bf\u30ab\u30ca",
                  "subject:hiddenwords", "plain\u200bword", "re\u0301sume\u0301",
                  '"payment contract"'):
        assert catalogue.search(found, owners=BOB).total == 1, found
    for missing in ("voice", "ment", "tract", "hidden"):
        assert catalogue.search(missing, owners=BOB).total == 0, missing
    # What is shown is what was written.
    (hit,) = catalogue.search("invoice", owners=BOB).hits
    assert hit.subject == "hidden\u2060words"


def test_an_undecodable_envelope_address_neither_stops_indexing_nor_is_lost(vault, catalogue,
                                                                            follower):
    # Receipts written before the receiver refused such addresses keep the
    # bytes that are not UTF-8 as lone surrogates; tantivy refused the
    # whole batch for one, and every batch after it.
    deliver(vault, "B16.eml", "b\udcffob@example.com", "bob@example.com",
            sender="j\udcfcrgen@example.net")
    deliver(vault, "B22.eml", "bob@example.com")
    assert follower.catch_up() == 2
    assert catalogue.count() == 2
    [hit] = catalogue.search("AVOCET", owners=BOB).hits
    document = catalogue.document(hit.id)
    assert "j\ufffdrgen@example.net" in document["from"]
    assert "b\ufffdob@example.com" in document["owners"]
    assert catalogue.search("from:rgen", owners=BOB).total == 1
