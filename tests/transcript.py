"""Replay a raw SMTP client transcript (``.smtp`` case files) over TCP.

Each command is sent after the server's reply to the one before; the DATA
block, from after ``DATA`` up to and including the final ``CRLF . CRLF``,
goes in one write, as the case files prescribe.
"""

from __future__ import annotations

import socket


def read_reply(stream) -> bytes:
    """Read one possibly multi-line SMTP reply."""
    lines = []
    while True:
        line = stream.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def replay(transcript: bytes, port: int) -> list[tuple[bytes, bytes]]:
    """Play ``transcript`` to 127.0.0.1:port; return (sent, reply) pairs."""
    head, _, rest = transcript.partition(b"DATA\r\n")
    block, end, tail = rest.rpartition(b"\r\n.\r\n")
    commands = head.split(b"\r\n")[:-1]
    exchanges = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        stream = connection.makefile("rb")
        exchanges.append((b"", read_reply(stream)))
        for command in [*commands, b"DATA"]:
            connection.sendall(command + b"\r\n")
            exchanges.append((command, read_reply(stream)))
        connection.sendall(block + end)
        exchanges.append((b"<data>", read_reply(stream)))
        for command in tail.split(b"\r\n"):
            if command:
                connection.sendall(command + b"\r\n")
                exchanges.append((command, read_reply(stream)))
    return exchanges
