"""The hostile HTML corpus, for the portal's sanitiser and browser tests.

Each fixture in ``fixtures/hostile`` is a message addressed to
bob@example.com whose HTML tries one family of attacks (scripts, event
handlers, ``javascript:`` links, SVG, CSS, ``<meta refresh>``, ``<base>``,
remote loads, forms, frames and plugins).  Every remote reference in them
points at ``http://remote.test`` (or its https and protocol-relative
forms); a browser test passes its own loopback origin to
:func:`hostile_messages` and then asserts that origin saw no request.

Where the portal shows them: ``/messages/<id>`` embeds
``<iframe sandbox src="/messages/<id>/body.html">``; ``?remote=1`` on the
page (the "Show remote content" link) reloads it with remote images
allowed, and then only the ``<img src>`` of h06 and h09 may reach the
origin.  No fixture may ever open a dialog, navigate the top page, submit
a form or load a frame, script, style sheet or plugin.
"""

from __future__ import annotations

from pathlib import Path

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
REMOTE_HOST = "remote.test"
# The word each fixture carries in its body and subject, to find it.
KEYWORDS = {
    "h01-script.eml": "HOSTILE-SCRIPT",
    "h02-javascript-links.eml": "HOSTILE-LINKS",
    "h03-svg.eml": "HOSTILE-SVG",
    "h04-css.eml": "HOSTILE-CSS",
    "h05-meta-base.eml": "HOSTILE-META",
    "h06-remote-images.eml": "HOSTILE-REMOTE",
    "h07-forms.eml": "HOSTILE-FORMS",
    "h08-frames-objects.eml": "HOSTILE-FRAMES",
    "h09-cid-inline.eml": "HOSTILE-CID",
    "h10-encoded.eml": "HOSTILE-ENCODED",
}


def hostile_fixtures() -> list[Path]:
    """Return the path of every hostile fixture, in name order."""
    return sorted(HOSTILE.glob("*.eml"))


def hostile_messages(remote_host: str = REMOTE_HOST) -> list[tuple[str, bytes]]:
    """Return (fixture name, message bytes) with remote loads aimed at ``remote_host``.

    ``remote_host`` is a host[:port] such as ``127.0.0.1:8765``: a browser
    test serves it and counts the requests it gets, which must be none
    unless the reader chose "show remote content".
    """
    return [(path.name, path.read_bytes().replace(REMOTE_HOST.encode(),
                                                  remote_host.encode()))
            for path in hostile_fixtures()]
