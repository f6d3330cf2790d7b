"""Write a selection of messages as one zip of .eml files or one mbox.

Both writers are generators of chunks: each message is read from the
vault, written, and its bytes handed on before the next is read, so
memory holds one message at a time whatever the selection's size.

Each message keeps its exact bytes.  In the zip each is an ``.eml``
entry as stored.  The mbox is *mboxrd*: every line that starts with
``From `` after any number of ``>`` gets one more ``>``, which a reader
undoes exactly (unlike the older mboxo quoting, Python's ``mailbox``
module included, which cannot tell a quoted line from one sent that way).
Lines keep their CRLF endings; the ``From_`` separator lines end in LF.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime

from indexer.extract import header_text
from web.parts import safe_filename

FORMATS = ("zip", "mbox")
MAX_HEADER_BYTES = 256 * 1024
# The earliest time a zip entry can carry (MS-DOS date, 1980).
ZIP_EPOCH = dt.datetime(1980, 1, 1, tzinfo=dt.timezone.utc)
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)

# (message id, raw bytes), or (message id, None) when it could not be read.
Reading = tuple[str, bytes | None]


class _Chunks:
    """A write-only file that collects what zipfile writes, for streaming.

    It has no ``tell`` or ``seek``, so zipfile writes each entry's sizes
    in a data descriptor after it (APPNOTE section 4.3.9) instead of
    seeking back to its header.
    """

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.pending.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        return data


def zip_chunks(messages: Iterable[Reading]) -> Iterator[bytes]:
    """Yield a zip archive of the messages, one .eml entry each."""
    sink = _Chunks()
    missing = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for number, (message_id, raw) in enumerate(messages, start=1):
            if raw is None:
                missing.append(message_id)
                continue
            entry = zipfile.ZipInfo(entry_name(number, message_id, raw),
                                    _zip_time(arrival_time(raw)))
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, raw)
            yield sink.take()
        if missing:
            archive.writestr("NOT-INCLUDED.txt", not_included_note(missing))
    yield sink.take()


def mbox_chunks(messages: Iterable[Reading]) -> Iterator[bytes]:
    """Yield an mboxrd file of the messages."""
    missing = []
    for message_id, raw in messages:
        if raw is None:
            missing.append(message_id)
            continue
        stamp = time.asctime(arrival_time(raw).timetuple())
        quoted = _FROM_LINE.sub(rb">\1", raw)
        ending = b"" if quoted.endswith(b"\n") else b"\r\n"
        yield b"From MAILER-DAEMON " + stamp.encode("ascii") + b"\n" + quoted + ending + b"\n"
    if missing:
        note = not_included_note(missing).encode("utf-8").replace(b"\n", b"\r\n")
        yield (b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n"
               b"From: Strongroom <nobody@invalid>\r\nSubject: Messages not included\r\n\r\n"
               + _FROM_LINE.sub(rb">\1", note) + b"\n")


def unquote_mboxrd(mbox: bytes) -> list[bytes]:
    """Split an mboxrd file back into the exact messages written."""
    messages = []
    for block in re.split(rb"(?m)^From [^\n]*\n", mbox)[1:]:
        # Each message is followed by the one blank line the writer added.
        body = block[:-1] if block.endswith(b"\n") else block
        messages.append(re.sub(rb"(?m)^>(>*From )", rb"\1", body))
    return messages


def entry_name(number: int, message_id: str, raw: bytes) -> str:
    """Name a message's zip entry: its number, subject and id, readable."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
    subject = safe_filename(header_text(headers, "subject"))[:60].strip(" ._")
    return f"{number:04d}-{subject or 'no subject'}-{message_id[:12]}.eml"


def arrival_time(raw: bytes) -> dt.datetime:
    """Return when the message first arrived, in UTC, as its headers tell.

    The top Received header is the last hop, the time the organisation's
    own server took it (RFC 5321 section 4.4: each hop prepends its
    trace); the Date header is the fallback, then the Unix epoch.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
    candidates = []
    received = headers.get_all("received") or []
    if received:
        candidates.append(str(received[0]).rpartition(";")[2])
    candidates.append(header_text(headers, "date"))
    for text in candidates:
        try:
            moment = parsedate_to_datetime(text.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(dt.timezone.utc)
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _zip_time(moment: dt.datetime) -> tuple[int, int, int, int, int, int]:
    moment = max(moment, ZIP_EPOCH)
    return (min(moment.year, 2107), moment.month, moment.day,
            moment.hour, moment.minute, moment.second)


def not_included_note(message_ids: list[str]) -> str:
    """Explain, inside the download, which messages could not be read."""
    return ("These selected messages failed the archive's integrity check and\n"
            "are not in this download; the failure has been recorded:\n\n"
            + "\n".join(message_ids) + "\n")


def read_each(message_ids: list[str],
              read: Callable[[str], bytes | None]) -> Iterator[Reading]:
    """Read the messages one at a time, as the writers ask for them."""
    for message_id in message_ids:
        yield message_id, read(message_id)
