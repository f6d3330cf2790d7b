"""A small archive for eDiscovery tests: people in every role, and mail.

Messages are built here rather than read from files so that each test
knows exactly which custodian holds which message.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from pathlib import Path

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests import homes
from vault.config import load
from vault.control import ControlDB
from vault.ingest import open_vault
from vault.ownership import Envelope
from vault.roles import load_principal
from web.app import create_app

PASSWORD = "correct horse battery"
PEOPLE = {
    "comp@example.com": "compliance",
    "comp2@example.com": "compliance",
    "aud@example.com": "auditor",
    "bob@example.com": "user",
    "carol@example.com": "user",
    "dave@example.com": "user",
}


def message(sender: str, to: str, subject: str, body: str,
            attachment: tuple[str, bytes] | None = None) -> bytes:
    """Return the bytes of a small message."""
    built = EmailMessage()
    built["From"] = sender
    built["To"] = to
    built["Subject"] = subject
    built["Date"] = "Tue, 03 Mar 2026 10:00:00 +0000"
    built["Message-ID"] = f"<{hashlib.sha1(subject.encode()).hexdigest()[:16]}@example.com>"
    built.set_content(body)
    if attachment:
        built.add_attachment(attachment[1], maintype="application",
                             subtype="octet-stream", filename=attachment[0])
    return built.as_bytes()


# (sender, recipient, subject, body): bob and carol both have merger mail;
# dave's merger mail is outside a case scoped to bob and carol.
MAIL = [
    ("bob@example.com", "carol@example.com", "Merger timeline", "merger kestrel plans"),
    ("carol@example.com", "bob@example.com", "Re: Merger timeline", "kestrel merger numbers"),
    ("x@elsewhere.net", "bob@example.com", "Lunch", "sandwiches"),
    ("x@elsewhere.net", "dave@example.com", "Merger gossip", "kestrel merger rumours"),
    ("x@elsewhere.net", "carol@example.com", "From line test",
     "From the start\n>From quoted\nmerger kestrel"),
]


def make_home(tmp_path: Path, monkeypatch, config: str = "") -> Path:
    """Create a home with one account per role and index MAIL into it."""
    home = homes.make_home(tmp_path, PEOPLE, config, password=PASSWORD)
    deliver(home, MAIL)
    return home


def portal_app(home: Path):
    """Return the portal on ``home`` in Flask's test mode."""
    settings = load(home)
    app = create_app(settings, vault=open_vault(settings),
                     catalogue=Catalogue(settings.path(settings.catalogue.path)))
    app.config["TESTING"] = True
    return app


def deliver(home: Path, mail: list[tuple[str, str, str, str]]) -> None:
    """Archive and index mail, as the receiver and follower would."""
    settings = load(home)
    vault = open_vault(settings)
    for sender, recipient, subject, body in mail:
        vault.archive(message(sender, recipient, subject, body),
                      Envelope(sender, (recipient,)))
    catalogue_path = settings.path(settings.catalogue.path)
    Follower(vault, Catalogue(catalogue_path)).catch_up()


def person(home: Path, address: str):
    """Return the Principal of an account of the home."""
    settings = load(home)
    found = load_principal(ControlDB(settings.path(settings.control.database)), address)
    assert found is not None
    return found


def audit_actions(home: Path, actor: str | None = None) -> list[str]:
    """Return the audit actions of the home (optionally of one actor), oldest first."""
    settings = load(home)
    events = ControlDB(settings.path(settings.control.database)).audit_events(
        actor=actor, limit=10_000)
    return [event["action"] for event in reversed(events)]


def message_id(home: Path, subject: str) -> str:
    """Return the archive id of the one message of ``home`` with ``subject``."""
    vault = open_vault(load(home))
    for key in vault.receipts_after(""):
        message_key = vault.read_receipt(key).message_key
        if f"Subject: {subject}\n".encode() in vault.read_message(message_key):
            return message_key.removeprefix("messages/")
    raise AssertionError(f"no message {subject!r}")
