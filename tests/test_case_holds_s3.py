# Case holds on the S3 Object Lock store (moto over loopback HTTP): every
# matched object version carries an S3 legal hold that outlives its
# retain-until date, a release lets purge delete it, and a message two
# cases hold stays held until both release.

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from botocore.exceptions import ClientError
from dateutil.relativedelta import relativedelta

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.ediscovery import message
from tests.peers.moto import moto_server  # noqa: F401 (a fixture)
from vault import RetentionError
from vault.case_holds import CaseHolds
from vault.cases import Cases
from vault.control import ControlDB
from vault.disposition import purge
from vault.holds import Holds
from vault.ingest import MESSAGES, Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.retention import RetentionPolicy
from vault.roles import Principal
from vault.s3store import S3ObjectLockStore

PREFIX = "vault/"
RETAIN_SECONDS = 3
OFFICER = Principal("comp@example.com", "compliance")
MAIL = [("bob@example.com", "carol@example.com", "Merger timeline", "kestrel plans"),
        ("carol@example.com", "bob@example.com", "Other", "kestrel numbers"),
        ("x@elsewhere.net", "carol@example.com", "Lunch", "sandwiches")]


@pytest.fixture
def archive(tmp_path, moto_server):  # noqa: F811
    client = moto_server.client("s3")
    bucket = f"strongroom-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    store = S3ObjectLockStore.open(client, bucket, prefix=PREFIX)
    vault = Vault(store, LocalKeyFile.create(tmp_path / "kek.json"),
                  OwnershipRules(("example.com",)),
                  RetentionPolicy(relativedelta(seconds=RETAIN_SECONDS), ()))
    for sender, recipient, subject, body in MAIL:
        vault.archive(message(sender, recipient, subject, body),
                      Envelope(sender, (recipient,)))
    catalogue = Catalogue(tmp_path / "catalogue")
    Follower(vault, catalogue, tmp_path / "cursor").catch_up()
    control = ControlDB(tmp_path / "control.sqlite3")
    control.create()
    cases = Cases(control, catalogue, tmp_path / "cursor")
    holds = CaseHolds(cases, Holds(control, store), vault)
    return vault, catalogue, control, cases, holds, client, bucket


def held_keys(cases, case, search):
    return [key for match in cases.run(case, cases.search(case, search), OFFICER)
            for key in (f"{MESSAGES}/{match.message_id}", *match.receipts)]


def first_version(client, bucket, key):
    versions = client.list_object_versions(Bucket=bucket, Prefix=PREFIX + key)
    return [v for v in versions.get("Versions", []) if v["Key"] == PREFIX + key]


def legal_hold(client, bucket, key):
    (version,) = first_version(client, bucket, key)
    answer = client.get_object_legal_hold(Bucket=bucket, Key=PREFIX + key,
                                          VersionId=version["VersionId"])
    return answer["LegalHold"]["Status"]


def purge_now(vault, control, catalogue):
    return purge(vault, control, Holds(control, vault.store), actor="comp@example.com",
                 dry_run=False, remove_documents=catalogue.delete)


def test_case_holds_outlive_retention_and_two_cases_release_in_turn(archive):
    vault, catalogue, control, cases, holds, client, bucket = archive
    wide = cases.create("kestrel", "", ["bob@example.com", "carol@example.com"], OFFICER)
    narrow = cases.create("osprey", "", ["carol@example.com"], OFFICER)
    holds.hold_search(wide, cases.add_search(wide, "all", "kestrel", OFFICER), OFFICER)
    holds.hold_search(narrow, cases.add_search(narrow, "t", "timeline", OFFICER), OFFICER)
    wide_keys = held_keys(cases, wide, "all")
    both_keys = held_keys(cases, narrow, "t")
    assert len(wide_keys) == 4 and set(both_keys) < set(wide_keys)

    # Past every retain-until date: S3 itself still refuses to delete.
    time.sleep(RETAIN_SECONDS + 1.5)
    for key in wide_keys:
        assert legal_hold(client, bucket, key) == "ON", key
        (version,) = first_version(client, bucket, key)
        assert version and dt.datetime.now(dt.timezone.utc) > vault.store.lock(key).retain_until
        with pytest.raises(ClientError) as refused:
            client.delete_object(Bucket=bucket, Key=PREFIX + key,
                                 VersionId=version["VersionId"])
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(RetentionError, match="legal hold"):
            vault.store.delete(key)
    report = purge_now(vault, control, catalogue)
    assert len(report.messages) == 1 and report.kept_held == 2  # only lunch went

    holds.release(wide, OFFICER, two_person=False)
    for key in both_keys:
        assert legal_hold(client, bucket, key) == "ON", key
    only_wide = [key for key in wide_keys if key not in both_keys]
    for key in only_wide:
        assert legal_hold(client, bucket, key) == "OFF", key
    report = purge_now(vault, control, catalogue)
    assert sorted(report.messages + report.receipts) == sorted(only_wide)
    assert all(first_version(client, bucket, key) == [] for key in only_wide)
    assert all(first_version(client, bucket, key) for key in both_keys)

    holds.release(narrow, OFFICER, two_person=False)
    assert all(legal_hold(client, bucket, key) == "OFF" for key in both_keys)
    report = purge_now(vault, control, catalogue)
    assert sorted(report.messages + report.receipts) == sorted(both_keys)
    assert all(first_version(client, bucket, key) == [] for key in both_keys)
