# A sealed object opens only as itself, under its own key, unaltered.

from __future__ import annotations

import pytest

from vault import IntegrityError
from vault.keys import LocalKeyFile
from vault.sealing import open_sealed, seal


@pytest.fixture
def keys(tmp_path):
    return LocalKeyFile.create(tmp_path / "keys.json")


def test_round_trip_returns_the_exact_bytes(keys):
    plaintext = b"From: a@example.com\r\n\r\n" + bytes(range(256)) * 100
    sealed = seal(keys, "messages/abc", plaintext)
    assert open_sealed(keys, "messages/abc", sealed) == plaintext
    assert plaintext not in sealed


def test_every_flipped_byte_is_detected(keys):
    sealed = seal(keys, "messages/abc", b"hello world" * 10)
    for position in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError, match="messages/abc"):
            open_sealed(keys, "messages/abc", bytes(damaged))


def test_object_moved_to_another_key_fails_to_open(keys):
    sealed = seal(keys, "messages/aaa", b"one message")
    with pytest.raises(IntegrityError, match="messages/bbb"):
        open_sealed(keys, "messages/bbb", sealed)


def test_truncated_object_fails_to_open(keys):
    sealed = seal(keys, "messages/abc", b"x" * 1000)
    for length in (0, 5, 30, len(sealed) - 1):
        with pytest.raises(IntegrityError):
            open_sealed(keys, "messages/abc", sealed[:length])


def test_key_file_is_private_and_names_its_key(keys):
    assert oct(keys.path.stat().st_mode & 0o777) == "0o600"
    sealed = seal(keys, "messages/abc", b"x")
    key_id = keys.wrap(b"\0" * 32)[0]
    assert key_id.encode() in sealed[:64]


def test_object_sealed_under_another_archive_key_fails(tmp_path, keys):
    other = LocalKeyFile.create(tmp_path / "other.json")
    sealed = seal(other, "messages/abc", b"x")
    with pytest.raises(IntegrityError, match="unknown key id"):
        open_sealed(keys, "messages/abc", sealed)


def test_nonces_and_data_keys_never_repeat(keys):
    # B20: a fresh data key per object, and a fresh nonce besides.
    headers = {seal(keys, "messages/same", b"same bytes")[:100] for _ in range(200)}
    assert len(headers) == 200


# Segment-level tampering, on a message of three segments and a bit.

import io
import struct

from vault.sealing import SEGMENT_SIZE, open_stream, seal_stream


def split_sealed(sealed: bytes, header_length: int) -> tuple[bytes, list[bytes]]:
    header, rest, segments = sealed[:header_length], sealed[header_length:], []
    while rest:
        (length,) = struct.unpack(">I", rest[:4])
        segments.append(rest[:4 + length])
        rest = rest[4 + length:]
    return header, segments


@pytest.fixture
def large(keys):
    plaintext = b"".join(i.to_bytes(4, "big") for i in range(SEGMENT_SIZE * 3 // 4 + 1000))
    sealed = seal(keys, "messages/big", plaintext)
    id_length = sealed[12]
    (wrapped_length,) = struct.unpack(">H", sealed[13 + id_length:15 + id_length])
    header_length = 15 + id_length + wrapped_length + 7
    return plaintext, sealed, header_length


def test_large_message_round_trips_in_segments(keys, large):
    plaintext, sealed, header_length = large
    _, segments = split_sealed(sealed, header_length)
    assert len(segments) == 4
    assert open_sealed(keys, "messages/big", sealed) == plaintext


@pytest.mark.parametrize("change", ["drop_last", "drop_middle", "swap", "duplicate", "append"])
def test_segment_tampering_is_detected(keys, large, change):
    _, sealed, header_length = large
    header, segments = split_sealed(sealed, header_length)
    if change == "drop_last":
        segments = segments[:-1]
    elif change == "drop_middle":
        segments = segments[:1] + segments[2:]
    elif change == "swap":
        segments[0], segments[1] = segments[1], segments[0]
    elif change == "duplicate":
        segments.insert(1, segments[1])
    else:
        segments.append(segments[-1])
    with pytest.raises(IntegrityError, match="messages/big"):
        open_sealed(keys, "messages/big", header + b"".join(segments))


def test_segment_spliced_from_another_object_is_detected(keys, large):
    plaintext, sealed, header_length = large
    other = seal(keys, "messages/big", plaintext)
    header, segments = split_sealed(sealed, header_length)
    _, foreign = split_sealed(other, header_length)
    segments[1] = foreign[1]
    with pytest.raises(IntegrityError, match="segment 1"):
        open_sealed(keys, "messages/big", header + b"".join(segments))


def test_streaming_seal_and_open_match_the_whole_forms(keys):
    plaintext = bytes(range(256)) * 9000
    pieces = [plaintext[i:i + 777] for i in range(0, len(plaintext), 777)]
    sealed = b"".join(seal_stream(keys, "messages/s", iter(pieces)))
    assert b"".join(open_stream(keys, "messages/s", io.BytesIO(sealed))) == plaintext


def test_empty_message_seals_and_opens(keys):
    assert open_sealed(keys, "messages/e", seal(keys, "messages/e", b"")) == b""


def test_zlib_sealed_objects_still_open(keys):
    from vault.sealing import COMPRESSION_ZLIB

    plaintext = b"older objects were compressed with zlib\r\n" * 50000
    sealed = b"".join(seal_stream(keys, "messages/z", [plaintext], compression=COMPRESSION_ZLIB))
    assert sealed[7] == COMPRESSION_ZLIB
    assert open_sealed(keys, "messages/z", sealed) == plaintext
    assert seal(keys, "messages/z", plaintext)[7] == 2
