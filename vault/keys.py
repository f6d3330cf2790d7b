"""Key-encryption keys and the message-identity key.

The embedded default keeps its keys in one JSON file, mode 0600::

    {"format": 1,
     "current": "kek-20261204-1a2b",
     "keys": {"kek-20261204-1a2b": "<base64 of 32 bytes>"},
     "identity": "<base64 of 32 bytes>"}

``keys`` holds every key-encryption key (KEK) ever used, by id: sealed
objects are immutable, so an old id must stay readable for as long as any
object names it.  ``identity`` keys the HMAC that names message objects.
It is stored beside the KEKs rather than derived from one of them because
identity must survive KEK rotation: a message journaled again after a
rotation has to find its earlier copy, or deduplication would silently end.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from vault import ConfigError, IntegrityError
from vault.clock import now

KEY_BYTES = 32


class KeyProvider(Protocol):
    """Wrap and unwrap per-object data keys under a named KEK.

    ``wrap`` returns the id of the KEK it used with the wrapped key;
    ``unwrap`` takes that id back and raises IntegrityError if the wrapped
    key does not authenticate under it.
    """

    def wrap(self, data_key: bytes) -> tuple[str, bytes]: ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...

    def identity_key(self) -> bytes: ...


class LocalKeyFile:
    """Keys held in a local file: the embedded default."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._load()

    def _load(self) -> None:
        try:
            document = json.loads(self.path.read_text("utf-8"))
            self._keys = {
                key_id: base64.b64decode(value)
                for key_id, value in document["keys"].items()
            }
            self._current = document["current"]
            self._identity = base64.b64decode(document["identity"])
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"cannot read key file {self.path}: {err}") from None
        if self._current not in self._keys:
            raise ConfigError(f"key file {self.path}: current key id is missing")

    @classmethod
    def create(cls, path: Path) -> LocalKeyFile:
        """Write a new key file with one KEK and an identity key."""
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_id = f"kek-{now():%Y%m%d}-{secrets.token_hex(4)}"
        document = {
            "format": 1,
            "current": key_id,
            "keys": {key_id: _b64(secrets.token_bytes(KEY_BYTES))},
            "identity": _b64(secrets.token_bytes(KEY_BYTES)),
        }
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        with os.fdopen(os.open(path, flags, 0o600), "w") as handle:
            json.dump(document, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        return cls(path)

    def rotate(self) -> str:
        """Add a new KEK and make it current; every old key stays readable.

        The file is replaced atomically, so a crash leaves either the old
        or the new key set, never a file that has lost a key.
        """
        key_id = f"kek-{now():%Y%m%d}-{secrets.token_hex(4)}"
        document = json.loads(self.path.read_text("utf-8"))
        document["keys"][key_id] = _b64(secrets.token_bytes(KEY_BYTES))
        document["current"] = key_id
        scratch = self.path.with_name(self.path.name + ".new")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        with os.fdopen(os.open(scratch, flags, 0o600), "w") as handle:
            json.dump(document, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._load()
        return key_id

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """Wrap a data key under the current KEK (RFC 3394 AES key wrap)."""
        return self._current, aes_key_wrap(self._keys[self._current], data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Unwrap a data key; an unknown id or a bad wrap is an integrity error."""
        kek = self._keys.get(key_id)
        if kek is None:
            raise IntegrityError(f"object names unknown key id {key_id!r}")
        try:
            return aes_key_unwrap(kek, wrapped)
        except InvalidUnwrap:
            raise IntegrityError(f"data key does not unwrap under {key_id}") from None

    def identity_key(self) -> bytes:
        """Return the key of the HMAC that names message objects."""
        return self._identity


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
