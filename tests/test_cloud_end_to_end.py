# The main job with S3 Object Lock and KMS selected in the config, end to
# end as on the embedded default, against moto's server over loopback HTTP.

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys

import pytest

from tests.conftest import CASES
from tests.harness import ArchiveServer, strongroom
from tests.peers.moto import REGION, moto_server  # noqa: F401  (fixture)


def cloud_home(tmp_path, moto_server, *, object_lock=True):
    bucket = "archive-" + secrets.token_hex(4)
    moto_server.client("s3").create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock)
    key_id = moto_server.client("kms").create_key(Description="strongroom")["KeyMetadata"]["Arn"]
    server = ArchiveServer(tmp_path / "home")
    server.init()
    with open(server.home / "config.toml", "a") as config:
        config.write(
            f'\n[store]\nkind = "s3"\nbucket = "{bucket}"\nprefix = "vault"\n'
            f'endpoint_url = "{moto_server.endpoint}"\nregion = "{REGION}"\n'
            f'\n[keys]\nprovider = "kms"\nkms_key_id = "{key_id}"\n'
            f'kms_endpoint_url = "{moto_server.endpoint}"\n')
    return server, bucket


def test_journaled_mail_is_sealed_with_kms_into_object_lock_and_found(tmp_path, moto_server):
    server, bucket = cloud_home(tmp_path, moto_server)
    server.start()
    try:
        bob = server.add_user("bob@example.com")
        carol = server.add_user("carol@example.com")
        raw = (CASES / "B16.eml").read_bytes()
        server.send(raw, "prizes@example.com", ["bob@example.com"])
        hit = server.wait_for(bob, "AVOCET-B16")["results"][0]
        status, downloaded = server.raw(bob, hit["id"])
        assert status == 200
        assert hashlib.sha256(downloaded).hexdigest() == hashlib.sha256(raw).hexdigest()
        assert server.raw(carol, hit["id"])[0] == 404
    finally:
        assert server.stop() == 0

    s3 = moto_server.client("s3")
    head = s3.head_object(Bucket=bucket, Key=f"vault/messages/{hit['id']}")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"].year >= 2036
    sealed = s3.get_object(Bucket=bucket, Key=f"vault/messages/{hit['id']}")["Body"].read()
    assert b"arn:aws:kms" in sealed[:200]
    assert b"AVOCET" not in sealed
    output = strongroom("verify", "--home", str(server.home))
    assert "1 messages (1 opened), 1 receipts, 0 fault(s)" in output


def test_bucket_without_object_lock_is_refused_at_start(tmp_path, moto_server):
    server, bucket = cloud_home(tmp_path, moto_server, object_lock=False)
    completed = subprocess.run(
        [sys.executable, "-m", "web.cli", "serve", "--home", str(server.home),
         "--smtp-listen", f"127.0.0.1:{server.smtp_port}",
         "--web-listen", f"127.0.0.1:{server.web_port}"],
        capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert bucket in completed.stderr
    assert "Object Lock" in completed.stderr
    assert "Traceback" not in completed.stderr
