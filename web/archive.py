"""What a request may do with the archive, with ownership checked twice.

The catalogue query already carries the caller's mailboxes; before any byte
of a message is served, ``open_message`` checks ownership again against the
catalogue document and answers "not found" - never "forbidden" - so that a
caller cannot learn that someone else's message exists.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from flask import current_app
from werkzeug.exceptions import InternalServerError, NotFound

from indexer.catalogue import Catalogue
from vault import IntegrityError, MissingObjectError
from vault.control import ControlDB
from vault.ingest import MESSAGES, Vault
from web.accounts import Accounts, User

log = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(r"[0-9a-f]{64}")
_PAGE_NUMBER = re.compile(r"[0-9]{1,6}")
MAX_PAGE_NUMBER = 999_999


def positive_int(text: str) -> int | None:
    """Read a page number typed by a person: ASCII digits, 1 to 999999."""
    if not _PAGE_NUMBER.fullmatch(text) or int(text) < 1:
        return None
    return int(text)


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
        key = f"{MESSAGES}/{message_id}"
        try:
            return self.vault.read_message(key)
        except (IntegrityError, MissingObjectError) as err:
            # Never serve bytes that fail authentication; tell the reader
            # plainly and leave a record for whoever must investigate.
            log.error("%s", err, extra={"event": "vault.integrity_failure"})
            self.control.audit(user.address, "integrity.failure", message_id, error=str(err))
            raise ArchiveDamaged() from None


class ArchiveDamaged(InternalServerError):
    """A stored message failed its integrity check or is missing."""

    description = (
        "This message could not be opened because its stored copy failed the "
        "archive's integrity check. The failure has been recorded; please "
        "tell your archive administrator."
    )


def archive() -> Archive:
    """Return the archive services of the running application."""
    return current_app.extensions["strongroom"]
