# verify finds every kind of damage, and names the object it found it in.

from __future__ import annotations

import shutil

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.conftest import CASES
from tests.homes import make_home
from vault.ingest import MESSAGES, Vault, open_vault
from vault.config import load
from vault.ownership import Envelope
from vault.receipts import RECEIPTS
from vault.verification import verify
from web.cli import main as strongroom


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path, people={})


@pytest.fixture
def vault(home) -> Vault:
    vault = open_vault(load(home))
    for name in ("B16.eml", "B09.eml", "B22.eml"):
        vault.archive((CASES / name).read_bytes(), Envelope("a@example.com", ("bob@example.com",)))
    settings = load(home)
    Follower(vault, Catalogue(settings.path("catalogue")), home / "catalogue/cursor").catch_up()
    return vault


def objects(home, kind):
    return sorted((home / "store/objects" / kind).rglob("*"), key=str)


def writable(path):
    path.chmod(0o600)
    return path


def run_verify(home, capsys):
    status = strongroom(["verify", "--home", str(home)])
    return status, capsys.readouterr().out


def test_clean_archive_verifies(home, vault, capsys):
    status, output = run_verify(home, capsys)
    assert status == 0
    assert "3 messages (3 opened), 3 receipts, 0 fault(s)" in output


def test_flipped_byte_is_found(home, vault, capsys):
    target = writable(objects(home, "messages")[0])
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x20
    target.write_bytes(bytes(data))
    status, output = run_verify(home, capsys)
    assert status == 1
    assert f"FAULT messages/{target.name}: messages/{target.name}: segment 0" in output


def test_truncated_object_is_found(home, vault, capsys):
    target = writable(objects(home, "messages")[1])
    target.write_bytes(target.read_bytes()[:-7])
    status, output = run_verify(home, capsys)
    assert status == 1 and f"messages/{target.name}" in output


def test_swapped_objects_are_both_found(home, vault, capsys):
    first, second = objects(home, "messages")[:2]
    a, b = first.read_bytes(), second.read_bytes()
    writable(first).write_bytes(b)
    writable(second).write_bytes(a)
    status, output = run_verify(home, capsys)
    assert status == 1
    assert f"FAULT messages/{first.name}" in output and f"FAULT messages/{second.name}" in output


def test_object_moved_to_another_key_is_found(home, vault, capsys):
    first = objects(home, "messages")[0]
    moved = first.with_name("0" * 64)
    shutil.copy(first, moved)
    status, output = run_verify(home, capsys)
    assert status == 1
    assert f"FAULT messages/{moved.name}: messages/{moved.name}: segment 0" in output
    assert f"messages/{moved.name}: stored but no receipt names it" in output


def test_deleted_receipt_is_found(home, vault, capsys):
    receipt = [p for p in objects(home, "receipts") if p.is_file()][0]
    message_key = vault.read_receipt("receipts/" + str(receipt.relative_to(
        home / "store/objects/receipts"))).message_key
    receipt.unlink()
    status, output = run_verify(home, capsys)
    assert status == 1
    assert f"FAULT {message_key}: stored but no receipt names it" in output


def test_message_missing_under_its_receipt_is_found(home, vault, capsys):
    target = objects(home, "messages")[0]
    target.unlink()
    status, output = run_verify(home, capsys)
    assert status == 1
    assert f"names messages/{target.name}, which is not stored" in output
    assert f"FAULT catalogue/{target.name}: in the catalogue but not stored" in output


def test_sample_opens_only_that_many(home, vault):
    report = verify(vault, sample=1)
    assert report.is_clean and report.opened == 1 and report.messages == 3


def test_rotated_key_seals_new_objects_and_old_ones_still_open(home, vault, capsys):
    old_key_id = vault.keys.wrap(b"\0" * 32)[0]
    assert strongroom(["keys", "rotate", "--home", str(home)]) == 0
    rotated = open_vault(load(home))
    new_key_id = rotated.keys.wrap(b"\0" * 32)[0]
    receipt = rotated.archive(b"Subject: after rotation\r\n\r\nx\r\n",
                              Envelope("a@example.com", ("bob@example.com",)))
    sealed = rotated.store.get(receipt.message_key)
    assert new_key_id != old_key_id
    assert new_key_id.encode() in sealed[:64]
    report = verify(rotated)
    assert report.is_clean and report.opened == 4


def test_mail_arriving_while_verify_runs_is_counted_not_a_fault(home, vault, monkeypatch):
    # Run during a burst, verify named every message that arrived meanwhile
    # "stored but not in the catalogue" (and one stored between its two
    # listings "stored but no receipt names it"), and exited 1.
    import datetime as dt

    from indexer.follow import overlap_floor, read_cursor

    catalogue = Catalogue(load(home).path("catalogue"))
    Follower(vault, catalogue).catch_up()
    through = overlap_floor(read_cursor(catalogue.cursor_path), dt.timedelta(0))
    ids = catalogue.ids()
    # The first message received: well before the cursor.
    first_receipt = min(vault.store.list(RECEIPTS))
    indexed_id = vault.read_receipt(first_receipt).message_key.removeprefix(MESSAGES + "/")

    def deliver(number):
        raw = (CASES / "B16.eml").read_bytes().replace(
            b"Subject:", f"X-Number: {number}\r\nSubject:".encode(), 1)
        vault.archive(raw, Envelope("a@example.com", ("bob@example.com",)))

    deliver(1)                                   # after the catalogue was read
    listing = vault.store.list

    def list_delivering(prefix, after=""):
        if prefix == MESSAGES and not delivered:
            delivered.append(deliver(2))         # between the two listings
        return listing(prefix, after)

    delivered: list[None] = []
    monkeypatch.setattr(vault.store, "list", list_delivering)
    report = verify(vault, catalogue_ids=ids - {indexed_id}, indexed_through=through)
    assert report.faults == [f"{MESSAGES}/{indexed_id}: stored but not in the catalogue"]
    assert report.not_yet_indexed == 2
    assert (report.messages, report.receipts) == (5, 5)
