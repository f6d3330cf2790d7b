"""The signed-in user's own pages: account, password, TOTP, my activity.

Every page acts on ``current_user`` only; none takes an account from the
request, so no one can reach another account's settings or activity.
"""

from __future__ import annotations

import json

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, logout_user
from markupsafe import Markup

from web.archive import positive_int
from web.passwords import PasswordRefused
from web.sessions import (current_session_digest, end_session, end_user_sessions,
                          user_sessions)
from web.signin import (FAILURE_MESSAGE, complete_sign_in, fail_code, meet_obligation,
                        next_page, pending_user, refuse_throttled_client, services)
from web.totp import qr_svg

account_pages = Blueprint("account", __name__)

ACTIVITY_PER_PAGE = 50
# Events about an account that others cause (an operator unlocking it, the
# portal locking it): shown on that account's activity page.  Nothing else
# done by others is, so no investigation is revealed to its subject.
ACCOUNT_EVENTS = ("account.locked", "account.unlocked", "sessions.ended",
                  "totp.reset", "user.created", "password.changed")
ACTION_LABELS = {
    "login": "Signed in", "login.failure": "Failed sign-in", "logout": "Signed out",
    "search": "Searched", "view": "Opened a message", "download": "Downloaded a message",
    "restore": "Restored messages", "account.locked": "Account locked",
    "account.unlocked": "Account unlocked", "sessions.ended": "Signed out everywhere",
    "password.changed": "Changed password", "totp.enrolled": "Set up a second factor",
    "totp.reset": "Second factor removed", "user.created": "Account created",
}


@account_pages.route("/login/code", methods=["GET", "POST"])
def code():
    user = pending_user()
    if user is None:
        flash("Please sign in again.", "info")
        return redirect(url_for("portal.login"))
    if request.method != "POST":
        return render_template("login_code.html")
    throttled = refuse_throttled_client(user.address)
    if throttled is not None:
        return throttled
    account = services()
    if not account.lockout.is_locked(user.id) and account.factor.verify(
            user.id, request.form.get("code", "")):
        return complete_sign_in(user, second_factor=True)
    if fail_code(user):
        session.pop("pending", None)
        flash(FAILURE_MESSAGE, "error")
        return redirect(url_for("portal.login"))
    flash("That code is not right, or was already used. Wait for the next one.", "error")
    return render_template("login_code.html"), 401


@account_pages.get("/account")
@login_required
def overview():
    account = services()
    changed = account.passwords.changed_at(current_user.id)
    return render_template(
        "account.html", changed=changed, policy=account.passwords.policy,
        totp_enabled=account.factor.is_enabled(current_user.id),
        sessions=user_sessions(account.control, current_user.id),
        this_session=current_session_digest())


@account_pages.post("/account/sign-out-everywhere")
@login_required
def sign_out_everywhere():
    account = services()
    ended = end_user_sessions(account.control, current_user.id)
    account.control.audit(current_user.address, "sessions.ended", current_user.address,
                          sessions=ended)
    logout_user()
    end_session()
    return redirect(url_for("portal.login"))


@account_pages.route("/account/password", methods=["GET", "POST"])
@login_required
def password():
    account = services()
    policy = account.passwords.policy
    forced = "password" in (session.get("obligations") or [])
    if request.method != "POST":
        return render_template("password.html", policy=policy, forced=forced)
    form = request.form
    error = None
    if form.get("new_password", "") != form.get("confirm_password", ""):
        error = "The new password and its confirmation differ."
    elif account.lockout.verify_password(current_user.address,
                                         form.get("current_password", "")) is None:
        error = "Your current password is not right."
    else:
        try:
            account.passwords.change(current_user.id, current_user.address,
                                     form.get("new_password", ""))
        except PasswordRefused as err:
            error = str(err)
    if error:
        return render_template("password.html", policy=policy, forced=forced,
                               error=error), 400
    ended = end_user_sessions(account.control, current_user.id,
                              keep=current_session_digest())
    account.control.audit(current_user.address, "password.changed", current_user.address,
                          other_sessions_ended=ended)
    meet_obligation("password")
    flash("Your password is changed. Any other sessions were signed out.", "success")
    return redirect(next_page() if forced else url_for("account.overview"))


@account_pages.route("/account/totp", methods=["GET", "POST"])
@login_required
def totp():
    account = services()
    if account.factor.is_enabled(current_user.id):
        return render_template("totp.html", enabled=True)
    secret = account.factor.begin(current_user.id)
    if request.method == "POST":
        if account.factor.confirm(current_user.id, request.form.get("code", "")):
            account.control.audit(current_user.address, "totp.enrolled", current_user.address)
            forced = "totp" in (session.get("obligations") or [])
            meet_obligation("totp")
            flash("Your second factor is set up: sign-in will ask for a code.", "success")
            return redirect(next_page() if forced else url_for("account.overview"))
        flash("That code is not right. Check the time on your device and try the next one.", "error")
    uri = account.factor.uri(secret, current_user.address)
    required = current_user.role in account.require_totp_roles
    return render_template("totp.html", enabled=False, secret=secret, uri=uri,
                           grouped=" ".join(secret[i:i + 4] for i in range(0, len(secret), 4)),
                           qr=Markup(qr_svg(uri)), required=required)


@account_pages.get("/activity")
@login_required
def activity():
    page = positive_int(request.args.get("page", "1")) or 1
    events, more = own_events(current_user.address, page)
    return render_template("activity.html", events=events, page=page, more=more,
                           labels=ACTION_LABELS)


def own_events(address: str, page: int) -> tuple[list[dict[str, object]], bool]:
    """Return one page of an account's own audit events, newest first."""
    marks = ", ".join("?" for _ in ACCOUNT_EVENTS)
    with services().control.connect() as connection:
        rows = connection.execute(
            "SELECT at, actor, action, target, detail FROM audit"
            f" WHERE actor = ? OR (target = ? AND action IN ({marks}))"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            (address, address, *ACCOUNT_EVENTS, ACTIVITY_PER_PAGE + 1,
             (page - 1) * ACTIVITY_PER_PAGE)).fetchall()
    events = []
    for row in rows[:ACTIVITY_PER_PAGE]:
        event = dict(row)
        event["detail"] = _readable_detail(row["detail"])
        event["by_other"] = row["actor"] != address
        events.append(event)
    return events, len(rows) > ACTIVITY_PER_PAGE


def _readable_detail(detail: str) -> list[tuple[str, str]]:
    try:
        values = json.loads(detail)
    except ValueError:
        return []
    if not isinstance(values, dict):
        return []
    return [(str(key), str(value)) for key, value in values.items()
            if value is not False and value not in (None, [], "")]


@account_pages.app_template_filter("when")
def when(value: str) -> str:
    """Show an ISO timestamp as minutes in UTC."""
    import datetime as dt

    try:
        at = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return str(value)
    if at.tzinfo is not None:
        at = at.astimezone(dt.timezone.utc)
    return at.strftime("%Y-%m-%d %H:%M UTC")
