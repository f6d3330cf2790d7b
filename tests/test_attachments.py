# Attachments are searched by their text and their names, within bounds of
# time and memory that no hostile file can break.

from __future__ import annotations

import io
import socket
import struct
import time
import zipfile
from email.message import EmailMessage

import docx
import openpyxl
import pytest
from pptx import Presentation

from indexer.extract import PARTIAL, extract
from indexer.extraction.attachments import IN_PROCESS_BYTES
from indexer.extraction.documents import calendar_text
from indexer.extraction.reading import Limits
from indexer.extraction.sandbox import CallTimeoutError, Sandbox, SandboxError
from tests.conftest import require

OOXML = "application/vnd.openxmlformats-officedocument"
ODF = "urn:oasis:names:tc:opendocument:xmlns"


@pytest.fixture
def sandbox():
    """A sandbox of its own, so that killed workers do not touch the shared one."""
    own = Sandbox(workers=2)
    yield own
    own.close()


def message_with(*attachments: tuple[str, str, bytes], body: str = "See attached.",
                 subject: str = "attachments") -> bytes:
    """Return a message carrying each (file name, content type, content)."""
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "bob@example.com"
    message["Subject"] = subject
    message.set_content(body)
    for name, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def tiny_pdf(lines: list[str]) -> bytes:
    """Return a one-page PDF showing ``lines`` in Helvetica, xref and all."""
    content = "BT /F1 12 Tf 72 720 Td " + " ".join(
        f"({line}) Tj 0 -14 Td" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n"
            f"startxref\n{xref}\n%%EOF\n").encode()
    return out


def word_document(*paragraphs: str, cell: str = "", header: str = "") -> bytes:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if cell:
        document.add_table(rows=2, cols=2).cell(1, 1).text = cell
    if header:
        document.sections[0].header.paragraphs[0].text = header
    return _saved(document)


def workbook(cells: dict[str, object], title: str = "Sheet") -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = title
    for reference, value in cells.items():
        sheet[reference] = value
    return _saved(book)


def presentation(title: str, notes: str) -> bytes:
    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = title
    slide.notes_slide.notes_text_frame.text = notes
    return _saved(deck)


def opendocument(body: str, mimetype: str, doctype: str = "") -> bytes:
    content = (f'<?xml version="1.0"?>{doctype}<office:document-content '
               f'xmlns:office="{ODF}:office:1.0" xmlns:text="{ODF}:text:1.0" '
               f'xmlns:table="{ODF}:table:1.0"><office:body>{body}</office:body>'
               "</office:document-content>")
    return zipped({"mimetype": mimetype.encode(), "content.xml": content.encode()})


