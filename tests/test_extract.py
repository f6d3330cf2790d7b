# Extraction reads what senders meant: encoded words, raw 8-bit headers,
# charsets that lie, hostile structure.

from __future__ import annotations

import base64
import json
import time

import pytest

from indexer.extract import PARTIAL, Extract, decode_base64, decode_text, decode_words, extract
from indexer.extraction.attachments import AttachmentReader
from indexer.extraction.reading import DEFAULT_LIMITS
from tests.conftest import CASES
from tests.corpus import iter_messages, wire_form

# RFC 2047 says unencoded header text is ASCII; m1011 sends a raw UTF-7
# Subject that only its body's charset explains.  Reading headers by the
# body's charset would garble ordinary subjects ("C++ meeting-notes").
UNENCODED_UTF7_SUBJECT = {"m1011"}


def test_adjacent_encoded_words_join_without_space():
    assert decode_words("=?iso-8859-2?q?T=C1J?= =?iso-8859-1?q?Vargay_P=E9ter?=") == "TÁJVargay Péter"
    assert decode_words("a =?utf-8?q?b?= c") == "a b c"


def test_raw_latin1_inside_an_encoded_word_is_decoded():
    raw = b"Subject: =?iso-8859-1?Q?Die_Hasen_und_die_Fr\xf6sche?=\r\n\r\nx\r\n"
    assert extract(raw).subject == "Die Hasen und die Frösche"


def test_one_bad_sequence_does_not_lose_the_declared_charset():
    text = "我把镜头拉近些".encode("gb2312") + b"\xff " + "你们".encode("gb2312")
    assert decode_text(text, "gb2312").startswith("我把镜头拉近些")
    assert decode_text(text, "gb2312").endswith("你们")


def test_raw_utf8_header_is_read_as_utf8():
    assert extract((CASES / "B16.eml").read_bytes()).sender == (
        "Sweepstakes Alert\u2013Prize Desk <prizes@example.com>")


def test_subjects_match_the_upstream_expectations(corpus_dir):
    checked, wrong = 0, []
    zbateson = json.loads((corpus_dir / "zbateson-mail-mime-parser/expected/"
                           "EmailFunctionalTest.expected.json").read_text())["expected"]
    for key, expected in zbateson.items():
        path = corpus_dir / f"zbateson-mail-mime-parser/emails/{key}.txt"
        if "Subject" in expected and path.exists() and key not in UNENCODED_UTF7_SUBJECT:
            checked += 1
            got = " ".join(extract(path.read_bytes()).subject.split())
            if got != " ".join(expected["Subject"].split()):
                wrong.append((key, got, expected["Subject"]))
    piler = json.loads((corpus_dir / "jsuto-piler/expected/"
                        "check_parser.expected.json").read_text())["expected"]
    for expected in piler:
        path = corpus_dir / "jsuto-piler/unit_tests" / expected["file"]
        if path.exists():
            checked += 1
            got = extract(path.read_bytes()).subject.strip()
            if got != expected["subject"].strip():
                wrong.append((expected["file"], got, expected["subject"]))
    assert checked >= 60
    assert wrong == []


@pytest.mark.parametrize("name", ["B09.eml", "B13.eml", "B16.eml", "B22.eml"])
def test_case_files_extract_without_defect_loss(name):
    found = extract((CASES / name).read_bytes())
    assert found.subject.startswith(name[:3])
    assert found.body


@pytest.mark.parametrize("raw", [
    # A raw 8-bit Content-Disposition arrives as a Header object.
    b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
    b"Content-Disposition: attachment; filename=\"\xd1\x84\xd0\xb0\xd0\xb9\xd0\xbb.txt\"\r\n\r\ntext\r\n",
    b"Subject: x\r\nDate: Fri, 31 Dec 9999 23:00:00 -0500\r\n\r\ntext\r\n",
    b"Subject: x\r\nContent-Type: text/plain; charset=punycode\r\n\r\na.b\r\n",
    b"Subject: x\r\nContent-Type: text/plain; charset=idna\r\n\r\nxn--a-\r\n",
    b"Subject: x\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\n\xff\r\n",
], ids=["8bit-disposition", "year-9999", "punycode", "idna", "unknown-charset"])
def test_inputs_that_once_raised_are_read(raw):
    found = extract(raw)
    assert found.subject == "x"
    assert not any("stopped early" in defect for defect in found.defects)


def test_8bit_attachment_name_is_decoded():
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
           b"Content-Disposition: attachment; filename=\"\xd1\x84\xd0\xb0\xd0\xb9\xd0\xbb.txt\"\r\n\r\nt\r\n")
    assert extract(raw).attachments == ["файл.txt"]


