# The S3 Object Lock store keeps the ObjectStore contract against moto's S3
# server over loopback HTTP, and its requests prove what moto cannot.

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
import uuid
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import CASES
from tests.peers.moto import moto_server  # noqa: F401 (a fixture)
from vault import (
    ConfigError,
    MissingObjectError,
    ObjectExistsError,
    RetentionError,
)
from vault.keys import LocalKeyFile
from vault.s3store import S3ObjectLockStore
from vault.sealing import open_sealed, seal
from vault.store import Lock

LATER = dt.datetime(2040, 1, 1, tzinfo=dt.timezone.utc)
PREFIX = "archive/"

# Case B17: botocore's default, and the setting copied from MinIO threads
# under which botocore sends no checksum of its own on a PUT.
CHECKSUM_CONFIGS = {
    "default": Config(),
    "when_required": Config(request_checksum_calculation="when_required",
                            response_checksum_validation="when_required"),
}


class Recorder:
    """Every request a boto3 client sends: operation, URL, headers, body."""

    def __init__(self, client) -> None:
        self.requests: list[dict] = []
        client.meta.events.register("before-send.s3.*", self._record)

    def _record(self, request, event_name, **_):
        body = request.body
        self.requests.append({
            "operation": event_name.rsplit(".", 1)[-1],
            "url": request.url,
            "headers": {name.lower(): _text(value)
                        for name, value in request.headers.items()},
            "body": body if isinstance(body, bytes) else None,
        })
        # Returning None lets the request go out unchanged.

    def named(self, operation: str) -> list[dict]:
        return [r for r in self.requests if r["operation"] == operation]

    def operations(self) -> set[str]:
        return {r["operation"] for r in self.requests}


