# Each delivery is kept for the longest period its rules give, and a
# message delivered again is kept longer, never shorter.

from __future__ import annotations

import datetime as dt

import pytest

from tests.conftest import CASES
from vault import ConfigError
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.retention import RetentionPolicy
from vault.store import LocalWormStore

RECEIVED = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
POLICY = RetentionPolicy.from_settings("7y", (
    "address:ceo@example.com 25y",
    "domain:legal.example.com 15y",
    "source:192.0.2.10 12y",
    "source:journal@archive.example.com 9y",
))


def until(owners, rcpts=("x@example.com",), peer="127.0.0.1"):
    return POLICY.retain_until(RECEIVED, owners, Envelope("", rcpts, peer=peer))


def test_default_applies_when_no_rule_matches():
    assert until(("bob@example.com",)) == RECEIVED.replace(year=2033)


def test_longest_matching_rule_wins():
    owners = ("ceo@example.com", "ann@legal.example.com")
    assert until(owners, peer="192.0.2.10") == RECEIVED.replace(year=2051)
    assert until(("ann@legal.example.com",), peer="192.0.2.10") == RECEIVED.replace(year=2041)
    assert until(("bob@example.com",), peer="192.0.2.10") == RECEIVED.replace(year=2038)
    assert until(("bob@example.com",), rcpts=("Journal@Archive.example.com",)) == (
        RECEIVED.replace(year=2035))


def test_months_and_days():
    policy = RetentionPolicy.from_settings("18m", ("address:a@example.com 400d",))
    envelope = Envelope("", ())
    assert policy.retain_until(RECEIVED, (), envelope) == RECEIVED.replace(year=2028, month=6)
    assert policy.retain_until(RECEIVED, ("a@example.com",), envelope) == RECEIVED.replace(
        year=2028, month=6)


@pytest.mark.parametrize("default, rules", [
    ("10", ()), ("ten years", ()), ("0y", ()),
    ("10y", ("address:a@example.com",)), ("10y", ("owner:a@example.com 5y",)),
])
def test_bad_policy_is_refused_by_name(default, rules):
    with pytest.raises(ConfigError, match="retention"):
        RetentionPolicy.from_settings(default, rules)


def test_redelivery_under_a_longer_rule_extends_the_message_lock(tmp_path):
    store = LocalWormStore(tmp_path / "store")
    policy = RetentionPolicy.from_settings("1y", ("address:ceo@example.com 30y",))
    vault = Vault(store, LocalKeyFile.create(tmp_path / "k.json"),
                  OwnershipRules(("example.com",)), policy)
    raw = (CASES / "B16.eml").read_bytes()
    first = vault.archive(raw, Envelope("x@elsewhere.net", ("bob@example.com",)))
    short = store.lock(first.message_key).retain_until
    second = vault.archive(raw, Envelope("x@elsewhere.net", ("ceo@example.com",)))
    long = store.lock(second.message_key).retain_until
    third = vault.archive(raw, Envelope("x@elsewhere.net", ("bob@example.com",)))

    assert long - short > dt.timedelta(days=365 * 28)
    assert store.lock(third.message_key).retain_until == long
    assert store.lock(first.key).retain_until == first.retain_until == short
    assert vault.read_receipt(second.key).retain_until == long
