# Reading one's own mail in the portal: archived HTML is hostile and is
# shown sanitised in a sandboxed frame under its own CSP; files download
# inert; every route is owner-only (404 otherwise) and audited.

from __future__ import annotations

import base64
import hashlib
import html.parser
import io
import mailbox
import re
import time
import zipfile

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.conftest import CASES
from tests.homes import make_home
from tests.hostile import KEYWORDS, REMOTE_HOST, hostile_fixtures
from tests.test_portal import csrf_token, message_id_for, sign_in
from vault.config import load
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.app import create_app
from web.reading import MAX_HEADERS_SHOWN
from web.selection import unquote_mboxrd

B16_SHA256 = "36b9ae6a0701d0f343447e96b300fbdbc40303da57bf96561faa181d47daa736"
B29_SHA256 = "7125f2d24a4bd187085cc7c22f2e4756f7e7649c4d6f7794ab10dac30f7e339c"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAF"
                       "BQIAX8jx0gAAAABJRU5ErkJggg==")
# What the sanitised frame may contain: inert tags, and no attribute that
# runs script or loads anything but the message's own inline images.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "cite", "code", "col",
    "colgroup", "dd", "del", "details", "div", "dl", "dt", "em", "figcaption", "figure",
    "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
    "ol", "p", "pre", "q", "s", "small", "span", "strike", "strong", "sub", "summary",
    "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul",
}
FRAME_HEAD = ('<!doctype html><html><head><meta charset="utf-8">'
              '<meta name="referrer" content="no-referrer">'
              '<meta name="viewport" content="width=device-width, initial-scale=1">'
              "</head><body>")


def attachments_message() -> bytes:
    pdf = base64.encodebytes(b"%PDF-1.4\n%EOF\n").decode().replace("\n", "\r\n")
    return (
        "From: Alice Example <alice@example.com>\r\nTo: Bob Example <bob@example.com>\r\n"
        "Subject: FILES-CASE attachments\r\nDate: Wed, 03 Dec 2025 09:00:00 +0000\r\n"
        "Message-ID: <files@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the files. FILES-CASE\r\n"
        "--F\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename*=UTF-8''Pr%C3%BCfbericht%20M%C3%A4rz.pdf\r\n"
        "\r\n" + pdf +
        '--F\r\nContent-Type: text/html; name="invoice.html"\r\n'
        'Content-Disposition: attachment; filename="invoice.html"\r\n\r\n'
        "<script>alert(1)</script>\r\n"
        '--F\r\nContent-Type: image/svg+xml\r\nContent-Disposition: attachment; filename="pic.svg"\r\n'
        '\r\n<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>\r\n'
        "--F\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="../../etc/passwd"\r\n\r\nroot:x:0:0\r\n'
        "--F\r\nContent-Type: text/plain\r\n"
        "Content-Disposition: attachment; filename=\"=?utf-8?q?a=0D=0ASet-Cookie=3A_x.txt?=\"\r\n"
        "\r\nheader injection\r\n"
        "--F--\r\n").encode()


def thread_message(number: int, to: str, *, reply_to: str | None = None,
                   references: str | None = None, word: str = "HERONTHREAD") -> bytes:
    lines = ["From: Alice Example <alice@example.com>", f"To: {to}",
             f"Subject: Re: {word} plans {number}",
             f"Date: Thu, 04 Dec 2025 0{number}:00:00 +0000",
             f"Message-ID: <thread-{word}-{number}@example.com>"]
    if reply_to:
        lines.append(f"In-Reply-To: <{reply_to}>")
    if references:
        lines.append(f"References: {references}")
    return ("\r\n".join(lines) + f"\r\n\r\nMessage {number} of the {word} thread.\r\n").encode()


def from_lines_message() -> bytes:
    return (b"From: Alice Example <alice@example.com>\r\nTo: bob@example.com\r\n"
            b"Subject: MBOXRD-CASE quoting\r\nMessage-ID: <mboxrd@example.com>\r\n\r\n"
            b"From the desk of Alice.\r\n>From an already quoted line.\r\n"
            b">>From twice.\r\nFrom \r\nFromage is not a From_ line.\r\n")


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path)


