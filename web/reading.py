"""Reading one's own mail: the message page, its HTML frame, its files.

Every route here opens the message through ``Archive.open_message``,
which checks ownership against the catalogue before a byte is read and
answers 404 for anyone else's message; every route leaves an audit event
naming the message.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import secrets
from email.parser import BytesHeaderParser
from email.policy import compat32

from flask import (Blueprint, Response, current_app, render_template, request,
                   send_file, stream_with_context, url_for)
from flask_login import current_user, login_required
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.exceptions import BadRequest, HTTPException, NotFound, RequestEntityTooLarge

from indexer.catalogue import utc_naive
from indexer.extract import header_text, value_text
from indexer.query import MAX_QUERY_CHARS
from vault import VaultError
from web.archive import archive
from web.parts import INLINE_IMAGE_TYPES, MessageParts, download_type
from web.part_scan import ScannedParts, message_parts, open_part
from web.render import (FRAME_SANDBOX, frame_document, frame_policy, has_remote_images,
                         sanitize)
from web.selection import FORMATS, mbox_chunks, read_each, zip_chunks

log = logging.getLogger(__name__)

reading = Blueprint("reading", __name__)

# Parsing costs several times a message's size in memory (about 8x for
# compat32); the page parses messages up to this size and shows the
# catalogue's text for larger ones.  Files are still served from any size.
FULL_VIEW_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
SUMMARY_HEADERS = ("From", "To", "Cc", "Date", "Subject", "Message-ID")
# The page's delivery details read at most this many receipts.
MAX_DELIVERIES_SHOWN = 10
# Served files themselves get a CSP sandbox: a browser that renders one
# anyway (an old one, a misconfigured proxy) runs nothing from it.
FILE_POLICY = "default-src 'none'; sandbox"
# A conversation follows Message-ID links this many steps out, asking
# about at most this many ids a step, and shows at most this many messages.
THREAD_ROUNDS = 3
THREAD_QUERY_IDS = 60
MAX_THREAD_MESSAGES = 200
_MESSAGE_ID = re.compile(r"[0-9a-f]{64}")
# How long a frame's inline-image URLs stay good (see inline_image).
GRANT_SECONDS = 900
# Headers listed by "Show all headers"; the original has the rest.
MAX_HEADERS_SHOWN = 2000
GRANT_SALT = "strongroom.inline-image"


def show_message(message_id: str) -> Response:
    """Render the message page (the ``portal.message`` route)."""
    raw = archive().open_message(current_user, message_id)
    remote = _wants_remote()
    archive().control.audit(current_user.address, "view", message_id,
                            **({"remote": True} if remote else {}))
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
    summary = [(name, header_text(headers, name)) for name in SUMMARY_HEADERS
               if headers.get(name) is not None]
    all_headers = None
    if request.args.get("headers") == "all":
        # Every header in order, repeats included (each Received line),
        # read once each: looking each name up again scanned the whole
        # list per name, minutes for a message of 50,000 headers.
        all_headers = [(name, value_text(value))
                       for name, value in headers.items()[:MAX_HEADERS_SHOWN]]
        if len(headers) > MAX_HEADERS_SHOWN:
            all_headers.append(("…", f"{len(headers) - MAX_HEADERS_SHOWN} more header(s) "
                                     "not shown; download the original to read them"))
    page = dict(message_id=message_id, subject=header_text(headers, "subject"),
                summary=summary, all_headers=all_headers, remote=remote,
                sandbox=FRAME_SANDBOX, shortened=len(raw) > FULL_VIEW_BYTES,
                deliveries=_deliveries(message_id))
    if page["shortened"]:
        document = archive().catalogue.document(message_id) or {}
        page.update(text=document.get("preview", ""), files=ScannedParts(raw).files(),
                    has_html=False,
                    has_remote=False, file_names=document.get("filename", ""))
    else:
        parts = MessageParts(raw)
        html = parts.html
        page.update(text=parts.text, files=parts.files(), has_html=bool(html.strip()),
                    has_remote=has_remote_images(html))
    response = Response(render_template("message.html", **page))
    # The page embeds the message's own HTML frame and nothing else.
    from web.app import CONTENT_SECURITY_POLICY

    response.headers["Content-Security-Policy"] = (
        CONTENT_SECURITY_POLICY + "; frame-src 'self'")
    return response


def _deliveries(message_id: str) -> list[dict]:
    """Return when the archive received the message, and the envelope sender.

    Only the time and MAIL FROM of each receipt: its envelope recipients
    may name other people's mailboxes (Bcc), which are not the reader's.
    """
    document = archive().catalogue.document(message_id) or {}
    deliveries = []
    for key in list(document.get("receipts", ()))[:MAX_DELIVERIES_SHOWN]:
        try:
            receipt = archive().vault.read_receipt(key)
        except VaultError as err:
            log.error("%s: receipt cannot be read for %s: %s", key, message_id, err,
                      extra={"event": "portal.receipt_unreadable"})
            continue
        deliveries.append({"received_at": receipt.received_at,
                           "mail_from": receipt.mail_from})
    return deliveries


@reading.get("/messages/<message_id>/body.html")
@login_required
def html_frame(message_id: str) -> Response:
    """Serve the message's HTML body, sanitised, for the page's iframe."""
    raw = archive().open_message(current_user, message_id)
    remote = _wants_remote()
    archive().control.audit(current_user.address, "view.html", message_id,
                            **({"remote": True} if remote else {}))
    parts = MessageParts(raw)
    body = sanitize(parts.html, _inline_urls(message_id, parts), remote=remote)
    response = Response(frame_document(body), mimetype="text/html")
    prefix = request.host_url.rstrip("/") + url_for(
        "reading.inline_image", message_id=message_id, index=0).rsplit("/", 1)[0] + "/"
    response.headers["Content-Security-Policy"] = frame_policy(prefix, remote=remote)
    # The portal's pages refuse every frame; this one may be framed by
    # the portal's own message page, and by nothing else.
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@reading.get("/messages/<message_id>/inline/<int:index>")
def inline_image(message_id: str, index: int) -> Response:
    """Serve one image part of the message for its HTML frame.

    The frame is sandboxed without allow-same-origin, so its requests
    come from an opaque origin and browsers withhold the SameSite
    session cookie.  The frame's image URLs therefore carry a grant: a
    signed, short-lived note of who may see which part, made when the
    frame was served to that signed-in owner.  Ownership is still checked
    again here, for the user the grant names.
    """
    user = current_user if current_user.is_authenticated else _granted_user(
        message_id, index)
    raw = archive().open_message(user, message_id)
    parts = MessageParts(raw)
    if index >= len(parts.leaves):
        raise NotFound("The message has no such part.")
    content_type = parts.leaves[index].get_content_type()
    if content_type not in INLINE_IMAGE_TYPES:
        raise NotFound("That part is not an image that can be shown inline.")
    archive().control.audit(user.address, "view.inline", message_id, part=index)
    response = Response(parts.content(index), mimetype=content_type)
    response.headers["Content-Security-Policy"] = FILE_POLICY
    return response


def _grants() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=GRANT_SALT)


def _granted_user(message_id: str, index: int):
    try:
        user_id, granted_id, granted_index = _grants().loads(
            request.args.get("grant", ""), max_age=GRANT_SECONDS)
    except (BadData, ValueError, TypeError):
        raise NotFound("No such message.") from None
    user = archive().accounts.get(user_id=user_id)
    if user is None or (granted_id, granted_index) != (message_id, index):
        raise NotFound("No such message.")
    return user


@reading.get("/messages/<message_id>/attachments/<int:index>")
@login_required
def attachment(message_id: str, index: int) -> Response:
    """Download one part of the message as a file, never rendered."""
    raw = archive().open_message(current_user, message_id)
    parts = message_parts(raw, FULL_VIEW_BYTES)
    if index >= len(parts.leaves):
        raise NotFound("The message has no such part.")
    filename = parts.filename(index)
    archive().control.audit(current_user.address, "download.attachment", message_id,
                            part=index, filename=filename)
    response = send_file(
        open_part(parts, index),
        mimetype=download_type(parts.leaves[index].get_content_type()),
        as_attachment=True, download_name=filename, etag=False, conditional=False,
    )
    response.headers["Content-Security-Policy"] = FILE_POLICY
    return response


def _wants_remote() -> bool:
    return request.args.get("remote") == "1"


def _inline_urls(message_id: str, parts: MessageParts):
    def inline_url(cid: str) -> str | None:
        index = parts.inline_image(cid)
        if index is None:
            return None
        if parts.leaves[index].get_content_type() not in INLINE_IMAGE_TYPES:
            return None
        grant = _grants().dumps([current_user.id, message_id, index])
        return url_for("reading.inline_image", message_id=message_id, index=index,
                       grant=grant)
    return inline_url


@reading.get("/messages/<message_id>/conversation")
@login_required
def conversation(message_id: str) -> str:
    """List the reader's own messages of this message's conversation."""
    archive().open_message(current_user, message_id)
    archive().control.audit(current_user.address, "view.conversation", message_id)
    hits = thread_of(message_id)
    return render_template("conversation.html", message_id=message_id, hits=hits)


@reading.post("/messages/selection")
@login_required
def selection() -> Response:
    """Download the selected messages as one zip of .eml files or an mbox."""
    message_ids = list(dict.fromkeys(request.form.getlist("id")))
    chosen = request.form.get("format", "zip")
    if chosen not in FORMATS:
        raise BadRequest("Choose zip or mbox.")
    _check_selection(message_ids)
    batch = secrets.token_hex(8)
    user = current_user._get_current_object()

    def read(message_id: str) -> bytes | None:
        try:
            raw = archive().open_message(user, message_id)
        except HTTPException:
            return None
        archive().control.audit(user.address, "download", message_id,
                                format=chosen, selection=batch)
        return raw

    messages = read_each(message_ids, read)
    chunks = zip_chunks(messages) if chosen == "zip" else mbox_chunks(messages)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Response(
        stream_with_context(chunks),
        mimetype="application/zip" if chosen == "zip" else "application/mbox",
        headers={"Content-Disposition":
                 f'attachment; filename="strongroom-{stamp}.{chosen}"',
                 "Content-Security-Policy": FILE_POLICY},
    )


@reading.record
def _configure(state) -> None:
    state.app.extensions["strongroom.downloads"] = state.options["downloads"]


def _check_selection(message_ids: list[str]) -> None:
    limits = current_app.extensions["strongroom.downloads"]
    if not message_ids:
        raise BadRequest("No message was selected: tick the messages to download.")
    if len(message_ids) > limits.max_messages:
        raise RequestEntityTooLarge(
            f"{len(message_ids)} messages were selected; one download holds at most "
            f"{limits.max_messages}. Select fewer and download them in parts.")
    total = 0
    for message_id in message_ids:
        # The first ownership check; open_message makes the second.
        if not _MESSAGE_ID.fullmatch(message_id) or not archive().catalogue.is_visible(
                message_id, current_user.mailboxes):
            raise NotFound("No such message.")
        total += (archive().catalogue.document(message_id) or {}).get("size") or 0
    if total > limits.max_bytes:
        raise RequestEntityTooLarge(
            f"The selected messages hold {total:,} bytes; one download holds at most "
            f"{limits.max_bytes:,}. Select fewer and download them in parts.")


@dataclasses.dataclass(frozen=True)
class ThreadEntry:
    """One message of a conversation as its list shows it."""

    id: str
    subject: str
    sender: str
    date: dt.datetime | None


def thread_of(message_id: str) -> list[ThreadEntry]:
    """Return the reader's messages in this message's conversation, oldest first.

    A conversation is every message linked to this one by Message-ID,
    In-Reply-To or References, followed a few links out; every catalogue
    query carries the reader's mailboxes, so no one else's mail appears.
    """
    document = archive().catalogue.document(message_id) or {}
    # Hits carry naive UTC dates (as pages show them); a document's date is
    # aware, so it is brought to the same form before the two are sorted.
    entries = {message_id: ThreadEntry(message_id, document.get("subject", ""),
                                       document.get("from", ""),
                                       utc_naive(document.get("date")))}
    known = _linked_ids(document)
    asked: set[str] = set()
    for _ in range(THREAD_ROUNDS):
        fresh = sorted(known - asked)[:THREAD_QUERY_IDS]
        if not fresh:
            break
        asked.update(fresh)
        for query in _thread_queries(fresh):
            results = archive().catalogue.search(query, owners=current_user.mailboxes,
                                                 per_page=MAX_THREAD_MESSAGES)
            for hit in results.hits:
                if hit.id not in entries and len(entries) < MAX_THREAD_MESSAGES:
                    entries[hit.id] = ThreadEntry(hit.id, hit.subject, hit.sender, hit.date)
                    known |= _linked_ids(archive().catalogue.document(hit.id) or {})
    return sorted(entries.values(),
                  key=lambda entry: (entry.date is None, entry.date or dt.datetime.min))


def _linked_ids(document: dict) -> set[str]:
    values = {document.get("message_id") or "", *(document.get("references") or "").split()}
    # The query language cannot quote these characters; no real id has them.
    return {value for value in values
            if value and len(value) < 250 and not set(value) & set('"\\()')}


def _thread_queries(message_ids: list[str]) -> list[str]:
    # Each query stays under the language's length limit.
    queries, clauses = [], []
    for value in message_ids:
        clause = f'message-id:"{value}" OR references:"{value}"'
        if clauses and len(" OR ".join([*clauses, clause])) > MAX_QUERY_CHARS - 100:
            queries.append(" OR ".join(clauses))
            clauses = []
        clauses.append(clause)
    if clauses:
        queries.append(" OR ".join(clauses))
    return queries
