"""Give the archive one clock, so retention and tests agree on "now"."""

from __future__ import annotations

import datetime as _dt


def now() -> _dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return _dt.datetime.now(_dt.timezone.utc)
