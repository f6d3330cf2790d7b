"""What a request may do with the archive, with ownership checked twice.

The catalogue query already carries the caller's mailboxes; before any byte
of a message is served, ``open_message`` checks ownership again against the
catalogue document and answers "not found" - never "forbidden" - so that a
caller cannot learn that someone else's message exists.
"""

from __future__ import annotations

import dataclasses
import re

from flask import current_app
from werkzeug.exceptions import NotFound

from indexer.catalogue import Catalogue
from vault.control import ControlDB
from vault.ingest import MESSAGES, Vault
from web.accounts import Accounts, User

_MESSAGE_ID = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Archive:
    """The services one request works with."""

    vault: Vault
    catalogue: Catalogue
    control: ControlDB
    accounts: Accounts

    def open_message(self, user: User, message_id: str) -> bytes:
        """Return a message's bytes if ``user`` owns it; 404 otherwise."""
        if not _MESSAGE_ID.fullmatch(message_id):
            raise NotFound("No such message.")
        if not self.catalogue.is_visible(message_id, user.mailboxes):
            raise NotFound("No such message.")
        return self.vault.read_message(f"{MESSAGES}/{message_id}")


def archive() -> Archive:
    """Return the archive services of the running application."""
    return current_app.extensions["strongroom"]
