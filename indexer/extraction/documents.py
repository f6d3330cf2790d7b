"""Read the text of single documents: PDF, Office, OpenDocument, RTF, text.

Each reader takes a document's bytes, its name (for defects) and the
:class:`Limits`, and returns a :class:`Reading`.  Readers of zip-based
formats (OOXML, OpenDocument) expect the container to have passed
:func:`indexer.extraction.archives.container_problem` first.  Readers may
raise on broken input; :func:`indexer.extraction.formats.read_part` turns
that into a defect.

The libraries are imported on first use, so the archive's main process,
which reads only text, HTML and calendars, never loads them.  None of
them fetches anything: pypdf resolves no remote references, python-docx
and python-pptx parse with ``resolve_entities=False``, openpyxl parses
through defusedxml when it is installed (it is a dependency), and
OpenDocument XML is streamed through defusedxml here.
"""

from __future__ import annotations

import html
import io
import logging
import re
import zipfile
from collections.abc import Callable
from typing import Any

import nh3

from indexer.extraction.charsets import decode_body
from indexer.extraction.reading import Limits, Reading, TextBuffer

log = logging.getLogger(__name__)

OPENDOCUMENT_TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
OPENDOCUMENT_BLOCKS = {f"{OPENDOCUMENT_TEXT}p", f"{OPENDOCUMENT_TEXT}h"}


def read_pdf(data: bytes, name: str, limits: Limits) -> Reading:
    """Read a PDF's text page by page; an unreadable page is skipped."""
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reading = Reading()
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted and not reader.decrypt(""):
        # Only PDFs with an empty user password (permissions only) open.
        reading.partial(name, "encrypted PDF")
        return reading
    buffer = TextBuffer(limits.part_chars)
    for number, page in enumerate(reader.pages):
        if number >= limits.pages:
            reading.partial(name, f"only the first {limits.pages} pages read")
            break
        try:
            text = page.extract_text()
        except Exception as err:
            reading.partial(name, f"page {number + 1} unreadable "
                            f"({type(err).__name__})")
            continue
        if not buffer.add(text):
            break
    return _finish(reading, buffer, name)


def read_docx(data: bytes, name: str, limits: Limits) -> Reading:
    """Read a Word document's paragraphs, tables, headers and footers."""
    import docx
    from docx.oxml.ns import qn

    document = docx.Document(io.BytesIO(data))
    buffer = TextBuffer(limits.part_chars)
    # Paragraphs in document order, including those in table cells and
    # text boxes, which Document.paragraphs leaves out.
    for paragraph in document.element.body.iter(qn("w:p")):
        if not buffer.add(_joined_text(paragraph, qn("w:t"))):
            break
    for section in document.sections:
        for margin in (section.header, section.footer):
            if not margin.is_linked_to_previous:
                buffer.add("\n".join(paragraph.text for paragraph in margin.paragraphs))
    return _finish(Reading(), buffer, name)


def read_xlsx(data: bytes, name: str, limits: Limits) -> Reading:
    """Read an Excel workbook's sheet names and cell values (cached results)."""
    import openpyxl

    reading = Reading()
    buffer = TextBuffer(limits.part_chars)
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        for number, sheet in enumerate(workbook.worksheets):
            if number >= limits.sheets:
                reading.partial(name, f"only the first {limits.sheets} sheets read")
                break
            buffer.add(str(sheet.title))
            _read_rows(sheet, name, limits, buffer, reading)
            if buffer.is_full:
                break
    finally:
        workbook.close()
    return _finish(reading, buffer, name)


def _read_rows(sheet: Any, name: str, limits: Limits, buffer: TextBuffer,
               reading: Reading) -> None:
    for number, row in enumerate(sheet.iter_rows(values_only=True)):
        if number >= limits.rows:
            reading.partial(name, f"sheet {sheet.title}: only the first "
                            f"{limits.rows} rows read")
            return
        cells = [str(value) for value in row if value is not None]
        if cells and not buffer.add("\t".join(cells)):
            return


def read_pptx(data: bytes, name: str, limits: Limits) -> Reading:
    """Read a presentation's slide text (shapes, tables, groups) and notes."""
    from pptx import Presentation
    from pptx.oxml.ns import qn

    reading = Reading()
    buffer = TextBuffer(limits.part_chars)
    for number, slide in enumerate(Presentation(io.BytesIO(data)).slides):
        if number >= limits.pages:
            reading.partial(name, f"only the first {limits.pages} slides read")
            break
        elements = [slide.element]
        if slide.has_notes_slide:
            elements.append(slide.notes_slide.element)
        for element in elements:
            for paragraph in element.iter(qn("a:p")):
                buffer.add(_joined_text(paragraph, qn("a:t")))
        if buffer.is_full:
            break
    return _finish(reading, buffer, name)


def read_opendocument(data: bytes, name: str, limits: Limits) -> Reading:
    """Read the paragraphs and headings of an ODF text, sheet or slides."""
    from defusedxml.ElementTree import iterparse

    buffer = TextBuffer(limits.part_chars)
    with zipfile.ZipFile(io.BytesIO(data)) as container:
        with container.open("content.xml") as content:
            # Streamed, and each block cleared once read, so a large sheet
            # never becomes one tree in memory.
            for _, element in iterparse(content, events=("end",), forbid_dtd=True):
                if element.tag in OPENDOCUMENT_BLOCKS:
                    if not buffer.add("".join(element.itertext())):
                        break
                    element.clear()
    return _finish(Reading(), buffer, name)


