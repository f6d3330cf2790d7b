"""Show the archive's times to people: a human form, the exact value kept.

The control database and the catalogue keep times as ISO 8601 text in UTC
(``2026-12-04T15:30:12.345678+00:00``).  Pages show them as
``4 Dec 2026, 15:30 UTC`` inside ``<time datetime="...">``, so that the
exact value stays in the page for a script, a screen reader's user or a
copy and paste.  Every time is shown in UTC, as the audit trail keeps it:
an archive's readers compare times across time zones.
"""

from __future__ import annotations

import datetime as dt

from markupsafe import Markup, escape


def parse_moment(value: object) -> dt.datetime | None:
    """Return ``value`` (a datetime or ISO text) as an aware UTC datetime, or None."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def human_time(moment: dt.datetime) -> str:
    """Return ``4 Dec 2026, 15:30 UTC`` for an aware UTC datetime."""
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


def time_element(value: object) -> Markup:
    """Render a stored time as ``<time>``; text that is no time shows as itself."""
    moment = parse_moment(value)
    if moment is None:
        return Markup("{}").format(escape(value or "-"))
    return Markup('<time datetime="{}">{}</time>').format(
        moment.isoformat(timespec="seconds").replace("+00:00", "Z"), human_time(moment))
