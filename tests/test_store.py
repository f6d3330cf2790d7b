# The local store writes each key once, durably, and lists in key order.

from __future__ import annotations

import datetime as dt

import pytest

from vault import MissingObjectError, ObjectExistsError, RetentionError
from vault.store import LocalWormStore

LATER = dt.datetime(2040, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def store(tmp_path):
    return LocalWormStore(tmp_path / "store")


def test_second_write_of_a_key_is_refused_and_keeps_the_first(store):
    store.put("messages/abc", b"first", retain_until=LATER)
    with pytest.raises(ObjectExistsError):
        store.put("messages/abc", b"second", retain_until=LATER)
    assert store.get("messages/abc") == b"first"


def test_objects_are_read_only_and_no_scratch_is_left(store, tmp_path):
    store.put("receipts/2026/12/04/101010.000001-aa", b"r", retain_until=LATER)
    path = tmp_path / "store/objects/receipts/2026/12/04/101010.000001-aa"
    assert path.stat().st_mode & 0o222 == 0
    assert list((tmp_path / "store/tmp").iterdir()) == []


def test_missing_key_raises(store):
    with pytest.raises(MissingObjectError):
        store.get("messages/nothing")


def test_listing_is_in_key_order_and_resumes_after_a_cursor(store):
    keys = [
        "receipts/2025/12/31/235959.999999-ff",
        "receipts/2026/01/01/000000.000000-aa",
        "receipts/2026/01/01/000000.000000-ab",
        "receipts/2026/02/10/120000.000000-00",
    ]
    for key in reversed(keys):
        store.put(key, b"r", retain_until=LATER)
    assert list(store.list("receipts")) == keys
    assert list(store.list("receipts", after=keys[1])) == keys[2:]
    assert list(store.list("receipts", after=keys[-1])) == []
    assert list(store.list("receipts", after="receipts/2026/01/15")) == keys[3:]


@pytest.mark.parametrize("key", ["../etc/passwd", "messages/../../x", "messages/.hidden",
                                 "Messages/x", "messages//x", ""])
def test_malformed_keys_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x", retain_until=LATER)


def test_abandoned_scratch_files_are_removed_on_open(tmp_path):
    import os
    import time

    store = LocalWormStore(tmp_path / "store")
    old = tmp_path / "store/tmp/dead.part"
    fresh = tmp_path / "store/tmp/writing.part"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    LocalWormStore(tmp_path / "store")
    assert not old.exists()
    assert fresh.exists()
    assert list(store.list("messages")) == []


def test_locked_object_cannot_be_deleted_until_its_time(store, monkeypatch):
    store.put("messages/abc", b"x", retain_until=LATER)
    with pytest.raises(RetentionError, match="retained until 2040"):
        store.delete("messages/abc")
    monkeypatch.setattr("vault.store.now", lambda: LATER + dt.timedelta(seconds=1))
    store.delete("messages/abc")
    assert not store.exists("messages/abc")
    with pytest.raises(MissingObjectError):
        store.lock("messages/abc")


def test_retention_is_extended_never_shortened(store):
    store.put("messages/abc", b"x", retain_until=LATER)
    store.extend_retention("messages/abc", LATER - dt.timedelta(days=400))
    assert store.lock("messages/abc").retain_until == LATER
    store.extend_retention("messages/abc", LATER + dt.timedelta(days=1))
    assert store.lock("messages/abc").retain_until == LATER + dt.timedelta(days=1)


def test_legal_hold_blocks_deletion_past_retention(store, monkeypatch):
    store.put("messages/abc", b"x", retain_until=LATER)
    store.set_legal_hold("messages/abc", True)
    monkeypatch.setattr("vault.store.now", lambda: LATER + dt.timedelta(days=1))
    with pytest.raises(RetentionError, match="legal hold"):
        store.delete("messages/abc")
    store.set_legal_hold("messages/abc", False)
    store.delete("messages/abc")


def test_object_without_a_lock_record_is_kept_for_ever(store, tmp_path):
    store.put("messages/abc", b"x", retain_until=LATER)
    (tmp_path / "store/locks/messages/abc").unlink()
    assert store.lock("messages/abc").retain_until.year == 9999
    with pytest.raises(RetentionError):
        store.delete("messages/abc")


def test_listing_after_a_cursor_reads_no_earlier_day_and_stats_no_file(store, monkeypatch):
    # The follower lists receipts after its cursor on every poll: the cost
    # must follow the receipts after it, not the size of the vault.
    import os

    for day in (1, 2, 3):
        for second in range(4):
            store.put(f"receipts/2026/12/0{day}/12000{second}.000000-aa", b"r",
                      retain_until=LATER)
    scanned: list[str] = []
    stated: list[object] = []
    real_scandir, real_stat = os.scandir, os.stat
    monkeypatch.setattr(os, "scandir", lambda path: scanned.append(path) or real_scandir(path))
    monkeypatch.setattr(os, "stat", lambda *a, **k: stated.append(a[0]) or real_stat(*a, **k))

    found = list(store.list("receipts", after="receipts/2026/12/03/120001.000000-aa"))

    assert found == ["receipts/2026/12/03/120002.000000-aa",
                     "receipts/2026/12/03/120003.000000-aa"]
    assert not [path for path in scanned if path.endswith(("/01", "/02"))]
    assert any(path.endswith("/03") for path in scanned)
    assert stated == []
    assert list(store.list("receipts", after="receipts/2026/12/02")) == [
        *(f"receipts/2026/12/02/12000{second}.000000-aa" for second in range(4)),
        *(f"receipts/2026/12/03/12000{second}.000000-aa" for second in range(4))]
