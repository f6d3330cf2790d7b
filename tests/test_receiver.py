# The receiver over real TCP: the DATA octets are stored exactly (after
# dot-unstuffing), smuggled transactions are not, and a store failure is a
# 451 that loses nothing.

from __future__ import annotations

import hashlib
import smtplib

import pytest

from tests.conftest import CASES
from tests.transcript import replay
from vault import StoreError
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import OwnershipRules
from vault.receiver import JournalHandler, Receiver, unstuff_bare_lf_lines
from vault.store import LocalWormStore


@pytest.fixture
def vault(tmp_path):
    return Vault(
        LocalWormStore(tmp_path / "store"),
        LocalKeyFile.create(tmp_path / "keys.json"),
        OwnershipRules(domains=("example.com",)),
    )


@pytest.fixture
def receiver(vault):
    started = []

    def start(trusted=("127.0.0.0/8",), max_recipients=100, max_size=1 << 20):
        handler = JournalHandler(vault, trusted, max_recipients)
        server = Receiver(handler, "127.0.0.1", 0, "archive.test", max_size)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def stored_messages(vault: Vault) -> list[tuple[object, bytes]]:
    receipts = [vault.read_receipt(key) for key in vault.receipts_after()]
    return [(receipt, vault.read_message(receipt.message_key)) for receipt in receipts]


def test_b01_dot_stuffed_lines_are_stored_unstuffed(vault, receiver):
    server = receiver()
    replies = replay((CASES / "B01.smtp").read_bytes(), server.port)

    assert replies[-2][1].startswith(b"250 ")
    [(receipt, raw)] = stored_messages(vault)
    assert raw == (CASES / "B01.eml").read_bytes()
    assert hashlib.sha256(raw).hexdigest().startswith("d351a299")
    assert receipt.mail_from == "alice@example.com"
    assert receipt.rcpt_tos == ("journal@archive.example.com",)


def test_b01_bare_lf_line_of_three_dots_is_stored_as_two(vault, receiver):
    # Either a 5xx with nothing stored, or the line stored as "..": we store.
    server = receiver()
    replies = replay((CASES / "B01-barelf.smtp").read_bytes(), server.port)

    assert replies[-2][1].startswith(b"250 ")
    [(_, raw)] = stored_messages(vault)
    assert b"\nthis is a test of dot\n..\n" in raw
    assert b"\n...\n" not in raw


def test_b02_smuggled_transaction_is_not_archived(vault, receiver):
    server = receiver()
    replies = replay((CASES / "B02.smtp").read_bytes(), server.port)

    messages = stored_messages(vault)
    assert len(messages) <= 1
    assert [r for r in replies if r[0] == b"<data>"][0][1].startswith(b"250 ")
    for receipt, raw in messages:
        assert receipt.mail_from == "alice@example.com"
        headers = raw.split(b"\r\n\r\n", 1)[0]
        assert b"Message-ID: <b02-genuine@example.com>" in headers
        assert b"b02-forged" not in headers


def test_bare_lf_unstuffing_leaves_crlf_lines_alone():
    assert unstuff_bare_lf_lines(b"a\n..b\r\n.c\n.\r\n") == b"a\n.b\r\n.c\n\r\n"


def test_store_failure_answers_451_and_the_retry_is_stored_once(vault, receiver, monkeypatch):
    server = receiver()
    raw = (CASES / "B05.eml").read_bytes()
    real_put = vault.store.put

    def failing_put(key, data):
        raise StoreError("disk full")

    monkeypatch.setattr(vault.store, "put", failing_put)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.com", ["bob@example.com"], raw)
    assert refused.value.smtp_code == 451
    assert stored_messages(vault) == []

    monkeypatch.setattr(vault.store, "put", real_put)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.com"], raw)
    [(receipt, stored)] = stored_messages(vault)
    assert stored == raw
    assert receipt.owners == ("alice@example.com", "bob@example.com")


def test_receipt_failure_after_message_stored_is_451_and_retry_completes(vault, receiver, monkeypatch):
    # The message object may land before the receipt fails; the retry must
    # still end with one message and one receipt.
    server = receiver()
    raw = (CASES / "B05.eml").read_bytes()
    real_put = vault.store.put

    def receipt_fails(key, data):
        if key.startswith("receipts/"):
            raise StoreError("permission denied")
        real_put(key, data)

    monkeypatch.setattr(vault.store, "put", receipt_fails)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.com", ["bob@example.com"], raw)
    assert refused.value.smtp_code == 451

    monkeypatch.setattr(vault.store, "put", real_put)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.com"], raw)
    assert len(stored_messages(vault)) == 1
    assert len(list(vault.store.list("messages"))) == 1


def test_untrusted_peer_is_refused_and_nothing_is_stored(vault, receiver):
    server = receiver(trusted=("192.0.2.0/24",))
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo()
        code, text = client.mail("alice@example.com")
    assert code == 550
    assert b"not allowed" in text
    assert stored_messages(vault) == []


def test_oversized_message_is_refused_with_552(vault, receiver):
    server = receiver(max_size=4096)
    raw = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 100 + b"y" * 8000 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        with pytest.raises(smtplib.SMTPException) as refused:
            client.sendmail("alice@example.com", ["bob@example.com"], raw)
    assert "552" in str(refused.value)
    assert stored_messages(vault) == []


def test_lines_longer_than_rfc5321_allows_are_still_archived(vault, receiver):
    # Real mail breaks the 1000-octet line limit; refusing it would lose it.
    server = receiver()
    raw = b"Subject: long line\r\n\r\n" + b"z" * 20000 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.com"], raw)
    [(_, stored)] = stored_messages(vault)
    assert stored == raw


def test_too_many_recipients_get_452_and_the_rest_are_accepted(vault, receiver):
    server = receiver(max_recipients=2)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo()
        client.mail("alice@example.com")
        assert client.rcpt("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[0] == 452
