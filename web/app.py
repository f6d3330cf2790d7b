"""Build the Flask application: the portal pages and the JSON API."""

from __future__ import annotations

import errno
import logging
import secrets
import sqlite3
from pathlib import Path

from flask import Flask, jsonify, render_template, request
from flask_login import LoginManager
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from indexer.catalogue import Catalogue, open_catalogue, valid_text
from vault.config import Settings
from vault.control import ControlDB
from vault.ingest import Vault, open_vault
from web.accounts import Accounts
from web.archive import Archive

log = logging.getLogger(__name__)

# The portal serves no script and loads nothing from elsewhere; archived
# content can therefore never run or phone home from these pages.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def create_app(settings: Settings, *, vault: Vault | None = None,
               catalogue: Catalogue | None = None) -> Flask:
    """Return the portal for the archive that ``settings`` describe."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=read_secret(settings.path(settings.portal.secret_key_file)),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.portal.secure_cookies,
        SESSION_COOKIE_NAME="strongroom_session",
        PERMANENT_SESSION_LIFETIME=8 * 3600,
        MAX_CONTENT_LENGTH=1024 * 1024,
        WTF_CSRF_TIME_LIMIT=None,
    )
    if settings.portal.trusted_proxies:
        # Behind a TLS proxy every request comes from the proxy; the client
        # is the address it adds to X-Forwarded-For (the last N hops are
        # trusted).  Sign-in throttling and the audit trail key on it.
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.portal.trusted_proxies)
    # A value shown on a page may hold lone surrogates (bytes that were not
    # UTF-8 in an older receipt's envelope); the page could not be encoded
    # and answered 500.  They show as U+FFFD instead, Markup kept as such.
    app.jinja_env.finalize = _displayable
    control = ControlDB(settings.path(settings.control.database))
    vault = vault or open_vault(settings)
    catalogue = catalogue or open_catalogue(settings)
    accounts = Accounts(control, vault.rules)
    app.extensions["strongroom"] = Archive(vault, catalogue, control, accounts)

    login_manager = LoginManager(app)
    login_manager.login_view = "portal.login"
    login_manager.login_message = None
    login_manager.session_protection = "strong"

    @login_manager.user_loader
    def load_user(user_id: str):
        return accounts.get(user_id=int(user_id)) if user_id.isdigit() else None

    from web.api import api
    from web.portal import portal

    csrf = CSRFProtect(app)
    # The API authenticates with bearer tokens only, never with the session
    # cookie, so a cross-site request cannot ride on a signed-in browser.
    csrf.exempt(api)
    app.register_blueprint(portal)
    app.register_blueprint(api, url_prefix="/api/v1")
    from web.signin import install_accounts

    install_accounts(app, settings, control, accounts)
    from web.restore_pages import init_restore

    init_restore(app, settings)
    from web.reading import reading

    app.register_blueprint(reading, downloads=settings.downloads)
    from web.cases import register as register_ediscovery
    from web.roles import install_guard

    install_guard(app)
    register_ediscovery(app, settings)
    from web.admin import register as register_admin

    register_admin(app)
    _register_errors(app)
    app.after_request(_security_headers)
    return app


def read_secret(path: Path) -> bytes:
    """Read the portal's session-signing key."""
    return Path(path).read_bytes()


def create_secret(path: Path) -> None:
    """Write a new random session-signing key, readable by its owner only."""
    import os

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secrets.token_bytes(32))


def _security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # setdefault: the message's own HTML frame alone allows SAMEORIGIN.
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


DISK_FULL_RETRY_SECONDS = 300


def _is_disk_full(error: BaseException | None) -> bool:
    """Tell whether ``error`` (or what caused it) is a full disk or quota."""
    for _ in range(10):  # a chain of causes, never followed round a loop
        if error is None:
            return False
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _register_errors(app: Flask) -> None:
    def wants_json() -> bool:
        return request.path.startswith("/api/")

    @app.errorhandler(CSRFError)
    def csrf_refused(error: CSRFError):
        message = "The form had expired or was not sent from this site. Please try again."
        return render_template("error.html", code=400, message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code = error.code or 500
        message = error.description or error.name
        if wants_json():
            return jsonify(error=error.name.lower().replace(" ", "_"), message=message), code
        return render_template("error.html", code=code, message=message), code

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        if _is_disk_full(error):
            # Nothing the reader can fix, and it passes once space is made:
            # 503 with a retry, and one line in the log, not a traceback.
            log.error("%s %s: the disk is full: %s", request.method, request.path, error,
                      extra={"event": "portal.disk_full"})
            message = ("The archive's disk is full, so this could not be done. "
                       "Please try again later; the administrator has been told.")
            headers = {"Retry-After": str(DISK_FULL_RETRY_SECONDS)}
            if wants_json():
                return jsonify(error="disk_full", message=message), 503, headers
            return render_template("error.html", code=503, message=message), 503, headers
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "Something went wrong on our side; it has been logged."
        if wants_json():
            return jsonify(error="internal_error", message=message), 500
        return render_template("error.html", code=500, message=message), 500


def _displayable(value: object) -> object:
    if isinstance(value, str) and not value.isascii():
        text = valid_text(value)
        if text is not value:
            return Markup(text) if isinstance(value, Markup) else text
    return value
