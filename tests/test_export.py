# Exports: zip, mbox and a Concordance load file, resumable, each with a
# manifest and a signed chain-of-custody record; verify-export needs only
# the folder and names whatever is missing, extra or altered.

from __future__ import annotations

import csv
import hashlib
import io
import json
import mailbox
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPOSITORY
from tests.ediscovery import audit_actions, deliver, make_home, message_id
from tests.homes import damage
from vault.ingest import Vault
from web.cli import main as strongroom


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = make_home(tmp_path, monkeypatch, config="[ediscovery]\nvolume_messages = 2\n")
    deliver(home, [("x@elsewhere.net", "bob@example.com", "Kestrel deck", "kestrel slides")])
    actor = ["--home", str(home), "--actor", "comp@example.com"]
    assert strongroom(["case", "create", "kestrel", "--custodian", "bob@example.com",
                       "--custodian", "carol@example.com", *actor]) == 0
    assert strongroom(["case", "add-search", "kestrel", "merger", "--query", "kestrel",
                       *actor]) == 0
    return home


def export(home, destination, format="zip", actor="comp@example.com"):
    return strongroom(["export", "kestrel", "merger", "--format", format,
                       "--to", str(destination), "--home", str(home), "--actor", actor])


def only_export(destination):
    (folder,) = destination.iterdir()
    return folder


def verify_export(folder, *extra, stderr=False):
    # A separate process with no home at all: the folder is all it has.
    completed = subprocess.run(
        [sys.executable, "-m", "web.cli", "verify-export", str(folder), *extra],
        capture_output=True, text=True, timeout=120, cwd=REPOSITORY)
    if stderr:
        return completed.returncode, completed.stdout, completed.stderr
    return completed.returncode, completed.stdout


def test_zip_export_verifies_and_holds_the_original_bytes(home, tmp_path):
    assert export(home, tmp_path / "out") == 0
    folder = only_export(tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["items"]) == 4
    assert sorted(p.name for p in folder.iterdir()) == [
        "VOL0001.zip", "VOL0002.zip", "custody.json", "custody.sig",
        "export-signing-key.pub", "manifest.json"]
    with zipfile.ZipFile(folder / "VOL0001.zip") as volume:
        for item in manifest["items"][:2]:
            data = volume.read(item["entry"])
            assert hashlib.sha256(data).hexdigest() == item["sha256"]
            assert item["entry"].split("/")[0] == item["custodians"][0]
            assert item["receipts"][0].startswith("receipts/")
    custody = json.loads((folder / "custody.json").read_text())
    assert custody["case"]["name"] == "kestrel"
    assert custody["search"]["query"] == "kestrel"
    assert custody["operator"] == "comp@example.com"
    assert custody["counts"] == {"messages": 4, "files": 2, "volumes": 2, "faults": 0}
    assert manifest["faults"] == []
    assert custody["catalogue_state"]["documents"] == 6
    assert custody["catalogue_state"]["cursor"].startswith("receipts/")
    key = (home / "keys" / "export-signing.pem")
    assert key.stat().st_mode & 0o077 == 0
    assert b"PRIVATE" not in (folder / "export-signing-key.pub").read_bytes()

    shutil.rmtree(home)  # the archive is not needed to verify
    status, output = verify_export(folder)
    assert status == 0, output
    assert "4 items checked" in output and "export intact" in output


def test_verify_export_names_a_changed_file_and_the_item_inside(home, tmp_path):
    export(home, tmp_path / "out")
    folder = only_export(tmp_path / "out")
    item = json.loads((folder / "manifest.json").read_text())["items"][0]
    # Rewrite one message inside the zip, keeping the zip well formed.
    with zipfile.ZipFile(folder / "VOL0001.zip") as volume:
        members = {name: volume.read(name) for name in volume.namelist()}
    members[item["entry"]] = members[item["entry"]].replace(b"kestrel", b"KESTREL")
    with zipfile.ZipFile(folder / "VOL0001.zip", "w") as volume:
        for name, data in members.items():
            volume.writestr(name, data)
    status, output = verify_export(folder)
    assert status == 1
    assert "altered file VOL0001.zip" in output
    assert f"altered item {item['id']} (VOL0001.zip {item['entry']})" in output


