"""Server-side portal sessions: the cookie carries a random id, nothing else.

Each session is a row in the control database's ``sessions`` table, keyed
by the SHA-256 of its id so that a copy of the database does not hand out
live cookies.  Signing out deletes the row, so a cookie captured earlier
and replayed afterwards opens nothing.  A session ends after
``accounts.session_idle_minutes`` without a request and, whatever the
activity, ``accounts.session_absolute_hours`` after it began; signing in
always starts a new session (no fixation).

A row's ``data`` holds what Flask and its extensions keep in ``session``
(flask-login's user id, the CSRF token, flashed messages), serialised with
Flask's tagged JSON.  ``user_id`` mirrors flask-login's ``_user_id`` so
that every session of one account can be ended at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

from flask import Flask, Request, Response, request, session
from flask.sessions import SessionInterface, SessionMixin, session_json_serializer
from werkzeug.datastructures import CallbackDict

from vault import clock
from vault.control import ControlDB

# How stale ``last_seen_at`` may get before a request refreshes it: a
# write per request would serialise every page view on SQLite's lock.
# Never more than a tenth of the idle timeout, so expiry stays accurate.
LAST_SEEN_GRANULARITY = dt.timedelta(seconds=60)
# How often a new session also sweeps away the expired ones.
PRUNE_INTERVAL = dt.timedelta(minutes=15)
MAX_USER_AGENT = 200


class ServerSession(CallbackDict, SessionMixin):
    """The ``session`` of one request, backed by a row of ``sessions``."""

    def __init__(self, initial: dict[str, Any] | None = None, *, sid: str | None = None,
                 last_seen: dt.datetime | None = None, expired: bool = False) -> None:
        def on_update(data: CallbackDict) -> None:
            data.modified = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.last_seen = last_seen
        self.expired = expired
        self.modified = False
        self.rotate = False
        self.ended = False

    @property
    def new(self) -> bool:  # type: ignore[override]
        return self.sid is None


class ServerSessions(SessionInterface):
    """Keep sessions in the control database (Flask's SessionInterface)."""

    def __init__(self, control: ControlDB, *, idle: dt.timedelta,
                 absolute: dt.timedelta, peer_key: bytes) -> None:
        self.control = control
        self.idle = idle
        self.absolute = absolute
        self.peer_key = peer_key
        self.granularity = min(LAST_SEEN_GRANULARITY, idle / 10)
        self.pruned_at: dt.datetime | None = None

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(self.get_cookie_name(app), "")
        if not sid or len(sid) > 100:
            return ServerSession()
        with self.control.connect() as connection:
            row = connection.execute(
                "SELECT data, created_at, last_seen_at FROM sessions WHERE id_sha256 = ?",
                (_digest(sid),)).fetchone()
        if row is None:
            return ServerSession(expired=True)
        at = clock.now()
        created = dt.datetime.fromisoformat(row["created_at"])
        last_seen = dt.datetime.fromisoformat(row["last_seen_at"])
        if at - last_seen > self.idle or at - created > self.absolute:
            self.delete(sid)
            return ServerSession(expired=True)
        data = session_json_serializer.loads(row["data"])
        return ServerSession(data, sid=sid, last_seen=last_seen)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        if session.ended or (session.sid and not session and session.modified):
            if session.sid:
                self.delete(session.sid)
            self._expire_cookie(app, response)
            return
        if session.rotate and session.sid:
            self.delete(session.sid)
            session.sid = None
        if session.sid is None:
            if session:
                self._insert(app, session, response)
            elif session.expired:
                self._expire_cookie(app, response)
            return
        if session.modified:
            self._update(session, with_data=True)
        elif clock.now() - (session.last_seen or clock.now()) >= self.granularity:
            self._update(session, with_data=False)

    def _insert(self, app: Flask, session: ServerSession, response: Response) -> None:
        session.sid = secrets.token_urlsafe(32)
        at = clock.now().isoformat()
        peer = hmac.new(self.peer_key, (request.remote_addr or "").encode(),
                        hashlib.sha256).hexdigest()
        with self.control.connect() as connection:
            connection.execute(
                "INSERT INTO sessions (id_sha256, user_id, data, created_at, last_seen_at,"
                " user_agent, peer_hmac) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_digest(session.sid), _user_id(session), session_json_serializer.dumps(
                    dict(session)), at, at,
                 request.headers.get("User-Agent", "")[:MAX_USER_AGENT], peer))
        response.set_cookie(
            self.get_cookie_name(app), session.sid,
            httponly=self.get_cookie_httponly(app), secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app), path=self.get_cookie_path(app),
            domain=self.get_cookie_domain(app))
        response.vary.add("Cookie")
        if self.pruned_at is None or clock.now() - self.pruned_at > PRUNE_INTERVAL:
            self.prune()

    def _update(self, session: ServerSession, *, with_data: bool) -> None:
        assert session.sid is not None
        at = clock.now().isoformat()
        with self.control.connect() as connection:
            if with_data:
                connection.execute(
                    "UPDATE sessions SET data = ?, user_id = ?, last_seen_at = ?"
                    " WHERE id_sha256 = ?",
                    (session_json_serializer.dumps(dict(session)), _user_id(session), at,
                     _digest(session.sid)))
            else:
                connection.execute(
                    "UPDATE sessions SET last_seen_at = ? WHERE id_sha256 = ?",
                    (at, _digest(session.sid)))

    def _expire_cookie(self, app: Flask, response: Response) -> None:
        # Expire it with the attributes it was issued with: a browser keeps
        # a cookie whose deletion names another path, domain or SameSite.
        response.delete_cookie(
            self.get_cookie_name(app), path=self.get_cookie_path(app),
            domain=self.get_cookie_domain(app), secure=self.get_cookie_secure(app),
            httponly=self.get_cookie_httponly(app), samesite=self.get_cookie_samesite(app))
        response.vary.add("Cookie")

    def delete(self, sid: str) -> None:
        """End one session by its cookie value."""
        with self.control.connect() as connection:
            connection.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_digest(sid),))

    def prune(self) -> int:
        """Delete every session past its idle or absolute limit; return how many."""
        at = self.pruned_at = clock.now()
        with self.control.connect() as connection:
            cursor = connection.execute(
                "DELETE FROM sessions WHERE last_seen_at < ? OR created_at < ?",
                ((at - self.idle).isoformat(), (at - self.absolute).isoformat()))
        return cursor.rowcount


