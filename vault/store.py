"""Object stores: write-once keys, durable before they return.

Keys are slash-separated paths of ASCII names (``messages/3f…``,
``receipts/2026/12/04/153012.345678-9c1e``).  Listing yields keys in
byte order, which for receipt keys is time order: the catalogue follows
the archive by listing receipts after its cursor.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from vault import MissingObjectError, ObjectExistsError, RetentionError, StoreError
from vault.clock import now

ABANDONED_SCRATCH_SECONDS = 3600
# Threads a FileSyncer flushes a batch's files with.
SYNC_WORKERS = 16
_KEY = re.compile(r"[a-z]+(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


@dataclasses.dataclass(frozen=True)
class Lock:
    """What keeps an object: retention until a time, and a legal hold."""

    retain_until: dt.datetime
    legal_hold: bool = False

    def is_locked(self, at: dt.datetime) -> bool:
        """Tell whether the object may not be deleted at time ``at``."""
        return self.legal_hold or at < self.retain_until


class ObjectStore(Protocol):
    """Store sealed objects under write-once keys, locked until their time.

    ``data`` may be bytes or an iterable of chunks (a sealing stream), so
    a store that can write as it goes keeps memory bounded.
    ``put`` returns only once the object is durable and locked until
    ``retain_until``; it raises ObjectExistsError if the key is taken (never
    overwriting) and StoreError on any failure, after which nothing is
    visible under the key.  ``get`` raises MissingObjectError for an absent
    key.  ``list`` yields the keys under ``prefix`` in byte order, strictly
    after ``after``.

    Locks only ever grow stronger by time: ``extend_retention`` moves
    retain-until later and silently keeps a later date already set; no
    call shortens it.  ``set_legal_hold`` sets or clears the hold flag
    (which named holds keep it on is the holds module's business).
    ``delete`` raises RetentionError while the object is under retention
    or legal hold, and MissingObjectError if it is absent.

    ``parallel_reads`` is how many ``get`` calls it pays a reader to keep
    in flight: more than one where a read waits on the network, one where
    a read is work for this machine's CPU.
    """

    parallel_reads: int

    def put(self, key: str, data: bytes | Iterable[bytes], *,
            retain_until: dt.datetime) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str, after: str = "") -> Iterator[str]: ...

    def lock(self, key: str) -> Lock: ...

    def extend_retention(self, key: str, retain_until: dt.datetime) -> None: ...

    def set_legal_hold(self, key: str, on: bool) -> None: ...

    def delete(self, key: str) -> None: ...


class Syncer(Protocol):
    """Make written files and new directory entries durable.

    Both raise OSError when the data may not have reached stable storage;
    the caller must then treat everything it was syncing as lost.
    """

    def sync_files(self, paths: Sequence[Path]) -> None: ...

    def sync_directory(self, directory: Path) -> None: ...


class FileSyncer:
    """Sync each file's data with fdatasync, each directory with fsync.

    The files of a batch are synced in parallel threads: the file system
    then commits its journal once for all of them (ext4 and XFS join
    concurrent waiters into one commit), where one after another each
    would wait for a commit of its own.
    """

    def __init__(self, workers: int = SYNC_WORKERS) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="store-sync")

    def sync_files(self, paths: Sequence[Path]) -> None:
        """Flush the data of every file in ``paths``."""
        descriptors: list[int] = []
        try:
            for path in paths:
                descriptors.append(os.open(path, os.O_RDONLY))
            if len(descriptors) == 1:
                os.fdatasync(descriptors[0])
                return
            # Every flush ends before any descriptor is closed, even when
            # one fails; then the first failure is raised.
            flushes = [self._pool.submit(os.fdatasync, d) for d in descriptors]
            concurrent.futures.wait(flushes)
            for flush in flushes:
                flush.result()
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    def sync_directory(self, directory: Path) -> None:
        """Flush the entries of ``directory``."""
        _fsync_directory(directory)


@dataclasses.dataclass(frozen=True)
class StagedObject:
    """An object written to scratch space, neither durable nor visible yet.

    ``is_shared`` marks a content-addressed object: finding its key already
    stored when it is published means the same bytes are there, which is
    success, not a conflict.  ``scratch`` None stages only a stronger lock
    for an object already stored (``LocalWormStore.stage_lock``).
    """

    key: str
    scratch: Path | None
    retain_until: dt.datetime
    is_shared: bool = False


# An object without a lock record (written before locks existed, or whose
# record was removed) is kept for ever rather than released.
FOREVER = Lock(dt.datetime.max.replace(tzinfo=dt.timezone.utc))


def _read_all(descriptor: int) -> bytes:
    size = os.fstat(descriptor).st_size
    data = os.read(descriptor, size + 1)
    if len(data) == size:
        return data
    # A short read, or a file that grew after fstat (it never should:
    # objects are written once): read on to the end.
    chunks = [data]
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


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
    read-only.  Beside each object, ``locks/<key>`` records its lock as
    JSON (``{"retain_until": ISO 8601 UTC, "legal_hold": bool}``), written
    before the object itself so that no object is ever visible unlocked;
    the store refuses to shorten it or to delete a locked object.

    ``put`` does this for one object.  ``stage`` and ``publish`` split it
    for group commit: many objects are staged (written, not synced) by
    concurrent writers, then published together, sharing the flushes
    (see ``vault.commit``).  Every flush goes through ``syncer``.

    This protects against mistakes and bugs, not against root: anyone who
    can write these directories can still delete or edit files.  Use the
    S3 Object Lock store where deletion must be impossible.
    """

    # A read is a file from the page cache: CPU work under the GIL, which
    # reader threads only fight over (the catalogue indexed 20% faster
    # reading in line than with four threads).
    parallel_reads = 1

    def __init__(self, root: Path, syncer: Syncer | None = None) -> None:
        self.root = Path(root)
        self.syncer: Syncer = syncer or FileSyncer()
        self._objects = self.root / "objects"
        self._locks = self.root / "locks"
        self._scratch = self.root / "tmp"
        for directory in (self._objects, self._locks, self._scratch):
            directory.mkdir(parents=True, exist_ok=True)
        self._mutex_path = self._locks / ".mutex"
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

    def put(self, key: str, data: bytes | Iterable[bytes], *,
            retain_until: dt.datetime) -> None:
        """Make ``data`` durable under ``key``, locked; see ObjectStore."""
        if (self._objects / check_key(key)).exists():
            raise ObjectExistsError(f"{key} already stored")
        self.publish([[self.stage(key, data, retain_until=retain_until)]])

    def stage(self, key: str, data: bytes | Iterable[bytes], *,
              retain_until: dt.datetime, is_shared: bool = False) -> StagedObject:
        """Write ``data`` to scratch space for a later ``publish``.

        Nothing is synced or visible yet, and many threads may stage at
        once.  Raises StoreError if the bytes cannot be written.
        """
        scratch = self._scratch / f"{secrets.token_hex(8)}.part"
        staged = StagedObject(check_key(key), scratch, retain_until, is_shared)
        try:
            self._write(scratch, data)
        except BaseException as err:
            scratch.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise StoreError(f"cannot store {key}: {err.strerror or err}") from err
            raise
        return staged

    def stage_lock(self, key: str, retain_until: dt.datetime) -> StagedObject:
        """Stage a lock lengthened to ``retain_until`` for a stored object.

        It is published with the rest of a batch, in the same flushes;
        publishing raises MissingObjectError if the object is gone by then.
        """
        return StagedObject(check_key(key), None, retain_until, is_shared=True)

    def discard(self, staged: Iterable[StagedObject]) -> None:
        """Remove the scratch files of staged objects."""
        for item in staged:
            if item.scratch is not None:
                item.scratch.unlink(missing_ok=True)

    def publish(self, tiers: Sequence[Sequence[StagedObject]]) -> None:
        """Make staged objects durable and visible, tier after tier.

        A batch costs one sync of every file's data, then one fsync per
        directory touched: the lock records' directories, then each tier's
        object directories in turn.  No object is visible before its bytes
        and its lock record are durable, and none of a tier before every
        object of the tiers before it is (so a receipt never names a
        message that a crash could take away).

        Raises StoreError for the whole batch on any failure,
        ObjectExistsError if a key not marked ``is_shared`` is taken, or
        MissingObjectError if a staged lock's object is gone.  The
        objects of a failed batch that are not shared are taken back; a
        shared one may stay, complete and locked, for a retry to find.
        Staged objects are discarded either way.
        """
        staged = [item for tier in tiers for item in tier]
        linked: list[Path] = []
        try:
            self._publish_locks(staged)
            for tier in tiers:
                self._link_tier(tier, linked)
        except FileExistsError as err:
            self._unpublish(linked)
            raise ObjectExistsError(f"{err.filename} already stored") from None
        except OSError as err:
            self._unpublish(linked)
            raise StoreError(f"cannot store {len(staged)} object(s): "
                             f"{err.strerror or err}") from err
        finally:
            self.discard(staged)

    def _publish_locks(self, staged: Sequence[StagedObject]) -> None:
        # Under the mutex each record becomes the stronger of the one asked
        # for and the one already there, whichever process wrote that.
        with self._mutex():
            wanted: dict[str, Lock] = {}
            for item in staged:
                if item.scratch is None and not self.exists(item.key):
                    raise MissingObjectError(f"{item.key} is not stored")
                current = wanted.get(item.key) or self._read_lock(item.key)
                stronger = _stronger(current, item.retain_until)
                if stronger != current:
                    wanted[item.key] = stronger
            records = {key: self._scratch / f"{secrets.token_hex(8)}.part"
                       for key in wanted}
            try:
                for key, scratch in records.items():
                    self._write(scratch, _lock_record(wanted[key]))
                self.syncer.sync_files(
                    [item.scratch for item in staged if item.scratch is not None]
                    + list(records.values()))
                directories = set()
                for key, scratch in records.items():
                    path = self._locks / key
                    self._make_parents(path.parent)
                    os.replace(scratch, path)
                    directories.add(path.parent)
                self._sync_directories(directories)
            finally:
                for scratch in records.values():
                    scratch.unlink(missing_ok=True)

    def _link_tier(self, tier: Sequence[StagedObject], linked: list[Path]) -> None:
        directories = set()
        for item in tier:
            if item.scratch is None:
                continue
            target = self._objects / item.key
            self._make_parents(target.parent)
            try:
                os.link(item.scratch, target)
            except FileExistsError:
                if item.is_shared:
                    continue
                raise
            if not item.is_shared:
                linked.append(target)
            directories.add(target.parent)
        self._sync_directories(directories)

    def _unpublish(self, linked: Sequence[Path]) -> None:
        # Only what nobody else can name is taken back: a shared object may
        # already be named by another delivery's receipt.
        for target in linked:
            with contextlib.suppress(OSError):
                target.unlink()
        with contextlib.suppress(OSError):
            self._sync_directories({target.parent for target in linked})

    def _sync_directories(self, directories: Iterable[Path]) -> None:
        for directory in sorted(directories):
            self.syncer.sync_directory(directory)

    def lock(self, key: str) -> Lock:
        """Return the lock recorded for ``key``."""
        if not self.exists(key):
            raise MissingObjectError(f"{key} is not stored")
        return self._read_lock(key) or FOREVER

    def extend_retention(self, key: str, retain_until: dt.datetime) -> None:
        """Move retain-until later; a later date already set is kept."""
        self.lock(key)
        self._change_lock(key, retain_until=retain_until)

    def set_legal_hold(self, key: str, on: bool) -> None:
        """Set or clear the legal hold flag of ``key``."""
        self.lock(key)
        self._change_lock(key, legal_hold=on)

    def delete(self, key: str) -> None:
        """Delete an object whose retention has passed and that is not held."""
        with self._mutex():
            current = self.lock(key)
            if current.is_locked(now()):
                reason = "under legal hold" if current.legal_hold else (
                    f"retained until {current.retain_until.isoformat()}")
                raise RetentionError(f"{key} is {reason}")
            target = self._objects / key
            target.unlink()
            self.syncer.sync_directory(target.parent)
            (self._locks / key).unlink(missing_ok=True)

    def _read_lock(self, key: str) -> Lock | None:
        try:
            record = json.loads((self._locks / key).read_text("utf-8"))
        except FileNotFoundError:
            return None
        return Lock(dt.datetime.fromisoformat(record["retain_until"]),
                    bool(record["legal_hold"]))

    def _change_lock(self, key: str, *, retain_until: dt.datetime | None = None,
                     legal_hold: bool | None = None) -> None:
        # One writer at a time across processes, so that two extensions
        # racing can never leave the earlier of their dates behind.
        with self._mutex():
            current = self._read_lock(key)
            until = retain_until or (current.retain_until if current else FOREVER.retain_until)
            if current is not None:
                until = max(until, current.retain_until)
            hold = legal_hold if legal_hold is not None else bool(current and current.legal_hold)
            if current == Lock(until, hold):
                return
            path = self._locks / key
            scratch = self._scratch / f"{secrets.token_hex(8)}.part"
            try:
                self._write(scratch, _lock_record(Lock(until, hold)))
                self.syncer.sync_files([scratch])
                self._make_parents(path.parent)
                os.replace(scratch, path)
                self.syncer.sync_directory(path.parent)
            finally:
                scratch.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        with open(self._mutex_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``."""
        try:
            # os.path, not pathlib: the follower reads two objects per
            # message, and pathlib's joins cost as much as the read.
            # os.open and os.read: four system calls, not open()'s seven
            # (each gives up the GIL, and taking it back is what costs).
            descriptor = os.open(os.path.join(self._objects, check_key(key)),
                                 os.O_RDONLY | os.O_CLOEXEC)
            try:
                return _read_all(descriptor)
            finally:
                os.close(descriptor)
        except FileNotFoundError:
            raise MissingObjectError(f"{key} is not stored") from None
        except OSError as err:
            raise StoreError(f"cannot read {key}: {err.strerror or err}") from err

    def exists(self, key: str) -> bool:
        """Tell whether an object is stored under ``key``."""
        return (self._objects / check_key(key)).is_file()

    def list(self, prefix: str, after: str = "") -> Iterator[str]:
        """Yield keys under ``prefix`` in byte order, strictly after ``after``.

        Only directories that can hold keys after ``after`` are read, and
        no file is stat'ed: a listing from a recent receipt costs the
        receipts of its day and later, however large the vault.
        """
        yield from self._walk(os.path.join(self._objects, check_key(prefix)), prefix, after)

    def _walk(self, directory: str, key_prefix: str, after: str) -> Iterator[str]:
        # Names are compared with the rest of ``after`` below this
        # directory; a directory on the path to ``after`` is entered.
        rest = after[len(key_prefix) + 1:] if after.startswith(key_prefix + "/") else ""
        try:
            with os.scandir(directory) as entries:
                wanted = sorted(
                    (entry.name, entry.is_dir()) for entry in entries
                    if entry.name + "/" >= rest or rest.startswith(entry.name + "/"))
        except FileNotFoundError:
            return
        for name, is_directory in wanted:
            key = f"{key_prefix}/{name}"
            if is_directory:
                yield from self._walk(os.path.join(directory, name), key, after)
            elif key > after:
                yield key

    def _write(self, path: Path, data: bytes | Iterable[bytes]) -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            for chunk in (data,) if isinstance(data, bytes) else data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(descriptor, view):]
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
            self.syncer.sync_directory(new.parent)


def _stronger(current: Lock | None, retain_until: dt.datetime) -> Lock:
    if current is None:
        return Lock(retain_until)
    return Lock(max(current.retain_until, retain_until), current.legal_hold)


def _lock_record(lock: Lock) -> bytes:
    return json.dumps({
        "retain_until": lock.retain_until.astimezone(dt.timezone.utc).isoformat(),
        "legal_hold": lock.legal_hold,
    }).encode()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
