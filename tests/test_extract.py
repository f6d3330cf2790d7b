# Extraction reads what senders meant: encoded words, raw 8-bit headers,
# charsets that lie, hostile structure.

from __future__ import annotations

import json

import pytest

from indexer.extract import decode_text, decode_words, extract
from tests.conftest import CASES

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