def test_verify_export_names_a_removed_and_an_added_file(home, tmp_path):
    export(home, tmp_path / "out")
    folder = only_export(tmp_path / "out")
    (folder / "VOL0002.zip").unlink()
    (folder / "notes.txt").write_text("slipped in")
    status, output = verify_export(folder)
    assert status == 1
    assert "missing file VOL0002.zip" in output
    assert "extra file notes.txt" in output
    manifest = json.loads((folder / "manifest.json").read_text())
    for item in manifest["items"][2:]:
        assert f"missing item {item['id']} (VOL0002.zip)" in output


def test_verify_export_detects_an_edited_manifest_or_custody_record(home, tmp_path):
    export(home, tmp_path / "out")
    folder = only_export(tmp_path / "out")
    original_manifest = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").write_bytes(original_manifest.replace(b'"size": ', b'"size": 1', 1))
    status, output = verify_export(folder)
    assert status == 1 and "manifest.json: edited" in output

    (folder / "manifest.json").write_bytes(original_manifest)
    custody = (folder / "custody.json").read_bytes()
    (folder / "custody.json").write_bytes(custody.replace(b"comp@example.com",
                                                          b"someone@example.com", 1))
    status, output = verify_export(folder)
    assert status == 1 and "custody.json: signature does not verify" in output


def test_verify_export_pins_the_archives_key(home, tmp_path, capsys):
    export(home, tmp_path / "out")
    fingerprint = capsys.readouterr().out.split("fingerprint: ")[1].split()[0]
    # What the operator publishes is what the export was signed with.
    assert strongroom(["export-key", "--home", str(home)]) == 0
    assert capsys.readouterr().out.strip() == fingerprint
    folder = only_export(tmp_path / "out")
    assert verify_export(folder, "--fingerprint", fingerprint)[0] == 0
    status, output = verify_export(folder, "--fingerprint", "SHA256:" + "0" * 64)
    assert status == 1 and "is not the archive's" in output


def test_a_folder_resigned_with_a_fresh_key_passes_only_with_a_warning(home, tmp_path,
                                                                      capsys):
    # Without a pinned fingerprint the signature proves consistency, not
    # origin: verify-export says so, and --require-fingerprint refuses.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vault.custody import fingerprint, public_pem, sign

    export(home, tmp_path / "out")
    archive_key = capsys.readouterr().out.split("fingerprint: ")[1].split()[0]
    folder = only_export(tmp_path / "out")
    (folder / "planted.eml").write_bytes(b"Subject: not from the archive\r\n\r\nhi\r\n")
    _resign(folder, Ed25519PrivateKey.generate(), fingerprint, public_pem, sign)

    status, output, warning = verify_export(folder, stderr=True)
    assert status == 0 and "export intact" in output
    assert "authenticity NOT checked" in warning and "--fingerprint" in warning
    status, _, warning = verify_export(folder, "--require-fingerprint", stderr=True)
    assert status == 3 and "authenticity NOT checked" in warning
    status, output = verify_export(folder, "--fingerprint", archive_key)
    assert status == 1 and "is not the archive's" in output
    status, _, warning = verify_export(folder, "--fingerprint", archive_key,
                                       "--require-fingerprint", stderr=True)
    assert status == 1 and "NOT checked" not in warning


