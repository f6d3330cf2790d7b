"""Take a received message into the vault: name it, seal it, write it once.

``Vault`` is the one door to stored mail.  ``archive`` returns only when
both the message object and its receipt are durable; any exception it
raises means the delivery must be answered with a 4xx so the sender
retries.  Reads authenticate every object before returning a byte.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Iterator

from vault.clock import now
from vault.commit import Committer, DirectCommitter, GroupCommitter, Put
from vault.config import Settings
from vault.keys import KeyProvider, LocalKeyFile
from vault.journal import JournalReport, unwrap
from vault.ownership import Envelope, OwnershipRules
from vault.receipts import RECEIPTS, Receipt, receipt_key
from vault.retention import RetentionPolicy
from vault.sealing import open_sealed, seal, segment_views, seal_stream
from vault.store import LocalWormStore, ObjectStore

log = logging.getLogger(__name__)

MESSAGES = "messages"
REPORTS = "reports"
DEFAULT_RETENTION = RetentionPolicy.from_settings("10y", ())


class Vault:
    """Seal messages and receipts into a store, and read them back."""

    def __init__(
        self, store: ObjectStore, keys: KeyProvider, rules: OwnershipRules,
        retention: RetentionPolicy = DEFAULT_RETENTION,
        committer: Committer | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.rules = rules
        self.retention = retention
        self.committer: Committer = committer or DirectCommitter(store)

    def message_key(self, raw: bytes) -> str:
        """Return the object key of a message: a keyed HMAC of its bytes."""
        digest = hmac.new(self.keys.identity_key(), raw, hashlib.sha256)
        return f"{MESSAGES}/{digest.hexdigest()}"

    def archive(self, raw: bytes, envelope: Envelope) -> Receipt:
        """Store ``raw`` once and record this delivery of it; durable on return.

        An Exchange journal report is unwrapped: its original message is
        the message object, its recipients (Bcc and expanded lists
        included) are the delivery's, and the report itself is kept too,
        sealed, as evidence of what was received.
        """
        receipt, durable = self.deliver(raw, envelope)
        durable.result()
        log.info(
            "archived %s as %s (%d bytes, owners %s%s)",
            receipt.key, receipt.message_key, receipt.size,
            ",".join(receipt.owners) or "-",
            f", journal report {receipt.report_key}" if receipt.report_key else "",
            extra={"event": "vault.archived"},
        )
        return receipt

    def deliver(self, raw: bytes, envelope: Envelope
                ) -> tuple[Receipt, concurrent.futures.Future[None]]:
        """Seal a delivery and hand it to the committer, as ``archive`` does.

        Returns its receipt and a future that is done once the message and
        the receipt are durable; until then nothing may be acknowledged.
        Its exception, or one raised here, means the delivery must be
        answered with a 4xx.
        """
        received_at = now()
        report = read_journal_report(raw)
        if report is None:
            message = raw
            owners = self.rules.owners(raw, envelope)
        else:
            message = report.original
            owners = self.rules.report_owners(report)
        retain_until = self.retention.retain_until(received_at, owners, envelope)
        message_key = self.message_key(message)
        shared = self._shared_put(message_key, message, retain_until)
        report_key = ""
        if report is not None:
            report_key = f"{REPORTS}/{self.message_key(raw).rpartition('/')[2]}"
            shared += self._shared_put(report_key, raw, retain_until)

        receipt = Receipt(
            key=receipt_key(received_at),
            received_at=received_at,
            message_key=message_key,
            sha256=hashlib.sha256(message).hexdigest(),
            size=len(message),
            peer=envelope.peer,
            helo=envelope.helo,
            mail_from=envelope.mail_from,
            rcpt_tos=envelope.rcpt_tos,
            owners=owners,
            journaled=report is not None or any(
                self.rules.is_journal(r) for r in envelope.rcpt_tos),
            retain_until=retain_until,
            report_key=report_key,
            report_recipients=report.recipients if report else (),
            expanded=report.expanded if report else (),
            forwarded=report.forwarded if report else (),
            tls_version=envelope.tls_version,
            journal_sender=envelope.journal_sender,
        )
        # The receipt names the message: it must never be durable first.
        durable = self.committer.submit([shared, [
            Put(receipt.key, seal(self.keys, receipt.key, receipt.to_json()), retain_until)]])
        return receipt, durable

    def _shared_put(self, key: str, plaintext: bytes,
                    retain_until: dt.datetime) -> list[Put]:
        # Same bytes, same key: a second delivery only lengthens the lock,
        # in the same commit as its receipt.
        if self.store.exists(key):
            return [Put(key, None, retain_until, is_shared=True)]
        sealed = seal_stream(self.keys, key, segment_views(plaintext))
        return [Put(key, sealed, retain_until, is_shared=True)]

    def read_message(self, message_key: str) -> bytes:
        """Return the authenticated bytes of a stored message."""
        return open_sealed(self.keys, message_key, self.store.get(message_key))

    def read_sealed(self, key: str) -> bytes:
        """Return the authenticated plaintext of any stored object."""
        return open_sealed(self.keys, key, self.store.get(key))

    def read_receipt(self, key: str) -> Receipt:
        """Return the authenticated receipt stored under ``key``."""
        return Receipt.from_json(open_sealed(self.keys, key, self.store.get(key)))

    def receipts_after(self, cursor: str = "") -> Iterator[str]:
        """Yield receipt keys in time order, strictly after ``cursor``."""
        return self.store.list(RECEIPTS, after=cursor)


def read_journal_report(raw: bytes) -> JournalReport | None:
    """Unwrap a journal report; a report we cannot read is kept whole."""
    try:
        return unwrap(raw)
    except Exception:
        log.exception("journal report unreadable; archiving it as it came",
                      extra={"event": "journal.unreadable"})
        return None


def open_store(settings: Settings) -> ObjectStore:
    """Open the object store the settings name; S3 checks its bucket first."""
    if settings.store.kind == "s3":
        from vault.s3store import S3ObjectLockStore, s3_client

        client = s3_client(settings.store.endpoint_url or None, settings.store.region or None)
        return S3ObjectLockStore.open(client, settings.store.bucket, settings.store.prefix)
    return LocalWormStore(settings.path(settings.store.path))


def open_keys(settings: Settings, store: ObjectStore) -> KeyProvider:
    """Open the key provider the settings name."""
    if settings.keys.provider == "kms":
        from vault.kms import KmsKeyProvider, kms_client

        client = kms_client(settings.keys.kms_endpoint_url or None,
                            settings.keys.kms_region or settings.store.region or None)
        return KmsKeyProvider.open(client, settings.keys.kms_key_id, store,
                                   previous_key_ids=settings.keys.kms_previous_key_ids)
    return LocalKeyFile(settings.path(settings.keys.key_file))


def open_vault(settings: Settings) -> Vault:
    """Open the vault that ``settings`` describe."""
    store = open_store(settings)
    keys = open_keys(settings, store)
    rules = OwnershipRules(
        domains=settings.archive.domains,
        journal_addresses=settings.receiver.journal_addresses,
    )
    retention = RetentionPolicy.from_settings(
        settings.retention.default, settings.retention.rules
    )
    committer: Committer | None = None
    if isinstance(store, LocalWormStore) and settings.receiver.group_commit:
        committer = GroupCommitter(store, settings.receiver.group_commit_max_messages)
    return Vault(store, keys, rules, retention, committer)
