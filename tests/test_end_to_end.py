# The whole path on the embedded default: SMTP in, sealed, catalogued,
# found through the API by its owner, downloaded byte for byte.

from __future__ import annotations

import secrets
import time

from tests.conftest import CASES


def message(word: str, to: str = "bob@example.com") -> bytes:
    return (
        "From: Alice Example <alice@example.com>\r\n"
        f"To: Bob Example <{to}>\r\n"
        f"Subject: Quarterly figures {word}\r\n"
        "Date: Mon, 06 Jan 2025 09:00:00 +0000\r\n"
        f"Message-ID: <{word}@example.com>\r\n"
        "\r\n"
        f"The word of the day is {word}.\r\n"
        ".A line that starts with a dot.\r\n"
    ).encode()


def test_owner_finds_new_mail_within_five_seconds_and_downloads_it(archive_server):
    bob = archive_server.add_user("bob@example.com")
    word = "kestrel" + secrets.token_hex(4)
    raw = message(word)

    sent = time.monotonic()
    reply = archive_server.send(raw, "alice@example.com", ["bob@example.com"])
    found = archive_server.wait_for(bob, word, timeout=5)
    latency = time.monotonic() - sent

    assert reply.startswith("2.0.0 OK archived")
    assert found["total"] == 1, found
    assert latency < 5
    hit = found["results"][0]
    assert hit["subject"] == f"Quarterly figures {word}"
    assert "alice@example.com" in hit["from"]
    assert hit["date"] == "2025-01-06T09:00:00Z"
    assert archive_server.raw(bob, hit["id"]) == (200, raw)


def test_another_user_finds_nothing_and_gets_404(archive_server):
    bob = archive_server.add_user("bob@example.com")
    carol = archive_server.add_user("carol@example.com")
    word = "osprey" + secrets.token_hex(4)
    archive_server.send(message(word), "alice@example.com", ["bob@example.com"])
    message_id = archive_server.wait_for(bob, word)["results"][0]["id"]

    assert archive_server.search(carol, word)["total"] == 0
    assert archive_server.raw(carol, message_id)[0] == 404
    assert archive_server.raw(carol, "0" * 64)[0] == 404


def test_api_requires_a_valid_token(archive_server):
    assert archive_server.get("/api/v1/search?q=x", None)[0] == 401
    assert archive_server.get("/api/v1/search?q=x", "srt_not-a-token")[0] == 401
    status, body, headers = archive_server.get("/api/v1/messages/" + "0" * 64 + "/raw", None)
    assert status == 401
    assert headers["Content-Type"] == "application/json"


def test_journal_copy_is_owned_by_the_header_addresses(archive_server):
    # Postfix always_bcc: the envelope names only the journal address.
    bob = archive_server.add_user("bob@example.com")
    alice = archive_server.add_user("alice@example.com")
    word = "heron" + secrets.token_hex(4)
    archive_server.send(message(word), "alice@example.com", ["journal@archive.test"])

    assert archive_server.wait_for(bob, word)["total"] == 1
    assert archive_server.wait_for(alice, word)["total"] == 1


def test_same_bytes_twice_are_one_message_owned_by_both_deliveries(archive_server):
    bob = archive_server.add_user("bob@example.com")
    dave = archive_server.add_user("dave@example.com")
    word = "plover" + secrets.token_hex(4)
    raw = message(word)
    archive_server.send(raw, "alice@example.com", ["bob@example.com"])
    archive_server.send(raw, "alice@example.com", ["dave@example.com"])

    bobs = archive_server.wait_for(bob, word)
    daves = archive_server.wait_for(dave, word)
    assert bobs["total"] == daves["total"] == 1
    assert bobs["results"][0]["id"] == daves["results"][0]["id"]


def test_b16_bytes_are_never_reserialised(archive_server):
    bob = archive_server.add_user("bob@example.com")
    raw = (CASES / "B16.eml").read_bytes()
    archive_server.send(raw, "prizes@example.com", ["bob@example.com"])
    hit = archive_server.wait_for(bob, "AVOCET-B16")["results"][0]

    status, downloaded = archive_server.raw(bob, hit["id"])
    import hashlib
    assert hashlib.sha256(downloaded).hexdigest() == (
        "36b9ae6a0701d0f343447e96b300fbdbc40303da57bf96561faa181d47daa736")
    assert hit["from"] == "Sweepstakes Alert\u2013Prize Desk <prizes@example.com>"


def test_ingest_batches_are_audited(archive_server):
    from tests.harness import strongroom

    bob = archive_server.add_user("bob@example.com")
    word = "egret" + secrets.token_hex(4)
    archive_server.send(message(word), "alice@example.com", ["bob@example.com"])
    archive_server.wait_for(bob, word)
    deadline = time.monotonic() + 10
    while "ingest.batch" not in (shown := strongroom(
            "audit", "show", "--home", str(archive_server.home), "--action", "ingest.batch")):
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert "receipts/" in shown and '"receipts": 1' in shown
