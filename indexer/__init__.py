"""The catalogue: turns sealed messages into searchable documents.

Terms: a *document* is the catalogue's record of one stored message; the
*cursor* is the key of the last receipt the follower has indexed; the
*owner filter* restricts every end user's query to their mailboxes.
"""

from __future__ import annotations


class IndexerError(Exception):
    """Base class for every error the catalogue raises."""


class QueryError(IndexerError):
    """A search query could not be read; the message says where."""