def _resign(folder, key, fingerprint, public_pem, sign):
    """Rewrite the manifest and custody record as a forger would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    planted = (folder / "planted.eml").read_bytes()
    manifest["files"].append({"path": "planted.eml", "size": len(planted),
                              "sha256": hashlib.sha256(planted).hexdigest()})
    body = json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(body)
    custody = json.loads((folder / "custody.json").read_text())
    custody["manifest_sha256"] = hashlib.sha256(body).hexdigest()
    custody["signing_key"]["fingerprint"] = fingerprint(key.public_key())
    record = json.dumps(custody).encode()
    (folder / "custody.json").write_bytes(record)
    (folder / "custody.sig").write_bytes(sign(key, record))
    (folder / "export-signing-key.pub").write_bytes(public_pem(key))


def test_mbox_export_is_mboxrd_and_each_item_verifies(home, tmp_path):
    export(home, tmp_path / "out", "mbox")
    folder = only_export(tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())
    messages = [m for name in ("VOL0001.mbox", "VOL0002.mbox")
                for m in mailbox.mbox(folder / name)]
    assert len(messages) == 4
    quoted = (folder / "VOL0001.mbox").read_bytes() + (folder / "VOL0002.mbox").read_bytes()
    # The body line "From the start" became ">From", and ">From" became ">>From".
    assert b"\n>From the start\n>>From quoted\n" in quoted
    assert verify_export(folder)[0] == 0

    item = next(i for i in manifest["items"] if i["path"] == "VOL0001.mbox")
    data = bytearray((folder / "VOL0001.mbox").read_bytes())
    data[item["mbox_offset"] + item["mbox_length"] - 3] ^= 0x01
    (folder / "VOL0001.mbox").write_bytes(bytes(data))
    status, output = verify_export(folder)
    assert status == 1 and f"altered item {item['id']} (VOL0001.mbox {item['entry']})" in output


def test_dat_load_file_has_concordance_delimiters_and_the_metadata(home, tmp_path):
    deliver(home, [])  # nothing new; the search is as saved
    export(home, tmp_path / "out", "dat")
    folder = only_export(tmp_path / "out")
    raw = (folder / "loadfile.dat").read_bytes()
    assert raw.startswith("\ufeff".encode())
    lines = raw.decode("utf-8").lstrip("\ufeff").split("\r\n")[:-1]
    header = [field.strip("\u00fe") for field in lines[0].split("\x14")]
    rows = [dict(zip(header, (f.strip("\u00fe") for f in line.split("\x14"))))
            for line in lines[1:]]
    assert len(rows) == 4
    assert [row["BEGDOC"] for row in rows] == ["SR00000001", "SR00000002",
                                               "SR00000003", "SR00000004"]
    timeline = next(row for row in rows if row["SUBJECT"] == "Merger timeline")
    assert timeline["FROM"] == "bob@example.com" and timeline["TO"] == "carol@example.com"
    assert timeline["DATE_SENT"] == "2026-03-03T10:00:00Z"
    assert timeline["ATTACHMENT_COUNT"] == "0"
    native = folder / timeline["FILE_PATH"]
    assert hashlib.sha256(native.read_bytes()).hexdigest() == timeline["SHA256"]
    with open(folder / "loadfile.csv", newline="", encoding="utf-8") as handle:
        assert [row["SHA256"] for row in csv.DictReader(handle)] == [
            row["SHA256"] for row in rows]
    assert verify_export(folder)[0] == 0
    native.write_bytes(native.read_bytes() + b"\n")
    status, output = verify_export(folder)
    assert status == 1 and f"altered file {timeline['FILE_PATH']}" in output


def test_dat_names_attachments_and_bcc_recipients_from_the_envelope(tmp_path, monkeypatch):
    from tests.ediscovery import message
    from vault.config import load
    from vault.ingest import open_vault
    from vault.ownership import Envelope

    home = make_home(tmp_path, monkeypatch)
    vault = open_vault(load(home))
    vault.archive(message("bob@example.com", "carol@example.com", "Kestrel terms", "kestrel",
                          attachment=("terms.pdf", b"%PDF-1.4")),
                  Envelope("bob@example.com", ("carol@example.com", "dave@example.com")))
    deliver(home, [])
    actor = ["--home", str(home), "--actor", "comp@example.com"]
    strongroom(["case", "create", "kestrel", "--custodian", "dave@example.com", *actor])
    strongroom(["case", "add-search", "kestrel", "merger", "--query", "terms", *actor])
    assert export(home, tmp_path / "out", "dat") == 0
    folder = only_export(tmp_path / "out")
    with open(folder / "loadfile.csv", newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["CUSTODIAN"] == "dave@example.com"
    assert row["BCC"] == "dave@example.com"
    assert row["ATTACHMENT_NAMES"] == "terms.pdf" and row["ATTACHMENT_COUNT"] == "1"


def fail_third_read(monkeypatch):
    """Make the third message read fail as a lost disk would; return the real read."""
    real = Vault.read_message
    calls = []

    def failing_third_read(self, key):
        calls.append(key)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real(self, key)

    monkeypatch.setattr(Vault, "read_message", failing_third_read)
    return real


def test_an_interrupted_export_resumes_without_redoing_finished_volumes(
        home, tmp_path, monkeypatch, capsys):
    real = fail_third_read(monkeypatch)
    with pytest.raises(OSError):
        export(home, tmp_path / "out")
    folder = only_export(tmp_path / "out")
    first = (folder / "VOL0001.zip").stat()
    assert not (folder / "VOL0002.zip").exists()
    job = int(capsys.readouterr().out.split("Export job ")[1].split()[0])

    monkeypatch.setattr(Vault, "read_message", real)
    assert strongroom(["export", "--resume", str(job), "--home", str(home),
                       "--actor", "comp@example.com"]) == 0
    assert (folder / "VOL0001.zip").stat().st_ino == first.st_ino
    assert verify_export(folder)[0] == 0


def test_auditor_cannot_export_and_the_refusal_is_audited(home, tmp_path, capsys):
    strongroom(["case", "create", "audit-me", "--member", "aud@example.com", "--custodian",
                "bob@example.com", "--home", str(home), "--actor", "comp@example.com"])
    strongroom(["case", "add-search", "audit-me", "all", "--query", "kestrel",
                "--home", str(home), "--actor", "comp@example.com"])
    status = strongroom(["export", "audit-me", "all", "--to", str(tmp_path / "out"),
                         "--home", str(home), "--actor", "aud@example.com"])
    assert status == 2
    assert "may not export.run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert audit_actions(home, "aud@example.com")[-1] == "denied"


def test_export_steps_are_audited(home, tmp_path):
    export(home, tmp_path / "out")
    actions = audit_actions(home, "comp@example.com")
    assert actions[-2:] == ["export.started", "export.finished"]


def test_load_file_csv_cells_never_run_as_formulas():
    # A sender writes the subject; a reviewer opens loadfile.csv in a
    # spreadsheet (found by attacking an export with such a message).
    from vault.volumes import spreadsheet_safe

    assert spreadsheet_safe("=cmd|' /C calc'!A0 csvinj") == "'=cmd|' /C calc'!A0 csvinj"
    assert spreadsheet_safe('=HYPERLINK("http://evil.example") <x@other.org>').startswith("'=")
    assert [spreadsheet_safe(v) for v in ("+1", "-1", "@SUM(A1)", "\tx", "\rx")] == [
        "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx"]
    assert spreadsheet_safe("Re: merger") == "Re: merger"


@pytest.fixture
def three(tmp_path, monkeypatch):
    # The case's search finds three messages: two in VOL0001, one in VOL0002.
    home = make_home(tmp_path, monkeypatch, config="[ediscovery]\nvolume_messages = 2\n")
    actor = ["--home", str(home), "--actor", "comp@example.com"]
    assert strongroom(["case", "create", "kestrel", "--custodian", "bob@example.com",
                       "--custodian", "carol@example.com", *actor]) == 0
    assert strongroom(["case", "add-search", "kestrel", "merger", "--query", "kestrel",
                       *actor]) == 0
    return home


def finished_detail(home):
    from vault.config import load
    from vault.control import ControlDB

    settings = load(home)
    control = ControlDB(settings.path(settings.control.database))
    (event,) = control.audit_events(action="export.finished")
    return json.loads(event["detail"])


def exported_subjects(folder, format):
    """Return the subjects of the messages the export's files hold."""
    from email import message_from_bytes

    if format == "zip":
        raw = []
        for name in ("VOL0001.zip", "VOL0002.zip"):
            with zipfile.ZipFile(folder / name) as volume:
                raw += [volume.read(member) for member in volume.namelist()]
        messages = [message_from_bytes(data) for data in raw]
    elif format == "mbox":
        messages = [m for name in ("VOL0001.mbox", "VOL0002.mbox")
                    for m in mailbox.mbox(folder / name)]
    else:
        messages = [message_from_bytes(path.read_bytes())
                    for path in (folder / "NATIVES").rglob("*.eml")]
    return sorted(message["Subject"] for message in messages)