def _text(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _xml_field(body: bytes, name: str) -> str:
    root = ElementTree.fromstring(body)
    return next(e.text for e in root.iter() if e.tag.split("}")[-1] == name)


def _new_bucket(client, *, object_lock: bool = True,
                versioning: bool = False) -> str:
    name = f"strongroom-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    if versioning:
        client.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def client(moto_server):  # noqa: F811
    return moto_server.client("s3")


@pytest.fixture
def bucket(client):
    return _new_bucket(client)


@pytest.fixture
def store(client, bucket):
    return S3ObjectLockStore.open(client, bucket, prefix=PREFIX)


def _seconds_from_now(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)


def _wait_until(moment: dt.datetime) -> None:
    # moto compares retain-until with its own clock, which is ours; the
    # store rounds retain-until up to the whole second S3 keeps.
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
    remaining = (moment - dt.datetime.now(dt.timezone.utc)).total_seconds()
    time.sleep(max(0.0, remaining) + 0.05)


def _first_version(client, bucket: str, key: str) -> str:
    versions = client.list_object_versions(Bucket=bucket, Prefix=PREFIX + key)
    return versions["Versions"][-1]["VersionId"]


def test_bucket_without_versioning_or_object_lock_is_refused_at_start(client):
    # A bucket that cannot lock versions could lose mail: refuse to start.
    plain = _new_bucket(client, object_lock=False)
    with pytest.raises(ConfigError) as refused:
        S3ObjectLockStore.open(client, plain)
    message = str(refused.value)
    assert repr(plain) in message
    assert "versioning is not enabled" in message
    assert "Object Lock is not enabled" in message

    versioned = _new_bucket(client, object_lock=False, versioning=True)
    with pytest.raises(ConfigError, match="Object Lock is not enabled") as refused:
        S3ObjectLockStore.open(client, versioned)
    assert "versioning is" not in str(refused.value)

    with pytest.raises(ConfigError, match="does not exist"):
        S3ObjectLockStore.open(client, "strongroom-no-such-bucket")


def test_put_and_get_round_trip_under_compliance_lock(store, client, bucket):
    store.put("messages/abc", b"sealed bytes", retain_until=LATER)
    assert store.get("messages/abc") == b"sealed bytes"
    assert store.exists("messages/abc")
    assert not store.exists("messages/abd")
    assert store.lock("messages/abc") == Lock(LATER, legal_hold=False)
    head = client.head_object(Bucket=bucket, Key=PREFIX + "messages/abc")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(MissingObjectError):
        store.get("messages/nothing")


def test_empty_and_sealed_case_b05_objects_round_trip(store, tmp_path):
    # B17's two bodies: zero bytes, and the sealed blob of B05.eml.
    keys = LocalKeyFile.create(tmp_path / "kek.json")
    raw = (CASES / "B05.eml").read_bytes()
    store.put("messages/empty", b"", retain_until=LATER)
    store.put("messages/b05", seal(keys, "messages/b05", raw), retain_until=LATER)
    assert store.get("messages/empty") == b""
    assert open_sealed(keys, "messages/b05", store.get("messages/b05")) == raw


def test_second_put_of_a_key_is_refused_and_keeps_the_first(store, client, bucket):
    store.put("messages/abc", b"first", retain_until=LATER)
    with pytest.raises(ObjectExistsError):
        store.put("messages/abc", b"second", retain_until=LATER)
    assert store.get("messages/abc") == b"first"
    versions = client.list_object_versions(Bucket=bucket, Prefix=PREFIX)
    assert len(versions["Versions"]) == 1


def test_a_put_retried_after_a_lost_reply_finds_itself(store):
    # botocore retries a PUT whose reply timed out; the retry meets the
    # first attempt's object, which is this same write.
    store.put("receipts/2026/12/04/101010.000001-aa", b"r", retain_until=LATER)
    store.put("receipts/2026/12/04/101010.000001-aa", b"r", retain_until=LATER)
    with pytest.raises(ObjectExistsError):
        store.put("receipts/2026/12/04/101010.000001-aa", b"r",
                  retain_until=LATER + dt.timedelta(days=1))


def test_locked_version_cannot_be_deleted(store, client, bucket, monkeypatch):
    store.put("messages/abc", b"x", retain_until=LATER)
    version = _first_version(client, bucket, "messages/abc")
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=PREFIX + "messages/abc",
                             VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    with pytest.raises(RetentionError, match="retained until 2040"):
        store.delete("messages/abc")
    # Were the store's own check wrong, S3's refusal is still a RetentionError.
    long_ago = Lock(LATER - dt.timedelta(days=9000))
    monkeypatch.setattr(store, "lock", lambda key: long_ago)
    with pytest.raises(RetentionError, match="S3 refused"):
        store.delete("messages/abc")
    assert store.get("messages/abc") == b"x"


def test_legal_hold_blocks_deletion_past_retention_until_released(
        store, client, bucket):
    # moto checks a version's legal hold before its retain-until date, and
    # compares that date with the clock, so wait for it to pass for real.
    retain_until = _seconds_from_now(1)
    store.put("messages/held", b"x", retain_until=retain_until)
    store.set_legal_hold("messages/held", True)
    _wait_until(retain_until)
    lock = store.lock("messages/held")
    assert lock.legal_hold and lock.retain_until < _seconds_from_now(0)

    version = _first_version(client, bucket, "messages/held")
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=bucket, Key=PREFIX + "messages/held",
                             VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(RetentionError, match="legal hold"):
        store.delete("messages/held")

    store.set_legal_hold("messages/held", False)
    store.delete("messages/held")
    assert not store.exists("messages/held")
    with pytest.raises(MissingObjectError):
        store.get("messages/held")
    assert client.list_object_versions(Bucket=bucket, Prefix=PREFIX).get(
        "Versions", []) == []


def test_a_delete_marker_over_a_locked_version_does_not_lose_the_message(
        store, client, bucket):
    store.put("messages/abc", b"still here", retain_until=LATER)
    marker = client.delete_object(Bucket=bucket, Key=PREFIX + "messages/abc")
    assert marker["DeleteMarker"]
    with pytest.raises(ClientError):
        client.get_object(Bucket=bucket, Key=PREFIX + "messages/abc")

    reopened = S3ObjectLockStore.open(client, bucket, prefix=PREFIX)
    assert reopened.exists("messages/abc")
    assert reopened.get("messages/abc") == b"still here"
    assert reopened.lock("messages/abc").retain_until == LATER
    # A write over the marker is a second version; the first still counts.
    reopened.put("messages/abc", b"impostor", retain_until=LATER)
    assert S3ObjectLockStore(client, bucket, PREFIX).get("messages/abc") == (
        b"still here")


def test_listing_is_in_key_order_and_resumes_after_a_cursor(store, client):
    keys = [
        "receipts/2025/12/31/235959.999999-ff",
        "receipts/2026/01/01/000000.000000-aa",
        "receipts/2026/01/01/000000.000000-ab",
        "receipts/2026/02/10/120000.000000-00",
    ]
    for key in reversed(keys):
        store.put(key, b"r", retain_until=LATER)
    store.put("messages/0123", b"m", retain_until=LATER)
    store.put("receiptsx/not-under-the-prefix", b"m", retain_until=LATER)
    # Two keys a page, so the store must follow continuation tokens.
    client.meta.events.register(
        "provide-client-params.s3.ListObjectsV2",
        lambda params, **_: params.update(MaxKeys=2))

    assert list(store.list("receipts")) == keys
    assert list(store.list("receipts", after=keys[1])) == keys[2:]
    assert list(store.list("receipts", after=keys[-1])) == []
    assert list(store.list("receipts", after="receipts/2026/01/15")) == keys[3:]
    assert list(store.list("messages")) == ["messages/0123"]


def test_versions_are_found_across_pages(store, client, bucket):
    store.put("messages/abc", b"first", retain_until=LATER)
    for _ in range(3):
        client.delete_object(Bucket=bucket, Key=PREFIX + "messages/abc")
    client.meta.events.register(
        "provide-client-params.s3.ListObjectVersions",
        lambda params, **_: params.update(MaxKeys=1))
    assert S3ObjectLockStore(client, bucket, PREFIX).get("messages/abc") == b"first"


@pytest.mark.parametrize("config_name", sorted(CHECKSUM_CONFIGS))
def test_every_request_checksums_puts_and_only_strengthens_locks(
        moto_server, config_name, tmp_path):  # noqa: F811
    # Cases B17 and B18.  moto accepts a shortened or downgraded COMPLIANCE
    # retention and ignores checksums, so the requests are the proof.
    client = moto_server.client("s3", config=CHECKSUM_CONFIGS[config_name])
    bucket = _new_bucket(client)
    store = S3ObjectLockStore.open(client, bucket, prefix=PREFIX)
    recorder = Recorder(client)
    keys = LocalKeyFile.create(tmp_path / "kek.json")
    bodies = {
        "messages/expiring": b"gone soon",
        "messages/empty": b"",
        "messages/b05": seal(keys, "messages/b05",
                             (CASES / "B05.eml").read_bytes()),
    }

    expiring_until = _seconds_from_now(1)
    store.put("messages/expiring", bodies["messages/expiring"],
              retain_until=expiring_until)
    store.put("messages/empty", b"", retain_until=LATER)
    store.put("messages/b05", bodies["messages/b05"], retain_until=LATER)
    later = LATER + dt.timedelta(days=365)
    store.extend_retention("messages/b05", later)
    store.extend_retention("messages/b05", LATER - dt.timedelta(days=365))
    store.extend_retention("messages/b05", later)
    store.set_legal_hold("messages/b05", True)
    store.set_legal_hold("messages/b05", False)
    _wait_until(expiring_until)
    store.delete("messages/expiring")

    puts = recorder.named("PutObject")
    assert len(puts) == 3
    for request in puts:
        key = urlsplit(request["url"]).path.split(PREFIX, 1)[1]
        body = bodies[key]
        headers = request["headers"]
        assert headers["content-md5"] == _b64(hashlib.md5(body).digest())
        assert headers["x-amz-checksum-sha256"] == _b64(
            hashlib.sha256(body).digest())
        assert headers["x-amz-object-lock-mode"] == "COMPLIANCE"
        assert headers["if-none-match"] == "*"

    retentions = recorder.named("PutObjectRetention")
    assert len(retentions) == 1, "only the later date is ever sent"
    assert _xml_field(retentions[0]["body"], "Mode") == "COMPLIANCE"
    assert dt.datetime.fromisoformat(
        _xml_field(retentions[0]["body"], "RetainUntilDate")) == later
    assert store.lock("messages/b05").retain_until == later

    holds = recorder.named("PutObjectLegalHold")
    assert [_xml_field(r["body"], "Status") for r in holds] == ["ON", "OFF"]
    for request in recorder.requests:
        assert "x-amz-bypass-governance-retention" not in request["headers"]
        if request["operation"] != "PutObjectLegalHold":
            assert "x-amz-object-lock-legal-hold" not in request["headers"]
    for request in holds + retentions + recorder.named("DeleteObject"):
        assert "versionId" in parse_qs(urlsplit(request["url"]).query)

    assert recorder.operations() <= {
        "PutObject", "HeadObject", "ListObjectVersions", "PutObjectRetention",
        "PutObjectLegalHold", "DeleteObject"}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
