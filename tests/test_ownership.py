# Owners are the local addresses that sent or received the message.

from __future__ import annotations

from vault.ownership import Envelope, OwnershipRules

RULES = OwnershipRules(domains=("example.com", "Example.org"))
RAW = (
    b"From: Alice <Alice@Example.com>\r\n"
    b"To: Bob <bob@example.com>, partner@elsewhere.net\r\n"
    b"Cc: =?utf-8?q?Carol?= <carol@example.org>\r\n"
    b"Delivered-To: dave@example.com\r\n"
    b"Subject: x\r\n\r\nbody\r\n"
)


def test_envelope_relay_owners_come_from_the_envelope_only():
    envelope = Envelope("alice@example.com", ("bob@example.com", "x@elsewhere.net"))
    assert RULES.owners(RAW, envelope) == ("alice@example.com", "bob@example.com")


def test_journal_copy_owners_come_from_the_headers():
    envelope = Envelope("alice@example.com", ("journal@archive.test",))
    assert RULES.owners(RAW, envelope) == (
        "alice@example.com", "bob@example.com", "carol@example.org", "dave@example.com")


def test_journal_address_is_never_an_owner():
    rules = OwnershipRules(domains=("example.com",), journal_addresses=("archive@example.com",))
    envelope = Envelope("", ("archive@example.com",))
    assert "archive@example.com" not in rules.owners(RAW, envelope)
    assert rules.is_journal("ARCHIVE@example.com")
    assert not rules.is_journal("journal@example.com")


def test_unreadable_headers_do_not_cost_the_envelope_owners():
    raw = b"From: <<<@@@\r\nTo: ,,,;;;\r\n\r\n"
    envelope = Envelope("alice@example.com", ("journal@archive.test", "bob@example.com"))
    assert RULES.owners(raw, envelope) == ("alice@example.com", "bob@example.com")


def test_lookalike_domains_are_not_local():
    assert not RULES.is_local("mallory@example.com.evil.net")
    assert not RULES.is_local("mallory@notexample.com")
    assert not RULES.is_local("example.com")


def test_header_that_exhausts_the_address_parser_still_yields_owners():
    # Modelled on a real message whose To field carries thousands of
    # encoded words: email.utils.getaddresses recursed until RecursionError,
    # which made the delivery fail with 451 for ever.
    junk = "\r\n\t=?utf-8?Q?date=3E2017-08-20T10:08:28.617=3C/pr?=" * 3000
    raw = (f'From: "Test" <alice@example.com>\r\nTo: "Test" <bob@example.com>,{junk}\r\n'
           "Subject: deep\r\n\r\nbody\r\n").encode()
    envelope = Envelope("x@elsewhere.net", ("journal@archive.test",))
    assert RULES.owners(raw, envelope) == ("alice@example.com", "bob@example.com")
