# Purge deletes only what is past retention and on no hold; holds keep
# objects until the last one covering them is released.

from __future__ import annotations

import datetime as dt
import json

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.conftest import CASES
from tests.homes import make_home
from vault import RetentionError
from vault.config import load
from vault.control import ControlDB
from vault.ingest import open_vault
from vault.ownership import Envelope
from vault.verification import verify
from web.cli import main as strongroom

BOB = frozenset({"bob@example.com"})


@pytest.fixture
def home(tmp_path):
    home = make_home(tmp_path, people={}, config='[retention]\ndefault = "30d"')
    vault = open_vault(load(home))
    for name in ("B16.eml", "B09.eml", "B22.eml"):
        vault.archive((CASES / name).read_bytes(), Envelope("a@example.com", ("bob@example.com",)))
    Follower(vault, Catalogue(home / "catalogue"), home / "catalogue/cursor").catch_up()
    return home


@pytest.fixture
def later(monkeypatch):
    """Move the archive's clock past the 30-day retention."""
    def travel(days=31):
        moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)
        for module in ("vault.store", "vault.disposition"):
            monkeypatch.setattr(f"{module}.now", lambda: moment)
    return travel


def purge(home, capsys, *extra):
    capsys.readouterr()
    assert strongroom(["purge", "--home", str(home), *extra]) == 0
    return capsys.readouterr().out


def test_nothing_goes_before_its_time(home, capsys):
    output = purge(home, capsys)
    assert "Deleted 0 messages and 0 receipts; kept 3 under retention and 0 on hold" in output
    assert Catalogue(home / "catalogue").count() == 3


def test_dry_run_lists_and_deletes_nothing(home, capsys, later):
    later()
    output = purge(home, capsys, "--dry-run")
    assert "Would delete 3 messages and 3 receipts" in output
    assert len(list(open_vault(load(home)).store.list("messages"))) == 3


def test_expired_mail_is_deleted_everywhere_and_audited(home, capsys, later):
    later()
    output = purge(home, capsys)
    assert "Deleted 3 messages and 3 receipts; kept 0 under retention and 0 on hold" in output
    vault = open_vault(load(home))
    assert list(vault.store.list("messages")) == [] == list(vault.store.list("receipts"))
    assert Catalogue(home / "catalogue").count() == 0
    assert verify(vault, catalogue_ids=Catalogue(home / "catalogue").ids()).is_clean
    [event] = ControlDB(home / "control.sqlite3").audit_events(action="purge")
    detail = json.loads(event["detail"])
    assert len(detail["messages"]) == 3 and len(detail["receipts"]) == 3
    assert "AVOCET" not in event["detail"]


def test_held_mail_outlives_its_retention_until_every_hold_is_released(home, capsys, later):
    for name in ("case-1", "case-2"):
        assert strongroom(["hold", "place", name, "--home", str(home),
                           "--query", "AVOCET-B16"]) == 0
    assert "covers 2 objects (1 messages" in capsys.readouterr().out
    later()
    vault = open_vault(load(home))
    message_id = Catalogue(home / "catalogue").search("AVOCET", owners=BOB).hits[0].id
    with pytest.raises(RetentionError, match="legal hold"):
        vault.store.delete(f"messages/{message_id}")

    assert "kept 0 under retention and 1 on hold" in purge(home, capsys)
    assert strongroom(["hold", "release", "case-1", "--home", str(home)]) == 0
    assert "0 objects are no longer held" in capsys.readouterr().out
    assert "kept 0 under retention and 1 on hold" in purge(home, capsys)
    assert strongroom(["hold", "release", "case-2", "--home", str(home)]) == 0
    assert "2 objects are no longer held" in capsys.readouterr().out
    assert "Deleted 1 messages and 1 receipts" in purge(home, capsys)
    assert not vault.store.exists(f"messages/{message_id}")


def test_released_hold_cannot_be_placed_again(home, capsys):
    assert strongroom(["hold", "place", "h", "--home", str(home), "--query", "AVOCET"]) == 0
    assert strongroom(["hold", "release", "h", "--home", str(home)]) == 0
    assert strongroom(["hold", "place", "h", "--home", str(home), "--query", "AVOCET"]) == 2
    assert "was released" in capsys.readouterr().err
