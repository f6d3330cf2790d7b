# serve's receiver in several processes: they share the SMTP port, each
# archives durably into the one home, one that dies is started again and
# logged once, none outlives serve, and a port already taken is refused
# rather than silently shared.

from __future__ import annotations

import os
import re
import secrets
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import ArchiveServer, free_port, strongroom
from vault.config import load
from vault.ingest import open_vault

PROCESSES = 2
SESSIONS = 20
DEADLINE = 30.0


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("STRONGROOM_RECEIVER_PROCESSES", str(PROCESSES))
    archive = ArchiveServer(tmp_path / "home")
    archive.init()
    yield archive
    archive.stop()


def children(pid: int) -> set[int]:
    """Return the ids of the live processes whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def receivers(server: ArchiveServer, count: int = PROCESSES) -> set[int]:
    """Wait until serve has ``count`` receiver processes; return their ids."""
    deadline = time.monotonic() + DEADLINE
    while True:
        running = {pid for pid in children(server.process.pid)
                   if b"spawn_main" in _command_line(pid)}
        # Spawned is not yet listening: the first process to listen already
        # answers on the port while the others still import the product.
        listening = {int(pid) for pid in re.findall(r"receiver process (\d+) listening",
                                                    server.log_path.read_text())}
        if len(running) == count and running <= listening:
            return running
        assert time.monotonic() < deadline, f"receiver processes: {running}, {listening}"
        time.sleep(0.1)


def message(word: str) -> bytes:
    return (f"From: alice@example.com\r\nTo: bob@example.com\r\n"
            f"Subject: {word}\r\nMessage-ID: <{word}@example.com>\r\n\r\n"
            f"Body {word}\r\n").encode()


def deliver_at_once(port: int, words: list[str]) -> dict[str, int]:
    """Send each message on its own session at once; return DATA codes."""
    codes: dict[str, int] = {}

    def send(word: str) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.sendmail("alice@example.com", ["journal@archive.test"],
                                message(word))
            codes[word] = 250
        except smtplib.SMTPResponseException as err:
            codes[word] = err.smtp_code

    threads = [threading.Thread(target=send, args=(word,)) for word in words]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    return codes


def accepting_pids(log: str) -> set[int]:
    # Receiver processes name themselves in their log lines.
    lines = re.findall(r"vault\.receiver\[(\d+)\]: \S+ accepted", log)
    return {int(pid) for pid in lines}


def test_receiver_processes_share_the_port_and_archive_into_one_home(server):
    server.start()
    token = server.add_user("bob@example.com")
    pids = receivers(server)
    words = [f"shared{secrets.token_hex(3)}n{n}" for n in range(SESSIONS)]

    assert deliver_at_once(server.smtp_port, words) == {word: 250 for word in words}

    # The kernel spread the sessions: both processes archived some.
    assert accepting_pids(server.log_path.read_text()) == pids
    # The follower in serve's process was woken and indexed them all.
    for word in words:
        assert server.wait_for(token, word, timeout=DEADLINE)["total"] == 1
    assert server.stop() == 0
    vault = open_vault(load(server.home))
    assert len(list(vault.store.list("receipts"))) == SESSIONS
    assert "0 fault(s)" in strongroom("verify", "--home", str(server.home))


def test_messages_close_together_are_searchable_without_waiting_for_a_poll(
        server, monkeypatch):
    # A receiver process wakes the follower at most every 50 ms; a message
    # that came sooner after the last wake was left for the next poll.
    # With polling set to a minute, every message must still be found in
    # seconds.
    monkeypatch.setenv("STRONGROOM_CATALOGUE_POLL_INTERVAL", "60")
    server.start()
    token = server.add_user("bob@example.com")
    receivers(server)
    for round_number in range(3):
        word = f"close{secrets.token_hex(3)}r{round_number}"
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=DEADLINE) as client:
            for number in range(2):
                client.sendmail("partner@example.net", ["bob@example.com"], (
                    f"From: partner@example.net\r\nTo: bob@example.com\r\n"
                    f"Subject: {word} {number}\r\n"
                    f"Message-ID: <{word}-{number}@example.net>\r\n\r\nbody\r\n"))
        assert server.wait_for(token, word, count=2, timeout=10)["total"] == 2


def test_receiver_process_that_dies_is_started_again_and_logged_once(server):
    server.start()
    victim, survivor = sorted(receivers(server))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    while True:
        current = receivers(server)
        if victim not in current:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert survivor in current and len(current) == PROCESSES
    [replacement] = current - {survivor}
    listening = f"receiver process {replacement} listening"
    while listening not in server.log_path.read_text():
        assert time.monotonic() < deadline, "the new receiver process did not listen"
        time.sleep(0.1)

    words = [f"again{secrets.token_hex(3)}n{n}" for n in range(SESSIONS)]
    assert deliver_at_once(server.smtp_port, words) == {word: 250 for word in words}
    log = server.log_path.read_text()
    assert log.count(f"receiver process {victim} exited") == 1
    assert "exited with status -9; starting another" in log
    assert accepting_pids(log) == current


def test_sigkill_to_serve_takes_its_receiver_processes_with_it(server):
    server.start()
    pids = receivers(server)
    server.kill()

    deadline = time.monotonic() + DEADLINE
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "receiver processes outlived serve"
        time.sleep(0.1)
    # The port is free again: a new serve takes it at once.
    server.start()
    assert len(receivers(server)) == PROCESSES


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_second_serve_on_a_taken_port_is_refused_not_shared(server, tmp_path):
    server.start()
    other = ArchiveServer(tmp_path / "other")
    other.init()
    completed = subprocess.run(
        [sys.executable, "-m", "web.cli", "serve", "--home", str(other.home),
         "--smtp-listen", f"127.0.0.1:{server.smtp_port}",
         "--web-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert f"cannot listen on 127.0.0.1:{server.smtp_port}" in completed.stderr
    assert "Traceback" not in completed.stderr


def _command_line(pid: int) -> bytes:
    # multiprocessing's own resource tracker is a child of serve too.
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
