# The local store writes each key once, durably, and lists in key order.

from __future__ import annotations

import pytest

from vault import MissingObjectError, ObjectExistsError
from vault.store import LocalWormStore


@pytest.fixture
def store(tmp_path):
    return LocalWormStore(tmp_path / "store")


def test_second_write_of_a_key_is_refused_and_keeps_the_first(store):
    store.put("messages/abc", b"first")
    with pytest.raises(ObjectExistsError):
        store.put("messages/abc", b"second")
    assert store.get("messages/abc") == b"first"


def test_objects_are_read_only_and_no_scratch_is_left(store, tmp_path):
    store.put("receipts/2026/12/04/101010.000001-aa", b"r")
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
        store.put(key, b"r")
    assert list(store.list("receipts")) == keys
    assert list(store.list("receipts", after=keys[1])) == keys[2:]
    assert list(store.list("receipts", after=keys[-1])) == []
    assert list(store.list("receipts", after="receipts/2026/01/15")) == keys[3:]


@pytest.mark.parametrize("key", ["../etc/passwd", "messages/../../x", "messages/.hidden",
                                 "Messages/x", "messages//x", ""])
def test_malformed_keys_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x")


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