@pytest.mark.parametrize("format", ["zip", "mbox", "dat"])
def test_a_damaged_message_is_left_out_named_and_the_rest_exported(three, tmp_path,
                                                                   capsys, format):
    # One flipped byte in one message object failed the whole export with
    # a traceback; the other messages are evidence all the same.
    damaged = message_id(three, "Re: Merger timeline")
    others = sorted([message_id(three, "Merger timeline"),
                     message_id(three, "From line test")])
    damage(three, f"messages/{damaged}")

    assert export(three, tmp_path / "out", format) == 1
    out = capsys.readouterr().out
    assert "completed with 1 fault(s)" in out and damaged in out
    folder = only_export(tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(item["id"] for item in manifest["items"]) == others
    assert exported_subjects(folder, format) == ["From line test", "Merger timeline"]
    (fault,) = manifest["faults"]
    assert fault["id"] == damaged
    assert fault["reason"].startswith("damaged: segment 0 ")
    assert "Traceback" not in fault["reason"] and len(fault["reason"]) < 200
    assert fault["receipts"][0].startswith("receipts/")
    custody = json.loads((folder / "custody.json").read_text())
    assert custody["counts"]["messages"] == 2 and custody["counts"]["faults"] == 1
    assert finished_detail(three)["faults"] == 1

    status, output = verify_export(folder)
    assert status == 4, output
    assert f"LEFT OUT {damaged}: damaged: segment 0 " in output
    assert "2 items checked" in output and "1 message(s) left out" in output
    assert "FAULT" not in output and "export intact\n" not in output


def test_the_load_file_has_a_row_naming_the_message_left_out(three, tmp_path):
    damaged = message_id(three, "Merger timeline")
    damage(three, f"messages/{damaged}")
    assert export(three, tmp_path / "out", "dat") == 1
    folder = only_export(tmp_path / "out")
    with open(folder / "loadfile.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["BEGDOC"] for row in rows] == ["SR00000001", "SR00000002", "SR00000003"]
    (left_out,) = [row for row in rows if row["EXPORT_FAULT"]]
    assert left_out["EXPORT_FAULT"].startswith(f"message {damaged}: damaged: ")
    assert left_out["FILE_PATH"] == "" and left_out["SHA256"] == ""
    assert left_out["RECEIPTS"].startswith("receipts/")
    exported = [row for row in rows if not row["EXPORT_FAULT"]]
    assert len(exported) == 2 and all((folder / row["FILE_PATH"]).is_file()
                                      for row in exported)
    dat = (folder / "loadfile.dat").read_bytes().decode("utf-8")
    assert "EXPORT_FAULT" in dat.splitlines()[0] and f"message {damaged}: damaged" in dat


@pytest.mark.parametrize(("how", "reason"), [("truncate", "damaged: "),
                                             ("remove", "missing: ")])
def test_a_truncated_or_missing_message_is_left_out_too(three, tmp_path, capsys, how,
                                                       reason):
    damaged = message_id(three, "From line test")
    damage(three, f"messages/{damaged}", how)
    assert export(three, tmp_path / "out") == 1
    assert "completed with 1 fault(s)" in capsys.readouterr().out
    folder = only_export(tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["items"]) == 2
    assert [(f["id"], f["reason"][:len(reason)]) for f in manifest["faults"]] == [
        (damaged, reason)]
    assert verify_export(folder)[0] == 4


def test_a_resumed_export_keeps_its_faults_once(three, tmp_path, monkeypatch, capsys):
    # The fault is recorded in VOL0001, finished before the crash; the
    # resumed run must neither lose it nor record it twice.
    assert export(three, tmp_path / "clean") == 0
    first = json.loads((only_export(tmp_path / "clean") / "manifest.json").read_text())
    damaged = first["items"][0]["id"]
    damage(three, f"messages/{damaged}")
    capsys.readouterr()
    real = fail_third_read(monkeypatch)
    with pytest.raises(OSError):
        export(three, tmp_path / "out")
    job = int(capsys.readouterr().out.split("Export job ")[1].split()[0])
    folder = only_export(tmp_path / "out")
    assert (folder / "VOL0001.zip").exists() and not (folder / "VOL0002.zip").exists()

    monkeypatch.setattr(Vault, "read_message", real)
    assert strongroom(["export", "--resume", str(job), "--home", str(three),
                       "--actor", "comp@example.com"]) == 1
    assert "completed with 1 fault(s)" in capsys.readouterr().out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [fault["id"] for fault in manifest["faults"]] == [damaged]
    assert [item["id"] for item in manifest["items"]] == [
        item["id"] for item in first["items"][1:]]
    assert verify_export(folder)[0] == 4


def test_an_older_control_database_gains_the_fault_count(tmp_path):
    # Homes made before exports counted faults have an exports table
    # without the column; CREATE TABLE IF NOT EXISTS would leave it so.
    import sqlite3

    from vault.control import ControlDB

    path = tmp_path / "control.db"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE exports (id INTEGER PRIMARY KEY, case_id INTEGER NOT NULL,"
            " search_id INTEGER NOT NULL, format TEXT NOT NULL, path TEXT NOT NULL,"
            " state TEXT NOT NULL DEFAULT 'queued', total INTEGER NOT NULL DEFAULT 0,"
            " done INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,"
            " operator TEXT NOT NULL, created_at TEXT NOT NULL, finished_at TEXT,"
            " error TEXT NOT NULL DEFAULT '')")
        connection.execute("INSERT INTO exports (case_id, search_id, format, path, operator,"
                           " created_at) VALUES (1, 1, 'zip', '/x', 'a@example.com', 'now')")
    control = ControlDB(path)
    control.create()
    control.create()  # a second start finds the column there
    with control.connect() as connection:
        (row,) = connection.execute("SELECT state, faults FROM exports").fetchall()
    assert tuple(row) == ("queued", 0)