def zipped(members: dict[str, bytes], *, encrypted: tuple[str, ...] = ()) -> bytes:
    """Return a zip of ``members``; those named in ``encrypted`` are flagged so."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = bytearray(buffer.getvalue())
    # zipfile cannot encrypt; set bit 0 of the flags in the local and the
    # central header (APPNOTE.TXT 4.3.7, 4.3.12), as an encrypting tool does.
    headers = ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46))
    for signature, flags_at, length_at, name_at in headers:
        start = data.find(signature)
        while start >= 0:
            (length,) = struct.unpack_from("<H", data, start + length_at)
            name = data[start + name_at:start + name_at + length].decode()
            if name in encrypted:
                data[start + flags_at] |= 0x1
            start = data.find(signature, start + 4)
    return bytes(data)


def _saved(document: object) -> bytes:
    buffer = io.BytesIO()
    document.save(buffer)  # type: ignore[attr-defined]
    return buffer.getvalue()


def partial_defects(found) -> list[str]:
    return [defect for defect in found.defects if defect.startswith(PARTIAL)]


def test_word_in_a_pdf_attachment_is_extracted():
    found = extract(message_with(("report.pdf", "application/pdf",
                                  tiny_pdf(["Quarterly figures", "codeword KESTREL"]))))
    assert "KESTREL" in found.attachment_text
    assert "KESTREL" not in found.body
    assert found.attachments == ["report.pdf"]
    assert partial_defects(found) == []


def test_words_in_a_docx_paragraph_table_and_header_are_extracted():
    data = word_document("Minutes of the OSPREY meeting", cell="HERON budget",
                         header="Confidential MERLIN")
    found = extract(message_with(
        ("minutes.docx", f"{OOXML}.wordprocessingml.document", data)))
    for word in ("OSPREY", "HERON", "MERLIN"):
        assert word in found.attachment_text


def test_sheet_names_and_cells_of_an_xlsx_are_extracted():
    data = workbook({"B3": "PLOVER", "C7": 1234.5}, title="Budget 2025")
    found = extract(message_with(("budget.xlsx", f"{OOXML}.spreadsheetml.sheet", data)))
    assert "PLOVER" in found.attachment_text
    assert "1234.5" in found.attachment_text
    assert "Budget 2025" in found.attachment_text


def test_slides_and_speaker_notes_of_a_pptx_are_extracted():
    data = presentation("Launch EGRET", "remember CRANE")
    found = extract(message_with(
        ("deck.pptx", f"{OOXML}.presentationml.presentation", data)))
    assert "EGRET" in found.attachment_text
    assert "CRANE" in found.attachment_text


@pytest.mark.parametrize("name, mimetype, body", [
    ("letter.odt", "application/vnd.oasis.opendocument.text",
     "<office:text><text:h>Title</text:h><text:p>word BITTERN here</text:p></office:text>"),
    ("sheet.ods", "application/vnd.oasis.opendocument.spreadsheet",
     "<office:spreadsheet><table:table><table:table-row><table:table-cell>"
     "<text:p>BITTERN</text:p></table:table-cell></table:table-row></table:table>"
     "</office:spreadsheet>"),
])
def test_opendocument_text_and_sheets_are_extracted(name, mimetype, body):
    found = extract(message_with((name, "application/octet-stream",
                                  opendocument(body, mimetype))))
    assert "BITTERN" in found.attachment_text


def test_rtf_text_is_extracted_in_its_code_page():
    rtf = rb"{\rtf1\ansi\ansicpg1252 Memo: {\b GODWIT} caf\'e9}"
    found = extract(message_with(("memo.rtf", "application/rtf", rtf)))
    assert "GODWIT café" in found.attachment_text


def test_csv_without_a_charset_is_decoded_by_detection():
    text = "Имя,Фамилия,Город\nИван,Петров,Москва\nАнна,Сидорова,Новосибирск\n" * 3
    found = extract(message_with(("people.csv", "text/csv", text.encode("cp1251"))))
    assert "Сидорова" in found.attachment_text


def test_large_text_attachment_is_read_in_a_worker_and_found():
    # Cyrillic is two bytes a character in UTF-8: over the in-process size,
    # under the per-part character cap.
    rows = "".join(f"{n},запись {n}\n" for n in range(45_000)) + "last,КУЛИК\n"
    assert len(rows.encode()) > IN_PROCESS_BYTES
    found = extract(message_with(("ledger.csv", "text/csv", rows.encode())))
    assert "КУЛИК" in found.attachment_text
    assert partial_defects(found) == []


INVITE = (
    "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:Board meeting\\, TURNSTONE\r\n"
    "DESCRIPTION:Agenda: budget\\nand the long\r\n  folded SANDERLING item\r\n"
    "LOCATION:Room 4\\; Harbour House\r\n"
    'ORGANIZER;CN="Doe, Jane":mailto:jane@example.com\r\n'
    "ATTENDEE;ROLE=REQ-PARTICIPANT;CN=Bob Roe:MAILTO:bob@example.com\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n")


def test_calendar_invite_gives_summary_description_place_and_people():
    text = calendar_text(INVITE)
    assert "Board meeting, TURNSTONE" in text
    assert "budget\nand the long folded SANDERLING item" in text
    assert "Room 4; Harbour House" in text
    assert "Doe, Jane jane@example.com" in text
    assert "Bob Roe bob@example.com" in text


def test_calendar_attachment_and_inline_invite_are_both_read():
    attached = extract(message_with(("invite.ics", "text/calendar", INVITE.encode())))
    assert "TURNSTONE" in attached.attachment_text
    inline = (b"Subject: invite\r\nMIME-Version: 1.0\r\nContent-Type: text/calendar; "
              b"method=REQUEST; charset=utf-8\r\n\r\n" + INVITE.encode())
    assert "SANDERLING" in extract(inline).body


def test_calendar_samples_from_the_corpus_are_read(corpus_dir):
    found = extract((corpus_dir / "postalsys-postal-mime/calendar-event.eml").read_bytes())
    assert "invite.ics" in found.attachments
    assert "andris@postalsys.com" in found.attachment_text
    notmuch = extract((corpus_dir / "notmuch/attachment/text-calendar.eml").read_bytes())
    assert "bremner@example.com" in notmuch.body


def test_zip_lists_its_members_and_reads_a_docx_inside():
    archive = zipped({"minutes/board.docx": word_document("Decision on PETREL"),
                      "photo.jpg": b"\xff\xd8\xff\xe0 not really"})
    found = extract(message_with(("papers.zip", "application/zip", archive)))
    assert found.attachments == ["papers.zip", "minutes/board.docx", "photo.jpg"]
    assert "PETREL" in found.attachment_text
    assert partial_defects(found) == []


def test_docx_misnamed_as_zip_and_zip_misnamed_as_pdf_are_read_as_what_they_are():
    found = extract(message_with(
        ("scan.zip", "application/zip", word_document("ALBATROSS inside")),
        ("invoice.pdf", "application/pdf", zipped({"payload.exe": b"MZ"}))))
    assert "ALBATROSS" in found.attachment_text
    assert "payload.exe" in found.attachments


def test_encrypted_member_is_named_and_reported():
    archive = zipped({"secret.txt": b"hidden words", "open.txt": b"visible SKUA"},
                     encrypted=("secret.txt",))
    found = extract(message_with(("mixed.zip", "application/zip", archive)))
    assert {"secret.txt", "open.txt"} <= set(found.attachments)
    assert "SKUA" in found.attachment_text
    assert any("secret.txt is encrypted" in defect for defect in partial_defects(found))


def test_truncated_zip_still_names_its_members():
    archive = zipped({"ledger.txt": b"x" * 5000, "notes.txt": b"y"})
    found = extract(message_with(("cut.zip", "application/zip", archive[:-60])))
    assert "ledger.txt" in found.attachments
    assert any("damaged zip" in defect for defect in partial_defects(found))


@pytest.mark.timeout(60)
def test_zip_bombs_are_refused_before_inflating():
    # 50 MiB of zeros deflate to about 50 KB: over the 25 MiB part limit,
    # and 5 MiB of zeros expand a thousandfold.
    huge = zipped({"zeros.txt": bytes(50 << 20)})
    dense = zipped({"dense.txt": bytes(5 << 20), "fine.txt": b"text WREN"})
    started = time.monotonic()
    found = extract(message_with(("huge.zip", "application/zip", huge),
                                 ("dense.zip", "application/zip", dense)))
    assert time.monotonic() - started < 5
    defects = " ".join(partial_defects(found))
    assert "zeros.txt expands to 52428800 bytes" in defects
    assert "dense.txt expands" in defects
    assert "WREN" in found.attachment_text
    assert {"zeros.txt", "dense.txt", "fine.txt"} <= set(found.attachments)


def test_office_document_that_is_a_bomb_is_not_opened():
    bomb = zipped({"[Content_Types].xml": b"<Types/>",
                   "word/document.xml": bytes(30 << 20)})
    found = extract(message_with(("bomb.docx", f"{OOXML}.wordprocessingml.document", bomb)))
    assert any("bomb.docx: not opened" in defect for defect in partial_defects(found))


def test_zips_nested_past_the_depth_limit_are_named_not_read():
    inner = zipped({"deep.txt": b"LAPWING"})
    for level in range(4):
        inner = zipped({f"level{level}.zip": inner})
    found = extract(message_with(("russian-doll.zip", "application/zip", inner)))
    assert "level2.zip" in found.attachments
    assert "LAPWING" not in found.attachment_text
    assert any("nested more than 3 deep" in defect for defect in partial_defects(found))


def test_part_over_the_size_limit_is_not_read_but_named():
    limits = Limits(part_bytes=1 << 20)
    big = tiny_pdf(["BUNTING"]) + b"%" + b"x" * (2 << 20)
    found = extract(message_with(("big.pdf", "application/pdf", big),
                                 ("small.pdf", "application/pdf", tiny_pdf(["DUNLIN"]))),
                    limits)
    assert found.attachments == ["big.pdf", "small.pdf"]
    assert "DUNLIN" in found.attachment_text
    assert "BUNTING" not in found.attachment_text
    assert any("big.pdf" in defect and "limit" in defect
               for defect in partial_defects(found))


def test_text_beyond_the_message_cap_is_cut_and_reported():
    limits = Limits(message_chars=60)
    found = extract(message_with(("a.txt", "text/plain", b"FIRST " * 5),
                                 ("b.txt", "text/plain", b"SECOND " * 20)), limits)
    assert "FIRST" in found.attachment_text
    assert len(found.attachment_text) <= 60
    assert any("cut at 60 characters" in defect for defect in partial_defects(found))


@pytest.mark.timeout(60)
def test_pathological_pdf_is_cut_off_at_the_time_bound(sandbox):
    # 100,000 text operators on one page take pypdf several seconds.
    slow = tiny_pdf(["x"] * 100_000)
    limits = Limits(part_seconds=1.0)
    started = time.monotonic()
    found = extract(message_with(("slow.pdf", "application/pdf", slow),
                                 ("after.pdf", "application/pdf", tiny_pdf(["PIPIT"]))),
                    limits, sandbox)
    # The defect shows the 1 s bound stopped it; the clock allows a busy machine.
    assert time.monotonic() - started < 10
    assert any("slow.pdf: reading stopped after 1.0 s" in defect
               for defect in partial_defects(found))
    assert "PIPIT" in found.attachment_text


@pytest.mark.timeout(60)
def test_message_time_budget_bounds_all_its_parts(sandbox):
    slow = tiny_pdf(["x"] * 100_000)
    limits = Limits(part_seconds=1.0, message_seconds=1.5)
    started = time.monotonic()
    slow_parts = [(f"slow{n}.pdf", "application/pdf", slow) for n in range(4)]
    found = extract(message_with(*slow_parts), limits, sandbox)
    # The message budget is what stopped the last part ("not read", below);
    # the clock only shows the whole stayed bounded, with room for a busy
    # machine (4 s failed once at load average 13).
    assert time.monotonic() - started < 10
    defects = partial_defects(found)
    assert len(defects) == 4
    assert any("slow3.pdf: not read" in defect for defect in defects)


def test_broken_pdf_is_reported_and_the_message_is_still_read():
    found = extract(message_with(("broken.pdf", "application/pdf", b"%PDF-1.4\n1 0 obj <<"),
                                 body="body word SHAG"))
    assert "SHAG" in found.body
    assert any(defect.startswith(f"{PARTIAL} broken.pdf: unreadable")
               for defect in found.defects)


def test_external_entities_are_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("LEAKED-SECRET")
    doctype = f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{secret}">]>'
    source = io.BytesIO(word_document("ENTITY &placeholder;"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(buffer, "w") as patched:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "word/document.xml":
                data = data.replace(b"?>", f"?>{doctype}".encode(), 1)
                data = data.replace(b"&amp;placeholder;", b"&xxe;")
            patched.writestr(info, data)
    odt = opendocument("<office:text><text:p>&xxe;</text:p></office:text>",
                       "application/vnd.oasis.opendocument.text", doctype)
    found = extract(message_with(
        ("entity.docx", f"{OOXML}.wordprocessingml.document", buffer.getvalue()),
        ("entity.odt", "application/vnd.oasis.opendocument.text", odt)))
    assert "LEAKED-SECRET" not in found.attachment_text
    assert any("entity.odt: unreadable" in defect for defect in partial_defects(found))


def test_nested_message_attachments_are_named_and_read():
    inner = message_with(("inner.pdf", "application/pdf", tiny_pdf(["GARGANEY"])),
                         subject="inner")
    found = extract(message_with(("forwarded.eml", "message/rfc822", inner)))
    assert "inner.pdf" in found.attachments
    assert "GARGANEY" in found.attachment_text


def tnef_cases(corpus_dir):
    return sorted((corpus_dir / "jstedfast-mimekit/tnef").glob("*.tnef"))


def test_tnef_attachment_names_match_the_upstream_lists(corpus_dir):
    # MimeKit's X.list names the files its TNEF reader extracts from X.tnef;
    # body.rtf is the message body, indexed as text rather than listed.
    checked = 0
    for path in tnef_cases(corpus_dir):
        listed = path.with_suffix(".list")
        if not listed.exists():
            continue
        expected = [name for name in listed.read_text().splitlines()
                    if name and name != "body.rtf"]
        found = extract(message_with(
            ("winmail.dat", "application/ms-tnef", path.read_bytes())))
        assert found.attachments[0] == "winmail.dat"
        for name in expected:
            assert found.attachments.count(name) >= expected.count(name), (path.name, name)
        checked += 1
    require(checked >= 8, "the MimeKit TNEF samples are missing")


def test_tnef_body_and_inner_names_of_real_outlook_mail(corpus_dir):
    found = extract((corpus_dir / "jstedfast-mimekit/tnef/rich-text.eml").read_bytes())
    assert "kitten-playing-with-a-christmas-tree.jpg" in found.attachments
    assert "Christmas to remember" in found.attachment_text
    ukr = extract((corpus_dir / "jstedfast-mimekit/tnef/ukr.eml").read_bytes())
    assert "шостий" in ukr.attachment_text
    # m4006's "winmail.dat" holds a PNG: named, not misread, not an error.
    receipt = extract(
        (corpus_dir / "zbateson-mail-mime-parser/emails/m4006.txt").read_bytes())
    assert receipt.attachments == ["winmail.dat"]
    assert partial_defects(receipt) == []


def test_names_only_mode_skips_attachment_text():
    found = extract(message_with(("report.pdf", "application/pdf", tiny_pdf(["KESTREL"]))),
                    read_attachments=False)
    assert found.attachments == ["report.pdf"]
    assert found.attachment_text == ""


def test_worker_that_overruns_is_killed_and_replaced(sandbox):
    started = time.monotonic()
    with pytest.raises(CallTimeoutError):
        sandbox.run(time.sleep, (60,), timeout=0.5)
    assert time.monotonic() - started < 2
    assert sandbox.run(len, (b"abc",), timeout=10) == 3


def test_worker_memory_and_network_are_confined(sandbox):
    with pytest.raises(SandboxError, match="MemoryError"):
        sandbox.run(bytearray, (3 << 30,), timeout=30)
    with pytest.raises(SandboxError, match="PermissionError"):
        sandbox.run(socket.create_connection, (("127.0.0.1", 9),), timeout=10)
    assert sandbox.run(len, (b"still serving",), timeout=10) == 13
