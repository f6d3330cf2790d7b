# DATA read in chunks ends where RFC 5321 says and unstuffs as it says
# (section 4.5.2), however the octets are split across network reads, and
# never reads past the end-of-data line.

from __future__ import annotations

import asyncio
import random

import pytest

from vault.data_section import read_data

PIPELINED = b"MAIL FROM:<next@example.com>\r\n"


def line_by_line(stream: bytes) -> tuple[bytes, bytes]:
    """Return (message, rest) as a reader of one CRLF line at a time would.

    This is the rule as RFC 5321 states it, and as aiosmtpd applies it.
    """
    lines = []
    position = 0
    while True:
        end = stream.index(b"\r\n", position) + 2
        line = stream[position:end]
        position = end
        if line == b".\r\n":
            return b"".join(lines), stream[position:]
        lines.append(line[1:] if line.startswith(b".") else line)


def read_in_pieces(pieces: list[bytes], size_limit: int | None = None,
                   reader_limit: int = 1 << 20) -> tuple[bytes | None, bytes]:
    """Feed ``pieces`` to a stream one at a time; return (message, rest)."""

    async def run() -> tuple[bytes | None, bytes]:
        reader = asyncio.StreamReader(limit=reader_limit)

        async def feed() -> None:
            for piece in pieces:
                reader.feed_data(piece)
                await asyncio.sleep(0)
            reader.feed_eof()

        feeding = asyncio.ensure_future(feed())
        message = await read_data(reader, size_limit)
        await feeding
        return message, await reader.read()

    return asyncio.run(run())


def split_everywhere(stream: bytes) -> list[list[bytes]]:
    return [[stream[:cut], stream[cut:]] for cut in range(1, len(stream))]


@pytest.mark.parametrize("stream, message", [
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"a\r\n..\r\n...\r\nb\r\n.\r\n", b"a\r\n.\r\n..\r\nb\r\n"),
    (b".a\r\n.\r\n", b"a\r\n"),
    (b"a\r\n\r\n.\r\n", b"a\r\n\r\n"),
    (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),
    (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n"),
    (b"x.\r\n.\r\n", b"x.\r\n"),
])
def test_message_ends_and_unstuffs_as_rfc_5321_says_at_every_split(stream, message):
    assert line_by_line(stream + PIPELINED) == (message, PIPELINED)
    assert read_in_pieces([stream + PIPELINED]) == (message, PIPELINED)
    for pieces in split_everywhere(stream + PIPELINED):
        assert read_in_pieces(pieces) == (message, PIPELINED), pieces


def test_byte_by_byte_delivery_reads_the_same_message():
    stream = b"Subject: dots\r\n\r\n..\r\n.\r\r\n.\n\r\n.\r\n"
    pieces = [stream[i:i + 1] for i in range(len(stream))] + [PIPELINED]
    assert read_in_pieces(pieces) == (b"Subject: dots\r\n\r\n.\r\n\r\r\n\n\r\n",
                                      PIPELINED)


def test_random_streams_of_line_ends_and_dots_agree_with_the_line_reader():
    # Random text over the four octets that matter, split at random points.
    generator = random.Random(4)
    for _ in range(2000):
        length = generator.randrange(40)
        body = bytes(generator.choice(b"\r\n.a") for _ in range(length))
        stream = body + b"\r\n.\r\n" + PIPELINED
        expected = line_by_line(stream)
        cuts = sorted(generator.sample(range(1, len(stream)), min(3, len(stream) - 1)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        assert read_in_pieces(pieces) == expected, stream


def test_size_limit_counts_octets_as_sent_and_keeps_the_session():
    stream = b"..\r\n" + b"y" * 94 + b"\r\n.\r\n"   # 100 octets before the end line
    assert read_in_pieces([stream, PIPELINED], size_limit=100) == (
        b".\r\n" + b"y" * 94 + b"\r\n", PIPELINED)
    assert read_in_pieces([stream, PIPELINED], size_limit=99) == (None, PIPELINED)


def test_message_past_the_reader_limit_is_too_large_and_is_read_to_its_end():
    stream = (b"z" * 5000 + b"\r\n") * 3 + b".\r\n"
    pieces = [stream[i:i + 700] for i in range(0, len(stream), 700)] + [PIPELINED]
    assert read_in_pieces(pieces, size_limit=None, reader_limit=1024) == (
        None, PIPELINED)
