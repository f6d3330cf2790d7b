"""Where an export's files go: a local folder, or a prefix in an S3 bucket.

An export names its location by a URI kept on the job's row: a plain path
for a folder, ``s3://BUCKET/PREFIX/`` for S3.  Both locations take every
file as a stream and hash it on the way (``WrittenFile``), so that the
manifest is built without reading the export back, and both hand files out
again as streams of chunks for the portal and ``export --fetch``.

On S3 a file is one multipart upload (one part, ``PART_SIZE`` bytes, in
memory at a time; a small file is one PUT) and appears whole or not at
all when the upload completes; each part carries its Content-MD5.  An
export bucket needs no Object Lock: the sealed originals stay in the
vault, and an export is a copy whose integrity its signed manifest proves.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from vault import VaultError

S3_SCHEME = "s3://"
# S3 asks at least 5 MiB of every part but the last; 8 MiB is what the
# AWS tools use.  A 64 MiB message is then eight parts.
PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024


class LocationError(VaultError):
    """An export location cannot be written or read; the message says why."""


@dataclasses.dataclass(frozen=True)
class WrittenFile:
    """A file of an export as written: its path inside, SHA-256 and size."""

    path: str
    sha256: str
    size: int

    def entry(self) -> dict[str, Any]:
        """Return the manifest's ``files`` entry."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


