# Exchange journal reports (cases B06, B07): the original is archived byte
# for byte, the report's recipients own it, and the report is kept too.

from __future__ import annotations

import hashlib

from tests.conftest import CASES
from vault.journal import unwrap


def original_of(name: str) -> bytes:
    raw = (CASES / name).read_bytes()
    start = raw.index(b"Content-Type: message/rfc822\r\n\r\n") + len(
        b"Content-Type: message/rfc822\r\n\r\n")
    end = raw.rindex(b"\r\n--JR-")
    return raw[start:end]


def test_report_fields_are_read_with_their_annotations():
    report = unwrap((CASES / "B06.eml").read_bytes())
    assert report.sender == "alice@example.com"
    assert report.recipients == ("bob@example.com", "carol@example.com",
                                 "dave@example.com", "erin@example.com")
    assert report.expanded == ("sales@example.com",)
    assert report.original == original_of("B06.eml")
    assert report.original.startswith(b"From: Alice Example")
    assert report.original.endswith(b"Keyword: HERON-2025.\r\n")


def test_plain_message_is_not_a_report():
    assert unwrap((CASES / "B16.eml").read_bytes()) is None


def test_b06_bcc_and_list_members_find_the_original(archive_server):
    tokens = {name: archive_server.add_user(f"{name}@example.com")
              for name in ("bob", "erin", "sales", "frank")}
    archive_server.send((CASES / "B06.eml").read_bytes(), "journal-agent@example.com",
                        ["journal@archive.example.com"])

    erin = archive_server.wait_for(tokens["erin"], "HERON-2025")
    assert erin["total"] == 1
    assert archive_server.wait_for(tokens["sales"], "HERON-2025")["total"] == 1
    assert archive_server.search(tokens["frank"], "HERON-2025")["total"] == 0
    message_id = erin["results"][0]["id"]
    status, raw = archive_server.raw(tokens["bob"], message_id)
    assert status == 200 and raw == original_of("B06.eml")
    # Bob's copy and Bob's searches do not reveal the Bcc recipient.
    assert b"erin" not in raw
    assert archive_server.search(tokens["bob"], "erin")["total"] == 0
    assert archive_server.search(tokens["bob"], "HERON-2025 AND subject:B06")["total"] == 1


def test_b07_two_reports_of_one_original_are_one_message_with_two_receipts(tmp_path):
    from indexer.catalogue import Catalogue
    from indexer.follow import Follower
    from vault.ingest import Vault
    from vault.keys import LocalKeyFile
    from vault.ownership import Envelope, OwnershipRules
    from vault.store import LocalWormStore
    from vault.verification import verify

    vault = Vault(LocalWormStore(tmp_path / "store"), LocalKeyFile.create(tmp_path / "k.json"),
                  OwnershipRules(("example.com",)))
    envelope = Envelope("journal-agent@example.com", ("journal@archive.example.com",))
    first = vault.archive((CASES / "B07a.eml").read_bytes(), envelope)
    second = vault.archive((CASES / "B07b.eml").read_bytes(), envelope)
    catalogue = Catalogue(tmp_path / "catalogue")
    Follower(vault, catalogue, tmp_path / "cursor").catch_up()

    assert first.message_key == second.message_key
    assert list(vault.store.list("messages")) == [first.message_key]
    assert len(list(vault.store.list("receipts"))) == 2
    assert len(list(vault.store.list("reports"))) == 2
    recipients = set(first.report_recipients) | set(second.report_recipients)
    assert recipients == {"bob@example.com", "frank@partner.example.net", "erin@example.com"}
    for owner in ("bob@example.com", "erin@example.com", "alice@example.com"):
        assert catalogue.search("OSPREY-17", owners=frozenset({owner})).total == 1, owner
    assert catalogue.search("OSPREY-17", owners=frozenset({"journal-agent@example.com"})).total == 0
    assert vault.read_sealed(first.report_key) == (CASES / "B07a.eml").read_bytes()
    assert hashlib.sha256(vault.read_message(first.message_key)).hexdigest() == first.sha256
    assert verify(vault, catalogue_ids=catalogue.ids()).is_clean
