"""The portal's restore pages: choose, confirm, follow the progress.

Search results post the chosen messages (or "all results of this search")
to ``/restore``, which shows what will happen and asks for the mailbox
password when no master user is configured; ``/restore/start`` logs in and
starts the job; ``/restore/<job>`` shows its progress, refreshing itself
with a Refresh header (no script) until the job ends.
"""

from __future__ import annotations

import re

from flask import (Blueprint, Flask, Response, current_app, flash, redirect,
                   render_template, request, url_for)
from flask_login import current_user, login_required
from werkzeug.exceptions import BadRequest, NotFound

from indexer import QueryError
from vault.clock import now
from vault.config import Settings
from web.archive import archive
from web.restore import Restorer, RestoreError, folder_name

restoring = Blueprint("restore", __name__)

_MESSAGE_ID = re.compile(r"[0-9a-f]{64}")
# A restore this short finishes before the first status page is shown.
QUICK_RESTORE_SECONDS = 3.0
REFRESH_SECONDS = 2
PREVIEW_COUNT = 5


def init_restore(app: Flask, settings: Settings) -> None:
    """Add restore to the portal built by ``create_app``."""
    app.extensions["strongroom.restore"] = Restorer(
        app.extensions["strongroom"], settings.restore, settings.home)
    app.register_blueprint(restoring)
    # A job left running by the previous process will never finish.
    app.extensions["strongroom.restore"].recover()

    @app.context_processor
    def restore_offered() -> dict[str, bool]:
        return {"restore_enabled": restorer().is_enabled}


def restorer() -> Restorer:
    """Return the running application's restorer."""
    return current_app.extensions["strongroom.restore"]


@restoring.before_request
def restore_configured() -> None:
    if not restorer().is_enabled:
        raise NotFound("Restore to mailbox is not set up on this archive.")


@restoring.post("/restore")
@login_required
def confirm():
    query = request.form.get("q", "")
    message_ids = chosen_messages(query)
    if not message_ids:
        flash("Choose at least one message to restore.")
        return redirect(url_for("portal.search", q=query))
    return _dialog(message_ids, query)


@restoring.post("/restore/start")
@login_required
def start():
    query = request.form.get("q", "")
    message_ids = chosen_messages(query)
    if not message_ids:
        flash("Choose at least one message to restore.")
        return redirect(url_for("portal.search", q=query))
    try:
        # The job outlives the request: hand it the user, not the proxy.
        job = restorer().start(current_user._get_current_object(), message_ids,
                               request.form.get("imap_password", ""))
    except RestoreError as err:
        return _dialog(message_ids, query, error=str(err), status=err.status)
    job.done.wait(QUICK_RESTORE_SECONDS)
    return redirect(url_for("restore.status", job_id=job.id), code=303)


@restoring.get("/restore/<job_id>")
@login_required
def status(job_id: str):
    job = restorer().job(job_id, current_user)
    if job is None:
        raise NotFound("No such restore.")
    page = render_template("restore_status.html", job=job)
    response = Response(page)
    if job.is_running:
        # The HTML "Refresh" header: the page reloads itself, script-free.
        response.headers["Refresh"] = str(REFRESH_SECONDS)
    return response


def chosen_messages(query: str) -> list[str]:
    """Return the ids the form chose; 404 if any is not the user's.

    "All results" re-runs the query with the user's mailboxes; ids sent
    one by one are checked against the catalogue, and refused as a whole
    (and audited) if any is not the user's.
    """
    limit = restorer().settings.max_messages
    if request.form.get("scope") == "all":
        try:
            total, message_ids = archive().catalogue.search_ids(
                query, owners=current_user.mailboxes, limit=limit)
        except QueryError as err:
            raise BadRequest(str(err)) from None
        if total > limit:
            raise BadRequest(f"This search found {total} messages; at most {limit} can "
                           "be restored at once. Narrow the search and try again.")
        return message_ids
    # The search page's selection form names its ticks "id".
    message_ids = list(dict.fromkeys(request.form.getlist("id") or request.form.getlist("message")))
    if len(message_ids) > limit:
        raise BadRequest(f"At most {limit} messages can be restored at once.")
    for message_id in message_ids:
        if not (_MESSAGE_ID.fullmatch(message_id) and archive().catalogue.is_visible(
                message_id, current_user.mailboxes)):
            archive().control.audit(current_user.address, "restore.refused",
                                    message_id[:64])
            raise NotFound("No such message.")
    return message_ids


def _dialog(message_ids: list[str], query: str, error: str = "", status: int = 200):
    settings = restorer().settings
    local = current_user.address.partition("@")[0]
    preview = [archive().catalogue.document(message_id) or {}
               for message_id in message_ids[:PREVIEW_COUNT]]
    page = render_template(
        "restore.html", message_ids=message_ids, query=query, error=error,
        preview=preview, folder=folder_name(settings.folder, now()),
        login=settings.login.format(address=current_user.address, local=local),
        host=settings.imap_host, uses_master=bool(settings.master_user),
    )
    return page, status
