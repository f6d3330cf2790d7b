# A sealed object opens only as itself, under its own key, unaltered.

from __future__ import annotations

import pytest

from vault import IntegrityError
from vault.keys import LocalKeyFile
from vault.sealing import open_sealed, seal


@pytest.fixture
def keys(tmp_path):
    return LocalKeyFile.create(tmp_path / "keys.json")


def test_round_trip_returns_the_exact_bytes(keys):
    plaintext = b"From: a@example.com\r\n\r\n" + bytes(range(256)) * 100
    sealed = seal(keys, "messages/abc", plaintext)
    assert open_sealed(keys, "messages/abc", sealed) == plaintext
    assert plaintext not in sealed


def test_every_flipped_byte_is_detected(keys):
    sealed = seal(keys, "messages/abc", b"hello world" * 10)
    for position in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError, match="messages/abc"):
            open_sealed(keys, "messages/abc", bytes(damaged))


def test_object_moved_to_another_key_fails_to_open(keys):
    sealed = seal(keys, "messages/aaa", b"one message")
    with pytest.raises(IntegrityError, match="messages/bbb"):
        open_sealed(keys, "messages/bbb", sealed)


def test_truncated_object_fails_to_open(keys):
    sealed = seal(keys, "messages/abc", b"x" * 1000)
    for length in (0, 5, 30, len(sealed) - 1):
        with pytest.raises(IntegrityError):
            open_sealed(keys, "messages/abc", sealed[:length])


def test_key_file_is_private_and_names_its_key(keys):
    assert oct(keys.path.stat().st_mode & 0o777) == "0o600"
    sealed = seal(keys, "messages/abc", b"x")
    key_id = keys.wrap(b"\0" * 32)[0]
    assert key_id.encode() in sealed[:64]


def test_object_sealed_under_another_archive_key_fails(tmp_path, keys):
    other = LocalKeyFile.create(tmp_path / "other.json")
    sealed = seal(other, "messages/abc", b"x")
    with pytest.raises(IntegrityError, match="unknown key id"):
        open_sealed(keys, "messages/abc", sealed)


def test_nonces_and_data_keys_never_repeat(keys):
    # B20: a fresh data key per object, and a fresh nonce besides.
    headers = {seal(keys, "messages/same", b"same bytes")[:100] for _ in range(200)}
    assert len(headers) == 200
