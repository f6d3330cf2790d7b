"""Recognise a part's format and send it to the reader for that format.

A format is named by a short *kind*.  The declared content type decides
when it names a supported format; otherwise the file name's extension
does; otherwise, for generic types, the first bytes (magic numbers).
Zip-based kinds are settled by looking inside: a ``.zip`` holding
``word/document.xml`` is read as a Word document.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable

from indexer.extraction import archives, documents
from indexer.extraction.reading import Limits, Reading

PDF, DOCX, XLSX, PPTX, OPENDOCUMENT = "pdf", "docx", "xlsx", "pptx", "opendocument"
RTF, TEXT, HTML, CALENDAR, TNEF, ZIP = "rtf", "text", "html", "calendar", "tnef", "zip"
ZIP_KINDS = frozenset({DOCX, XLSX, PPTX, OPENDOCUMENT, ZIP})
# Kinds whose files start with a magic number that sniff() knows.
MAGIC_KINDS = ZIP_KINDS | {"pdf", "tnef", "rtf"}
# Linear-time readers of plain text that need no sandbox.
TEXT_KINDS = frozenset({TEXT, HTML, CALENDAR})

OOXML = "application/vnd.openxmlformats-officedocument"
OPENDOCUMENT_TYPE = "application/vnd.oasis.opendocument"
BY_CONTENT_TYPE = {
    "application/pdf": PDF, "application/x-pdf": PDF,
    f"{OOXML}.wordprocessingml.document": DOCX,
    f"{OOXML}.spreadsheetml.sheet": XLSX,
    f"{OOXML}.presentationml.presentation": PPTX,
    f"{OPENDOCUMENT_TYPE}.text": OPENDOCUMENT,
    f"{OPENDOCUMENT_TYPE}.spreadsheet": OPENDOCUMENT,
    f"{OPENDOCUMENT_TYPE}.presentation": OPENDOCUMENT,
    "application/rtf": RTF, "text/rtf": RTF, "text/richtext": RTF,
    "text/plain": TEXT, "text/csv": TEXT, "text/tab-separated-values": TEXT,
    "text/html": HTML, "text/calendar": CALENDAR, "application/ics": CALENDAR,
    "application/ms-tnef": TNEF, "application/vnd.ms-tnef": TNEF,
    "application/zip": ZIP, "application/x-zip-compressed": ZIP,
    "application/x-zip": ZIP,
}
BY_EXTENSION = {
    ".pdf": PDF, ".docx": DOCX, ".docm": DOCX, ".dotx": DOCX,
    ".xlsx": XLSX, ".xlsm": XLSX, ".pptx": PPTX, ".pptm": PPTX,
    ".odt": OPENDOCUMENT, ".ods": OPENDOCUMENT, ".odp": OPENDOCUMENT,
    ".rtf": RTF, ".txt": TEXT, ".csv": TEXT, ".tsv": TEXT, ".log": TEXT,
    ".md": TEXT, ".htm": HTML, ".html": HTML, ".ics": CALENDAR,
    ".vcs": CALENDAR, ".zip": ZIP,
}
# Types that say nothing about the format; the name or bytes must tell.
GENERIC_TYPES = {"application/octet-stream", "application/x-msdownload",
                 "application/download", "application/unknown", ""}
TNEF_NAME = "winmail.dat"
# Magic numbers: PDF 1.7 section 7.5.2 allows the header anywhere in the
# first 1024 bytes; TNEF starts with 0x223E9F78 little-endian (MS-OXTNEF
# 2.1.3.1); zip local file headers start with PK\3\4 (APPNOTE 4.3.7).
MAGIC_WINDOW = 1024
TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"
ZIP_SIGNATURE = b"PK\x03\x04"
# The part that tells each zip-based format apart (ECMA-376, ODF 1.2).
ZIP_MARKERS = (("word/document.xml", DOCX), ("xl/workbook.xml", XLSX),
               ("ppt/presentation.xml", PPTX), ("content.xml", OPENDOCUMENT))

Reader = Callable[[bytes, str, Limits], Reading]
READERS: dict[str, Reader] = {
    PDF: documents.read_pdf, DOCX: documents.read_docx,
    XLSX: documents.read_xlsx, PPTX: documents.read_pptx,
    OPENDOCUMENT: documents.read_opendocument, RTF: documents.read_rtf,
}
TEXT_READERS = {TEXT: documents.read_text, HTML: documents.read_html,
                CALENDAR: documents.read_calendar}


def kind_of(content_type: str, name: str, head: bytes = b"") -> str | None:
    """Return the kind of a part, or None when no reader supports it.

    ``head`` is the start of the decoded content, when at hand.
    """
    content_type = content_type.lower()
    extension = os.path.splitext(name.lower())[1]
    kind = BY_CONTENT_TYPE.get(content_type) or BY_EXTENSION.get(extension)
    if kind is None and name.lower() == TNEF_NAME:
        kind = TNEF
    if kind is None and (content_type in GENERIC_TYPES
                         or content_type.startswith("application/")):
        kind = sniff(head)
    if head and kind in MAGIC_KINDS:
        # The bytes outrank the label: a winmail.dat without the TNEF
        # signature is some other file under Outlook's name, and a
        # ".pdf" that is a zip is read as the zip it is.
        found = sniff(head)
        if found is not None and found != _family(kind):
            return found
        if kind == TNEF and found is None:
            return None
    return kind


def _family(kind: str) -> str:
    return ZIP if kind in ZIP_KINDS else kind


def sniff(head: bytes) -> str | None:
    """Return the kind that a document's first bytes announce, or None."""
    if b"%PDF-" in head[:MAGIC_WINDOW]:
        return PDF
    if head.startswith(TNEF_SIGNATURE):
        return TNEF
    if head.startswith(ZIP_SIGNATURE):
        return ZIP
    if head.lstrip().startswith(b"{\\rtf"):
        return RTF
    return None


