# Exports to an S3 prefix (moto's server over loopback HTTP): the files,
# manifest and custody record land as objects, written by multipart
# upload one part at a time; a job interrupted mid-way resumes; members
# download them through the portal, streamed from S3; `export --fetch`
# copies one into a folder that verify-export passes, and names the item
# inside an object altered in the bucket.

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import uuid
import zipfile

import pytest

from tests.conftest import REPOSITORY
from tests.ediscovery import make_home
from tests.peers.moto import REGION, moto_server  # noqa: F401 (a fixture)
from vault import export_locations
from vault.export_locations import S3Location
from vault.ingest import Vault
from web.cli import main as strongroom

PREFIX = "evidence/2026"


@pytest.fixture
def bucket(moto_server):  # noqa: F811
    client = moto_server.client("s3")
    name = f"exports-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture
def home(tmp_path, monkeypatch, moto_server, bucket):  # noqa: F811
    _, name = bucket
    config = ("[ediscovery]\nvolume_messages = 2\nexport_kind = \"s3\"\n"
              f"export_bucket = \"{name}\"\nexport_prefix = \"{PREFIX}\"\n"
              f"export_endpoint_url = \"{moto_server.endpoint}\"\n"
              f"export_region = \"{REGION}\"\n")
    home = make_home(tmp_path, monkeypatch, config=config)
    actor = ["--home", str(home), "--actor", "comp@example.com"]
    assert strongroom(["case", "create", "kestrel", "--custodian", "bob@example.com",
                       "--custodian", "carol@example.com", *actor]) == 0
    assert strongroom(["case", "add-search", "kestrel", "merger", "--query", "kestrel",
                       *actor]) == 0
    return home


def run(home, *words):
    return strongroom([*words, "--home", str(home), "--actor", "comp@example.com"])


def keys(client, bucket):
    listed = client.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def verify_export(folder, *extra):
    completed = subprocess.run(
        [sys.executable, "-m", "web.cli", "verify-export", str(folder), *extra],
        capture_output=True, text=True, timeout=120, cwd=REPOSITORY)
    return completed.returncode, completed.stdout


def job_of(output):
    return int(output.split("Export job ")[1].split()[0])


def test_an_export_to_s3_fetches_into_a_folder_that_verifies(home, bucket, tmp_path,
                                                             capsys):
    client, name = bucket
    assert run(home, "export", "kestrel", "merger", "--format", "zip") == 0
    output = capsys.readouterr().out
    job, fingerprint = job_of(output), output.split("fingerprint: ")[1].split()[0]
    base = f"{PREFIX}/kestrel/export-{job:06d}-merger-zip/"
    assert f"s3://{name}/{base}" in output
    assert keys(client, name) == [base + n for n in (
        "VOL0001.zip", "VOL0002.zip", "custody.json", "custody.sig",
        "export-signing-key.pub", "manifest.json")]
    # Nothing of the export stays on the archive's disk once it is done.
    assert not list((home / "exports").rglob("*.zip"))
    assert not (home / "exports" / "kestrel" / f"export-{job:06d}-merger-zip").exists()

    assert run(home, "export", "--fetch", str(job), "--to", str(tmp_path / "got")) == 0
    folder = tmp_path / "got" / f"export-{job:06d}-merger-zip"
    assert verify_export(folder, "--fingerprint", fingerprint)[0] == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["items"]) == 3

    # Alter one message inside one object in the bucket, fetch again.
    victim = manifest["items"][0]
    stored = client.get_object(Bucket=name, Key=base + victim["path"])["Body"].read()
    with zipfile.ZipFile(folder / victim["path"]) as archive:
        original = archive.read(victim["entry"])
    altered = stored.replace(original, original.replace(b"kestrel", b"KESTREL", 1))
    assert altered != stored and len(altered) == len(stored)
    client.put_object(Bucket=name, Key=base + victim["path"], Body=altered)
    assert run(home, "export", "--fetch", str(job), "--to", str(tmp_path / "again")) == 0
    status, output = verify_export(tmp_path / "again" / folder.name,
                                   "--fingerprint", fingerprint)
    assert status == 1
    assert f"altered file {victim['path']}" in output
    assert f"altered item {victim['id']} ({victim['path']} {victim['entry']})" in output


