"""Sign-in and sign-out: password, optional code, then what must come first.

A sign-in runs in up to three steps.  The password (``Lockout`` verifies
it and counts failures); if the account has a second factor, a code on
``/login/code`` within ``PENDING_LIMIT``; then a new server-side session
begins.  If the password has passed its age, or the account's role must
use a second factor it has not set up, the session carries *obligations*:
until they are met every page redirects to the page that meets them
(choose a password, set up TOTP), so they cannot be skipped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from flask import (Flask, current_app, flash, redirect, render_template, request,
                   session, url_for)
from flask_login import current_user, login_user, logout_user

from vault import clock
from vault.config import Settings
from vault.control import ControlDB
from web.accounts import Accounts, User
from web.lockout import ClientThrottle, Lockout, audited_address
from web.next_page import safe_next
from web.passwords import PasswordBook, PasswordPolicy
from web.sessions import ServerSessions, end_session, start_session
from web.totp import SecondFactor

# How long a correct password waits for its second-factor code.
PENDING_LIMIT = dt.timedelta(minutes=5)
FAILURE_MESSAGE = "Sign-in failed: the address or password is wrong."
THROTTLED_MESSAGE = ("Too many failed sign-ins from your network. Try again in {minutes} "
                     "minute(s); an administrator can help sooner.")
OBLIGATION_PAGES = {"password": "account.password", "totp": "account.totp"}
# Pages a session with obligations may still reach, besides the page of
# its first obligation.
OPEN_ENDPOINTS = frozenset({"static", "portal.logout"})


@dataclasses.dataclass(frozen=True)
class AccountServices:
    """Everything the sign-in and account pages work with."""

    control: ControlDB
    accounts: Accounts
    passwords: PasswordBook
    lockout: Lockout
    factor: SecondFactor
    sessions: ServerSessions
    require_totp_roles: frozenset[str]
    throttle: ClientThrottle


def services() -> AccountServices:
    """Return the running application's account services."""
    return current_app.extensions["strongroom.accounts"]


def install_accounts(app: Flask, settings: Settings, control: ControlDB,
                     accounts: Accounts) -> None:
    """Give ``app`` server-side sessions, the sign-in steps and account pages."""
    from web.account_pages import account_pages

    options = settings.accounts
    policy = PasswordPolicy.from_settings(options)
    accounts.policy = policy
    sessions = ServerSessions(
        control, idle=dt.timedelta(minutes=options.session_idle_minutes),
        absolute=dt.timedelta(hours=options.session_absolute_hours),
        peer_key=app.config["SECRET_KEY"])
    app.session_interface = sessions
    app.extensions["strongroom.accounts"] = AccountServices(
        control, accounts, PasswordBook(control, policy),
        Lockout(control, options.lockout_attempts, options.lockout_minutes),
        SecondFactor(control, app.config["SECRET_KEY"], options.totp_issuer),
        sessions, frozenset(options.require_totp_roles),
        ClientThrottle(options.client_failures, options.client_window_minutes))
    app.register_blueprint(account_pages)
    app.before_request(_enforce_obligations)
    sessions.prune()


def sign_in_page():
    """Show the sign-in form, or check a posted password."""
    if current_user.is_authenticated:
        return redirect(requested_next() or url_for("portal.search"))
    if request.method != "POST":
        return render_template("login.html", address="")
    address = request.form.get("address", "").strip()
    throttled = refuse_throttled_client(address)
    if throttled is not None:
        return throttled
    user_id = services().lockout.verify_password(address, request.form.get("password", ""))
    user = services().accounts.get(user_id=user_id) if user_id is not None else None
    if user is None:
        services().throttle.failed(request.remote_addr)
        # One message for every failure, so it never tells whether the
        # account exists or is locked.
        flash(FAILURE_MESSAGE)
        return render_template("login.html", address=address), 401
    if services().factor.is_enabled(user.id):
        wanted = requested_next()
        session.clear()
        start_session()
        session["pending"] = {"user_id": user.id, "since": clock.now().isoformat(),
                              "next": wanted}
        return redirect(url_for("account.code"))
    return complete_sign_in(user, second_factor=False)


def refuse_throttled_client(address: str):
    """Return a 429 answer if this client has failed too often of late, else None.

    The attempt is audited, and neither tried nor counted against the
    account: the point is that one client cannot lock every account.
    """
    wait = services().throttle.retry_after(request.remote_addr)
    if not wait:
        return None
    services().control.audit(audited_address(address) or "-", "login.throttled",
                             peer=request.remote_addr, retry_after=wait)
    flash(THROTTLED_MESSAGE.format(minutes=-(-wait // 60)))
    answer = current_app.make_response((render_template("login.html", address=address), 429))
    answer.headers["Retry-After"] = str(wait)
    return answer


def pending_user() -> User | None:
    """Return the user whose password was right and whose code is awaited."""
    pending = session.get("pending")
    if not isinstance(pending, dict):
        return None
    since = dt.datetime.fromisoformat(pending["since"])
    if clock.now() - since > PENDING_LIMIT:
        session.pop("pending", None)
        return None
    return services().accounts.get(user_id=pending["user_id"])


def complete_sign_in(user: User, *, second_factor: bool):
    """Start the signed-in session and send the user to their first page."""
    account = services()
    account.lockout.succeed(user.id)
    wanted = requested_next()
    session.clear()
    start_session()
    login_user(user)
    obligations = []
    if account.passwords.is_expired(user.id):
        obligations.append("password")
    if user.role in account.require_totp_roles and not account.factor.is_enabled(user.id):
        obligations.append("totp")
    if obligations:
        session["obligations"] = obligations
    if wanted:
        session["next"] = wanted
    account.control.audit(user.address, "login", peer=request.remote_addr,
                          second_factor=second_factor, obligations=obligations)
    return redirect(next_page())


def meet_obligation(name: str) -> None:
    """Mark one obligation of the signed-in session as met."""
    remaining = [item for item in session.get("obligations", []) if item != name]
    if remaining:
        session["obligations"] = remaining
    else:
        session.pop("obligations", None)


def next_page() -> str:
    """Return where the signed-in user goes next: an obligation or search."""
    obligations = session.get("obligations") or []
    if obligations:
        return url_for(OBLIGATION_PAGES[obligations[0]])
    return safe_next(session.pop("next", None)) or url_for("portal.search")


def requested_next() -> str | None:
    """Return the page the reader was going to, if it is on this site.

    The sign-in form posts back to its own URL, so ``next`` is in the
    query string; after a password, it waits in the pending session for
    the second factor.
    """
    pending = session.get("pending")
    wanted = request.args.get("next") or request.form.get("next")
    if not wanted and isinstance(pending, dict):
        wanted = pending.get("next")
    return safe_next(wanted)


def sign_out():
    """End the request's session for good and go back to sign-in."""
    if current_user.is_authenticated:
        services().control.audit(current_user.address, "logout")
    logout_user()
    end_session()
    return redirect(url_for("portal.login"))


def fail_code(user: User) -> bool:
    """Count a wrong code; return True if the account is now locked."""
    account = services()
    account.throttle.failed(request.remote_addr)
    account.lockout.fail(audited_address(user.address), user.id, "code")
    return account.lockout.is_locked(user.id)


def _enforce_obligations():
    obligations = session.get("obligations")
    if not obligations or request.endpoint in OPEN_ENDPOINTS:
        return None
    if request.endpoint == OBLIGATION_PAGES.get(obligations[0]):
        return None
    if (request.endpoint or "").startswith("api."):
        return None
    if not current_user.is_authenticated:
        return None
    return redirect(next_page())