class HashingFile(io.RawIOBase):
    """A write-only, unseekable stream that hashes and counts what it passes on.

    Unseekable on purpose: zipfile then writes each member's sizes after
    its data instead of seeking back, so the bytes hashed are the bytes
    stored.
    """

    def __init__(self, path: str, sink: Callable[[bytes], Any]) -> None:
        super().__init__()
        self.path = path
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.sink(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def written(self) -> WrittenFile:
        """Return what passed through so far, as a manifest entry."""
        return WrittenFile(self.path, self.digest.hexdigest(), self.size)


class ExportLocation(Protocol):
    """Where one export's files are written and read back.

    ``relative`` paths use '/' and never leave the location.  ``create``
    yields a stream; the file exists (durably, whole) only once the block
    ends without error, and ``written()`` then describes it.  ``put``
    writes a small file at once.  ``natives`` groups many ``put``s so that
    they become visible together where the location can do that.
    """

    uri: str

    def create(self, relative: str) -> contextlib.AbstractContextManager[HashingFile]: ...

    def natives(self, folder: str) -> contextlib.AbstractContextManager[
            Callable[[str, bytes], WrittenFile]]: ...

    def listing(self, folder: str = "") -> tuple[list[str], list[str]]: ...

    def files(self, folder: str = "") -> Iterator[tuple[str, int]]: ...

    def size(self, relative: str) -> int | None: ...

    def chunks(self, relative: str) -> Iterator[bytes]: ...

    def abandon_partial(self) -> int: ...


def open_location(uri: str, client: Callable[[], Any] | None = None) -> ExportLocation:
    """Return the location a job's URI names; ``client`` makes S3 clients."""
    if uri.startswith(S3_SCHEME):
        bucket, _, prefix = uri[len(S3_SCHEME):].partition("/")
        if client is None:
            raise LocationError(f"{uri}: an S3 export needs [ediscovery] S3 settings")
        return S3Location(client(), bucket, prefix)
    return LocalLocation(Path(uri))


def safe_relative(relative: str) -> bool:
    """Tell whether ``relative`` names something inside an export (not .work)."""
    parts = relative.split("/")
    return bool(relative) and "\0" not in relative and not relative.startswith("/") \
        and all(part not in ("", ".", "..") for part in parts) and parts[0] != ".work"


class LocalLocation:
    """An export folder on this machine (write, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    @contextlib.contextmanager
    def create(self, relative: str) -> Iterator[HashingFile]:
        from vault.volumes import durable

        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with durable(target, binary=True) as handle:
            yield HashingFile(relative, handle.write)

    @contextlib.contextmanager
    def natives(self, folder: str) -> Iterator[Callable[[str, bytes], WrittenFile]]:
        from vault.volumes import fsync_directory

        # Written without an fsync each under a scratch name, then one sync
        # for the whole folder (not thousands of journal commits) before
        # the folder is renamed into place.
        scratch = self.root / (folder + ".part")
        if scratch.exists():
            shutil.rmtree(scratch)

        def put(relative: str, data: bytes) -> WrittenFile:
            path = scratch / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return WrittenFile(f"{folder}/{relative}", hashlib.sha256(data).hexdigest(),
                               len(data))

        scratch.mkdir(parents=True)
        yield put
        os.sync()
        if (self.root / folder).exists():
            shutil.rmtree(self.root / folder)
        os.replace(scratch, self.root / folder)
        fsync_directory((self.root / folder).parent)

    def listing(self, folder: str = "") -> tuple[list[str], list[str]]:
        base = self.root / folder
        if not base.is_dir():
            return [], []
        entries = sorted(base.iterdir())
        return ([p.name for p in entries if p.is_file()],
                [p.name for p in entries if p.is_dir() and p.name != ".work"])

    def files(self, folder: str = "") -> Iterator[tuple[str, int]]:
        from vault.custody import walk_files

        for relative in walk_files(self.root / folder):
            path = f"{folder}/{relative}" if folder else relative
            if safe_relative(path):
                yield path, (self.root / path).stat().st_size

    def size(self, relative: str) -> int | None:
        if not safe_relative(relative):
            return None
        root = self.root.resolve()
        target = (root / relative).resolve()
        if root not in target.parents or not target.is_file():
            return None
        return target.stat().st_size

    def chunks(self, relative: str) -> Iterator[bytes]:
        with open(self.root / relative, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                yield chunk

    def abandon_partial(self) -> int:
        return 0  # a scratch file is replaced when its volume is written again


class S3Location:
    """An export under a prefix of an S3 bucket, written by multipart uploads."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"{S3_SCHEME}{bucket}/{self.prefix}"

    @contextlib.contextmanager
    def create(self, relative: str) -> Iterator[HashingFile]:
        upload = _MultipartUpload(self, self.prefix + relative)
        try:
            stream = HashingFile(relative, upload.write)
            yield stream
            upload.complete()
        except BaseException:
            upload.abort()
            raise

    @contextlib.contextmanager
    def natives(self, folder: str) -> Iterator[Callable[[str, bytes], WrittenFile]]:
        # S3 has no rename: each native appears as it is put; the volume's
        # record, written after the block, is what marks them complete.
        def put(relative: str, data: bytes) -> WrittenFile:
            path = f"{folder}/{relative}"
            self._call("put_object", Key=self.prefix + path, Body=data,
                       ContentMD5=_md5(data))
            return WrittenFile(path, hashlib.sha256(data).hexdigest(), len(data))

        yield put

    def listing(self, folder: str = "") -> tuple[list[str], list[str]]:
        base = self.prefix + (folder.strip("/") + "/" if folder else "")
        names: list[str] = []
        folders: list[str] = []
        for page in self._pages("list_objects_v2", Prefix=base, Delimiter="/"):
            names += [item["Key"][len(base):] for item in page.get("Contents", [])]
            folders += [item["Prefix"][len(base):].rstrip("/")
                        for item in page.get("CommonPrefixes", [])]
        return sorted(names), sorted(name for name in folders if name != ".work")

    def files(self, folder: str = "") -> Iterator[tuple[str, int]]:
        base = self.prefix + (folder.strip("/") + "/" if folder else "")
        for page in self._pages("list_objects_v2", Prefix=base):
            for item in page.get("Contents", []):
                relative = item["Key"][len(self.prefix):]
                if safe_relative(relative):
                    yield relative, int(item["Size"])

    def size(self, relative: str) -> int | None:
        if not safe_relative(relative):
            return None
        from botocore.exceptions import ClientError  # type: ignore[import-untyped,unused-ignore]

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + relative)
        except ClientError:
            return None
        return int(head["ContentLength"])

    def chunks(self, relative: str) -> Iterator[bytes]:
        body = self._call("get_object", Key=self.prefix + relative)["Body"]
        try:
            yield from body.iter_chunks(READ_CHUNK)
        finally:
            body.close()

    def abandon_partial(self) -> int:
        """Abort uploads an interrupted run left open under the prefix."""
        aborted = 0
        for page in self._pages("list_multipart_uploads", Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                self._call("abort_multipart_upload", Key=upload["Key"],
                           UploadId=upload["UploadId"])
                aborted += 1
        return aborted

    def _pages(self, operation: str, **parameters: Any) -> Iterator[dict[str, Any]]:
        from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
            BotoCoreError, ClientError)

        try:
            yield from self.client.get_paginator(operation).paginate(
                Bucket=self.bucket, **parameters)
        except (BotoCoreError, ClientError) as err:
            raise LocationError(f"{self.uri}: {operation} failed: {err}") from None

    def _call(self, operation: str, **parameters: Any) -> Any:
        from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
            BotoCoreError, ClientError)

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **parameters)
        except (BotoCoreError, ClientError) as err:
            raise LocationError(f"{self.uri}: {operation} {parameters.get('Key', '')} "
                                f"failed: {err}") from None


