"""The administrator's pages: accounts and the archive's coverage.

``/admin/accounts`` lists every account and offers the operator's
remedies (unlock, sign out everywhere, reset the second factor) through
the functions the ``strongroom user`` commands use, and creates accounts
under the password policy.  ``/admin/coverage`` shows what ``strongroom
status`` prints: the catalogue against the vault per UTC day, and what
each journal source sent.

Plain forms, no script; every form carries its CSRF token, every view
names its capability (``web.roles.requires``) and answers 404 to anyone
without it, and every page view and action is audited with the
administrator as actor.  Nothing here reads mail: the pages name account
addresses and journal sources, never a subject or a correspondent.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, NotFound

from vault import clock
from vault.roles import ACCOUNTS_MANAGE, ROLES, STATUS_VIEW
from web import account_remedies
from web.accounts import AccountError, User
from web.archive import archive
from web.roles import principal, requires
from web.roster import list_accounts
from web.signin import services

admin_pages = Blueprint("admin", __name__, url_prefix="/admin")

# Days shown on the coverage page besides those with a gap or a partial.
RECENT_DAYS = 31
MAX_ALIASES = 20


def register(app: Flask) -> None:
    """Add the admin pages to the portal."""
    app.register_blueprint(admin_pages)


@admin_pages.get("/")
@requires(ACCOUNTS_MANAGE, NotFound)
def index() -> Any:
    return redirect(url_for("admin.accounts"))


@admin_pages.get("/accounts")
@requires(ACCOUNTS_MANAGE, NotFound)
def accounts() -> Any:
    rows = list_accounts(archive().control, services().lockout.minutes)
    archive().control.audit(principal().address, "admin.accounts.viewed",
                            accounts=len(rows))
    return render_template("admin_accounts.html", accounts=rows, roles=ROLES,
                           now=clock.now(), policy=archive().accounts.policy)


@admin_pages.post("/accounts/<int:user_id>/unlock")
@requires(ACCOUNTS_MANAGE, NotFound)
def unlock(user_id: int) -> Any:
    user = _account(user_id)
    if account_remedies.unlock(archive().control, user, principal().address):
        flash(f"Unlocked {user.address}.")
    else:
        flash(f"{user.address} was not locked.")
    return _back()


@admin_pages.post("/accounts/<int:user_id>/sign-out")
@requires(ACCOUNTS_MANAGE, NotFound)
def sign_out(user_id: int) -> Any:
    user = _account(user_id)
    ended = account_remedies.sign_out_everywhere(archive().control, user,
                                                 principal().address)
    flash(f"Ended {ended} session(s) of {user.address}.")
    return _back()


@admin_pages.post("/accounts/<int:user_id>/totp-reset")
@requires(ACCOUNTS_MANAGE, NotFound)
def totp_reset(user_id: int) -> Any:
    user = _account(user_id)
    if account_remedies.reset_totp(archive().control, user, principal().address):
        flash(f"Removed the second factor of {user.address}.")
    else:
        flash(f"{user.address} had no second factor.")
    return _back()


@admin_pages.post("/accounts")
@requires(ACCOUNTS_MANAGE, NotFound)
def create() -> Any:
    """Create an account; the password policy decides the password."""
    address = request.form.get("address", "").strip()
    role = request.form.get("role", "user")
    password = request.form.get("password", "")
    aliases = tuple(request.form.get("aliases", "").replace(",", " ").split())
    if not address or role not in ROLES or len(aliases) > MAX_ALIASES:
        raise BadRequest("Give an address, a known role and at most "
                         f"{MAX_ALIASES} aliases.")
    if password != request.form.get("password_again", ""):
        flash("The two passwords differ; the account was not created.")
        return _back()
    try:
        user = archive().accounts.add(address, password, role=role, aliases=aliases)
    except AccountError as err:
        flash(f"The account was not created: {err}")
        return _back()
    archive().control.audit(principal().address, "user.created", user.address,
                            role=user.role, mailboxes=sorted(user.mailboxes))
    flash(f"Created {user.role} {user.address}.")
    return _back()


@admin_pages.get("/coverage")
@requires(STATUS_VIEW, NotFound)
def coverage() -> Any:
    """Show the catalogue's coverage and each journal source's traffic."""
    from vault.status import collect

    report = _reconciler().coverage(archive().catalogue)
    sources = collect(archive().vault, archive().control)
    recent = {day.day for day in report.days[-RECENT_DAYS:]}
    days = [day for day in reversed(report.days)
            if day.gap or day.partial or day.day in recent]
    archive().control.audit(principal().address, "admin.coverage.viewed",
                            gap=report.stored - report.indexed)
    return render_template("admin_coverage.html", coverage=report, days=days,
                           sources=sources, now=clock.now(), recent_days=RECENT_DAYS)


def _reconciler():
    # Receipts never change: one Reconciler per portal reads each once.
    from indexer.reconcile import Reconciler

    found = current_app.extensions.get("strongroom.reconciler")
    if found is None:
        found = current_app.extensions["strongroom.reconciler"] = Reconciler(
            archive().vault)
    return found


def _account(user_id: int) -> User:
    user = archive().accounts.get(user_id=user_id)
    if user is None:
        raise NotFound("No such account.")
    return user


def _back() -> Any:
    return redirect(url_for("admin.accounts"), code=303)
