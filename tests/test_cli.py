# The command line an administrator uses: init, user add, token create,
# serve and its clean shutdown.

from __future__ import annotations

import io
import json
import stat

import pytest

from tests.harness import ArchiveServer
from web.cli import main as strongroom


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("STRONGROOM_ADMIN_PASSWORD", "admin password 1")
    home = tmp_path / "home"
    assert strongroom(["init", "--home", str(home), "--domain", "Example.com",
                       "--domain", "example.org"]) == 0
    return home


def test_init_creates_a_private_home(home):
    assert 'domains = ["example.com", "example.org"]' in (home / "config.toml").read_text()
    for private in ("keys/kek.json", "keys/portal-secret", "control.sqlite3"):
        mode = stat.S_IMODE((home / private).stat().st_mode)
        assert mode & 0o077 == 0, f"{private} is {oct(mode)}"


def test_init_refuses_an_existing_home(home, capsys):
    before = (home / "keys/kek.json").read_bytes()
    assert strongroom(["init", "--home", str(home), "--domain", "example.com"]) == 2
    assert "not overwriting" in capsys.readouterr().err
    assert (home / "keys/kek.json").read_bytes() == before


def test_init_prints_a_generated_admin_password_once(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("STRONGROOM_ADMIN_PASSWORD", raising=False)
    assert strongroom(["init", "--home", str(tmp_path / "h"), "--domain", "example.com"]) == 0
    output = capsys.readouterr().out
    assert "Administrator: admin@example.com" in output
    assert len(output.split("Password (shown once): ")[1].strip()) >= 20


def test_accounts_only_for_the_archive_domains(home, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("long enough password\n"))
    assert strongroom(["user", "add", "eve@elsewhere.net", "--home", str(home),
                       "--password-stdin"]) == 2
    assert "not in the archive's domains" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("long enough password\n"))
    assert strongroom(["user", "add", "bob@example.com", "--home", str(home),
                       "--alias", "sales@elsewhere.net", "--password-stdin"]) == 2


def test_short_password_is_refused(home, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert strongroom(["user", "add", "bob@example.org", "--home", str(home),
                       "--password-stdin"]) == 2
    assert "at least 12 characters" in capsys.readouterr().err


def test_token_for_unknown_account_is_refused(home, capsys):
    assert strongroom(["token", "create", "nobody@example.com", "--home", str(home)]) == 2
    assert "no account" in capsys.readouterr().err


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.start()
    assert server.stop() == 0
    log = server.log_path.read_text()
    assert "Traceback" not in log
    assert "stopped" in log


def test_init_with_a_weak_admin_password_leaves_no_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STRONGROOM_ADMIN_PASSWORD", "short")
    home = tmp_path / "home"
    assert strongroom(["init", "--home", str(home), "--domain", "example.com"]) == 2
    assert "at least 12 characters" in capsys.readouterr().err
    assert not home.exists()


def test_init_with_an_empty_admin_password_generates_and_prints_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STRONGROOM_ADMIN_PASSWORD", "")
    assert strongroom(["init", "--home", str(tmp_path / "h"), "--domain", "example.com"]) == 0
    assert "Password (shown once): " in capsys.readouterr().out


def test_init_failing_midway_removes_what_it_made(tmp_path, monkeypatch):
    import web.cli

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(web.cli.ControlDB, "create", broken)
    home = tmp_path / "home"
    with pytest.raises(OSError):
        strongroom(["init", "--home", str(home), "--domain", "example.com"])
    assert not home.exists()


def test_every_command_line_action_names_the_operator(home, monkeypatch, capsys):
    # One identity for the command line in the audit: cli:<login>, never a fixed name.
    monkeypatch.setattr("getpass.getuser", lambda: "operator")
    monkeypatch.setattr("sys.stdin", io.StringIO("long enough password\n"))
    assert strongroom(["user", "add", "bob@example.com", "--home", str(home),
                       "--password-stdin"]) == 0
    assert strongroom(["token", "create", "bob@example.com", "--home", str(home)]) == 0
    assert strongroom(["role", "set", "bob@example.com", "auditor", "--home", str(home)]) == 0
    capsys.readouterr()
    assert strongroom(["audit", "show", "--home", str(home), "--limit", "10"]) == 0
    events = capsys.readouterr().out
    for action in ("user.created", "token.created", "role."):
        assert f"cli:operator  {action}" in events, action
    assert "strongroom-cli" not in events


def test_api_tokens_are_listed_by_id_and_revoked_one_or_all(home, capsys, monkeypatch):
    # A token leaked or no longer needed must stop working at once.
    import hashlib

    from vault.config import load
    from vault.control import ControlDB
    from web.cli import _accounts

    monkeypatch.setattr("sys.stdin", io.StringIO("long enough password\n"))
    assert strongroom(["user", "add", "bob@example.com", "--home", str(home),
                       "--password-stdin"]) == 0
    tokens = []
    for _ in range(3):
        capsys.readouterr()
        assert strongroom(["token", "create", "bob@example.com", "--home", str(home)]) == 0
        tokens.append(capsys.readouterr().out.strip())
    ids = [hashlib.sha256(token.encode()).hexdigest()[:12] for token in tokens]
    assert strongroom(["token", "list", "bob@example.com", "--home", str(home)]) == 0
    listed = capsys.readouterr().out
    assert sorted(line.split()[0] for line in listed.splitlines()) == sorted(ids)
    assert not any(token in listed for token in tokens)

    settings = load(home)
    control = ControlDB(settings.path(settings.control.database))
    accounts = _accounts(settings, control)
    assert strongroom(["token", "revoke", "bob@example.com", ids[0], "--home", str(home)]) == 0
    assert "Revoked 1 API token(s)" in capsys.readouterr().out
    assert accounts.user_for_token(tokens[0]) is None
    assert accounts.user_for_token(tokens[1]).address == "bob@example.com"

    assert strongroom(["token", "revoke", "bob@example.com", ids[0], "--home", str(home)]) == 2
    assert f"has no API token {ids[0]}" in capsys.readouterr().err
    assert strongroom(["token", "revoke", "bob@example.com", "--home", str(home)]) == 2
    assert "name one token id, or --all" in capsys.readouterr().err

    assert strongroom(["token", "revoke", "bob@example.com", "--all", "--home", str(home)]) == 0
    assert "Revoked 2 API token(s)" in capsys.readouterr().out
    assert accounts.user_for_token(tokens[1]) is None and accounts.user_for_token(tokens[2]) is None
    events = [(row["action"], json.loads(row["detail"] or "{}").get("token"))
              for row in reversed(control.audit_events(limit=1000))
              if row["action"].startswith("token.")]
    assert events[:4] == ([("token.created", token_id) for token_id in ids]
                          + [("token.revoked", ids[0])])
    assert sorted(events[4:]) == [("token.revoked", token_id) for token_id in sorted(ids[1:])]


def test_a_catalogue_error_is_one_line_and_exit_2(home, capsys):
    # A hold's query the parser cannot read (or a catalogue locked past the
    # wait) ended in a traceback.
    assert strongroom(["hold", "place", "board", "--query", 'subject:"unclosed',
                       "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert err == "strongroom: a quotation mark is not closed\n"
    assert "Traceback" not in err
