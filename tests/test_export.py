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
from tests.ediscovery import audit_actions, deliver, make_home
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
    assert custody["counts"] == {"messages": 4, "files": 2, "volumes": 2}
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


def test_an_interrupted_export_resumes_without_redoing_finished_volumes(
        home, tmp_path, monkeypatch, capsys):
    real = Vault.read_message
    calls = []

    def failing_third_read(self, key):
        calls.append(key)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real(self, key)

    monkeypatch.setattr(Vault, "read_message", failing_third_read)
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
