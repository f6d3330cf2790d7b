# The pieces under the reading routes: the HTML sanitiser, the part
# numbering, safe file names and the streamed zip/mbox writers.

from __future__ import annotations

import io
import zipfile

import pytest

from web.parts import MessageParts, download_type, safe_filename
from web.render import frame_policy, sanitize
from web.selection import mbox_chunks, unquote_mboxrd, zip_chunks


def no_images(cid):
    return None


def test_sanitiser_keeps_plain_formatting_and_safe_links():
    html = ('<p style="color: green; font-weight: bold">Hi <b>there</b></p>'
            '<a href="https://example.org/x" rel="opener" target="_self">x</a>'
            '<table><tr><td align="right">1</td></tr></table>')
    assert sanitize(html, no_images) == (
        '<p style="color:green;font-weight:bold">Hi <b>there</b></p>'
        '<a href="https://example.org/x" target="_blank" rel="noopener noreferrer">x</a>'
        '<table><tbody><tr><td align="right">1</td></tr></tbody></table>')


@pytest.mark.parametrize("style", [
    "background: url(http://remote.test/a.png)", "width: expression(alert(1))",
    "color: red; b\\61 ckground: u\\72 l(x)", "behavior: url(x.htc)",
    "-moz-binding: url(x.xml#b)", "color: red /* */", "background-image: image-set('x' 1x)",
])
def test_sanitiser_drops_a_style_that_could_load_or_run(style):
    assert sanitize(f'<p style="{style}">x</p>', no_images) == "<p>x</p>"


def test_cid_images_are_rewritten_and_other_images_dropped():
    inline = {"logo@x": "/messages/abc/inline/1"}.get
    html = ('<img src="cid:logo@x"><img src="cid:other@x"><img src="http://r.test/p.png">'
            '<img src="/search?q=x"><img src="//r.test/p.png">')
    assert sanitize(html, inline) == '<img src="/messages/abc/inline/1"><img><img><img><img>'
    assert sanitize(html, inline, remote=True) == (
        '<img src="/messages/abc/inline/1"><img><img src="http://r.test/p.png"><img><img>')


def test_relative_links_cannot_point_into_the_portal():
    inline = {"logo@x": "/messages/abc/inline/1"}.get
    html = '<a href="/messages/abc/inline/1">x</a><a href="/logout">y</a>'
    assert 'href' not in sanitize(html, inline)


def test_frame_policy_allows_remote_images_only_when_asked():
    strict = frame_policy("http://h/messages/abc/inline/")
    assert "img-src http://h/messages/abc/inline/;" in strict
    assert "https:" not in strict
    assert "img-src http://h/messages/abc/inline/ https: http:;" in frame_policy(
        "http://h/messages/abc/inline/", remote=True)


@pytest.mark.parametrize("name, safe", [
    ("../../etc/passwd", "etc_passwd"), ("a\r\nSet-Cookie: x.txt", "a_Set-Cookie_ x.txt"),
    ("C:\\Users\\x.doc", "C_Users_x.doc"), ("....", ""), ('re"port".pdf', "re_port_.pdf"),
    ("名前.txt", "名前.txt"), ("x" * 300 + ".pdf", "x" * 146 + ".pdf"),
    # Direction marks would show this .exe as "invoiceexe.png".
    ("invoice\u202egnp.exe", "invoice_gnp.exe"), ("a\u2067b\u2069\u200f.pdf", "a_b_.pdf"),
])
def test_file_names_are_made_safe(name, safe):
    assert safe_filename(name) == safe


@pytest.mark.parametrize("declared, served", [
    ("text/html", "application/octet-stream"), ("image/svg+xml", "application/octet-stream"),
    ("application/xhtml+xml", "application/octet-stream"),
    ("text/xml", "application/octet-stream"), ("application/javascript", "application/octet-stream"),
    ("application/pdf", "application/pdf"), ("IMAGE/PNG", "image/png"),
])
def test_download_types_are_inert(declared, served):
    assert download_type(declared) == served


def test_parts_are_numbered_without_descending_into_attached_messages():
    raw = (b"Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n"
           b"Content-Type: text/plain\r\n\r\nhello\r\n--A\r\n"
           b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: text/plain\r\n\r\ninner text\r\n--B--\r\n"
           b"--A\r\nContent-Type: image/png\r\nContent-ID: <p@x>\r\n\r\nPNG\r\n--A--\r\n")
    parts = MessageParts(raw)
    assert parts.text == "hello"
    assert [(p.index, p.filename) for p in parts.files()] == [(1, "part-2.eml"),
                                                              (2, "part-3.png")]
    assert parts.content(1).startswith(b"Subject: inner\r\n") or \
        parts.content(1).startswith(b"Subject: inner\n")
    assert parts.inline_image("<p@x>") == 2


def test_deeply_nested_mail_shows_without_a_stack_overflow():
    depth = 5000
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                   for i in range(depth)) + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    parts = MessageParts(raw)
    assert isinstance(parts.files(), list)


def recorded(messages, log):
    for message_id, raw in messages:
        log.append(f"read {message_id}")
        yield message_id, raw


@pytest.mark.parametrize("writer", [zip_chunks, mbox_chunks])
def test_writers_stream_one_message_at_a_time(writer):
    # Memory stays bounded: a message's bytes are handed on before the
    # next message is read.
    log = []
    messages = [(f"m{n}", b"Subject: %d\r\n\r\n" % n + b"x" * 100_000 + b"\r\n")
                for n in range(3)]
    for chunk in writer(recorded(messages, log)):
        if chunk:
            log.append("chunk")
    assert log[:4] == ["read m0", "chunk", "read m1", "chunk"]


def test_unreadable_messages_are_named_inside_the_download():
    messages = [("good", b"Subject: ok\r\n\r\nbody\r\n"), ("damaged", None)]
    data = b"".join(zip_chunks(iter(messages)))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert len(archive.namelist()) == 2
        assert "damaged" in archive.read("NOT-INCLUDED.txt").decode()
    mbox = b"".join(mbox_chunks(iter(messages)))
    first, note = unquote_mboxrd(mbox)
    assert first == b"Subject: ok\r\n\r\nbody\r\n"
    assert b"damaged" in note


@pytest.mark.parametrize("html, offered", [
    ('<img src="http://r.test/p.png">', True), ("<IMG alt=x SRC=https://r.test/p>", True),
    ('<img src="cid:logo@x">', False), ('<img data-src="http://r.test/p">', False),
    ('<a href="http://r.test/">link</a>', False), ('<img src="x" onerror="http://r">', False),
])
def test_show_remote_content_is_offered_only_for_remote_images(html, offered):
    from web.render import has_remote_images

    assert has_remote_images(html) is offered
    # The offer matches what allowing remote content would change.
    changed = sanitize(html, no_images, remote=True) != sanitize(html, no_images)
    assert changed is offered
