"""Seal and open objects: compressed, then AES-256-GCM in authenticated segments.

Format 1::

    offset  size  field
    0       6     magic  b"SRSEAL"
    6       1     format version (1)
    7       1     compression of each segment (1 = zlib, 2 = zstd)
    8       4     segment size: plaintext bytes per segment (big-endian)
    12      1     length of key id, n
    13      n     id of the key-encryption key that wrapped the data key
    13+n    2     length of the wrapped data key, w (big-endian)
    15+n    w     wrapped data key
    15+n+w  7     nonce prefix (random)
    22+n+w  ...   segments, each: 4-byte big-endian length L, then L bytes of
                  AES-256-GCM ciphertext of the compressed segment with its
                  16-byte tag

Segment i (counting from 0) is sealed under the nonce
``prefix || i (4 bytes, big-endian) || last`` where ``last`` is 1 for the
final segment and 0 for every other one (the STREAM construction of
Hoang, Reyhanitabar, Rogaway and Vizár, 2015): reordering segments
changes their nonces, dropping the tail leaves no segment marked last,
and appending after the last is refused, so every such change fails
authentication.  The associated data of every segment is the whole header
followed by the UTF-8 object key, so an object moved to another key or
given another header fails to open; segments spliced from another object
fail because every object has its own random data key, which also means
a (key, nonce) pair can never repeat.

Sealing and opening work a segment at a time, so memory stays bounded by
the segment size whatever the message size.  ``open_stream`` yields a
segment only after it has authenticated; a consumer that streams must
still treat an IntegrityError raised later (truncation) as failing the
whole object.
"""

from __future__ import annotations

import io
import secrets
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import IntegrityError
from vault.keys import KEY_BYTES, KeyProvider

_contexts = threading.local()

MAGIC = b"SRSEAL"
FORMAT_VERSION = 1
COMPRESSION_ZLIB = 1
COMPRESSION_ZSTD = 2
SEGMENT_SIZE = 1024 * 1024
NONCE_PREFIX_BYTES = 7
TAG_BYTES = 16
# zstd at level 3 seals mail about ten times faster than zlib at level 6,
# and compresses it slightly better (benchmarks/vault_bench.py); zlib
# objects still open.
ZSTD_LEVEL = 3
ZLIB_LEVEL = 6
# A segment's ciphertext is at most its compressed plaintext plus the tag;
# both codecs grow incompressible input by well under 1/128 of its size.
MAX_SEGMENT_CIPHERTEXT = SEGMENT_SIZE + SEGMENT_SIZE // 128 + 1024


def seal(keys: KeyProvider, object_key: str, plaintext: bytes) -> bytes:
    """Return the sealed form of ``plaintext`` bound to ``object_key``."""
    return b"".join(seal_stream(keys, object_key, segment_views(plaintext)))


def open_sealed(keys: KeyProvider, object_key: str, sealed: bytes) -> bytes:
    """Authenticate and decrypt a sealed object stored under ``object_key``.

    Raises IntegrityError, naming the key, if any byte of the object or its
    binding to the key has changed.
    """
    return b"".join(open_stream(keys, object_key, io.BytesIO(sealed)))


def seal_stream(keys: KeyProvider, object_key: str,
                plaintext: Iterable[bytes | memoryview], *,
                compression: int = COMPRESSION_ZSTD) -> Iterator[bytes]:
    """Yield the sealed form of a plaintext given as chunks of any size."""
    data_key = secrets.token_bytes(KEY_BYTES)
    key_id, wrapped = keys.wrap(data_key)
    encoded_id = key_id.encode("ascii")
    prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
    header = b"".join((
        MAGIC,
        struct.pack(">BBIB", FORMAT_VERSION, compression, SEGMENT_SIZE, len(encoded_id)),
        encoded_id,
        struct.pack(">H", len(wrapped)),
        wrapped,
        prefix,
    ))
    yield header
    cipher = AESGCM(data_key)
    compressor = _compressor()
    associated = header + object_key.encode("utf-8")
    index = 0
    for segment, is_last in _with_last(_segments(plaintext)):
        nonce = prefix + struct.pack(">IB", index, is_last)
        compressed = (compressor.compress(segment) if compression == COMPRESSION_ZSTD
                      else zlib.compress(segment, ZLIB_LEVEL))
        sealed = cipher.encrypt(nonce, compressed, associated)
        yield struct.pack(">I", len(sealed))
        yield sealed
        index += 1


