"""What reading one part may cost, and what a reading yields.

A *part* is one decoded MIME leaf, or one member of an archive inside
it.  Every reader works within a :class:`Limits` and returns a
:class:`Reading`; when it has to stop short it still returns what it
read, with a defect that starts with :data:`PARTIAL`, so the catalogue
can count the message as partially indexed.
"""

from __future__ import annotations

import dataclasses

PARTIAL = "partially indexed:"

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on the work spent on one part and on one message.

    Sizes are in bytes, text in characters, times in wall-clock seconds.
    The defaults keep a 2-core archive host responsive while reading
    ordinary business attachments whole.
    """

    part_bytes: int = 25 * MIB
    part_chars: int = 1_000_000
    message_chars: int = 2_000_000
    part_seconds: float = 15.0
    message_seconds: float = 60.0
    # A PDF page or a presentation slide counts as one page.
    pages: int = 500
    sheets: int = 50
    rows: int = 20_000
    # Archives (zip, and the zip containers of OOXML and ODF documents).
    members_listed: int = 1_000
    members_read: int = 100
    expanded_bytes: int = 100 * MIB
    # Deflate reaches about 1000:1 on zeros but seldom 100:1 on real text
    # or XML; a large member far beyond that is a decompression bomb.
    expansion_ratio: int = 200
    ratio_floor_bytes: int = 1 * MIB
    archive_depth: int = 3
    message_depth: int = 8


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass
class Reading:
    """The text and inner file names read from one part, and its defects."""

    text: str = ""
    names: list[str] = dataclasses.field(default_factory=list)
    defects: list[str] = dataclasses.field(default_factory=list)

    def partial(self, name: str, reason: str) -> None:
        """Record that ``name`` was read only in part, and why."""
        self.defects.append(f"{PARTIAL} {name}: {reason}")

    def merge(self, other: Reading) -> None:
        """Add another reading's names and defects; the caller joins text."""
        self.names.extend(other.names)
        self.defects.extend(other.defects)


class TextBuffer:
    """Collect text up to a character cap, remembering whether it was cut."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.pieces: list[str] = []
        self.size = 0
        self.is_full = False

    def add(self, text: str) -> bool:
        """Append ``text`` (cut at the cap); return False once full."""
        if self.is_full:
            return False
        room = max(self.cap - self.size, 0)
        if len(text) > room:
            text = text[:room]
            self.is_full = True
        if text:
            self.pieces.append(text)
            self.size += len(text) + 1
        return not self.is_full

    def text(self) -> str:
        """Return the collected pieces, one per line."""
        return "\n".join(self.pieces)
