"""Look inside containers: zip archives and TNEF (winmail.dat).

A container's member names are always listed; the text of members in a
supported format is read through the ``read_member`` callback, which the
caller (:func:`indexer.extraction.formats.read_part`) supplies so that a
docx inside a zip is read like any other docx.  Nothing is written to
disk: members are read into memory, within the size limits.

Zip bombs are refused from the central directory before anything is
inflated: a member's declared size may not exceed the part size limit,
a large member may not expand beyond the ratio limit, and the members
read may not expand to more than ``expanded_bytes`` in all.  The
declared size is also a hard bound: :mod:`zipfile` stops reading a
member there and fails its CRC check if the data runs on.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from typing import Any

from indexer.extraction.charsets import decode_text
from indexer.extraction.documents import html_to_text
from indexer.extraction.reading import Limits, Reading, TextBuffer

# read_member(name, data, depth) reads one member of a container.
MemberReader = Callable[[str, bytes, int], Reading]
# Supported-format test for a member, by its name and its first bytes.
MemberFilter = Callable[[str, bytes], bool]

ENCRYPTED_FLAG = 0x1  # general purpose bit 0 (APPNOTE.TXT 4.4.4)
UNNAMED_TNEF_MEMBER = "Untitled Attachment"


def expansion_problem(info: zipfile.ZipInfo, limits: Limits,
                      most: int | None = None) -> str | None:
    """Say why a zip member is too costly to inflate, or return None.

    ``most`` is the largest size allowed, the part size limit by default.
    """
    if info.file_size > (limits.part_bytes if most is None else most):
        return f"{info.filename} expands to {info.file_size} bytes"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_floor_bytes and ratio > limits.expansion_ratio:
        return f"{info.filename} expands {ratio:.0f} times"
    return None


def container_problem(container: zipfile.ZipFile, limits: Limits) -> str | None:
    """Say why a zip-based document is too costly to open, or return None.

    OOXML and OpenDocument readers inflate their parts themselves, so the
    whole container must pass before one of them sees it.  One part may
    take the whole expansion budget: a large sheet is one XML part.
    """
    members = container.infolist()
    if len(members) > limits.members_listed:
        return f"{len(members)} members in the container"
    total = sum(info.file_size for info in members)
    if total > limits.expanded_bytes:
        return f"container expands to {total} bytes"
    for info in members:
        problem = expansion_problem(info, limits, limits.expanded_bytes)
        if problem:
            return problem
    return None


def read_zip(data: bytes, name: str, limits: Limits, depth: int,
             is_readable: MemberFilter, read_member: MemberReader) -> Reading:
    """List a zip's members and read the text of the supported ones."""
    reading = Reading()
    buffer = TextBuffer(limits.part_chars)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        reading.names = local_names(data, limits.members_listed)
        reading.partial(name, "truncated or damaged zip; only member names read")
        return reading
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > limits.members_listed:
            reading.partial(name, f"only the first {limits.members_listed} "
                            f"of {len(members)} members listed")
        expanded = read_count = 0
        for info in members[: limits.members_listed]:
            reading.names.append(info.filename)
            if not is_readable(info.filename, b""):
                continue
            problem = _member_problem(info, limits, expanded, read_count, depth)
            if problem:
                reading.partial(name, problem)
                continue
            with archive.open(info) as member:
                content = member.read(limits.part_bytes + 1)
            expanded += len(content)
            read_count += 1
            inner = read_member(info.filename, content, depth + 1)
            reading.merge(inner)
            buffer.add(inner.text)
    reading.text = buffer.text()
    return reading


# A local file header (APPNOTE.TXT 4.3.7): signature, fixed fields, then
# the name; bit 11 of the flags marks a UTF-8 name, else it is CP437.
_LOCAL_HEADER = struct.Struct("<4s2xH18xH2x")
LOCAL_SIGNATURE = b"PK\x03\x04"
UTF8_NAME_FLAG = 0x800


