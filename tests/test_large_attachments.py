# A message over the full-view limit (4 MiB) still lists its attachments
# and serves each one, found by scanning the message rather than parsing
# it, in memory bounded by a chunk rather than a multiple of the message.

from __future__ import annotations

import hashlib
import random
import re
import tracemalloc
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest

from indexer.catalogue import Catalogue
from indexer.extraction.transfer import decode_base64
from indexer.follow import Follower
from tests.conftest import CASES
from tests.portal_accounts import (BOB, make_app, portal_home, sign_in)  # noqa: F401
from vault.config import load
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.part_scan import ScannedParts, decode_base64_chunks
from web.parts import NESTED_MESSAGE_TYPES, MessageParts
from web.reading import FULL_VIEW_BYTES

MiB = 1024 * 1024


def large_message() -> tuple[bytes, dict[str, bytes]]:
    """A 6 MiB message: a text body, a 3.2 MiB PDF-ish blob, a 1.2 MiB CSV (QP)."""
    noise = random.Random(6)
    files = {
        "Quarterly scans.pdf": b"%PDF-1.7\n" + noise.randbytes(int(3.2 * MiB)),
        "ledger – 2026.csv": "".join(
            f"{n},{noise.random():.6f},café ünïcode\n" for n in range(40_000)).encode(),
    }
    built = EmailMessage()
    built["From"] = "x@elsewhere.net"
    built["To"] = BOB
    built["Subject"] = "Scans and ledger"
    built["Message-ID"] = "<large-6mib@elsewhere.net>"
    built.set_content("Both files attached.\n")
    built.add_attachment(files["Quarterly scans.pdf"], maintype="application",
                         subtype="pdf", filename="Quarterly scans.pdf")
    built.add_attachment(files["ledger – 2026.csv"], maintype="text", subtype="csv",
                         filename="ledger – 2026.csv", cte="quoted-printable")
    raw = built.as_bytes()
    return raw, files


@pytest.fixture(scope="module")
def message():
    raw, files = large_message()
    assert 5.5 * MiB < len(raw) < 6.5 * MiB and len(raw) > FULL_VIEW_BYTES
    return raw, files


def test_a_large_message_lists_and_serves_its_attachments(portal_home, message):
    raw, files = message
    settings = load(portal_home)
    vault = open_vault(settings)
    receipt = vault.archive(raw, Envelope("x@elsewhere.net", (BOB,)))
    Follower(vault, Catalogue(settings.path(settings.catalogue.path))).catch_up()
    message_id = receipt.message_key.rpartition("/")[2]
    app = make_app(portal_home)
    client = app.test_client()
    sign_in(client)

    page = client.get(f"/messages/{message_id}").get_data(as_text=True)
    assert "This message is large" in page
    links = dict((name, href) for href, name in re.findall(
        r'<li><a href="([^"]+/attachments/\d+)" download>([^<]+)</a>', page))
    assert set(links) == set(files)
    assert "3.4 MB" in page      # the PDF's size, decoded, as filesizeformat writes it
    for name, data in files.items():
        response = client.get(links[name])
        assert response.status_code == 200
        assert response.is_streamed
        body = response.get_data()
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest(), name
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get(f"/messages/{message_id}/attachments/9").status_code == 404
    downloads = [e for e in app.extensions["strongroom"].control.audit_events(
        action="download.attachment") if e["target"] == message_id]
    assert len(downloads) == 2


def test_scanning_takes_a_chunk_of_memory_where_parsing_takes_multiples(message):
    raw, files = message
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        scanned = ScannedParts(raw)
        listed = scanned.files()
        for part in listed:
            with scanned.open(part.index) as stream:
                while stream.read(64 * 1024):
                    pass
        _, scanned_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        parsed = MessageParts(raw)
        for part in parsed.files():
            parsed.content(part.index)
        _, parsed_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak beyond the message's bytes: scanned {scanned_peak / MiB:.2f} MiB, "
          f"parsed {parsed_peak / MiB:.2f} MiB ({parsed_peak / scanned_peak:.1f}x)")
    assert [(p.filename, p.size) for p in listed] == [
        (name, len(data)) for name, data in files.items()]
    assert scanned_peak < 3 * MiB
    assert parsed_peak > 4 * scanned_peak


@pytest.mark.parametrize("encoded", [
    b"aGVsbG8gd29ybGQ=\r\n",
    b"aGVs\r\nbG8g\r\nd29y\r\nbGQ=",
    b"aGVsbG8=IHdvcmxk",                  # separately padded runs (case B13)
    b"aGVsbG8=\r\n=IHdvcmxk\r\n!!aGk",     # noise, stray padding, a dangling run
    b"YWJjZGVmZ2g" * 30_000 + b"=",        # runs across chunk boundaries
])
def test_chunked_base64_decodes_as_the_whole_decoder_does(encoded, monkeypatch):
    import web.part_scan

    monkeypatch.setattr(web.part_scan, "CHUNK_BYTES", 7)
    short = b"".join(decode_base64_chunks(memoryview(encoded[:5000])))
    assert short == decode_base64(encoded[:5000])
    monkeypatch.setattr(web.part_scan, "CHUNK_BYTES", 65_536)
    assert b"".join(decode_base64_chunks(memoryview(encoded))) == decode_base64(encoded)


@pytest.mark.parametrize("name", sorted(path.name for path in CASES.glob("*.eml")))
def test_scanning_finds_the_leaves_parsing_finds(name):
    # The same numbering, types, names and bytes as MessageParts, so the
    # page and its downloads agree whichever way a message was read; a
    # nested message is served as sent rather than re-generated.
    raw = (CASES / name).read_bytes()
    parsed, scanned = MessageParts(raw), ScannedParts(raw)
    assert len(scanned.leaves) == len(parsed.leaves)
    assert [(p.index, p.filename, p.content_type) for p in scanned.files()] == [
        (p.index, p.filename, p.content_type) for p in parsed.files()]
    for index, part in enumerate(parsed.leaves):
        assert scanned.leaves[index].get_content_type() == part.get_content_type()
        content = b"".join(scanned.chunks(index))
        if part.get_content_type() in NESTED_MESSAGE_TYPES:
            inner = BytesHeaderParser(policy=compat32).parsebytes(content)
            expected = BytesHeaderParser(policy=compat32).parsebytes(parsed.content(index))
            assert inner.items() == expected.items()
            assert content in raw
        else:
            assert content == parsed.content(index), (name, index)
