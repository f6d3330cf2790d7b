"""Retention policy: how long each delivery is kept, decided at ingest.

A policy has a default period and rules; a rule matches a delivery by
owner address, owner domain or journal source (the peer's IP address or
the journal address it was sent to), and the longest matching period
wins.  Periods are written ``10y``, ``18m`` or ``90d``.  A message kept by
several deliveries is kept until the latest of their dates: retention is
extended, never shortened.

Rules are written one per string, ``"<kind>:<value> <period>"``::

    rules = ["address:ceo@example.com 25y", "domain:legal.example.com 15y",
             "source:192.0.2.10 7y", "source:journal@archive.example.com 10y"]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from dateutil.relativedelta import relativedelta

from vault import ConfigError
from vault.ownership import Envelope, normalise

_PERIOD = re.compile(r"([1-9][0-9]{0,3})([ymd])")
_RULE = re.compile(r"(address|domain|source):(\S+)\s+(\S+)")
RULE_KINDS = ("address", "domain", "source")


def parse_period(text: str) -> relativedelta:
    """Read ``10y``, ``18m`` or ``90d``; raise ConfigError otherwise."""
    match = _PERIOD.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"retention period {text!r}: expected e.g. 10y, 18m or 90d")
    count, unit = int(match.group(1)), match.group(2)
    if unit == "y":
        return relativedelta(years=count)
    if unit == "m":
        return relativedelta(months=count)
    return relativedelta(days=count)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One retention rule: what it matches and for how long it keeps."""

    kind: str
    value: str
    period: relativedelta

    def matches(self, owners: tuple[str, ...], envelope: Envelope) -> bool:
        """Tell whether this rule applies to a delivery."""
        if self.kind == "address":
            return self.value in owners
        if self.kind == "domain":
            return any(owner.rpartition("@")[2] == self.value for owner in owners)
        sources = {envelope.peer.lower(), *(normalise(r) for r in envelope.rcpt_tos)}
        return self.value in sources


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """The default period and the rules that may lengthen it."""

    default: relativedelta
    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_settings(cls, default: str, rules: tuple[str, ...]) -> RetentionPolicy:
        """Build a policy from the ``[retention]`` settings."""
        parsed = []
        for text in rules:
            match = _RULE.fullmatch(text.strip())
            if not match:
                raise ConfigError(
                    f"retention rule {text!r}: expected '<address|domain|source>:<value> <period>'"
                )
            kind, value, period = match.groups()
            parsed.append(Rule(kind, value.lower(), parse_period(period)))
        return cls(parse_period(default), tuple(parsed))

    def retain_until(self, received_at: dt.datetime, owners: tuple[str, ...],
                     envelope: Envelope) -> dt.datetime:
        """Return the end of retention for one delivery: the longest match."""
        periods = [self.default, *(r.period for r in self.rules if r.matches(owners, envelope))]
        ends: list[dt.datetime] = [received_at + period for period in periods]
        return max(ends)
