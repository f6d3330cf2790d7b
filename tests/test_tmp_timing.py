# Postfix journaling into the archive: a message Postfix relays with
# always_bcc is archived as Postfix sent it, found by its owner within
# seconds of the archive's 250, and invisible to everyone else.

from __future__ import annotations

import hashlib
import re
import secrets
import time

import pytest

from tests.peers.postfix import JOURNAL_ADDRESS, JournalingPostfix, require_postfix

pytestmark = pytest.mark.peer

# Postfix retries a deferred journal copy within seconds here; the archive
# itself must make a message searchable within 5 s of its 250.
POSTFIX_DELIVERY_TIMEOUT = 30.0
SEARCHABLE_AFTER_250 = 5.0

# What Postfix prepends to a message it relays: its own trace header
# (RFC 5321 section 4.4), folded over indented continuation lines.
TRACE_HEADERS = re.compile(rb"(Received:[^\r\n]*\r\n([ \t][^\r\n]*\r\n)*)+")


@pytest.fixture
def postfix(request, tmp_path):
    """A private Postfix that journals to the test's ``archive_server``."""
    require_postfix()
    archive_server = request.getfixturevalue("archive_server")
    instance = JournalingPostfix(tmp_path / "postfix", archive_server.smtp_port)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def message(word: str) -> bytes:
    """Return a small message from alice to bob with ``word`` in its body.

    It carries its own Date and Message-ID, so Postfix adds nothing inside
    it and only prepends trace headers.
    """
    return (
        b"From: Alice <alice@example.com>\r\n"
        b"To: Bob <bob@example.com>\r\n"
        b"Subject: Quarterly figures\r\n"
        b"Date: Fri, 04 Dec 2026 15:30:12 +0000\r\n"
        b"Message-ID: <" + word.encode() + b"@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
        b"Bob, the figures are attached as agreed.\r\n"
        b"Reference: " + word.encode() + b"\r\n"
    )


def test_postfix_journal_copy_is_found_by_its_recipient_only(archive_server, postfix):
    bob = archive_server.add_user("bob@example.com")
    carol = archive_server.add_user("carol@example.com")
    word = f"KESTREL-{secrets.token_hex(6)}"
    sent = message(word)

    t0 = time.monotonic()
    queue_id = postfix.submit(sent, "alice@example.com", ["bob@example.com"])
    reply = postfix.wait_for_delivery(queue_id, JOURNAL_ADDRESS,
                                      timeout=POSTFIX_DELIVERY_TIMEOUT)
    accepted_at = time.monotonic()
    print("DELIVERY", accepted_at - t0)
    assert reply.startswith("250"), reply

    found = archive_server.wait_for(bob, word, timeout=SEARCHABLE_AFTER_250)
    searchable_after = time.monotonic() - accepted_at
    print("TIMING", searchable_after, reply)
    assert found["total"] == 1, found
    assert searchable_after < SEARCHABLE_AFTER_250
    [hit] = found["results"]
    assert hit["subject"] == "Quarterly figures"

    # We cannot know in advance the bytes Postfix sent: it prepends a
    # Received header with its queue id and the time. So the download must
    # be exactly trace headers followed by every byte we submitted.
    status, archived = archive_server.raw(bob, hit["id"])
    assert status == 200
    assert archived.endswith(sent)
    assert TRACE_HEADERS.fullmatch(archived[:-len(sent)]), archived[:-len(sent)]
    assert f"id {queue_id}".encode() in archived[:-len(sent)]

    status, again = archive_server.raw(bob, hit["id"])
    assert status == 200
    assert hashlib.sha256(again).digest() == hashlib.sha256(archived).digest()

    # The archive's 250 means Postfix has nothing left to retry.
    postfix.wait_until_empty(timeout=POSTFIX_DELIVERY_TIMEOUT)

    assert archive_server.search(carol, word)["total"] == 0
    status, body = archive_server.raw(carol, hit["id"])
    assert status == 404, body[:200]
