"""Key-encryption keys held by AWS KMS, which never lets them out.

Each sealed object's data key is encrypted by a KMS key (a symmetric
"customer managed key") and the ciphertext KMS returns is what the sealed
header carries as the wrapped key; its key id is the KMS key's ARN, never
an alias, because an alias can later point at another key.  Decrypt is
always pinned to the ARN the object names, and only to ARNs this archive
was configured with: otherwise anyone who could write an object could
name a KMS key of their own and have it open.

Every call carries an encryption context naming what the plaintext is
(``{"strongroom": "data-key"}`` or ``"message-identity"``), so one kind of
ciphertext cannot be passed off as the other, and CloudTrail shows which
kind each Decrypt was for.

The message-identity key (the HMAC key that names message objects) must
be the same for every receiver and survive KMS key rotation, so it is a
random 32-byte key kept, encrypted under the KMS key current when it was
made, in the vault itself at ``keys/identity``: written once and locked
like everything else, so it cannot be lost while mail named by it exists.
Its layout::

    {"format": 1, "key_id": "<KMS key ARN>", "wrapped": "<base64>"}
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
    BotoCoreError,
    ClientError,
)

from vault import (
    ConfigError,
    IntegrityError,
    MissingObjectError,
    ObjectExistsError,
    StoreError,
)
from vault.clock import now
from vault.keys import KEY_BYTES
from vault.store import ObjectStore

log = logging.getLogger(__name__)

IDENTITY_OBJECT = "keys/identity"
# The identity key must outlive every message it names: a century is
# longer than any retention rule, and within what S3 accepts.
IDENTITY_RETENTION = dt.timedelta(days=36525)
DATA_KEY_CONTEXT = {"strongroom": "data-key"}
IDENTITY_CONTEXT = {"strongroom": "message-identity"}
_KEY_ARN = re.compile(r"arn:[a-z-]+:kms:[a-z0-9-]*:\d*:key/[A-Za-z0-9-]+")
# Answers that mean this ciphertext does not belong to this key.
_NOT_OURS = {"InvalidCiphertextException", "IncorrectKeyException",
             "AccessDeniedException"}


class KeyServiceError(StoreError):
    """KMS could not be reached or refused to work; safe to retry."""


def kms_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """Return a boto3 KMS client; credentials come from the standard chain."""
    import boto3  # type: ignore[import-untyped,unused-ignore]
    from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]

    config = Config(retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=10, read_timeout=30)
    return boto3.session.Session().client(
        "kms", endpoint_url=endpoint_url, region_name=region, config=config)


class KmsKeyProvider:
    """Wrap data keys with AWS KMS; implements KeyProvider (vault.keys).

    ``key_id`` is the ARN of the KMS key new objects use; objects naming
    it or any ARN in ``readable_key_ids`` (keys used before a rotation)
    open, and objects naming any other key fail as tampered.
    """

    def __init__(self, client: Any, key_id: str, identity_key: bytes, *,
                 readable_key_ids: Iterable[str] = ()) -> None:
        for arn in (key_id, *readable_key_ids):
            if not _KEY_ARN.fullmatch(arn):
                raise ConfigError(
                    f"KMS key id {arn!r}: expected a key ARN (KmsKeyProvider.open "
                    "resolves aliases and bare key ids)")
        if len(identity_key) != KEY_BYTES:
            raise ConfigError(f"message-identity key: expected {KEY_BYTES} bytes")
        self.client = client
        self.key_id = key_id
        self.readable = frozenset((key_id, *readable_key_ids))
        self._identity = identity_key

    @classmethod
    def open(cls, client: Any, key_id: str, store: ObjectStore, *,
             previous_key_ids: Iterable[str] = ()) -> KmsKeyProvider:
        """Resolve the configured keys and load (or create) the identity key.

        Raises ConfigError naming a key KMS does not know or cannot use.
        """
        current = _describe_key(client, key_id, for_new_objects=True)
        previous = [_describe_key(client, old, for_new_objects=False)
                    for old in previous_key_ids]
        readable = frozenset((current, *previous))
        identity = load_identity_key(client, current, readable, store)
        return cls(client, current, identity, readable_key_ids=previous)

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """Encrypt a data key under the current KMS key; see KeyProvider."""
        with _talking_to_kms(f"cannot wrap a data key under {self.key_id}"):
            response = self.client.encrypt(
                KeyId=self.key_id, Plaintext=data_key,
                EncryptionContext=DATA_KEY_CONTEXT)
        return str(response["KeyId"]), bytes(response["CiphertextBlob"])

    def generate_data_key(self) -> tuple[bytes, str, bytes]:
        """Return a new data key, the id of its KMS key, and its wrapped form.

        One KMS call instead of a local random key and Encrypt; lets a
        deployment grant kms:GenerateDataKey without kms:Encrypt.
        """
        with _talking_to_kms(f"cannot make a data key under {self.key_id}"):
            response = self.client.generate_data_key(
                KeyId=self.key_id, KeySpec="AES_256",
                EncryptionContext=DATA_KEY_CONTEXT)
        return (bytes(response["Plaintext"]), str(response["KeyId"]),
                bytes(response["CiphertextBlob"]))

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Decrypt a data key with the KMS key the object names."""
        if key_id not in self.readable:
            raise IntegrityError(f"object names key id {key_id!r}, which this "
                                 "archive is not configured to read")
        data_key = _decrypt(self.client, key_id, wrapped, DATA_KEY_CONTEXT)
        if len(data_key) != KEY_BYTES:
            raise IntegrityError(f"data key under {key_id} has the wrong length")
        return data_key

    def identity_key(self) -> bytes:
        """Return the key of the HMAC that names message objects."""
        return self._identity


