# Data keys wrapped by KMS open only under the key that wrapped them, and a
# sealed object opens with the KMS provider exactly as with the key file.
# Against moto's KMS over loopback HTTP.

from __future__ import annotations

import datetime as dt
import json
import secrets

import pytest

from tests.peers.moto import moto_server  # noqa: F401 (a fixture)
from vault import ConfigError, IntegrityError, MissingObjectError
from vault.kms import IDENTITY_OBJECT, KmsKeyProvider
from vault.s3store import S3ObjectLockStore
from vault.sealing import open_sealed, seal
from vault.store import LocalWormStore

ALIAS = "alias/strongroom-test"
LATER = dt.datetime(2040, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def kms(moto_server):  # noqa: F811
    return moto_server.client("kms")


def _new_key(kms) -> str:
    return kms.create_key(Description="strongroom test")["KeyMetadata"]["Arn"]


@pytest.fixture
def cmk(kms) -> str:
    arn = _new_key(kms)
    alias = f"{ALIAS}-{secrets.token_hex(4)}"
    kms.create_alias(AliasName=alias, TargetKeyId=arn)
    return alias


@pytest.fixture
def store(tmp_path):
    return LocalWormStore(tmp_path / "store")


@pytest.fixture
def keys(kms, cmk, store):
    return KmsKeyProvider.open(kms, cmk, store)


def test_data_key_round_trip_records_the_key_arn_not_the_alias(keys, kms, cmk):
    data_key = secrets.token_bytes(32)
    key_id, wrapped = keys.wrap(data_key)
    assert key_id == kms.describe_key(KeyId=cmk)["KeyMetadata"]["Arn"]
    assert data_key not in wrapped
    assert keys.unwrap(key_id, wrapped) == data_key

    plaintext, key_id, wrapped = keys.generate_data_key()
    assert len(plaintext) == 32
    assert keys.unwrap(key_id, wrapped) == plaintext


def test_a_key_wrapped_under_another_kms_key_does_not_open(keys, kms):
    other = KmsKeyProvider(kms, _new_key(kms), keys.identity_key())
    other_id, wrapped = other.wrap(secrets.token_bytes(32))
    # An object naming a key this archive was not given is refused unread,
    with pytest.raises(IntegrityError, match="not configured"):
        keys.unwrap(other_id, wrapped)
    # and one naming our key over another key's ciphertext fails at KMS.
    with pytest.raises(IntegrityError, match="KMS will not decrypt"):
        keys.unwrap(keys.key_id, wrapped)


def test_a_flipped_byte_in_a_wrapped_key_is_an_integrity_error(keys):
    key_id, wrapped = keys.wrap(secrets.token_bytes(32))
    for position in (0, len(wrapped) // 2, len(wrapped) - 1):
        damaged = bytearray(wrapped)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError):
            keys.unwrap(key_id, bytes(damaged))


def test_sealed_objects_open_with_the_kms_provider(keys):
    plaintext = b"Subject: kms\r\n\r\n" + secrets.token_bytes(3000)
    sealed = seal(keys, "messages/abc", plaintext)
    assert open_sealed(keys, "messages/abc", sealed) == plaintext
    with pytest.raises(IntegrityError, match="messages/abd"):
        open_sealed(keys, "messages/abd", sealed)
    wrapped_at = sealed.index(keys.key_id.encode()) + len(keys.key_id) + 2
    damaged = bytearray(sealed)
    damaged[wrapped_at + 10] ^= 0x01
    with pytest.raises(IntegrityError, match="messages/abc"):
        open_sealed(keys, "messages/abc", bytes(damaged))


def test_identity_key_is_made_once_kept_encrypted_and_shared(keys, kms, cmk, store):
    again = KmsKeyProvider.open(kms, cmk, store)
    assert again.identity_key() == keys.identity_key()
    assert len(keys.identity_key()) == 32
    record = json.loads(store.get(IDENTITY_OBJECT))
    assert record["key_id"] == keys.key_id
    assert keys.identity_key() not in store.get(IDENTITY_OBJECT)
    century = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
    assert store.lock(IDENTITY_OBJECT).retain_until > century


def test_after_rotation_old_objects_open_only_if_the_old_key_is_configured(
        keys, kms, cmk, store):
    old_arn = keys.key_id
    sealed = seal(keys, "messages/abc", b"before rotation")
    new_arn = _new_key(kms)
    kms.update_alias(AliasName=cmk, TargetKeyId=new_arn)

    rotated = KmsKeyProvider.open(kms, cmk, store, previous_key_ids=[old_arn])
    assert rotated.key_id == new_arn
    assert rotated.identity_key() == keys.identity_key()
    assert open_sealed(rotated, "messages/abc", sealed) == b"before rotation"
    assert rotated.wrap(b"k" * 32)[0] == new_arn

    with pytest.raises(ConfigError, match="previous key ids"):
        KmsKeyProvider.open(kms, cmk, store)
    forgetful = KmsKeyProvider(kms, new_arn, keys.identity_key())
    with pytest.raises(IntegrityError, match="not configured"):
        open_sealed(forgetful, "messages/abc", sealed)


def test_unknown_or_unusable_keys_are_refused_at_open(kms, store):
    with pytest.raises(ConfigError, match="alias/strongroom-no-such-key"):
        KmsKeyProvider.open(kms, "alias/strongroom-no-such-key", store)
    disabled = _new_key(kms)
    # moto answers 500 to DisableKey given an ARN; the bare id works.
    kms.disable_key(KeyId=disabled.rsplit("/", 1)[1])
    with pytest.raises(ConfigError, match="Disabled"):
        KmsKeyProvider.open(kms, disabled, store)
    with pytest.raises(ConfigError, match="expected a key ARN"):
        KmsKeyProvider(kms, "alias/strongroom", b"i" * 32)


def test_two_receivers_starting_together_agree_on_one_identity_key(
        keys, kms, cmk, store, monkeypatch):
    # The second looked before the first had written; write-once settles it.
    looked_too_early = iter([MissingObjectError(IDENTITY_OBJECT)])
    real_get = store.get

    def get(key):
        for error in looked_too_early:
            raise error
        return real_get(key)

    monkeypatch.setattr(store, "get", get)
    second = KmsKeyProvider.open(kms, cmk, store)
    assert second.identity_key() == keys.identity_key()


def test_kms_keys_over_the_s3_object_lock_store(moto_server, kms, cmk):  # noqa: F811
    s3 = moto_server.client("s3")
    bucket = f"strongroom-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    store = S3ObjectLockStore.open(s3, bucket)
    keys = KmsKeyProvider.open(kms, cmk, store)
    assert store.lock(IDENTITY_OBJECT).retain_until.year > 2100

    sealed = seal(keys, "messages/abc", b"archived")
    store.put("messages/abc", sealed, retain_until=LATER)
    reopened = KmsKeyProvider.open(kms, cmk, S3ObjectLockStore.open(s3, bucket))
    assert reopened.identity_key() == keys.identity_key()
    assert open_sealed(reopened, "messages/abc", store.get("messages/abc")) == (
        b"archived")
