# The audit trail is sealed into the vault as a hash chain; any edit,
# removal or reordering is found, with the first break named.

from __future__ import annotations

import sqlite3

import pytest

from tests.homes import make_home
from vault.audit import seal_pending, verify_chain
from vault.config import load
from vault.control import ControlDB
from vault.ingest import open_vault
from web.cli import main as strongroom


@pytest.fixture
def home(tmp_path):
    home = make_home(tmp_path, people={})
    control = ControlDB(home / "control.sqlite3")
    vault = open_vault(load(home))
    for batch in range(3):
        for event in range(4):
            control.audit("bob@example.com", "search", query=f"q{batch}.{event}")
        seal_pending(control, vault)
    return home


def chain(home):
    return verify_chain(ControlDB(home / "control.sqlite3"), open_vault(load(home)))


def test_commands_and_events_are_sealed_in_order(home, capsys):
    report = chain(home)
    # init's own event was sealed by the CLI as it returned: batch 1.
    assert (report.batches, report.events, report.unsealed) == (4, 13, 0)
    assert report.first_break is None
    assert strongroom(["audit", "verify", "--home", str(home)]) == 0
    assert "chain intact" in capsys.readouterr().out


def test_event_edited_in_the_database_breaks_the_chain(home, capsys):
    with sqlite3.connect(home / "control.sqlite3") as connection:
        connection.execute(
            "UPDATE audit SET detail = '{\"query\": \"innocent\"}' WHERE id = 6")
    report = chain(home)
    assert report.first_break == (
        "audit/000000000003: event 6 in the control database differs from its sealed copy")
    assert strongroom(["audit", "verify", "--home", str(home)]) == 1
    assert "BREAK audit/000000000003" in capsys.readouterr().out


def test_removed_batch_breaks_the_chain(home):
    (home / "store/objects/audit/000000000002").unlink()
    assert chain(home).first_break == (
        "audit/000000000003: expected batch 2 here (a batch is missing)")


def test_batch_replaced_by_another_breaks_the_chain(home):
    second = home / "store/objects/audit/000000000002"
    third = home / "store/objects/audit/000000000003"
    second.chmod(0o600)
    second.write_bytes(third.read_bytes())
    assert chain(home).first_break.startswith("audit/000000000002: cannot be opened")


def test_audit_show_filters(home, capsys):
    capsys.readouterr()
    assert strongroom(["audit", "show", "--home", str(home), "--action", "home.created"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "strongroom-init  home.created" in lines[0]


def test_sealing_nothing_makes_no_batch(home):
    vault = open_vault(load(home))
    assert seal_pending(ControlDB(home / "control.sqlite3"), vault) == 0
    assert chain(home).batches == 4


SEALER = """
import sys
from pathlib import Path
from vault.audit import seal_pending
from vault.config import load
from vault.control import ControlDB
from vault.ingest import open_vault
home = Path(sys.argv[1])
control = ControlDB(home / "control.sqlite3")
vault = open_vault(load(home))
for round in range(15):
    control.audit(sys.argv[2], "search", query=str(round))
    seal_pending(control, vault)
"""


def test_processes_sealing_at_once_keep_one_chain(home):
    # serve seals on its schedule while a CLI command seals as it returns:
    # each must read the chain's head under the same lock it writes with,
    # or two batches claim one sequence number.
    import subprocess
    import sys

    sealers = [subprocess.Popen([sys.executable, "-c", SEALER, str(home), f"p{n}@example.com"],
                                stderr=subprocess.PIPE, text=True) for n in range(4)]
    for sealer in sealers:
        _, errors = sealer.communicate(timeout=120)
        assert sealer.returncode == 0, errors
        assert "adopting" not in errors
    report = chain(home)
    assert report.first_break is None
    assert (report.events, report.unsealed) == (13 + 4 * 15, 0)
