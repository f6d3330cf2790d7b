# Group commit: deliveries that arrive together on several sessions are
# made durable by shared flushes, each is answered 250 only once its batch
# is durable, and a failed flush answers 451 to every message of its batch
# and leaves nothing of them half-visible.

from __future__ import annotations

import datetime as dt
import errno
import multiprocessing
import smtplib
import threading
import time
from pathlib import Path

import pytest

from vault import MissingObjectError
from vault.commit import DirectCommitter, GroupCommitter, Put
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.receiver import JournalHandler, Receiver
from vault.store import FileSyncer, LocalWormStore
from vault.verification import verify

SESSIONS = 20
GATE_DEADLINE = 30.0


class CountingSyncer(FileSyncer):
    """Count every flush; hold the first data flush until the rest queue up.

    While the first batch (one delivery, whichever came first) is held in
    its data sync, the other sessions stage their messages and wait: the
    second batch then holds all of them.  ``fail`` names a batch number
    (1-based, counted in data syncs) and a phase ("data" or a directory
    name) to fail with EIO, as a dying disk would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.committer: GroupCommitter | None = None
        self.hold_for = 0
        self.file_syncs: list[int] = []
        self.directory_syncs: list[Path] = []
        self.replied_while_held: int | None = None
        self.replies: list[tuple[int, str]] = []
        self.fail: tuple[int, str] | None = None

    def sync_files(self, paths):
        self.file_syncs.append(len(paths))
        if len(self.file_syncs) == 1 and self.committer is not None:
            deadline = time.monotonic() + GATE_DEADLINE
            while self.committer.waiting < self.hold_for:
                assert time.monotonic() < deadline, "sessions did not queue up"
                time.sleep(0.01)
            self.replied_while_held = len(self.replies)
        if self.fail == (len(self.file_syncs), "data"):
            raise OSError(errno.EIO, "Input/output error")
        super().sync_files(paths)

    def sync_directory(self, directory):
        self.directory_syncs.append(Path(directory))
        if self.fail and self.fail[0] == len(self.file_syncs) and (
                Path(directory).match(self.fail[1])):
            raise OSError(errno.EIO, "Input/output error")
        super().sync_directory(directory)


@pytest.fixture
def syncer():
    return CountingSyncer()


def make_vault(tmp_path, syncer, *, group):
    store = LocalWormStore(tmp_path / "store", syncer=syncer)
    committer = GroupCommitter(store) if group else DirectCommitter(store)
    vault = Vault(store, LocalKeyFile.create(tmp_path / "keys.json"),
                  OwnershipRules(domains=("example.com",)), committer=committer)
    return vault, committer


@pytest.fixture
def serve():
    started = []

    def start(vault):
        handler = JournalHandler(vault, ("127.0.0.0/8",), 100)
        server = Receiver(handler, "127.0.0.1", 0, "archive.test", 1 << 20)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def message(number: int) -> bytes:
    return (f"From: alice@example.com\r\nTo: bob@example.com\r\n"
            f"Subject: group {number}\r\nMessage-ID: <group{number}@example.com>\r\n\r\n"
            f"Body of message {number}.\r\n" + "padding line\r\n" * 200).encode()


def deliver_concurrently(port: int, numbers: list[int], syncer: CountingSyncer) -> dict:
    """Send each message on its own session at once; return DATA replies."""
    replies: dict[int, tuple[int, str]] = {}

    def send(number: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.sendmail("alice@example.com", ["journal@archive.test"],
                                message(number))
                reply = (250, "")
        except smtplib.SMTPDataError as err:
            reply = (err.smtp_code, err.smtp_error.decode())
        replies[number] = reply
        syncer.replies.append(reply)

    threads = [threading.Thread(target=send, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    return replies


def stored(vault: Vault) -> tuple[list[str], list[str]]:
    return list(vault.store.list("messages")), list(vault.store.list("receipts"))


def test_concurrent_deliveries_share_one_data_sync_and_few_directory_syncs(
        tmp_path, syncer, serve):
    vault, committer = make_vault(tmp_path, syncer, group=True)
    syncer.committer, syncer.hold_for = committer, SESSIONS - 1
    server = serve(vault)

    replies = deliver_concurrently(server.port, list(range(SESSIONS)), syncer)

    assert all(code == 250 for code, _ in replies.values()), replies
    # No 250 left while the first batch was not yet durable.
    assert syncer.replied_while_held == 0
    assert (committer.batches, committer.deliveries) == (2, SESSIONS)
    # One data sync per batch: the first delivery's message and receipt
    # with their two lock records, then everything else at once.
    assert syncer.file_syncs == [4, 4 * (SESSIONS - 1)]
    # Per batch: the lock and object directories of messages and of the
    # day's receipts; once, the parent of each directory the first batch
    # made (messages, receipts, year, month, day, under locks/ and objects/).
    assert len(syncer.directory_syncs) == 2 * 4 + 2 * 5
    assert len(set(syncer.directory_syncs[-4:])) == 4
    messages, receipts = stored(vault)
    assert (len(messages), len(receipts)) == (SESSIONS, SESSIONS)
    assert verify(vault).is_clean


def test_without_group_commit_every_object_pays_its_own_flushes(tmp_path, syncer, serve):
    # The comparison that makes the figures above mean something.
    vault, _ = make_vault(tmp_path, syncer, group=False)
    server = serve(vault)

    replies = deliver_concurrently(server.port, list(range(SESSIONS)), syncer)

    assert all(code == 250 for code, _ in replies.values()), replies
    assert syncer.file_syncs == [2] * (2 * SESSIONS)
    assert len(syncer.directory_syncs) >= 4 * SESSIONS


def test_failed_data_flush_answers_451_to_its_whole_batch_and_stores_none_of_it(
        tmp_path, syncer, serve):
    vault, committer = make_vault(tmp_path, syncer, group=True)
    syncer.committer, syncer.hold_for = committer, SESSIONS - 1
    syncer.fail = (2, "data")
    server = serve(vault)

    replies = deliver_concurrently(server.port, list(range(SESSIONS)), syncer)

    codes = sorted(code for code, _ in replies.values())
    assert codes == [250] + [451] * (SESSIONS - 1), replies
    [first] = [number for number, (code, _) in replies.items() if code == 250]
    messages, receipts = stored(vault)
    assert (len(messages), len(receipts)) == (1, 1)
    assert vault.read_message(messages[0]) == message(first)
    assert list((tmp_path / "store/tmp").iterdir()) == []

    # The senders retry; each message ends stored once with one receipt.
    syncer.fail = None
    retried = deliver_concurrently(
        server.port, [n for n in replies if n != first], syncer)
    assert all(code == 250 for code, _ in retried.values()), retried
    messages, receipts = stored(vault)
    assert (len(messages), len(receipts)) == (SESSIONS, SESSIONS)
    assert verify(vault).is_clean


def test_failed_receipt_flush_takes_back_the_batch_receipts_and_the_retry_completes(
        tmp_path, syncer, serve):
    # The messages' directory is durable before the receipts are linked;
    # when the receipts' directory cannot be synced, their receipts are
    # taken back, and the messages (complete, locked) wait for the retry.
    vault, committer = make_vault(tmp_path, syncer, group=True)
    syncer.committer, syncer.hold_for = committer, SESSIONS - 1
    syncer.fail = (2, "objects/receipts/*/*/*")
    server = serve(vault)

    replies = deliver_concurrently(server.port, list(range(SESSIONS)), syncer)

    assert sorted(code for code, _ in replies.values()) == [250] + [451] * (SESSIONS - 1)
    messages, receipts = stored(vault)
    assert len(receipts) == 1
    assert vault.read_receipt(receipts[0]).message_key in messages
    for key in messages:
        vault.read_message(key)

    syncer.fail = None
    retried = deliver_concurrently(
        server.port, [n for n, (code, _) in replies.items() if code != 250], syncer)
    assert all(code == 250 for code, _ in retried.values()), retried
    messages, receipts = stored(vault)
    assert (len(messages), len(receipts)) == (SESSIONS, SESSIONS)
    assert verify(vault).is_clean


def archive_in_process(root: str, keys: str, numbers: list[int], start) -> None:
    """Archive ``numbers`` through a group committer of this process's own."""
    store = LocalWormStore(Path(root))
    vault = Vault(store, LocalKeyFile(Path(keys)), OwnershipRules(domains=("example.com",)),
                  committer=GroupCommitter(store))
    start.wait()

    def deliver(number: int) -> None:
        vault.archive(message(number), Envelope("alice@example.com",
                                                ("journal@archive.test",), peer="127.0.0.1"))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_two_processes_group_committing_into_one_home_store_each_message_once(tmp_path):
    # Several receivers may serve one home: their batches interleave under
    # the store's flock, and a message both deliver is stored once.
    vault, _ = make_vault(tmp_path, FileSyncer(), group=True)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=archive_in_process, args=(
        str(tmp_path / "store"), str(tmp_path / "keys.json"), list(range(12)), start))
        for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0

    messages, receipts = stored(vault)
    assert (len(messages), len(receipts)) == (12, 24)
    assert verify(vault).is_clean
    assert list((tmp_path / "store/tmp").iterdir()) == []


