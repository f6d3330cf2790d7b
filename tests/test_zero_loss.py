# Zero loss: a 250 means the message is durable whatever happens next.
# serve killed with SIGKILL amid 200 concurrent deliveries loses none that
# was answered 250 and leaves nothing verify calls damaged; SIGTERM lets a
# message already in DATA finish; and Postfix, the real sender, keeps
# journal copies queued while the archive is down and delivers each once.

from __future__ import annotations

import secrets
import signal
import smtplib
import threading
import time

import pytest

from tests.harness import ArchiveServer, strongroom
from tests.peers.postfix import JOURNAL_ADDRESS, JournalingPostfix, require_postfix
from vault.config import load
from vault.ingest import open_vault

CLIENTS = 20
MESSAGES_PER_CLIENT = 10
# Kill serve once this many deliveries have been answered 250, so that
# some are done, some are in flight and some have not started.
KILL_AFTER_ACCEPTED = 60
DELIVERY_DEADLINE = 90.0
RETRY_PAUSE = 0.2
SEARCHABLE_DEADLINE = 30.0


def message(word: str, number: int) -> bytes:
    """Return a small message with a body word no other message has."""
    return (
        b"From: Alice <alice@example.com>\r\n"
        b"To: Bob <bob@example.com>\r\n"
        b"Subject: Delivery " + str(number).encode() + b"\r\n"
        b"Message-ID: <" + word.encode() + b"@example.com>\r\n"
        b"\r\n"
        b"Zero loss check " + word.encode() + b"\r\n"
    )


class Deliveries:
    """Clients that send their messages until each is answered 250.

    Anything short of a 250 (refused connection, reset, 4xx, no reply at
    all) is retried, as a mail server retries from its queue.
    """

    def __init__(self, port: int, messages: dict[str, bytes]) -> None:
        self.port = port
        self.messages = messages
        self.accepted: dict[str, str] = {}
        self.attempts = 0
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + DELIVERY_DEADLINE
        words = sorted(messages)
        self.threads = [
            threading.Thread(target=self._send_all, args=(words[i::CLIENTS],), daemon=True)
            for i in range(CLIENTS)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 5)

    def _send_all(self, words: list[str]) -> None:
        for word in words:
            while time.monotonic() < self.deadline:
                with self.lock:
                    self.attempts += 1
                if self._send(word):
                    break
                time.sleep(RETRY_PAUSE)

    def _send(self, word: str) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as client:
                client.sendmail("alice@example.com", ["journal@archive.test"],
                                self.messages[word])
                reply = "250"
        except (OSError, smtplib.SMTPException):
            return False
        with self.lock:
            self.accepted[word] = reply
        return True


@pytest.fixture(params=[1, 2], ids=["1 receiver process", "2 receiver processes"])
def receiver_processes(request, monkeypatch):
    """Run serve's receiver in its own process, or in two of their own."""
    monkeypatch.setenv("STRONGROOM_RECEIVER_PROCESSES", str(request.param))
    return request.param


def test_sigkill_amid_200_deliveries_loses_nothing_answered_250(tmp_path,
                                                                receiver_processes):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    token = server.add_user("bob@example.com")
    run = secrets.token_hex(3)
    messages = {f"zl{run}c{n:03d}": message(f"zl{run}c{n:03d}", n)
                for n in range(CLIENTS * MESSAGES_PER_CLIENT)}
    server.start()
    deliveries = Deliveries(server.smtp_port, messages)
    started = time.monotonic()
    try:
        deliveries.start()
        while len(deliveries.accepted) < KILL_AFTER_ACCEPTED:
            assert time.monotonic() - started < 60, "deliveries did not get going"
            time.sleep(0.01)
        server.kill()
        accepted_before_kill = len(deliveries.accepted)
        server.start()
        deliveries.join()

        assert len(deliveries.accepted) == len(messages), (
            f"only {len(deliveries.accepted)} of {len(messages)} answered 250")
        assert deliveries.attempts > len(messages), "the kill interrupted nothing"
        assert accepted_before_kill < len(messages)

        # Every message answered 250 is stored once, opens, and is found.
        deadline = time.monotonic() + SEARCHABLE_DEADLINE
        while server.search(token, "zero")["total"] < len(messages):
            assert time.monotonic() < deadline, "the follower did not catch up"
            time.sleep(0.2)
        for word, sent in messages.items():
            found = server.search(token, word)
            assert found["total"] == 1, (word, found)
            assert server.raw(token, found["results"][0]["id"]) == (200, sent)
    finally:
        server.stop()

    vault = open_vault(load(server.home))
    assert len(list(vault.store.list("messages"))) == len(messages)
    assert "0 fault(s)" in strongroom("verify", "--home", str(server.home))
    assert time.monotonic() - started < 120


