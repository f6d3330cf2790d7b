"""Sealed objects in an S3 bucket with Object Lock: WORM enforced by S3.

The bucket must have versioning and Object Lock enabled; the store checks
both when it opens and refuses to run without them.  Every object is
written once, in COMPLIANCE mode, until the retain-until date the
retention policy gave it: from then on nobody, the bucket's owner and this
store included, can delete that version or shorten its retention.  Legal
holds are S3 legal holds on the same version.

Works with AWS S3 and S3-compatible servers that implement Object Lock
(MinIO, Ceph RGW).  The store never sends
``x-amz-bypass-governance-retention`` and never writes GOVERNANCE mode.

Versions.  With versioning on, a plain DELETE does not remove anything: it
stacks a delete marker over the object, which hides it from GET and HEAD
without a version id.  The store therefore reads by version id, always
the *first* version written under a key (write-once means that is the one
that counts), so a delete marker placed by someone else never makes a
message look lost.  The id of each first version is cached: it cannot
change while the version exists.

IAM: the store needs s3:PutObject, s3:GetObject, s3:GetObjectVersion,
s3:ListBucket, s3:ListBucketVersions, s3:PutObjectRetention,
s3:GetObjectRetention, s3:PutObjectLegalHold, s3:GetObjectLegalHold,
s3:GetBucketVersioning and s3:GetBucketObjectLockConfiguration; and
s3:DeleteObjectVersion only where purging is wanted.  Without the two
Get...Retention/LegalHold permissions S3 silently leaves the lock headers
out of HEAD responses, and the store would see objects as unlocked (S3
itself still refuses to delete or shorten them).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
    BotoCoreError,
    ClientError,
)

from vault import (
    ConfigError,
    MissingObjectError,
    ObjectExistsError,
    RetentionError,
    StoreError,
)
from vault.clock import now
from vault.store import Lock, check_key

log = logging.getLogger(__name__)

COMPLIANCE = "COMPLIANCE"
VERSION_CACHE_SIZE = 100_000
_PREFIX = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*/)*")
# Error codes S3 uses for an absent key or version (HEAD has no body, so
# botocore reports only the status there).
_ABSENT = {"NoSuchKey", "NoSuchVersion", "404"}
_DENIED = {"AccessDenied", "403"}
# Not a real date: what ``lock`` reports for a version S3 keeps unretained.
UNRETAINED = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """Return a boto3 S3 client; credentials come from the standard chain.

    ``endpoint_url`` names an S3-compatible server (MinIO, Ceph RGW);
    leave it None for AWS.  Path-style addressing keeps bucket names out
    of DNS, which such servers often need.
    """
    import boto3  # type: ignore[import-untyped,unused-ignore]
    from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]

    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10, read_timeout=60,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config)


class S3ObjectLockStore:
    """Objects in a versioned S3 bucket under COMPLIANCE-mode Object Lock.

    Implements the ObjectStore protocol (see vault.store); every object
    key is stored as ``prefix + key``.  ``client`` is a boto3 S3 client,
    taken from outside so that tests can watch every request it sends.

    Each PUT carries two integrity checksums the store computes itself,
    Content-MD5 and x-amz-checksum-sha256, so that it never depends on
    botocore's ``request_checksum_calculation`` setting: with
    ``when_required`` botocore sends neither (case B17), and S3 refuses a
    PUT with Object Lock parameters that has no checksum.  Reads check the
    stored SHA-256 where the server returns it.
    """

    # Each GET waits a round trip on the network.
    parallel_reads = 8

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"S3 prefix {prefix!r}: expected names of letters, digits, "
                "'.', '_' or '-' separated by '/'")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self._first_versions: collections.OrderedDict[str, str] = (
            collections.OrderedDict())
        self._cache_mutex = threading.Lock()

    @classmethod
    def open(cls, client: Any, bucket: str, prefix: str = "") -> S3ObjectLockStore:
        """Return a store over ``bucket`` once it is checked fit for WORM."""
        store = cls(client, bucket, prefix)
        store.check_bucket()
        return store

    def check_bucket(self) -> None:
        """Raise ConfigError unless the bucket has versioning and Object Lock.

        Both are needed: Object Lock protects versions, and a bucket
        without it lets anyone with delete rights destroy mail.
        """
        with self._translating(f"cannot check S3 bucket {self.bucket!r}",
                               starting=True):
            versioning = self.client.get_bucket_versioning(Bucket=self.bucket)
            object_lock = self._object_lock_configuration()
        missing = []
        status = versioning.get("Status")
        if status != "Enabled":
            missing.append(f"versioning is {status or 'not enabled'}")
        if object_lock.get("ObjectLockEnabled") != "Enabled":
            missing.append("Object Lock is not enabled")
        if missing:
            raise ConfigError(
                f"S3 bucket {self.bucket!r} cannot keep mail immutable: "
                f"{'; '.join(missing)}.  Create the bucket with Object Lock "
                "enabled (which also enables versioning); it cannot be "
                "added to an existing bucket everywhere."
            )
        default = object_lock.get("Rule", {}).get("DefaultRetention")
        log.info("S3 bucket %s at %s: versioning and Object Lock enabled%s",
                 self.bucket, self.client.meta.endpoint_url,
                 f", default retention {default}" if default else "",
                 extra={"event": "vault.s3.checked"})

    def _object_lock_configuration(self) -> dict[str, Any]:
        try:
            response = self.client.get_object_lock_configuration(
                Bucket=self.bucket)
        except ClientError as err:
            if _code(err) == "ObjectLockConfigurationNotFoundError":
                return {}
            raise
        configuration: dict[str, Any] = response.get(
            "ObjectLockConfiguration", {})
        return configuration

    def put(self, key: str, data: bytes | Iterable[bytes], *,
            retain_until: dt.datetime) -> None:
        """Write ``data`` once under ``key``, locked; see ObjectStore.

        ``If-None-Match: *`` makes S3 itself refuse a second write, so two
        receivers racing on one key cannot both succeed.  S3 evaluates it
        against the current version only: over a foreign delete marker a
        second version can be written, but ``get`` keeps returning the
        first, so what was stored first is never replaced.
        """
        # The PUT's checksums need the whole body; S3 takes it in one request.
        data = data if isinstance(data, bytes) else b"".join(data)
        object_name = self.prefix + check_key(key)
        sha256 = _b64(hashlib.sha256(data).digest())
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=object_name, Body=data,
                IfNoneMatch="*",
                ContentMD5=_b64(hashlib.md5(data).digest()),
                ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256,
                ObjectLockMode=COMPLIANCE,
                ObjectLockRetainUntilDate=_whole_seconds(retain_until),
            )
        except ClientError as err:
            if _code(err) not in ("PreconditionFailed", "412"):
                raise StoreError(f"cannot store {key}: {_describe(err)}") from err
            if not self._holds_this_write(key, sha256, retain_until):
                raise ObjectExistsError(f"{key} already stored") from None
        except BotoCoreError as err:
            raise StoreError(f"cannot store {key}: {err}") from err
        log.debug("stored %s (%d bytes) until %s", key, len(data),
                  retain_until.isoformat())

    def _holds_this_write(self, key: str, sha256: str,
                          retain_until: dt.datetime) -> bool:
        # A PUT whose reply was lost is retried by botocore, and the retry
        # meets the first attempt's object.  Sealed bytes never repeat (a
        # fresh data key and nonce each time), so the same SHA-256 under
        # the same lock means the object is this very write.
        try:
            head = self._head(key)
        except MissingObjectError:
            return False
        return bool(head.get("ChecksumSHA256") == sha256 and
                    head.get("ObjectLockRetainUntilDate")
                    == _whole_seconds(retain_until))

    def get(self, key: str) -> bytes:
        """Return the bytes of the first version stored under ``key``."""
        version = self._first_version(key)
        try:
            return self._read_version(key, version)
        except MissingObjectError:
            # Purged by another process since its id was cached.
            self._forget(key)
            return self._read_version(key, self._first_version(key))

    def _read_version(self, key: str, version: str) -> bytes:
        with self._translating(f"cannot read {key}"):
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.prefix + key, VersionId=version,
                ChecksumMode="ENABLED")
            data: bytes = response["Body"].read()
        _check_sha256(key, data, response.get("ChecksumSHA256"))
        return data

    def exists(self, key: str) -> bool:
        """Tell whether a version is stored under ``key``, marker or not."""
        try:
            self._first_version(key)
        except MissingObjectError:
            return False
        return True

    def list(self, prefix: str, after: str = "") -> Iterator[str]:
        """Yield keys under ``prefix`` in byte order, strictly after ``after``.

        S3 lists keys in UTF-8 byte order, which for our ASCII keys is the
        order the protocol asks for; ``StartAfter`` is exclusive.
        """
        request: dict[str, Any] = {
            "Bucket": self.bucket, "Prefix": f"{self.prefix}{check_key(prefix)}/"}
        if after:
            request["StartAfter"] = self.prefix + after
        while True:
            with self._translating(f"cannot list {prefix}"):
                page = self.client.list_objects_v2(**request)
            for entry in page.get("Contents", ()):
                yield entry["Key"][len(self.prefix):]
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    def lock(self, key: str) -> Lock:
        """Return the retention and legal hold of ``key``'s first version."""
        head = self._head(key)
        until = head.get("ObjectLockRetainUntilDate")
        if until is None:
            log.warning("%s has no retention visible to this store; check the "
                        "s3:GetObjectRetention permission", key,
                        extra={"event": "vault.s3.unretained"})
        return Lock(until or UNRETAINED,
                    head.get("ObjectLockLegalHoldStatus") == "ON")

    def extend_retention(self, key: str, retain_until: dt.datetime) -> None:
        """Move retain-until later; a later date already set is kept.

        Only ever sends a later date, always in COMPLIANCE mode.  AWS
        refuses to shorten COMPLIANCE retention anyway, but not every
        S3-compatible server does (moto does not), so the store never asks.
        """
        wanted = _whole_seconds(retain_until)
        if self.lock(key).retain_until >= wanted:
            return
        try:
            self.client.put_object_retention(
                Bucket=self.bucket, Key=self.prefix + key,
                VersionId=self._first_version(key),
                Retention={"Mode": COMPLIANCE, "RetainUntilDate": wanted})
        except ClientError as err:
            # Another writer extended it further between our read and our
            # write, and S3 refused to shorten theirs: their date stands.
            if _code(err) in _DENIED and self.lock(key).retain_until >= wanted:
                return
            raise StoreError(f"cannot extend retention of {key}: "
                             f"{_describe(err)}") from err
        except BotoCoreError as err:
            raise StoreError(f"cannot extend retention of {key}: {err}") from err
        log.info("extended retention of %s to %s", key, wanted.isoformat(),
                 extra={"event": "vault.retention_extended"})

    def set_legal_hold(self, key: str, on: bool) -> None:
        """Set or clear the S3 legal hold on ``key``'s first version."""
        version = self._first_version(key)
        with self._translating(f"cannot change the legal hold of {key}"):
            self.client.put_object_legal_hold(
                Bucket=self.bucket, Key=self.prefix + key, VersionId=version,
                LegalHold={"Status": "ON" if on else "OFF"})
        log.info("legal hold %s on %s", "set" if on else "cleared", key,
                 extra={"event": "vault.legal_hold"})

    def delete(self, key: str) -> None:
        """Delete an object whose retention has passed and that is not held.

        Deletes the version itself (a DELETE without a version id would
        only stack a delete marker).  S3 has the last word: if it refuses,
        that is a RetentionError too.
        """
        version = self._first_version(key)
        current = self.lock(key)
        if current.is_locked(now()):
            reason = "under legal hold" if current.legal_hold else (
                f"retained until {current.retain_until.isoformat()}")
            raise RetentionError(f"{key} is {reason}")
        try:
            self.client.delete_object(
                Bucket=self.bucket, Key=self.prefix + key, VersionId=version)
        except ClientError as err:
            if _code(err) in _DENIED:
                raise RetentionError(
                    f"{key}: S3 refused to delete it ({_describe(err)})") from err
            raise StoreError(f"cannot delete {key}: {_describe(err)}") from err
        except BotoCoreError as err:
            raise StoreError(f"cannot delete {key}: {err}") from err
        self._forget(key)
        log.info("deleted %s (version %s)", key, version,
                 extra={"event": "vault.deleted"})

    def _head(self, key: str) -> dict[str, Any]:
        with self._translating(f"cannot read the lock of {key}"):
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.prefix + key,
                VersionId=self._first_version(key), ChecksumMode="ENABLED")
        return head

    def _first_version(self, key: str) -> str:
        """Return the id of the oldest version of ``key`` that is not a marker."""
        check_key(key)
        with self._cache_mutex:
            cached = self._first_versions.get(key)
            if cached is not None:
                self._first_versions.move_to_end(key)
                return cached
        object_name = self.prefix + key
        oldest: str | None = None
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": object_name}
        while True:
            with self._translating(f"cannot find the versions of {key}"):
                page = self.client.list_object_versions(**request)
            # Newest first within a key, so the last one seen is the oldest;
            # other keys merely sharing the prefix are skipped.
            for version in page.get("Versions", ()):
                if version["Key"] == object_name:
                    oldest = version["VersionId"]
            if not page.get("IsTruncated") or page.get("NextKeyMarker") != object_name:
                break
            request["KeyMarker"] = page["NextKeyMarker"]
            request["VersionIdMarker"] = page["NextVersionIdMarker"]
        if oldest is None:
            raise MissingObjectError(f"{key} is not stored")
        with self._cache_mutex:
            self._first_versions[key] = oldest
            if len(self._first_versions) > VERSION_CACHE_SIZE:
                self._first_versions.popitem(last=False)
        return oldest

    def _forget(self, key: str) -> None:
        with self._cache_mutex:
            self._first_versions.pop(key, None)

    @contextlib.contextmanager
    def _translating(self, what: str, *, starting: bool = False) -> Iterator[None]:
        """Turn botocore's exceptions into the vault's, naming ``what``."""
        try:
            yield
        except ClientError as err:
            code = _code(err)
            if starting and code in ("NoSuchBucket", "404"):
                raise ConfigError(
                    f"S3 bucket {self.bucket!r} does not exist") from err
            if starting and code in _DENIED:
                raise ConfigError(
                    f"not allowed to read the configuration of S3 bucket "
                    f"{self.bucket!r} ({_describe(err)}); the archive needs "
                    "s3:GetBucketVersioning and "
                    "s3:GetBucketObjectLockConfiguration") from err
            if code in _ABSENT:
                raise MissingObjectError(f"{what}: not stored") from err
            raise StoreError(f"{what}: {_describe(err)}") from err
        except BotoCoreError as err:
            raise StoreError(f"{what}: {err}") from err


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _describe(err: ClientError) -> str:
    error = err.response.get("Error", {})
    return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _whole_seconds(moment: dt.datetime) -> dt.datetime:
    """Round up to a whole second in UTC: S3 keeps no finer retention."""
    moment = moment.astimezone(dt.timezone.utc)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
    return moment


def _check_sha256(key: str, data: bytes, stored: str | None) -> None:
    # Servers that keep the checksum sent at write return it; the bytes
    # must match it whatever botocore's response validation setting is.
    if stored is not None and "-" not in stored and stored != _b64(
            hashlib.sha256(data).digest()):
        raise StoreError(f"cannot read {key}: the bytes received do not "
                         "match the SHA-256 stored with them")