MANY_HEADERS = 30_000


def many_headers_message() -> bytes:
    # Distinct names, and a repeated one, as a hostile sender would write.
    lines = [f"X-Filler-{number:05d}: value {number}" for number in range(MANY_HEADERS)]
    return ("Received: from first.example.net\r\nReceived: from second.example.net\r\n"
            "From: alice@example.com\r\nTo: bob@example.com\r\n"
            "Subject: MANYHEADERS\r\nMessage-ID: <many@example.com>\r\n"
            + "\r\n".join(lines) + "\r\n\r\nBody.\r\n").encode()


def build_app(home, **downloads):
    settings = load(home)
    if downloads:
        settings = settings.replace("downloads", **downloads)
    vault = open_vault(settings)
    catalogue = Catalogue(settings.path(settings.catalogue.path))
    bob, carol = ("bob@example.com",), ("carol@example.com",)
    deliveries = [(CASES / "B16.eml").read_bytes(), (CASES / "B29.eml").read_bytes(),
                  attachments_message(), from_lines_message(), many_headers_message()]
    deliveries += [path.read_bytes() for path in hostile_fixtures()]
    first = "thread-HERONTHREAD-1@example.com"
    second = "thread-HERONTHREAD-2@example.com"
    deliveries += [
        thread_message(1, "bob@example.com"),
        thread_message(2, "bob@example.com", reply_to=first, references=f"<{first}>"),
        # A client that kept only In-Reply-To.
        thread_message(4, "bob@example.com", reply_to=second),
        thread_message(1, "bob@example.com", word="OTHERTHREAD"),
    ]
    for raw in deliveries:
        vault.archive(raw, Envelope("x@elsewhere.net", bob))
    # Carol's part of the same conversation, and her own attachment.
    vault.archive(thread_message(3, "carol@example.com", reply_to=second,
                                 references=f"<{first}> <{second}>"),
                  Envelope("x@elsewhere.net", carol))
    vault.archive((CASES / "B09.eml").read_bytes(), Envelope("x@elsewhere.net", carol))
    Follower(vault, catalogue, home / "cursor").catch_up()
    app = create_app(settings, vault=vault, catalogue=catalogue)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def app(home):
    return build_app(home)


@pytest.fixture
def bob(app):
    client = app.test_client()
    assert sign_in(client).status_code == 302
    return client


def audit(app, limit=20):
    return app.extensions["strongroom"].control.audit_events(limit=limit)