def read_part(kind: str, name: str, data: bytes, limits: Limits,
              charset: str | None = None, depth: int = 0) -> Reading:
    """Read one part of a known kind; never raises for bad content.

    A part over the size limit is not read at all.  Whatever stops a
    reader (broken file, library bug, out of memory) becomes a defect.
    """
    reading = Reading()
    if len(data) > limits.part_bytes:
        reading.partial(name, f"{len(data)} bytes, over the {limits.part_bytes}-byte "
                        "limit; not read")
        return reading
    try:
        if kind in TEXT_READERS:
            return TEXT_READERS[kind](data, name, limits, charset)
        if kind in ZIP_KINDS:
            return _read_zip_based(kind, name, data, limits, depth)
        if kind == TNEF:
            return archives.read_tnef(data, name, limits, depth, _is_readable,
                                      _member_reader(limits))
        return READERS[kind](data, name, limits)
    except Exception as err:
        # The exception's type says enough; its text may quote the content.
        reading.partial(name, f"unreadable ({type(err).__name__})")
        return reading


def _read_zip_based(kind: str, name: str, data: bytes, limits: Limits,
                    depth: int) -> Reading:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as container:
            members = set(container.namelist())
            settled = next((marked for marker, marked in ZIP_MARKERS
                            if marker in members), ZIP)
            problem = (None if settled == ZIP
                       else archives.container_problem(container, limits))
    except zipfile.BadZipFile:
        if kind != ZIP:
            raise
        # read_zip lists what a damaged archive still names.
        settled, problem = ZIP, None
    if settled == ZIP:
        return archives.read_zip(data, name, limits, depth, _is_readable,
                                 _member_reader(limits))
    reading = Reading()
    if problem:
        reading.partial(name, f"not opened: {problem}")
        return reading
    return READERS[settled](data, name, limits)


def _is_readable(name: str, head: bytes) -> bool:
    return kind_of("", name, head) is not None


def _member_reader(limits: Limits) -> archives.MemberReader:
    def read_member(name: str, data: bytes, depth: int) -> Reading:
        kind = kind_of("", name, data[:MAGIC_WINDOW])
        if kind is None:
            return Reading()
        return read_part(kind, name, data, limits, depth=depth)
    return read_member