def test_sigterm_lets_a_message_in_data_finish_and_stores_it(tmp_path, receiver_processes):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    token = server.add_user("bob@example.com")
    word = f"inflight{secrets.token_hex(4)}"
    raw = message(word, 1) + b"A second line, sent after SIGTERM.\r\n"
    server.start()
    try:
        idle = server.session()
        idle.command("EHLO idle.example.com")
        sending = server.session()
        sending.command("EHLO mta.example.com")
        sending.command("MAIL FROM:<alice@example.com>")
        sending.command("RCPT TO:<journal@archive.test>")
        assert sending.command("DATA")[0] == 354
        sending.send(raw[:len(raw) // 2])
        time.sleep(0.2)

        server.process.send_signal(signal.SIGTERM)
        assert idle.reply()[0] == 421
        sending.send(raw[len(raw) // 2:] + b".\r\n")
        code, text = sending.reply()
        assert code == 250, text
        assert sending.reply()[0] == 421
        assert server.process.wait(timeout=30) == 0
        idle.close()
        sending.close()

        server.start()
        found = server.wait_for(token, word, timeout=10)
        assert found["total"] == 1
        assert server.raw(token, found["results"][0]["id"]) == (200, raw)
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


@pytest.mark.peer
def test_postfix_keeps_journal_copies_queued_until_the_archive_is_back(tmp_path):
    require_postfix()
    server = ArchiveServer(tmp_path / "home")
    server.init()
    token = server.add_user("bob@example.com")
    words = [f"queued{secrets.token_hex(4)}" for _ in range(5)]
    with JournalingPostfix(tmp_path / "postfix", server.smtp_port) as postfix:
        queue_ids = [postfix.submit(message(word, number), "alice@example.com",
                                    ["bob@example.com"])
                     for number, word in enumerate(words)]

        # With serve stopped every journal copy is deferred, never bounced,
        # and stays queued.  Postfix retries each second here, so a copy
        # may be in the active queue rather than the deferred one.
        for queue_id in queue_ids:
            deferral = postfix.wait_for_status(queue_id, JOURNAL_ADDRESS, "deferred")
            assert "Connection refused" in deferral, deferral
        time.sleep(2)
        queued = postfix.queue()
        assert sorted(entry["queue_id"] for entry in queued) == sorted(queue_ids), queued
        for entry in queued:
            assert [r["address"] for r in entry["recipients"]] == [JOURNAL_ADDRESS], entry
        assert "status=bounced" not in postfix.log_text()

        server.start()
        try:
            postfix.flush()
            postfix.wait_until_empty(timeout=30)
            for word in words:
                found = server.wait_for(token, word, timeout=10)
                assert found["total"] == 1, (word, found)
                status, archived = server.raw(token, found["results"][0]["id"])
                assert status == 200 and word.encode() in archived
        finally:
            server.stop()

    vault = open_vault(load(server.home))
    receipts = [vault.read_receipt(key) for key in vault.receipts_after()]
    assert len(receipts) == len(words)
    assert len({receipt.message_key for receipt in receipts}) == len(words)
    assert all(receipt.rcpt_tos == (JOURNAL_ADDRESS,) for receipt in receipts)
