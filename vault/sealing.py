"""Seal and open objects: compression, then AES-256-GCM under a wrapped key.

Format 1, one authenticated segment::

    offset  size  field
    0       6     magic  b"SRSEAL"
    6       1     format version (1)
    7       1     length of key id, n
    8       n     key id of the KEK that wrapped the data key (ASCII)
    8+n     2     length of the wrapped data key, w (big-endian)
    10+n    w     wrapped data key (RFC 3394 AES key wrap, 40 bytes)
    10+n+w  12    GCM nonce (random; each data key seals one object only)
    22+n+w  ...   AES-256-GCM ciphertext of zlib(plaintext), 16-byte tag

The associated data is the header (every byte before the ciphertext)
followed by the UTF-8 object key, so an object copied or renamed to another
key, or given another header, fails to open.  A fresh random data key per
object means a (key, nonce) pair can never repeat, whatever the nonce.
"""

from __future__ import annotations

import secrets
import struct
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import IntegrityError
from vault.keys import KEY_BYTES, KeyProvider

MAGIC = b"SRSEAL"
FORMAT_VERSION = 1
NONCE_BYTES = 12
COMPRESSION_LEVEL = 6


def seal(keys: KeyProvider, object_key: str, plaintext: bytes) -> bytes:
    """Return the sealed form of ``plaintext`` bound to ``object_key``."""
    data_key = secrets.token_bytes(KEY_BYTES)
    key_id, wrapped = keys.wrap(data_key)
    encoded_id = key_id.encode("ascii")
    header = b"".join((
        MAGIC,
        bytes((FORMAT_VERSION, len(encoded_id))),
        encoded_id,
        struct.pack(">H", len(wrapped)),
        wrapped,
        secrets.token_bytes(NONCE_BYTES),
    ))
    nonce = header[-NONCE_BYTES:]
    compressed = zlib.compress(plaintext, COMPRESSION_LEVEL)
    associated = header + object_key.encode("utf-8")
    return header + AESGCM(data_key).encrypt(nonce, compressed, associated)


def open_sealed(keys: KeyProvider, object_key: str, sealed: bytes) -> bytes:
    """Authenticate and decrypt a sealed object stored under ``object_key``.

    Raises IntegrityError, naming the key, if any byte of the object or its
    binding to the key has changed.
    """
    try:
        header, key_id, wrapped = _parse_header(sealed)
    except (ValueError, struct.error, IndexError):
        raise IntegrityError(f"{object_key}: not a sealed object") from None
    try:
        data_key = keys.unwrap(key_id, wrapped)
    except IntegrityError as err:
        raise IntegrityError(f"{object_key}: {err}") from None
    associated = header + object_key.encode("utf-8")
    try:
        compressed = AESGCM(data_key).decrypt(
            header[-NONCE_BYTES:], sealed[len(header):], associated
        )
    except InvalidTag:
        raise IntegrityError(f"{object_key}: authentication failed") from None
    return zlib.decompress(compressed)


def _parse_header(sealed: bytes) -> tuple[bytes, str, bytes]:
    if sealed[:6] != MAGIC or sealed[6] != FORMAT_VERSION:
        raise ValueError("bad magic or version")
    id_length = sealed[7]
    key_id = sealed[8:8 + id_length].decode("ascii")
    offset = 8 + id_length
    (wrapped_length,) = struct.unpack(">H", sealed[offset:offset + 2])
    offset += 2
    wrapped = sealed[offset:offset + wrapped_length]
    offset += wrapped_length + NONCE_BYTES
    if len(wrapped) != wrapped_length or len(sealed) < offset + 16:
        raise ValueError("truncated header")
    return sealed[:offset], key_id, wrapped