@pytest.mark.parametrize("subject, expected", [
    ("=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=", "日本語"),
    ("=?KOI8-R?B?8NLJ18XU?= =?koi8-r?q?_=CD=C9=D2?=", "Привет мир"),
    ("=?windows-1252?Q?Caf=E9_=96_=80100_=93quoted=94?=", "Café – €100 “quoted”"),
    ("=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=", "Grüße aus Köln"),
    ("=?utf-8?q?=E2=9C=94_done?=", "✔ done"),
], ids=["iso-2022-jp", "koi8-r", "windows-1252", "utf-8-b", "utf-8-q"])
def test_encoded_word_subjects_decode_to_their_words(subject, expected):
    raw = f"Subject: {subject}\r\nFrom: a@example.com\r\n\r\nbody\r\n".encode()
    assert extract(raw).subject == expected


def test_encoded_word_subjects_of_corpus_samples_decode(corpus_dir):
    samples = {
        "jstedfast-mimekit/messages/japanese.txt": "日本語メールテスト (testing Japanese emails)",
        "mikel-mail/emails/multi_charset/japanese_iso_2022.eml": "まみむめも",
        "mikel-mail/emails/attachment_emails/attachment_with_quoted_filename.eml":
            "Eelanalüüsi päring",
    }
    for path, subject in samples.items():
        assert extract((corpus_dir / path).read_bytes()).subject == subject, path


def test_iso_2022_jp_body_decodes_declared_or_not(corpus_dir):
    found = extract((corpus_dir / "mikel-mail/emails/multi_charset/japanese_iso_2022.eml")
                    .read_bytes())
    assert "すみません" in found.body
    undeclared = b"Subject: x\r\n\r\n" + "お知らせ".encode("iso2022_jp") + b"\r\n"
    assert "お知らせ" in extract(undeclared).body


@pytest.mark.parametrize("charset_parameter", [b"", b"; charset=us-ascii", b"; charset=utf-8"],
                         ids=["undeclared", "declared-ascii", "declared-utf8"])
def test_8bit_body_in_another_charset_is_decoded_by_detection(charset_parameter):
    # Undeclared or wrongly declared KOI8-R is read, not dropped or mangled.
    text = "Уважаемые коллеги, совещание переносится на пятницу. С уважением, бухгалтерия."
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain" + charset_parameter
           + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + text.encode("koi8-r") + b"\r\n")
    assert "совещание переносится на пятницу" in extract(raw).body


def test_declared_charset_that_mostly_works_is_kept_over_detection():
    text = ("我把镜头拉近些，你们看清楚了吗？" * 4).encode("gb2312")
    raw = (b"Subject: x\r\nContent-Type: text/plain; charset=gb2312\r\n\r\n"
           + text + b"\xff " + "你们".encode("gb2312") + b"\r\n")
    body = extract(raw).body
    assert body.startswith("我把镜头拉近些")
    assert "你们\r\n" in body


def test_rfc2231_non_ascii_file_names_are_decoded(corpus_dir):
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment;\r\n"
           b" filename*0*=UTF-8''%D0%9E%D1%82%D1%87%D1%91%D1%82%20;\r\n"
           b" filename*1*=%E2%84%96%207.txt\r\n\r\nx\r\n"
           b"--b\r\nContent-Type: application/pdf;\r\n name*=iso-8859-1'de'Gr%FC%DFe.pdf\r\n\r\n"
           b"x\r\n--b--\r\n")
    assert extract(raw).attachments == ["Отчёт № 7.txt", "Grüße.pdf"]
    samples = {
        "zbateson-mail-mime-parser/emails/m3004.txt": "HasenundFrösche.txt",
        "apache-james-mime4j/mimetools-testmsgs/attachment-filename-encoding-UTF8.msg":
            "attachment.äöü",
    }
    for path, name in samples.items():
        assert name in extract((corpus_dir / path).read_bytes()).attachments, path


def test_b13_base64_of_separately_padded_chunks_decodes_in_full():
    encoded = b"UHJvamVjdCBzdGF0dXM=\nOiBtZXJnZXIgY29kZSBuYW1lIEJMVUVCSVJELUIxMyBjb25maXJtZWQuCg==\n"
    assert len(decode_base64(encoded)) == 57
    found = extract((CASES / "B13.eml").read_bytes())
    assert found.attachments == ["note.txt"]
    assert "BLUEBIRD-B13" in found.attachment_text
    assert found.attachment_text == (
        "Project status: merger code name BLUEBIRD-B13 confirmed.\n")


def test_lenient_base64_matches_the_standard_decoder_on_clean_input():
    payload = bytes(range(256)) * 3
    for size in range(0, 70):
        assert decode_base64(base64.encodebytes(payload[:size])) == payload[:size]


