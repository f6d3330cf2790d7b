# status shows, per journal source, what arrived in the last hour and day,
# what was refused, and a source that went silent.

from __future__ import annotations

import datetime as dt

import pytest

from tests.conftest import CASES
from tests.harness import ArchiveServer, strongroom as cli
from tests.homes import damage, make_home
from vault.config import load
from vault.control import ControlDB
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.cli import main as strongroom


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path, people={})


def test_status_counts_per_source_and_flags_a_silent_one(home, capsys, monkeypatch):
    vault = open_vault(load(home))
    two_hours_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    monkeypatch.setattr("vault.ingest.now", lambda: two_hours_ago)
    vault.archive((CASES / "B09.eml").read_bytes(),
                  Envelope("a@example.com", ("bob@example.com",), peer="192.0.2.7"))
    monkeypatch.undo()
    for name in ("B16.eml", "B22.eml"):
        vault.archive((CASES / name).read_bytes(),
                      Envelope("a@example.com", ("journal@archive.test",), peer="127.0.0.1"))
    control = ControlDB(home / "control.sqlite3")
    control.record_refusal("journal@archive.test", 451, "store failed")
    control.record_refusal("198.51.100.9", 550, "untrusted")

    capsys.readouterr()
    assert strongroom(["status", "--home", str(home)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    journal = lines["journal@archive.test"].split()
    assert journal[1:3] == ["2", "msg"] and journal[5:7] == ["2", "msg"]
    assert journal[-2:] == ["1", "0"]
    relay = lines["192.0.2.7"]
    assert relay.split()[1] == "0" and relay.split()[5] == "1"
    assert relay.rstrip().endswith("SILENT")
    assert lines["198.51.100.9"].split()[-2:] == ["0", "1"]
    assert not lines["journal@archive.test"].rstrip().endswith("SILENT")


def test_size_refusals_show_in_status_against_their_source(tmp_path):
    # A journaling rule whose copies are all too big never lands a message;
    # status must show its 552s beside its (absent) deliveries.
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.configure("receiver", "max_message_size = 4096")
    server.start()
    try:
        with server.session() as client:
            client.command("EHLO mta.example.com")
            client.command("MAIL FROM:<alice@example.com>")
            client.command("RCPT TO:<journal@archive.test>")
            assert client.command("DATA")[0] == 354
            client.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 80 + b".\r\n")
            assert client.reply()[0] == 552
            # Declared too big at MAIL FROM: no recipient yet, so the peer.
            assert client.command("MAIL FROM:<alice@example.com> SIZE=5000")[0] == 552
        server.send(b"From: alice@example.com\r\nTo: bob@example.com\r\n\r\nsmall\r\n",
                    "alice@example.com", ["journal@archive.test"])
    finally:
        server.stop()

    lines = {line.split()[0]: line.split()
             for line in cli("status", "--home", str(server.home)).splitlines()[1:]}
    journal = lines["journal@archive.test"]
    assert journal[1:3] == ["1", "msg"]
    assert journal[-2:] == ["0", "1"]
    assert lines["127.0.0.1"][-2:] == ["0", "1"]


def test_a_damaged_receipt_is_named_and_the_rest_still_counted(home, capsys):
    # One damaged receipt made status exit with nothing but the integrity
    # error, and the admin's coverage page answer 500.
    vault = open_vault(load(home))
    damaged = vault.archive((CASES / "B09.eml").read_bytes(),
                            Envelope("a@example.com", ("journal@archive.test",), peer="127.0.0.1"))
    for name in ("B16.eml", "B22.eml"):
        vault.archive((CASES / name).read_bytes(),
                      Envelope("a@example.com", ("journal@archive.test",), peer="127.0.0.1"))
    damage(home, damaged.key)

    capsys.readouterr()
    assert strongroom(["status", "--home", str(home)]) == 1
    out = capsys.readouterr().out
    journal = next(line for line in out.splitlines() if line.startswith("journal@archive.test"))
    assert journal.split()[1:3] == ["2", "msg"]
    assert "catalogue: 0 of 2 messages indexed" in out
    assert "1 receipt(s) cannot be read and are not counted above" in out
    assert damaged.key in out
