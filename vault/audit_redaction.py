"""What the audit viewer shows to whom: actions to everyone, content to readers.

Some audit events carry words a person typed or an archived message
contained: search queries, a hold's query, attachment file names.  They
are mail content as much as the message is, so a viewer who may not read
mail across mailboxes (``mail.read.any``; by default the admin) sees who
did what to which target, and that such a detail exists, but not its
value.  Auditors and compliance officers see everything.
"""

from __future__ import annotations

import json
from typing import Any

from vault.roles import MAIL_ANY, Principal, allows

# Detail fields whose value is text typed by a user or taken from mail.
CONTENT_FIELDS = frozenset({"query", "filename", "subject", "text"})
REDACTED = "[redacted]"


def may_see_content(viewer: Principal) -> bool:
    """Tell whether ``viewer`` sees audit details that quote mail content."""
    return allows(viewer, MAIL_ANY)


def redact(event: dict[str, Any], viewer: Principal) -> dict[str, Any]:
    """Return ``event`` (an audit row) as ``viewer`` may see it."""
    if may_see_content(viewer):
        return event
    try:
        detail = json.loads(event.get("detail") or "{}")
    except ValueError:
        return {**event, "detail": REDACTED}
    if not isinstance(detail, dict):
        return {**event, "detail": REDACTED}
    hidden = {name: (REDACTED if name in CONTENT_FIELDS and value not in ("", None)
                     else value) for name, value in detail.items()}
    return {**event, "detail": json.dumps(hidden, sort_keys=True)}