FORWARDED = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: Fwd: plans\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
    b"--outer\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
    b"--outer\r\nContent-Type: message/rfc822\r\n"
    b"Content-Disposition: attachment; filename=\"plans.eml\"\r\n\r\n"
    b"From: =?utf-8?q?Ren=C3=A9e?= <renee@example.org>\r\nTo: alice@example.com\r\n"
    b"Subject: =?utf-8?q?Projet_HIRONDELLE?=\r\nDate: Mon, 06 Jan 2025 09:00:00 +0000\r\n\r\n"
    b"The nested word is CORMORANT.\r\n"
    b"--outer--\r\n")


def test_word_in_a_forwarded_message_is_found_with_its_headers():
    found = extract(FORWARDED)
    assert found.subject == "Fwd: plans"
    assert "CORMORANT" in found.body
    assert "Subject: Projet HIRONDELLE" in found.body
    assert "From: Renée <renee@example.org>" in found.body
    assert "plans.eml" in found.attachments


def test_nested_messages_in_the_corpus_are_read(corpus_dir):
    # mime4j's attached message is base64-encoded; piler's is a real forward.
    encoded = extract((corpus_dir / "apache-james-mime4j/testmsgs/"
                       "base64encoded-rfc822message.msg").read_bytes())
    assert "Text body" in encoded.body
    forwarded = extract((corpus_dir / "jsuto-piler/test_files/2.eml").read_bytes())
    assert "Subject: Antw: Wichtig!" in forwarded.body
    assert "Zeilenumbrüche" in forwarded.body


def test_messages_nested_past_the_depth_bound_stop_with_a_defect():
    raw = b"From: a@example.com\r\nSubject: level 12\r\n\r\nINNERMOST\r\n"
    for level in range(11, -1, -1):
        raw = (f"Subject: level {level}\r\nMIME-Version: 1.0\r\n"
               "Content-Type: message/rfc822\r\n\r\n").encode() + raw
    found = extract(raw)
    assert "Subject: level 8" in found.body
    assert "INNERMOST" not in found.body
    assert any(defect.startswith(PARTIAL) and "nested more than 8" in defect
               for defect in found.defects)


def test_a_reader_that_fails_leaves_a_partial_defect_not_an_error(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated reader bug")

    monkeypatch.setattr(AttachmentReader, "read", broken)
    found = extract((CASES / "B13.eml").read_bytes())
    assert found.body == "See attached note."
    assert found.attachments == ["note.txt"]
    assert f"{PARTIAL} part 2: unreadable (RuntimeError)" in found.defects


def test_extract_never_raises_on_truncated_or_corrupted_mail():
    # Every prefix and a byte flipped every few bytes: a message that is
    # cut short or damaged in transit is still read as far as it goes.
    raw = FORWARDED + (CASES / "B13.eml").read_bytes()
    for end in range(0, len(raw), 7):
        assert isinstance(extract(raw[:end]), Extract)
    for position in range(0, len(raw), 5):
        damaged = raw[:position] + bytes([raw[position] ^ 0xFF]) + raw[position + 1:]
        assert isinstance(extract(damaged), Extract)


@pytest.mark.corpus
@pytest.mark.timeout(600)
def test_every_corpus_message_extracts_whole_and_in_bounded_time(corpus_dir):
    # No message stops extraction early, and none takes longer than the
    # bound on one part; broken attachments are the only partial readings.
    slow, stopped, partial = [], [], 0
    for message in iter_messages(corpus_dir):
        started = time.monotonic()
        found = extract(wire_form(message.raw))
        if time.monotonic() - started > DEFAULT_LIMITS.part_seconds:
            slow.append(message.name)
        stopped += [message.name for defect in found.defects if "stopped early" in defect]
        partial += any(defect.startswith(PARTIAL) for defect in found.defects)
    assert slow == []
    assert stopped == []
    assert partial < 30


def test_html_blocks_cells_and_line_breaks_keep_words_apart():
    # Stripping tags alone ran "<h1>Spring catalogue</h1><p>Office" into
    # the word "catalogueOffice", which no search finds.
    raw = (b"From: a@example.org\r\nSubject: offer\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b"<html><head><style>p { color: red }</style></head><body>"
           b"<h1>Spring catalogue</h1><p>Office chairs</p><div>Desks</div>"
           b"<ul><li>Lamps</li><li>Rugs</li></ul>Line one<br>Line two<BR/>end"
           b"<table><tr><td>Price</td><td>Stock</td></tr></table>"
           b"<p>Tom &amp; <b>Jer</b>ry</p><script>track()</script></body></html>\r\n")
    words = extract(raw).body.split()
    for word in ("catalogue", "Office", "chairs", "Desks", "Lamps", "Rugs", "one",
                 "Line", "two", "end", "Price", "Stock", "Jerry"):
        assert word in words
    assert "catalogueOffice" not in extract(raw).body
    assert "track" not in extract(raw).body
    assert "color" not in extract(raw).body
