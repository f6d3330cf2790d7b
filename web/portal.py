"""The portal's pages: sign-in, search, a message, its original download."""

from __future__ import annotations

import logging

from flask import (Blueprint, Response, current_app, flash, redirect, render_template,
                   request, url_for)
from flask_login import current_user, login_required
from werkzeug.exceptions import ServiceUnavailable

from indexer import QueryError
from indexer.catalogue import SORTS
from vault.audit_commit import AuditError
from web.archive import archive, positive_int
from web.signin import sign_in_page, sign_out
from web.reading import show_message
from web.times import time_element

log = logging.getLogger(__name__)

portal = Blueprint("portal", __name__)
# {{ stored_time | moment }}: a stored time as a human <time> element
# (the account pages' "when" gives the text alone).
portal.add_app_template_filter(time_element, "moment")

PER_PAGE = 20


@portal.app_errorhandler(AuditError)
def audit_unavailable(error: AuditError):
    # Every access is audited before it is answered: an access that could
    # not be recorded is refused, on every route of the application.
    log.error("refused %s %s: %s", request.method, request.path, error,
              extra={"event": "portal.audit_refused"})
    return current_app.handle_user_exception(ServiceUnavailable(
        "The archive could not record this access in its audit trail, so it was "
        "not carried out. Please try again in a moment."))


@portal.get("/")
def home():
    return redirect(url_for("portal.search"))


@portal.get("/help")
def search_help():
    return render_template("help.html")


@portal.route("/login", methods=["GET", "POST"])
def login():
    # Password, second factor, lockout and sessions: web/signin.py.
    return sign_in_page()


@portal.post("/logout")
def logout():
    return sign_out()


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
    return show_message(message_id)


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
