"""The portal's pages: sign-in, search, a message, its original download."""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32

from flask import (Blueprint, Response, flash, redirect, render_template,
                   request, url_for)
from flask_login import current_user, login_required, login_user, logout_user

from indexer import QueryError
from indexer.catalogue import SORTS
from indexer.extract import Extract, extract, header_text
from web.archive import archive, positive_int

portal = Blueprint("portal", __name__)

PER_PAGE = 20
FULL_VIEW_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
SUMMARY_HEADERS = ("From", "To", "Cc", "Date", "Subject", "Message-ID")


@portal.get("/")
def home():
    return redirect(url_for("portal.search"))


@portal.get("/help")
def search_help():
    return render_template("help.html")


@portal.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("portal.search"))
    if request.method == "POST":
        address = request.form.get("address", "").strip()
        password = request.form.get("password", "")
        user = archive().accounts.authenticate(address, password)
        if user is None:
            archive().control.audit(address or "-", "login.failure", peer=request.remote_addr)
            # One message for every failure, so it never tells whether
            # the account exists.
            flash("Sign-in failed: the address or password is wrong.")
            return render_template("login.html", address=address), 401
        login_user(user)
        archive().control.audit(user.address, "login", peer=request.remote_addr)
        return redirect(url_for("portal.search"))
    return render_template("login.html", address="")


@portal.post("/logout")
@login_required
def logout():
    archive().control.audit(current_user.address, "logout")
    logout_user()
    return redirect(url_for("portal.login"))


@portal.get("/search")
@login_required
def search():
    query = request.args.get("q", "").strip()
    page = positive_int(request.args.get("page", "1")) or 1
    sort = request.args.get("sort", "date")
    sort = sort if sort in SORTS else "date"
    results, error = None, None
    if query:
        try:
            results = archive().catalogue.search(
                query, owners=current_user.mailboxes, page=page, per_page=PER_PAGE,
                sort=sort,
            )
        except QueryError as err:
            error = str(err)
        archive().control.audit(current_user.address, "search", query=query,
                                total=results.total if results else None)
    return render_template("search.html", query=query, results=results, error=error,
                           sort=sort)


@portal.get("/messages/<message_id>")
@login_required
def message(message_id: str):
    raw = archive().open_message(current_user, message_id)
    archive().control.audit(current_user.address, "view", message_id)
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
    shortened = len(raw) > FULL_VIEW_BYTES
    if shortened:
        # Parsing a very large message costs many times its size in memory;
        # show the text the catalogue already extracted instead.
        document = archive().catalogue.document(message_id) or {}
        found = Extract(subject=header_text(headers, "subject"),
                        body=document.get("preview", ""))
    else:
        found = extract(raw, read_attachments=False)
    summary = [(name, header_text(headers, name)) for name in SUMMARY_HEADERS
               if headers.get(name) is not None]
    all_headers = None
    if request.args.get("headers") == "all":
        all_headers = [(name, header_text(headers, name)) for name in dict.fromkeys(headers.keys())]
    return render_template("message.html", message_id=message_id, found=found,
                           summary=summary, all_headers=all_headers, shortened=shortened)


@portal.get("/messages/<message_id>/original.eml")
@login_required
def original(message_id: str):
    raw = archive().open_message(current_user, message_id)
    archive().control.audit(current_user.address, "download", message_id)
    return Response(
        raw,
        mimetype="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{message_id}.eml"'},
    )
