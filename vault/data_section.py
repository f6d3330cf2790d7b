"""Read the DATA section of an SMTP transaction in large chunks.

aiosmtpd reads DATA one line at a time, a Python round trip per line: for
journal copies of 100 kB that costs more than sealing and storing them.
``read_data`` asks the stream for everything up to the end-of-data
sequence at once, so the search runs in C over whole network reads.

The rules are aiosmtpd's, and RFC 5321's: DATA ends at the first
CRLF "." CRLF, where the CRLF may be the one that ended the DATA command
itself (an empty message is just "." CRLF); a line that begins with "."
loses that dot (section 4.5.2, transparency); and the size limit counts
the octets as sent, dots and line ends included, without the final line.
"""

from __future__ import annotations

import asyncio

END_OF_DATA = b"\r\n.\r\n"

# The CRLF that ended the DATA command starts the first line, so the
# search runs over it too; it is not part of the message.
_COMMAND_END = b"\r\n"


async def read_data(reader: asyncio.StreamReader,
                    size_limit: int | None) -> bytes | None:
    """Read up to and including the end-of-data line; return the message.

    The message comes back dot-unstuffed, with every line end as sent.
    Returns None when it has more than ``size_limit`` octets: all of it
    is still read (so the session can go on, RFC 5321 section 4.2.5) but
    none is kept.  Never reads past the end-of-data line, so pipelined
    commands after it stay in ``reader``.
    """
    received = bytearray(_COMMAND_END)
    is_too_large = False
    while True:
        pending = _partial_end(received)
        if pending:
            # The end may have begun already: read just far enough to tell,
            # which never reaches past it.
            chunk = await reader.readexactly(len(END_OF_DATA) - pending)
        else:
            try:
                chunk = await reader.readuntil(END_OF_DATA)
            except asyncio.LimitOverrunError as overrun:
                # More than the reader's limit without the end: too large
                # whatever the limit, but the rest must still be read.
                chunk = await reader.read(overrun.consumed)
                is_too_large = True
        received += chunk
        is_done = received.endswith(END_OF_DATA)
        sent = len(received) - len(_COMMAND_END) - (3 if is_done else 0)
        if size_limit is not None and sent > size_limit:
            is_too_large = True
        if is_too_large:
            # Keep only what the search for the end still needs.
            del received[:-len(END_OF_DATA)]
        if is_done:
            return None if is_too_large else unstuff(bytes(received[:-3]))


def unstuff(lines: bytes) -> bytes:
    """Remove the dot that starts a line; ``lines`` begins with CRLF.

    The leading CRLF (that of the DATA command) is dropped from the result.
    """
    return lines.replace(b"\r\n.", b"\r\n")[len(_COMMAND_END):]


def _partial_end(received: bytearray) -> int:
    # Length of the longest tail of ``received`` that begins END_OF_DATA:
    # the end-of-data sequence cannot start earlier than that tail.
    for length in range(len(END_OF_DATA) - 1, 0, -1):
        if received.endswith(END_OF_DATA[:length]):
            return length
    return 0
