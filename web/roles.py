"""Role checks for the portal and the API, all asked of ``vault.roles``.

Views of this package's own blueprints name their capability with
``@requires``; the older views (the reader's search and message pages, the
API) are listed in ``GUARDED_ENDPOINTS`` and checked before they run, so
that an administrator, whose role carries no mail content, never reaches
them.  Every refusal is audited.  A refusal that would reveal a message
exists answers 404, any other 403.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Flask, g, redirect, request, url_for
from flask_login import current_user, login_required
from werkzeug.exceptions import Forbidden, NotFound

from vault.roles import AUDIT_VIEW, MAIL_OWN, Principal, allows, load_principal
from web.api import token_user
from web.archive import archive

# Endpoint -> (capability, answer when refused).
GUARDED_ENDPOINTS: dict[str, tuple[str, type[Exception]]] = {
    "portal.search": (MAIL_OWN, Forbidden),
    "portal.message": (MAIL_OWN, NotFound),
    "portal.original": (MAIL_OWN, NotFound),
    "api.search": (MAIL_OWN, Forbidden),
    "api.raw": (MAIL_OWN, NotFound),
}
# Whole blueprints that only ever serve a reader's own mail: every view in
# them, present and future, is checked, so a new route cannot forget it.
GUARDED_BLUEPRINTS: dict[str, tuple[str, type[Exception]]] = {
    "reading": (MAIL_OWN, NotFound),
    "restore": (MAIL_OWN, NotFound),
}


def principal() -> Principal:
    """Return the signed-in (or token-authenticated) account as a Principal."""
    if "principal" not in g:
        user = getattr(g, "api_user", None) or current_user
        g.principal = load_principal(archive().control, user.address) or Principal(
            user.address, "none")
    found: Principal = g.principal
    return found


def refuse(capability: str, answer: type[Exception] = Forbidden,
           target: str = "") -> None:
    """Audit a refusal and raise the HTTP answer for it."""
    archive().control.audit(principal().address, "denied", target or request.path,
                            capability=capability, method=request.method)
    if answer is NotFound:
        raise NotFound("Not found.")
    raise Forbidden(f"Your role does not allow this ({capability}).")


def requires(capability: str, answer: type[Exception] = Forbidden) -> Callable[..., Any]:
    """Decorate a view: signed in, and holding ``capability``."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not allows(principal(), capability):
                refuse(capability, answer)
            return view(*args, **kwargs)

        return login_required(wrapper)

    return decorate


def install_guard(app: Flask) -> None:
    """Check the capability of every endpoint in GUARDED_ENDPOINTS."""

    @app.before_request
    def guard() -> Any:
        rule = (GUARDED_ENDPOINTS.get(request.endpoint or "")
                or GUARDED_BLUEPRINTS.get(request.blueprint or ""))
        if rule is None:
            return None
        if request.blueprint == "api":
            user = token_user()
            if user is None:
                return None  # the view answers 401
            g.api_user = user
        elif not current_user.is_authenticated:
            return None  # the view sends the reader to sign in
        capability, answer = rule
        if not allows(principal(), capability):
            if request.endpoint == "portal.search" and not request.args.get("q"):
                # The landing page after sign-in: send an administrator,
                # who reads no mail, to the audit trail instead.
                if allows(principal(), AUDIT_VIEW):
                    return redirect(url_for("cases.audit"))
            refuse(capability, answer)
        return None

    @app.context_processor
    def capabilities() -> dict[str, Any]:
        def can(capability: str) -> bool:
            return bool(current_user.is_authenticated and allows(principal(), capability))

        return {"can": can}