def open_stream(keys: KeyProvider, object_key: str, source: BinaryIO) -> Iterator[bytes]:
    """Yield the plaintext of a sealed object, one authenticated segment at a time."""
    header, compression, key_id, wrapped, prefix = _read_header(object_key, source)
    try:
        data_key = keys.unwrap(key_id, wrapped)
    except IntegrityError as err:
        raise IntegrityError(f"{object_key}: {err}") from None
    cipher = AESGCM(data_key)
    associated = header + object_key.encode("utf-8")
    index = 0
    pending = _read_segment(object_key, source)
    if pending is None:
        raise IntegrityError(f"{object_key}: no segments (truncated)")
    while pending is not None:
        following = _read_segment(object_key, source)
        is_last = following is None
        nonce = prefix + struct.pack(">IB", index, is_last)
        try:
            compressed = cipher.decrypt(nonce, pending, associated)
        except InvalidTag:
            problem = "truncated or " if is_last else ""
            raise IntegrityError(
                f"{object_key}: segment {index} {problem}failed authentication"
            ) from None
        yield _decompress(object_key, compression, compressed)
        pending = following
        index += 1


def _compressor() -> zstandard.ZstdCompressor:
    # A compression context holds megabytes of tables; making one per
    # object cost more page faults than compressing a 1 MB message.  A
    # context serves one thread at a time, so each thread keeps its own.
    compressor: zstandard.ZstdCompressor | None = getattr(_contexts, "compressor", None)
    if compressor is None:
        compressor = _contexts.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_contexts, "decompressor", None)
    if decompressor is None:
        decompressor = _contexts.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def _decompress(object_key: str, compression: int, compressed: bytes) -> bytes:
    # Authenticated already, but bound the output all the same.
    try:
        if compression == COMPRESSION_ZSTD:
            return bytes(_decompressor().decompress(
                compressed, max_output_size=SEGMENT_SIZE))
        inflater = zlib.decompressobj()
        plaintext = inflater.decompress(compressed, SEGMENT_SIZE)
        if inflater.unconsumed_tail:
            raise zlib.error("segment inflates past its size")
        return plaintext
    except (zlib.error, zstandard.ZstdError) as err:
        raise IntegrityError(f"{object_key}: segment does not decompress: {err}") from None


def _read_header(
    object_key: str, source: BinaryIO
) -> tuple[bytes, int, str, bytes, bytes]:
    try:
        fixed = _read_exactly(source, 13)
        magic, (version, compression, segment_size, id_length) = fixed[:6], struct.unpack(
            ">BBIB", fixed[6:13])
        known = (COMPRESSION_ZLIB, COMPRESSION_ZSTD)
        if magic != MAGIC or version != FORMAT_VERSION or compression not in known:
            raise ValueError("not a sealed object of a known format")
        if segment_size != SEGMENT_SIZE:
            raise ValueError(f"unexpected segment size {segment_size}")
        encoded_id = _read_exactly(source, id_length)
        length_field = _read_exactly(source, 2)
        wrapped = _read_exactly(source, struct.unpack(">H", length_field)[0])
        prefix = _read_exactly(source, NONCE_PREFIX_BYTES)
        key_id = encoded_id.decode("ascii")
    except (ValueError, EOFError, struct.error) as err:
        raise IntegrityError(f"{object_key}: bad header: {err}") from None
    header = fixed + encoded_id + length_field + wrapped + prefix
    return header, compression, key_id, wrapped, prefix


def _read_segment(object_key: str, source: BinaryIO) -> bytes | None:
    length_field = source.read(4)
    if not length_field:
        return None
    try:
        if len(length_field) != 4:
            raise EOFError("cut inside a segment length")
        (length,) = struct.unpack(">I", length_field)
        if not TAG_BYTES <= length <= MAX_SEGMENT_CIPHERTEXT:
            raise ValueError(f"impossible segment length {length}")
        return _read_exactly(source, length)
    except (ValueError, EOFError) as err:
        raise IntegrityError(f"{object_key}: {err}") from None


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise EOFError(f"ends {size - len(data)} bytes early")
    return data


def segment_views(plaintext: bytes) -> Iterator[memoryview]:
    """Cut bytes into segment-sized views, without copying, for seal_stream."""
    view = memoryview(plaintext)
    for start in range(0, len(view), SEGMENT_SIZE):
        yield view[start:start + SEGMENT_SIZE]


def _segments(chunks: Iterable[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    # Re-cut chunks of any size into segments of exactly SEGMENT_SIZE (the
    # last may be shorter; an empty plaintext is one empty segment).  A
    # chunk that already is one segment passes through without a copy.
    buffer = bytearray()
    produced = False
    for chunk in chunks:
        if not buffer and len(chunk) == SEGMENT_SIZE:
            yield chunk
            produced = True
            continue
        buffer += chunk
        while len(buffer) >= SEGMENT_SIZE:
            yield bytes(buffer[:SEGMENT_SIZE])
            del buffer[:SEGMENT_SIZE]
            produced = True
    if buffer or not produced:
        yield bytes(buffer)


def _with_last(
    segments: Iterator[bytes | memoryview],
) -> Iterator[tuple[bytes | memoryview, bool]]:
    previous = next(segments)
    for segment in segments:
        yield previous, False
        previous = segment
    yield previous, True
