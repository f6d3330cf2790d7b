"""The vault: everything that must be right for the archive to be trusted.

Terms used throughout the package:

message
    The RFC 5322 octets exactly as the sender transmitted them in DATA,
    after dot-unstuffing.  Stored once, under a key derived from a keyed
    HMAC of those octets.
receipt
    One record per delivery to the archive: the envelope, the peer, the
    time, the owners found, and the key of the message it delivered.
sealed object
    What the store holds: compressed, encrypted and authenticated bytes
    whose header names the key that wraps their data key.
owner
    An archive mailbox (a local address) that sent or received a message.
"""

from __future__ import annotations


class VaultError(Exception):
    """Base class for every error the vault raises."""


class IntegrityError(VaultError):
    """A stored object failed authentication or does not match its key."""


class StoreError(VaultError):
    """The object store could not complete an operation; safe to retry."""


class ObjectExistsError(StoreError):
    """A write-once key already holds an object."""


class ConfigError(VaultError):
    """A setting is missing or has a value the archive cannot use."""


class MissingObjectError(VaultError):
    """No object is stored under the requested key."""


class RetentionError(VaultError):
    """An object is under retention or legal hold and cannot be deleted."""