class _MultipartUpload:
    """One S3 object written part by part; a single PUT when it stays small."""

    def __init__(self, location: S3Location, key: str) -> None:
        self.location = location
        self.key = key
        self.buffer = bytearray()
        self.upload_id = ""
        self.parts: list[dict[str, Any]] = []

    def write(self, data: Any) -> None:
        self.buffer += data
        if len(self.buffer) >= PART_SIZE:
            self._send_part()

    def complete(self) -> None:
        if not self.upload_id:
            self.location._call("put_object", Key=self.key, Body=bytes(self.buffer),
                                ContentMD5=_md5(self.buffer))
            return
        if self.buffer or not self.parts:
            self._send_part()
        self.location._call("complete_multipart_upload", Key=self.key,
                            UploadId=self.upload_id,
                            MultipartUpload={"Parts": self.parts})
        self.upload_id = ""

    def abort(self) -> None:
        if self.upload_id:
            with contextlib.suppress(LocationError):
                self.location._call("abort_multipart_upload", Key=self.key,
                                    UploadId=self.upload_id)

    def _send_part(self) -> None:
        if not self.upload_id:
            self.upload_id = self.location._call("create_multipart_upload",
                                                 Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        part = bytes(self.buffer)
        self.buffer.clear()
        answer = self.location._call("upload_part", Key=self.key, UploadId=self.upload_id,
                                     PartNumber=number, Body=part, ContentMD5=_md5(part))
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})


def _md5(data: bytes | bytearray) -> str:
    # Content-MD5 (RFC 1864) lets S3 refuse a part damaged in transit; it
    # is a transport check, not the export's integrity (that is SHA-256).
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def stream_zip(location: ExportLocation, folder: str) -> Iterator[bytes]:
    """Stream a zip of every file under ``folder``, one chunk in memory at a time.

    The output cannot seek, so zipfile writes each member's sizes after its
    data (a data descriptor), which every unzip tool reads.
    """
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for relative, size in location.files(folder):
            info = zipfile.ZipInfo(relative[len(folder) + 1:])
            info.file_size = size
            with archive.open(info, "w") as member:
                for chunk in location.chunks(relative):
                    member.write(chunk)
                    yield sink.drain()
    yield sink.drain()


class _Chunks(io.RawIOBase):
    """A write-only sink that hands over what was written since last asked."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        taken = b"".join(self.chunks)
        self.chunks.clear()
        return taken