def local_names(data: bytes, limit: int) -> list[str]:
    """List member names from the local headers of a zip without a directory.

    A truncated zip loses its central directory, at the end, first; the
    local header in front of each member still names it.
    """
    names: list[str] = []
    offset = data.find(LOCAL_SIGNATURE)
    while 0 <= offset <= len(data) - _LOCAL_HEADER.size and len(names) < limit:
        _, flags, name_length = _LOCAL_HEADER.unpack_from(data, offset)
        start = offset + _LOCAL_HEADER.size
        raw_name = data[start:start + name_length]
        encoding = "utf-8" if flags & UTF8_NAME_FLAG else "cp437"
        names.append(raw_name.decode(encoding, "replace"))
        offset = data.find(LOCAL_SIGNATURE, start + name_length)
    return [name for name in names if name and not name.endswith("/")]


def _member_problem(info: zipfile.ZipInfo, limits: Limits, expanded: int,
                    read_count: int, depth: int) -> str | None:
    if info.flag_bits & ENCRYPTED_FLAG:
        return f"{info.filename} is encrypted"
    if depth + 1 > limits.archive_depth:
        return f"{info.filename} is nested more than {limits.archive_depth} deep"
    if read_count >= limits.members_read:
        return f"{info.filename} not read: {limits.members_read} members already read"
    if expanded + info.file_size > limits.expanded_bytes:
        return (f"{info.filename} not read: archive expands past "
                f"{limits.expanded_bytes} bytes")
    return expansion_problem(info, limits)


def read_tnef(data: bytes, name: str, limits: Limits, depth: int,
              is_readable: MemberFilter, read_member: MemberReader) -> Reading:
    """Read a TNEF stream: its message body, attachment names and texts.

    Outlook sends rich-text mail as TNEF (MS-OXTNEF); the body is often
    only there, as compressed RTF (MS-OXRTFCP) or HTML.
    """
    from tnefparse import TNEF

    reading = Reading()
    buffer = TextBuffer(limits.part_chars)
    tnef = TNEF(data, do_checksum=False)
    body = _tnef_body(tnef, name, read_member, depth)
    reading.merge(body)
    buffer.add(body.text)
    attachments = list(tnef.attachments)
    if len(attachments) > limits.members_listed:
        reading.partial(name, f"only the first {limits.members_listed} "
                        f"of {len(attachments)} attachments listed")
    for attachment in attachments[: limits.members_listed]:
        member_name = _tnef_name(attachment)
        reading.names.append(member_name)
        content = attachment.data if isinstance(attachment.data, bytes) else b""
        if not is_readable(member_name, content[:1024]):
            continue
        if depth + 1 > limits.archive_depth:
            reading.partial(name, f"{member_name} is nested more than "
                            f"{limits.archive_depth} deep")
            continue
        inner = read_member(member_name, content, depth + 1)
        reading.merge(inner)
        buffer.add(inner.text)
    reading.text = buffer.text()
    return reading


def _tnef_name(attachment: Any) -> str:
    try:
        found = attachment.long_filename() or attachment.name
    except (UnicodeError, AttributeError):
        found = getattr(attachment, "_name", b"")
    if isinstance(found, bytes):
        found = decode_text(found, None)
    return str(found).strip("\x00").strip() or UNNAMED_TNEF_MEMBER


def _tnef_body(tnef: Any, name: str, read_member: MemberReader, depth: int) -> Reading:
    body = tnef.body or tnef.htmlbody
    if body:
        text = body if isinstance(body, str) else decode_text(body, None)
        return Reading(text=text if tnef.body else html_to_text(text))
    try:
        rich = tnef.rtfbody
    except Exception as err:
        reading = Reading()
        reading.partial(name, f"compressed RTF body unreadable ({type(err).__name__})")
        return reading
    if isinstance(rich, bytes) and rich.lstrip().startswith(b"{\\rtf"):
        return read_member(f"{name} body.rtf", rich, depth + 1)
    return Reading()
