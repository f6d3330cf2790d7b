"""Object stores: write-once keys, durable before they return.

Keys are slash-separated paths of ASCII names (``messages/3f…``,
``receipts/2026/12/04/153012.345678-9c1e``).  Listing yields keys in
byte order, which for receipt keys is time order: the catalogue follows
the archive by listing receipts after its cursor.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from vault import MissingObjectError, ObjectExistsError, StoreError

ABANDONED_SCRATCH_SECONDS = 3600
_KEY = re.compile(r"[a-z]+(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


class ObjectStore(Protocol):
    """Store sealed objects under write-once keys.

    ``put`` returns only once the object is durable; it raises
    ObjectExistsError if the key is taken (never overwriting) and
    StoreError on any failure, after which nothing is visible under the key.
    ``get`` raises MissingObjectError for an absent key.  ``list`` yields
    the keys under ``prefix`` in byte order, strictly after ``after``.
    """

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str, after: str = "") -> Iterator[str]: ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed object key, else raise."""
    if not _KEY.fullmatch(key) or "/.." in key:
        raise ValueError(f"malformed object key {key!r}")
    return key


class LocalWormStore:
    """Write-once files on one machine: the embedded default store.

    Each object is written to a temporary file, fsync'd, hard-linked into
    place (``link`` fails if the name exists, so two writers can never
    overwrite each other), and its directory fsync'd.  Files are made
    read-only.  This protects against mistakes and bugs, not against root:
    anyone who can write the directory can still delete files.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._scratch = self.root / "tmp"
        for directory in (self._objects, self._scratch):
            directory.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_scratch()

    def _remove_abandoned_scratch(self) -> None:
        # A writer killed between its temporary file and the link leaves the
        # temporary file behind; nothing refers to it, so once it is older
        # than any write could take, it can go.
        cutoff = time.time() - ABANDONED_SCRATCH_SECONDS
        for scratch in self._scratch.glob("*.part"):
            try:
                if scratch.stat().st_mtime < cutoff:
                    scratch.unlink()
            except FileNotFoundError:
                pass

    def put(self, key: str, data: bytes) -> None:
        """Make ``data`` durable under ``key``; see ObjectStore."""
        target = self._objects / check_key(key)
        if target.exists():
            raise ObjectExistsError(f"{key} already stored")
        scratch = self._scratch / f"{secrets.token_hex(8)}.part"
        try:
            self._write_durably(scratch, data)
            self._make_parents(target.parent)
            os.link(scratch, target)
            _fsync_directory(target.parent)
        except FileExistsError:
            raise ObjectExistsError(f"{key} already stored") from None
        except OSError as err:
            raise StoreError(f"cannot store {key}: {err.strerror or err}") from err
        finally:
            scratch.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``."""
        try:
            return (self._objects / check_key(key)).read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(f"{key} is not stored") from None
        except OSError as err:
            raise StoreError(f"cannot read {key}: {err.strerror or err}") from err

    def exists(self, key: str) -> bool:
        """Tell whether an object is stored under ``key``."""
        return (self._objects / check_key(key)).is_file()

    def list(self, prefix: str, after: str = "") -> Iterator[str]:
        """Yield keys under ``prefix`` in byte order, strictly after ``after``."""
        yield from self._walk(self._objects / check_key(prefix), prefix, after)

    def _walk(self, directory: Path, key_prefix: str, after: str) -> Iterator[str]:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        for name in names:
            key = f"{key_prefix}/{name}"
            path = directory / name
            if path.is_dir():
                subtree = key + "/"
                # Every key under this directory sorts before ``after``.
                if subtree < after and not after.startswith(subtree):
                    continue
                yield from self._walk(path, key, after)
            elif key > after:
                yield key

    def _write_durably(self, path: Path, data: bytes) -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _make_parents(self, directory: Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                pass
            _fsync_directory(new.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