def read_rtf(data: bytes, name: str, limits: Limits) -> Reading:
    """Read an RTF document's text (its \\ansicpg code page is honoured)."""
    from striprtf.striprtf import rtf_to_text

    convert: Callable[..., str] = rtf_to_text
    buffer = TextBuffer(limits.part_chars)
    # RTF is 7-bit (other characters come as \'xx escapes); Latin-1 keeps
    # a stray 8-bit byte as one character.
    buffer.add(convert(data.decode("latin-1"), errors="replace"))
    return _finish(Reading(), buffer, name)


def read_text(data: bytes, name: str, limits: Limits,
              charset: str | None = None) -> Reading:
    """Read a text or CSV file by its charset, detected if need be."""
    buffer = TextBuffer(limits.part_chars)
    buffer.add(decode_body(data, charset))
    return _finish(Reading(), buffer, name)


def read_html(data: bytes, name: str, limits: Limits,
              charset: str | None = None) -> Reading:
    """Read an HTML file's visible text."""
    buffer = TextBuffer(limits.part_chars)
    buffer.add(html_to_text(decode_body(data, charset)))
    return _finish(Reading(), buffer, name)


def read_calendar(data: bytes, name: str, limits: Limits,
                  charset: str | None = None) -> Reading:
    """Read an invitation's summary, description, place and people."""
    buffer = TextBuffer(limits.part_chars)
    buffer.add(calendar_text(decode_body(data, charset)))
    return _finish(Reading(), buffer, name)


# Elements a browser lays out as blocks, lines or cells.  Stripping the
# tags alone would run "<p>Spring catalogue</p><p>Office chairs</p>"
# together into one word "catalogueOffice"; a line break before each such
# tag (a tab before a cell) keeps the words apart, as a reader sees them.
_BLOCK_TAG = re.compile(
    r"<(?=/?(?:address|article|aside|blockquote|br|caption|dd|details|div|dl|dt"
    r"|fieldset|figcaption|figure|footer|form|h[1-6]|header|hr|li|main|nav|ol"
    r"|option|p|pre|section|summary|table|tbody|tfoot|thead|title|tr|ul)[\s/>])",
    re.IGNORECASE)
_CELL_TAG = re.compile(r"<(?=/?t[dh][\s/>])", re.IGNORECASE)
_BLANK_LINES = re.compile(r"[ \t]*\n[\s]*\n[ \t]*")


def html_to_text(markup: str) -> str:
    """Return the readable text of an HTML body (scripts and styles dropped).

    Blocks, line breaks and list items become line breaks and table cells
    tabs, so words in neighbouring elements stay separate words.
    """
    spaced = _CELL_TAG.sub("\t<", _BLOCK_TAG.sub("\n<", markup))
    stripped = nh3.clean(spaced, tags=set(), attributes={}, strip_comments=True)
    return _BLANK_LINES.sub("\n\n", html.unescape(stripped)).strip()


# iCalendar content lines (RFC 5545 section 3.1): long lines are folded
# with CRLF and one space or tab; the value follows the first colon that
# is not inside a quoted parameter value.
_UNFOLD = re.compile(r"\r?\n[ \t]")
_CONTENT_LINE = re.compile(
    r'^([A-Za-z0-9-]+)((?:[^:"\r\n]|"[^"\r\n]*")*):(.*)$', re.MULTILINE)
_COMMON_NAME = re.compile(r';CN=("[^"]*"|[^;:]*)', re.IGNORECASE)
_TEXT_ESCAPE = re.compile(r"\\([\\;,nN])")
CALENDAR_TEXT = {"SUMMARY", "DESCRIPTION", "LOCATION", "COMMENT"}
CALENDAR_PEOPLE = {"ORGANIZER", "ATTENDEE"}


def calendar_text(source: str) -> str:
    """Return an iCalendar object's searchable text, one value a line.

    Text values are unescaped (RFC 5545 section 3.3.11); people are
    given as their common name and address.
    """
    lines = []
    for match in _CONTENT_LINE.finditer(_UNFOLD.sub("", source)):
        name, parameters, value = match.groups()
        name = name.upper()
        if name in CALENDAR_TEXT:
            lines.append(_TEXT_ESCAPE.sub(_unescape, value))
        elif name in CALENDAR_PEOPLE:
            common_name = _COMMON_NAME.search(parameters)
            person = common_name.group(1).strip('"') if common_name else ""
            address = re.sub(r"(?i)^mailto:", "", value)
            lines.append(f"{person} {address}".strip())
    return "\n".join(lines)


def _unescape(match: re.Match[str]) -> str:
    escaped = match.group(1)
    return "\n" if escaped in "nN" else escaped


def _joined_text(paragraph: Any, run_tag: str) -> str:
    return "".join(node.text or "" for node in paragraph.iter(run_tag))


def _finish(reading: Reading, buffer: TextBuffer, name: str) -> Reading:
    if buffer.is_full:
        reading.partial(name, f"text cut at {buffer.cap} characters")
    reading.text = buffer.text()
    return reading