def test_an_interrupted_s3_export_resumes_at_its_first_unwritten_volume(
        home, bucket, tmp_path, monkeypatch, capsys):
    client, name = bucket
    real = Vault.read_message
    calls = []

    def failing_third_read(self, key):
        calls.append(key)
        if len(calls) == 3:
            raise OSError("network went away")
        return real(self, key)

    monkeypatch.setattr(Vault, "read_message", failing_third_read)
    with pytest.raises(OSError):
        run(home, "export", "kestrel", "merger", "--format", "mbox")
    job = job_of(capsys.readouterr().out)
    base = f"{PREFIX}/kestrel/export-{job:06d}-merger-mbox/"
    assert keys(client, name) == [base + "VOL0001.mbox"]
    first = client.head_object(Bucket=name, Key=base + "VOL0001.mbox")["LastModified"]
    assert not client.list_multipart_uploads(Bucket=name).get("Uploads")

    def counting(self, key):
        calls.append(key)
        return real(self, key)

    monkeypatch.setattr(Vault, "read_message", counting)
    assert run(home, "export", "--resume", str(job)) == 0
    assert client.head_object(Bucket=name, Key=base + "VOL0001.mbox")["LastModified"] == first
    assert len(calls) == 3 + 1  # the first volume (2 items) was not read again
    assert run(home, "export", "--fetch", str(job), "--to", str(tmp_path / "got")) == 0
    assert verify_export(tmp_path / "got" / f"export-{job:06d}-merger-mbox")[0] == 0


def test_a_large_file_goes_up_in_parts_one_in_memory_at_a_time(bucket, monkeypatch):
    # S3 accepts parts of 5 MiB and more; a 13 MiB file at 5 MiB a part is
    # three parts, and the writer never holds more than one.
    client, name = bucket
    monkeypatch.setattr(export_locations, "PART_SIZE", 5 * 1024 * 1024)
    location = S3Location(client, name, "parts")
    largest = 0
    real_write = export_locations._MultipartUpload.write

    def watched(self, data):
        nonlocal largest
        real_write(self, data)
        largest = max(largest, len(self.buffer))

    monkeypatch.setattr(export_locations._MultipartUpload, "write", watched)
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    with location.create("big.bin") as handle:
        for _ in range(13):
            handle.write(block)
    written = handle.written()
    assert written.size == 13 * len(block)
    assert largest < 5 * 1024 * 1024
    head = client.head_object(Bucket=name, Key="parts/big.bin", PartNumber=1)
    assert head["PartsCount"] == 3
    body = client.get_object(Bucket=name, Key="parts/big.bin")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == written.sha256


def test_members_download_s3_export_files_through_the_portal(home, bucket, capsys):
    from indexer.catalogue import Catalogue
    from tests.test_ediscovery_portal import signed_in
    from vault.config import load
    from vault.ingest import open_vault
    from web.app import create_app

    client, name = bucket
    assert run(home, "export", "kestrel", "merger", "--format", "dat") == 0
    job = job_of(capsys.readouterr().out)
    settings = load(home)
    app = create_app(settings, vault=open_vault(settings),
                     catalogue=Catalogue(settings.path(settings.catalogue.path)))
    app.config["TESTING"] = True
    officer = signed_in(app, "comp@example.com")
    page = officer.get("/cases/kestrel").get_data(as_text=True)
    links = set(re.findall(rf'href="/cases/kestrel/exports/{job}/([^"]+)"', page))
    assert {"manifest.json", "loadfile.dat", "NATIVES/VOL0001.zip",
            "NATIVES/VOL0002.zip"} <= links
    base = f"{PREFIX}/kestrel/export-{job:06d}-merger-dat/"
    manifest = officer.get(f"/cases/kestrel/exports/{job}/manifest.json")
    assert manifest.status_code == 200
    assert manifest.get_data() == client.get_object(
        Bucket=name, Key=base + "manifest.json")["Body"].read()
    natives = officer.get(f"/cases/kestrel/exports/{job}/NATIVES/VOL0001.zip")
    assert natives.status_code == 200
    with zipfile.ZipFile(io.BytesIO(natives.get_data())) as archive:
        for entry in json.loads(manifest.get_data())["items"]:
            if entry["path"].startswith("NATIVES/VOL0001/"):
                inside = entry["path"].removeprefix("NATIVES/VOL0001/")
                assert hashlib.sha256(archive.read(inside)).hexdigest() == entry["sha256"]
    assert officer.get(f"/cases/kestrel/exports/{job}/../../x").status_code == 404
    assert officer.get(f"/cases/kestrel/exports/{job}/.work/job.json").status_code == 404
    outsider = signed_in(app, "comp2@example.com")
    assert outsider.get(f"/cases/kestrel/exports/{job}/manifest.json").status_code == 404