def load_identity_key(client: Any, key_id: str, readable: Iterable[str],
                      store: ObjectStore) -> bytes:
    """Return the message-identity key kept in ``store``, making it if absent.

    Two receivers starting at once on a new vault may both make one; the
    store's write-once key lets one win, and the other reads the winner's.
    """
    try:
        document = store.get(IDENTITY_OBJECT)
    except MissingObjectError:
        document = _new_identity_document(client, key_id)
        try:
            store.put(IDENTITY_OBJECT, document,
                      retain_until=now() + IDENTITY_RETENTION)
            log.info("created the message-identity key under %s", key_id,
                     extra={"event": "vault.identity_created"})
        except ObjectExistsError:
            document = store.get(IDENTITY_OBJECT)
    try:
        record = json.loads(document)
        wrapped_by = str(record["key_id"])
        wrapped = base64.b64decode(record["wrapped"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{IDENTITY_OBJECT}: not an identity key record") from None
    if wrapped_by not in set(readable):
        raise ConfigError(
            f"{IDENTITY_OBJECT} is encrypted under {wrapped_by}, which is not "
            "among the configured KMS keys; add it to the previous key ids")
    identity = _decrypt(client, wrapped_by, wrapped, IDENTITY_CONTEXT)
    if len(identity) != KEY_BYTES:
        raise IntegrityError(f"{IDENTITY_OBJECT}: key has the wrong length")
    return identity


def _new_identity_document(client: Any, key_id: str) -> bytes:
    with _talking_to_kms(f"cannot make the identity key under {key_id}"):
        response = client.generate_data_key(
            KeyId=key_id, KeySpec="AES_256", EncryptionContext=IDENTITY_CONTEXT)
    record = {"format": 1, "key_id": str(response["KeyId"]),
              "wrapped": base64.b64encode(response["CiphertextBlob"]).decode()}
    return json.dumps(record).encode("utf-8")


def _decrypt(client: Any, key_id: str, wrapped: bytes,
             context: dict[str, str]) -> bytes:
    try:
        response = client.decrypt(
            CiphertextBlob=wrapped, KeyId=key_id, EncryptionContext=context,
            EncryptionAlgorithm="SYMMETRIC_DEFAULT")
    except ClientError as err:
        code = _code(err)
        if code in _NOT_OURS:
            # Under a pinned key id AWS answers IncorrectKeyException for
            # a ciphertext of another key; moto answers AccessDenied.
            raise IntegrityError(
                f"KMS will not decrypt this key under {key_id} ({code}): it "
                "was not made under that key, or this archive may not use "
                "that key") from None
        raise KeyServiceError(f"KMS cannot decrypt under {key_id}: {code}") from err
    except BotoCoreError as err:
        raise KeyServiceError(f"KMS cannot decrypt under {key_id}: {err}") from err
    return bytes(response["Plaintext"])


def _describe_key(client: Any, key_id: str, *, for_new_objects: bool) -> str:
    setting = "current" if for_new_objects else "previous"
    try:
        metadata = client.describe_key(KeyId=key_id)["KeyMetadata"]
    except ClientError as err:
        raise ConfigError(
            f"{setting} KMS key {key_id!r}: {_code(err)}: "
            f"{err.response.get('Error', {}).get('Message', '')}") from err
    except BotoCoreError as err:
        raise KeyServiceError(f"cannot reach KMS to check {key_id!r}: {err}") from err
    # SYMMETRIC_DEFAULT is the one spec whose usage is ENCRYPT_DECRYPT.
    spec = metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec")
    if spec != "SYMMETRIC_DEFAULT":
        raise ConfigError(f"{setting} KMS key {key_id!r} is not a symmetric "
                          "encryption key")
    if metadata.get("KeyState") != "Enabled":
        message = f"{setting} KMS key {key_id!r} is {metadata.get('KeyState')}"
        if for_new_objects:
            raise ConfigError(message)
        log.warning("%s: objects sealed under it cannot be opened", message,
                    extra={"event": "vault.kms_key_unusable"})
    return str(metadata["Arn"])


@contextlib.contextmanager
def _talking_to_kms(what: str) -> Iterator[None]:
    """Turn KMS failures of Encrypt and GenerateDataKey into KeyServiceError."""
    try:
        yield
    except ClientError as err:
        raise KeyServiceError(f"{what}: {_code(err)}") from err
    except BotoCoreError as err:
        raise KeyServiceError(f"{what}: {err}") from err


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))