class Markup(html.parser.HTMLParser):
    """Collect every start tag with its attributes, and the text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data):
        self.text.append(data)


def check_inert(document: str, message_id: str, *, remote: bool = False) -> None:
    inline = f"/messages/{message_id}/inline/"
    # The frame's own head, then the sanitised body and nothing after it.
    assert document.startswith(FRAME_HEAD) and document.endswith("</body></html>")
    document = document[len(FRAME_HEAD):-len("</body></html>")]
    for tag, attributes in Markup(document).tags:
        assert tag in ALLOWED_TAGS, tag
        for name, value in attributes.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in ("srcset", "background", "poster", "formaction", "action",
                                "data", "srcdoc", "xlink:href", "http-equiv", "content"), name
            if name == "style":
                assert not re.search(r"url|expression|behavior|binding|import|\\|position",
                                     value, re.IGNORECASE), value
            if name == "src":
                assert tag == "img"
                assert value.startswith(inline) or (remote and re.match(r"https?://", value)), value
            if name == "href":
                assert tag == "a" and re.match(r"(https?|mailto):", value), value
                assert attributes.get("rel") == "noopener noreferrer"
                assert attributes.get("target") == "_blank"
    lowered = document.lower()
    # Text is fine ("alert(4)" may remain as escaped words); markup is not.
    for word in ("javascript:", "vbscript:", "data:", "<script", "expression("):
        assert word not in lowered, word
    if not remote:
        assert REMOTE_HOST not in document


@pytest.mark.parametrize("fixture", [path.name for path in hostile_fixtures()])
def test_hostile_html_is_inert_in_its_frame(app, bob, fixture):
    # Nothing that runs, submits, embeds or loads from elsewhere survives.
    message_id = message_id_for(bob, KEYWORDS[fixture])
    frame = bob.get(f"/messages/{message_id}/body.html")
    assert frame.status_code == 200
    assert frame.mimetype == "text/html"
    check_inert(frame.get_data(as_text=True), message_id)
    assert KEYWORDS[fixture] in bob.get(f"/messages/{message_id}").get_data(as_text=True)


@pytest.mark.parametrize("fixture", [path.name for path in hostile_fixtures()])
def test_hostile_html_with_remote_content_still_runs_nothing(app, bob, fixture):
    # "Show remote content" lets remote images load, and nothing else.
    message_id = message_id_for(bob, KEYWORDS[fixture])
    frame = bob.get(f"/messages/{message_id}/body.html?remote=1")
    check_inert(frame.get_data(as_text=True), message_id, remote=True)
    for tag, attributes in Markup(frame.get_data(as_text=True)).tags:
        for value in attributes.values():
            if REMOTE_HOST in value:
                assert tag == "img" and attributes["src"] == value


def test_frame_has_its_own_strict_policy_and_may_be_framed_only_by_the_portal(app, bob):
    message_id = message_id_for(bob, "HOSTILE-CID")
    frame = bob.get(f"/messages/{message_id}/body.html")
    policy = dict(directive.strip().split(" ", 1)
                  for directive in frame.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["img-src"] == f"http://localhost/messages/{message_id}/inline/"
    assert policy["style-src"] == "'unsafe-inline'"
    assert policy["form-action"] == "'none'" and policy["base-uri"] == "'none'"
    assert policy["frame-ancestors"] == "'self'"
    assert policy["sandbox"] == "allow-popups allow-popups-to-escape-sandbox"
    assert "script-src" not in policy and "object-src" not in policy
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert frame.headers["X-Content-Type-Options"] == "nosniff"

    remote = bob.get(f"/messages/{message_id}/body.html?remote=1")
    assert "img-src http://localhost/messages/" in remote.headers["Content-Security-Policy"]
    assert " https: http:;" in remote.headers["Content-Security-Policy"]

    page = bob.get(f"/messages/{message_id}")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "frame-src 'self'" in page.headers["Content-Security-Policy"]
    frames = [a for t, a in Markup(page.get_data(as_text=True)).tags if t == "iframe"]
    assert len(frames) == 1
    assert frames[0]["src"] == f"/messages/{message_id}/body.html"
    sandbox = frames[0]["sandbox"].split()
    assert not {"allow-scripts", "allow-forms", "allow-same-origin"} & set(sandbox)


def test_remote_content_is_blocked_until_asked_for_and_the_choice_is_audited(app, bob):
    message_id = message_id_for(bob, "HOSTILE-REMOTE")
    page = bob.get(f"/messages/{message_id}").get_data(as_text=True)
    assert "Remote images and other remote content are blocked." in page
    assert f'href="/messages/{message_id}?remote=1"' in page
    assert "remote.test" not in bob.get(f"/messages/{message_id}/body.html").get_data(as_text=True)

    shown = bob.get(f"/messages/{message_id}?remote=1").get_data(as_text=True)
    assert f'src="/messages/{message_id}/body.html?remote=1"' in shown
    frame = bob.get(f"/messages/{message_id}/body.html?remote=1").get_data(as_text=True)
    assert '<img src="http://remote.test/pixel.gif"' in frame
    assert '<img src="https://remote.test/logo.png"' in frame
    assert "logo-2x" not in frame and "body-bg" not in frame and "poster" not in frame
    events = audit(app, 4)
    assert (events[0]["action"], events[0]["target"]) == ("view.html", message_id)
    assert '"remote": true' in events[0]["detail"]
    assert (events[1]["action"], events[1]["target"]) == ("view", message_id)
    assert '"remote": true' in events[1]["detail"]


def test_message_without_remote_content_offers_no_remote_choice(app, bob):
    message_id = message_id_for(bob, "HOSTILE-SCRIPT")
    page = bob.get(f"/messages/{message_id}").get_data(as_text=True)
    assert "remote content" not in page.lower()


def test_cid_images_come_from_the_message_itself(app, bob):
    message_id = message_id_for(bob, "HOSTILE-CID")
    frame = bob.get(f"/messages/{message_id}/body.html").get_data(as_text=True)
    sources = [a["src"] for t, a in Markup(frame).tags if t == "img" and "src" in a]
    assert len(sources) == 1
    image = bob.get(sources[0])
    assert image.status_code == 200
    assert image.mimetype == "image/png" and image.data == PNG
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert image.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    event = audit(app, 1)[0]
    assert (event["action"], event["target"]) == ("view.inline", message_id)


def test_svg_is_never_served_inline(app, bob):
    # An SVG named by cid: is a document that can script; it is neither
    # rewritten into the frame nor served by the inline route.
    message_id = message_id_for(bob, "HOSTILE-SVG")
    frame = bob.get(f"/messages/{message_id}/body.html").get_data(as_text=True)
    assert "/inline/" not in frame
    assert bob.get(f"/messages/{message_id}/inline/1").status_code == 404
    download = bob.get(f"/messages/{message_id}/attachments/1")
    assert download.status_code == 200
    assert download.mimetype == "application/octet-stream"
    assert download.headers["Content-Disposition"].startswith("attachment;")


def test_attachments_download_inert_with_rfc_6266_names(app, bob):
    message_id = message_id_for(bob, "FILES-CASE")
    page = bob.get(f"/messages/{message_id}").get_data(as_text=True)
    assert "Prüfbericht März.pdf" in page and "14 Bytes" in page

    pdf = bob.get(f"/messages/{message_id}/attachments/1")
    assert pdf.data == b"%PDF-1.4\n%EOF\n"
    assert pdf.mimetype == "application/pdf"
    assert pdf.headers["Content-Disposition"] == (
        'attachment; filename="Prufbericht Marz.pdf"; '
        "filename*=UTF-8''Pr%C3%BCfbericht%20M%C3%A4rz.pdf")
    assert pdf.headers["X-Content-Type-Options"] == "nosniff"
    assert pdf.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"

    active = {2: "invoice.html", 3: "pic.svg"}
    for index, name in active.items():
        response = bob.get(f"/messages/{message_id}/attachments/{index}")
        assert response.mimetype == "application/octet-stream", name
        assert response.headers["Content-Disposition"] == f"attachment; filename={name}"
    traversal = bob.get(f"/messages/{message_id}/attachments/4")
    assert traversal.headers["Content-Disposition"] == "attachment; filename=etc_passwd"
    injected = bob.get(f"/messages/{message_id}/attachments/5")
    assert injected.status_code == 200
    assert "\r" not in injected.headers["Content-Disposition"]
    assert "Set-Cookie" not in injected.headers
    event = audit(app, 1)[0]
    assert (event["action"], event["target"]) == ("download.attachment", message_id)
    assert '"part": 5' in event["detail"]


def test_parts_that_do_not_exist_are_404(app, bob):
    message_id = message_id_for(bob, "FILES-CASE")
    for path in ("attachments/6", "attachments/99999999999", "attachments/-1",
                 "attachments/x", "inline/6", "inline/0"):
        assert bob.get(f"/messages/{message_id}/{path}").status_code == 404, path


def test_b09_pdf_downloads_under_a_fallback_name(app):
    # Case B09: a name* parameter without a value; the PDF is still served.
    carol = app.test_client()
    sign_in(carol, "carol@example.com")
    message_id = message_id_for(carol, "PELICAN-B09")
    page = carol.get(f"/messages/{message_id}").get_data(as_text=True)
    assert "part-2.pdf" in page
    pdf = carol.get(f"/messages/{message_id}/attachments/1")
    assert pdf.data == b"%PDF-1.4\n%EOF\n"
    assert pdf.headers["Content-Disposition"] == "attachment; filename=part-2.pdf"


def test_b16_bytes_and_sender_survive_every_reading_path(app, bob):
    # Case B16: the .eml, the zip and the mbox give the stored bytes back,
    # and the sender's name is shown with its en dash.
    message_id = message_id_for(bob, "AVOCET-B16")
    page = bob.get(f"/messages/{message_id}").get_data(as_text=True)
    assert "Sweepstakes Alert\u2013Prize Desk" in page
    assert "signature.asc" in page
    eml = bob.get(f"/messages/{message_id}/original.eml").data
    assert hashlib.sha256(eml).hexdigest() == B16_SHA256
    token = csrf_token(bob, "/search?q=AVOCET-B16")
    for chosen in ("zip", "mbox"):
        download = bob.post("/messages/selection", data={
            "csrf_token": token, "id": message_id, "format": chosen})
        (raw,) = unpack(download.data, chosen)
        assert hashlib.sha256(raw).hexdigest() == B16_SHA256, chosen
    conversation = bob.get(f"/messages/{message_id}/conversation").get_data(as_text=True)
    assert "Sweepstakes Alert\u2013Prize Desk" in conversation


def test_b29_selection_keeps_bytes_and_original_arrival_time(app, bob):
    # Case B29: byte-identical copies, dated by the original receipt
    # (Received: ... 03 Mar 2015 08:15:07 +0100), not by today.
    message_id = message_id_for(bob, "B29")
    token = csrf_token(bob, "/search?q=B29")
    zipped = bob.post("/messages/selection", data={
        "csrf_token": token, "id": message_id, "format": "zip"})
    with zipfile.ZipFile(io.BytesIO(zipped.data)) as archive:
        (entry,) = archive.infolist()
        # 07:15:07 UTC; a zip (MS-DOS) time counts seconds in twos.
        assert entry.date_time == (2015, 3, 3, 7, 15, 6)
        assert hashlib.sha256(archive.read(entry)).hexdigest() == B29_SHA256
    mbox = bob.post("/messages/selection", data={
        "csrf_token": token, "id": message_id, "format": "mbox"}).data
    assert mbox.startswith(b"From MAILER-DAEMON Tue Mar  3 07:15:07 2015\n")
    (raw,) = unquote_mboxrd(mbox)
    assert hashlib.sha256(raw).hexdigest() == B29_SHA256


def unpack(data: bytes, chosen: str) -> list[bytes]:
    if chosen == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [archive.read(name) for name in archive.namelist()]
    return unquote_mboxrd(data)


def test_selection_downloads_as_zip_and_mboxrd_with_exact_bytes(app, bob, tmp_path):
    ids = [message_id_for(bob, word) for word in ("MBOXRD-CASE", "AVOCET-B16", "FILES-CASE")]
    token = csrf_token(bob, "/search?q=MBOXRD-CASE")
    originals = {hashlib.sha256(app.extensions["strongroom"].vault.read_message(
        f"messages/{i}")).hexdigest() for i in ids}

    zipped = bob.post("/messages/selection", data={
        "csrf_token": token, "id": ids, "format": "zip"})
    assert zipped.status_code == 200 and zipped.mimetype == "application/zip"
    assert zipped.is_streamed
    assert re.fullmatch(r'attachment; filename="strongroom-\d{8}-\d{6}\.zip"',
                        zipped.headers["Content-Disposition"])
    assert {hashlib.sha256(raw).hexdigest() for raw in unpack(zipped.data, "zip")} == originals
    with zipfile.ZipFile(io.BytesIO(zipped.data)) as archive:
        assert archive.namelist()[0] == f"0001-MBOXRD-CASE quoting-{ids[0][:12]}.eml"

    mbox = bob.post("/messages/selection", data={
        "csrf_token": token, "id": ids, "format": "mbox"})
    assert mbox.mimetype == "application/mbox"
    assert b"\n>From the desk of Alice.\r\n>>From an already quoted line.\r\n>>>From twice.\r\n" \
           b">From \r\nFromage" in mbox.data
    assert {hashlib.sha256(raw).hexdigest() for raw in unpack(mbox.data, "mbox")} == originals
    (tmp_path / "selection.mbox").write_bytes(mbox.data)
    assert len(mailbox.mbox(str(tmp_path / "selection.mbox"))) == 3

    downloads = [e for e in audit(app, 10) if e["action"] == "download"]
    assert sorted(e["target"] for e in downloads[:3]) == sorted(ids)
    assert all('"format": "mbox"' in e["detail"] for e in downloads[:3])


def test_selection_needs_its_csrf_token(app, bob):
    message_id = message_id_for(bob, "AVOCET-B16")
    response = bob.post("/messages/selection", data={"id": message_id, "format": "zip"})
    assert response.status_code == 400
    assert b"PK" not in response.data[:2]


def test_selection_limits_are_explained(home):
    app = build_app(home, max_messages=2, max_bytes=1000)
    client = app.test_client()
    sign_in(client)
    token = csrf_token(client, "/search?q=x")
    ids = [message_id_for(client, word) for word in ("HOSTILE-CID", "HOSTILE-SVG", "B29")]
    too_many = client.post("/messages/selection", data={"csrf_token": token, "id": ids})
    assert too_many.status_code == 413
    assert "3 messages were selected; one download holds at most 2" in \
        too_many.get_data(as_text=True)
    big = [message_id_for(client, "HOSTILE-CID"), message_id_for(client, "HOSTILE-REMOTE")]
    too_big = client.post("/messages/selection", data={"csrf_token": token, "id": big})
    assert too_big.status_code == 413
    assert "one download holds at most 1,000." in too_big.get_data(as_text=True)
    nothing = client.post("/messages/selection", data={"csrf_token": token})
    assert nothing.status_code == 400
    assert "No message was selected" in nothing.get_data(as_text=True)
    wrong = client.post("/messages/selection", data={"csrf_token": token, "id": ids[0],
                                                     "format": "tar"})
    assert wrong.status_code == 400


def test_search_results_carry_the_selection_form(app, bob):
    page = bob.get("/search?q=HOSTILE-CID").get_data(as_text=True)
    message_id = message_id_for(bob, "HOSTILE-CID")
    assert (f'<input type="checkbox" form="selection" name="id" value="{message_id}"'
            in page)
    assert '<form id="selection" method="post" action="/messages/selection"' in page
    assert 'name="csrf_token"' in page.split('<form id="selection"')[1]


def test_conversation_groups_the_readers_own_messages_oldest_first(app, bob):
    message_id = message_id_for(bob, "%22HERONTHREAD+plans+4%22")
    page = bob.get(f"/messages/{message_id}/conversation").get_data(as_text=True)
    subjects = re.findall(r'<span class="subject">([^<]*)</span>', page)
    assert subjects == ["Re: HERONTHREAD plans 1", "Re: HERONTHREAD plans 2",
                        "Re: HERONTHREAD plans 4"]
    assert 'aria-current="page"' in page
    event = audit(app, 1)[0]
    assert (event["action"], event["target"]) == ("view.conversation", message_id)

    carol = app.test_client()
    sign_in(carol, "carol@example.com")
    carols = message_id_for(carol, "HERONTHREAD")
    seen = carol.get(f"/messages/{carols}/conversation").get_data(as_text=True)
    assert re.findall(r'<span class="subject">([^<]*)</span>', seen) == [
        "Re: HERONTHREAD plans 3"]


def test_all_headers_on_request(app, bob):
    message_id = message_id_for(bob, "AVOCET-B16")
    page = bob.get(f"/messages/{message_id}").get_data(as_text=True)
    assert "In-Reply-To" not in page
    full = bob.get(f"/messages/{message_id}?headers=all").get_data(as_text=True)
    assert "In-Reply-To" in full and "MIME-Version" in full
    assert "CAFngpXc_66qL0nUkHtT5g98BhWHPE8-KFtc6=87OvA-U7O9cw@mail.example.com" in full


def test_all_headers_of_a_message_with_thousands_lists_some_in_order_at_once(app, bob):
    # Each name was looked up again in the whole list: 20,000 headers took
    # 16 s of a portal thread, 50,000 about two minutes.
    message_id = message_id_for(bob, "MANYHEADERS")
    started = time.monotonic()
    full = bob.get(f"/messages/{message_id}?headers=all").get_data(as_text=True)
    assert time.monotonic() - started < 10
    listed = full.split("<summary>All headers</summary>", 1)[1].split("</details>", 1)[0]
    names = re.findall(r"<dt>([^<]*)</dt>", listed)
    assert names[:3] == ["Received", "Received", "From"]
    assert len(names) == MAX_HEADERS_SHOWN + 1
    assert names[-2] == f"X-Filler-{MAX_HEADERS_SHOWN - 7:05d}"
    shown_more = MANY_HEADERS + 6 - MAX_HEADERS_SHOWN
    assert f"{shown_more} more header(s) not shown" in full


def test_other_users_message_is_404_on_every_reading_route(app, bob):
    carol = app.test_client()
    sign_in(carol, "carol@example.com")
    carols_id = message_id_for(carol, "PELICAN-B09")
    assert carol.get(f"/messages/{carols_id}/attachments/1").status_code == 200
    token = csrf_token(bob, "/search?q=x")
    own = message_id_for(bob, "AVOCET-B16")
    before = len(audit(app, 1000))
    for path in ("", "/body.html", "/body.html?remote=1", "/inline/0", "/inline/1",
                 "/attachments/0", "/attachments/1", "/conversation", "/original.eml",
                 "?headers=all"):
        response = bob.get(f"/messages/{carols_id}{path}")
        assert response.status_code == 404, path
        assert b"PELICAN" not in response.data and b"PDF" not in response.data
    for chosen in ("zip", "mbox"):
        response = bob.post("/messages/selection", data={
            "csrf_token": token, "id": [own, carols_id], "format": chosen})
        assert response.status_code == 404
        assert b"AVOCET" not in response.data
    assert len(audit(app, 1000)) == before


def test_every_reading_route_is_audited_with_the_message_id(app, bob):
    message_id = message_id_for(bob, "HOSTILE-CID")
    for path, action in (("", "view"), ("/body.html", "view.html"),
                         ("/inline/1", "view.inline"),
                         ("/attachments/1", "download.attachment"),
                         ("/conversation", "view.conversation"),
                         ("/original.eml", "download")):
        assert bob.get(f"/messages/{message_id}{path}").status_code == 200, path
        event = audit(app, 1)[0]
        assert (event["actor"], event["action"], event["target"]) == (
            "bob@example.com", action, message_id), path


def test_reading_routes_need_sign_in(app):
    client = app.test_client()
    message_id = "0" * 64
    for path in ("/body.html", "/attachments/0", "/conversation"):
        response = client.get(f"/messages/{message_id}{path}")
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    # Inline images answer only the signed-in owner or a grant (below).
    assert client.get(f"/messages/{message_id}/inline/0").status_code == 404


def test_frame_images_load_by_grant_without_the_session_cookie(app, bob):
    # The sandboxed frame has an opaque origin, so browsers send no
    # SameSite cookie with its image requests; the URL's grant stands in,
    # for that owner, that message and that part only, for a while.
    message_id = message_id_for(bob, "HOSTILE-CID")
    frame = bob.get(f"/messages/{message_id}/body.html").get_data(as_text=True)
    (source,) = [a["src"] for t, a in Markup(frame).tags if t == "img" and "src" in a]
    assert source.startswith(f"/messages/{message_id}/inline/1?grant=")
    cookieless = app.test_client()
    image = cookieless.get(source)
    assert image.status_code == 200 and image.data == PNG
    event = audit(app, 1)[0]
    assert (event["actor"], event["action"], event["target"]) == (
        "bob@example.com", "view.inline", message_id)

    grant = source.split("grant=")[1]
    other = message_id_for(bob, "FILES-CASE")
    for path in (f"/messages/{message_id}/inline/0?grant={grant}",
                 f"/messages/{other}/inline/1?grant={grant}",
                 f"/messages/{message_id}/inline/1?grant={grant[:-2]}xx",
                 f"/messages/{message_id}/inline/1?grant="):
        assert cookieless.get(path).status_code == 404, path

    import web.reading
    original = web.reading.GRANT_SECONDS
    try:
        web.reading.GRANT_SECONDS = -1
        assert cookieless.get(source).status_code == 404
    finally:
        web.reading.GRANT_SECONDS = original
