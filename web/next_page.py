"""Where to go after signing in: a ``next=`` path, if it stays on this site.

flask-login sends a signed-out reader to ``/login?next=/messages/...``;
after signing in they should land where they were going.  A ``next`` that
could leave the site would make the sign-in page an open redirect (a
phishing link that passes through our real sign-in), so only a relative
path of this site is honoured: it starts with one ``/``, names no scheme
and no host, and holds no backslash (browsers read ``/\\host`` as
``//host``), no control character and no whitespace (browsers strip tabs
and line breaks from URLs, WHATWG URL standard, "basic URL parser").
Anything else is ignored, not refused: the reader still signs in.
"""

from __future__ import annotations

import unicodedata
import urllib.parse

MAX_NEXT_CHARS = 2000


def safe_next(value: str | None) -> str | None:
    """Return ``value`` if it is a same-site relative path, else None."""
    if not value or len(value) > MAX_NEXT_CHARS:
        return None
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if any(unicodedata.category(c)[0] in "CZ" for c in value):
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    # Percent-decoding must not reveal a host either ("/%2F%2Fhost").
    decoded = urllib.parse.unquote(parts.path)
    if decoded.startswith("//") or "\\" in decoded:
        return None
    return value