def start_session() -> None:
    """Give the request's session a new id when it is saved (at sign-in)."""
    if isinstance(session, ServerSession):
        session.rotate = True
        session.modified = True


def end_session() -> None:
    """Delete the request's session and expire its cookie (at sign-out)."""
    session.clear()
    if isinstance(session, ServerSession):
        session.ended = True


def current_session_digest() -> str | None:
    """Return the stored key of the request's session, if it has one."""
    sid = getattr(session, "sid", None)
    return _digest(sid) if sid else None


def end_user_sessions(control: ControlDB, user_id: int, *, keep: str | None = None) -> int:
    """End every session of one account, except the one stored as ``keep``."""
    with control.connect() as connection:
        cursor = connection.execute(
            "DELETE FROM sessions WHERE user_id = ? AND id_sha256 != ?",
            (user_id, keep or ""))
    return cursor.rowcount


def user_sessions(control: ControlDB, user_id: int) -> list[dict[str, Any]]:
    """Return an account's sessions, most recently used first."""
    with control.connect() as connection:
        rows = connection.execute(
            "SELECT id_sha256, created_at, last_seen_at, user_agent FROM sessions"
            " WHERE user_id = ? ORDER BY last_seen_at DESC", (user_id,)).fetchall()
    return [dict(row) for row in rows]


def _user_id(session: ServerSession) -> int | None:
    value = session.get("_user_id")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _digest(sid: str) -> str:
    # Session ids carry 256 random bits: a plain hash is enough to keep a
    # stolen database from yielding live cookies.
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()