def test_redelivered_message_lengthens_its_lock_in_the_same_commit_as_its_receipt(
        tmp_path, syncer, serve):
    # A second journaling of stored bytes adds a receipt and moves the
    # message's retain-until to that receipt's: one batch, one data sync.
    vault, committer = make_vault(tmp_path, syncer, group=True)
    server = serve(vault)
    assert deliver_concurrently(server.port, [7], syncer) == {7: (250, "")}
    [message_key] = vault.store.list("messages")
    first_lock = vault.store.lock(message_key)
    syncs_before = len(syncer.file_syncs)

    assert deliver_concurrently(server.port, [7], syncer) == {7: (250, "")}

    # The receipt and the two lock records (message, receipt), no message.
    assert syncer.file_syncs[syncs_before:] == [3]
    assert committer.batches == 2
    messages, receipts = stored(vault)
    assert messages == [message_key] and len(receipts) == 2
    second = vault.read_receipt(receipts[1])
    assert vault.store.lock(message_key).retain_until == second.retain_until
    assert second.retain_until > first_lock.retain_until
    assert verify(vault).is_clean


def test_lock_only_put_for_a_message_gone_fails_its_batch_with_missing_object(tmp_path):
    # Disposal may remove a message between the check and the commit; the
    # receipt must then not be published naming it.
    vault, committer = make_vault(tmp_path, FileSyncer(), group=True)
    retain = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(MissingObjectError):
        committer.commit([[Put("messages/gone", None, retain, is_shared=True)],
                          [Put("receipts/2026/12/04/000000.000000-aa", b"r", retain)]])
    assert stored(vault) == ([], [])
    assert list((tmp_path / "store/tmp").iterdir()) == []
