# Cases B08 and B20: identity is the bytes, not the Message-ID; ciphertext
# is bound to its key and never shares a (key, nonce) pair.

from __future__ import annotations

import struct

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.conftest import CASES
from vault import IntegrityError
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.store import LocalWormStore
from vault.verification import verify

JOURNAL = Envelope("billing@example.com", ("journal@archive.test",))


def open_archive(tmp_path) -> Vault:
    keys_path = tmp_path / "keys.json"
    keys = LocalKeyFile(keys_path) if keys_path.exists() else LocalKeyFile.create(keys_path)
    return Vault(LocalWormStore(tmp_path / "store"), keys, OwnershipRules(("example.com",)))


def test_b08_same_message_id_different_bytes_are_two_messages(tmp_path):
    vault = open_archive(tmp_path)
    catalogue = Catalogue(tmp_path / "catalogue")
    first = vault.archive((CASES / "B08a.eml").read_bytes(), JOURNAL)
    second = vault.archive((CASES / "B08b.eml").read_bytes(), JOURNAL)
    Follower(vault, catalogue, tmp_path / "cursor").catch_up()

    assert first.message_key != second.message_key
    assert len(list(vault.store.list("messages"))) == 2
    bob, carol = frozenset({"bob@example.com"}), frozenset({"carol@example.com"})
    assert catalogue.search('"Invoice 1002"', owners=carol).total == 1
    assert catalogue.search('"Invoice 1002"', owners=bob).total == 0
    assert [h.subject for h in catalogue.search("B08", owners=bob).hits] == ["B08 Invoice 1001"]
    assert [h.subject for h in catalogue.search("B08", owners=carol).hits] == ["B08 Invoice 1002"]


def test_b20_swapped_object_fails_to_open_and_verify_names_it(tmp_path):
    vault = open_archive(tmp_path)
    first = vault.archive((CASES / "B08a.eml").read_bytes(), JOURNAL)
    second = vault.archive((CASES / "B08b.eml").read_bytes(), JOURNAL)
    target = tmp_path / "store/objects" / second.message_key
    target.chmod(0o600)
    target.write_bytes(vault.store.get(first.message_key))

    with pytest.raises(IntegrityError, match=second.message_key):
        vault.read_message(second.message_key)
    report = verify(vault)
    assert [f for f in report.faults if f.startswith(second.message_key)]
    assert not [f for f in report.faults if f.startswith(first.message_key)]


def header_fields(sealed: bytes) -> tuple[str, bytes, bytes]:
    id_length = sealed[12]
    key_id = sealed[13:13 + id_length].decode()
    (wrapped_length,) = struct.unpack(">H", sealed[13 + id_length:15 + id_length])
    wrapped = sealed[15 + id_length:15 + id_length + wrapped_length]
    prefix = sealed[15 + id_length + wrapped_length:22 + id_length + wrapped_length]
    return key_id, wrapped, prefix


def test_b20_no_data_key_or_nonce_repeats_across_objects_and_restarts(tmp_path):
    for _ in range(2):  # the second pass is a restart: new process state, same keys
        vault = open_archive(tmp_path)
        for name in ("B08a.eml", "B08b.eml", "B07a.eml", "B07a.eml"):
            vault.archive((CASES / name).read_bytes(), JOURNAL)
    vault = open_archive(tmp_path)
    keys = [key for prefix in ("messages", "receipts") for key in vault.store.list(prefix)]
    fields = [header_fields(vault.store.get(key)) for key in keys]

    assert len(keys) == 3 + 8
    assert len({(key_id, prefix) for key_id, _, prefix in fields}) == len(keys)
    assert len({wrapped for _, wrapped, _ in fields}) == len(keys)
    assert all(vault.read_sealed(key) for key in keys)
