"""The JSON API for scripts: bearer tokens, the caller's own mail only."""

from __future__ import annotations

import functools

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest, Unauthorized

from indexer import QueryError
from web.archive import MAX_PAGE_NUMBER, archive, positive_int

api = Blueprint("api", __name__)

MAX_PER_PAGE = 200


def token_required(view):
    """Authenticate the request by its ``Authorization: Bearer`` token."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        # web.roles' guard has already resolved the token of a guarded
        # endpoint in this request; looking it up again costs two queries.
        user = g.get("api_user")
        if user is None:
            user = token_user()
        if user is None:
            raise Unauthorized("A valid bearer token is required.")
        g.api_user = user
        return view(*args, **kwargs)

    return wrapper


def token_user():
    """Return the account of the request's ``Authorization: Bearer`` token, if valid."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return archive().accounts.user_for_token(token.strip())
    return None


@api.get("/search")
@token_required
def search():
    query = request.args.get("q", "")
    page = _positive_int("page", 1)
    per_page = min(_positive_int("per_page", 20), MAX_PER_PAGE)
    try:
        results = archive().catalogue.search(
            query, owners=g.api_user.mailboxes, page=page, per_page=per_page,
            zone=request.args.get("tz", "UTC"), sort=request.args.get("sort", "date"),
        )
    except QueryError as err:
        raise BadRequest(str(err)) from None
    archive().control.audit(g.api_user.address, "search", query=query,
                            via="api", total=results.total)
    return jsonify(
        total=results.total,
        page=results.page,
        per_page=results.per_page,
        sort=results.sort,
        facets={
            "years": [{"year": year, "count": count} for year, count in results.facets.years],
            "senders": [{"sender": sender, "count": count}
                        for sender, count in results.facets.senders],
        },
        results=[
            {
                "id": hit.id,
                "subject": hit.subject,
                "from": hit.sender,
                "date": hit.date.isoformat() + "Z" if hit.date else None,
            }
            for hit in results.hits
        ],
    )


@api.get("/messages/<message_id>/raw")
@token_required
def raw(message_id: str):
    data = archive().open_message(g.api_user, message_id)
    archive().control.audit(g.api_user.address, "download", message_id, via="api")
    return Response(
        data,
        mimetype="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="{message_id}.eml"'},
    )


def _positive_int(name: str, default: int) -> int:
    value = request.args.get(name, "")
    if not value:
        return default
    number = positive_int(value)
    if number is None:
        raise BadRequest(f"{name} must be a whole number from 1 to {MAX_PAGE_NUMBER}")
    return number
