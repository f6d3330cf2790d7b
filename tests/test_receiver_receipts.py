# Receipts record how each copy came (TLS version, journal sender) in
# optional fields: receipts written before them still read, and a field a
# later version adds does not stop this one reading the receipt.

from __future__ import annotations

import datetime as dt
import json

from vault.receipts import Receipt

RECEIVED = dt.datetime(2026, 12, 4, 15, 30, 12, tzinfo=dt.timezone.utc)


def receipt(**changes) -> Receipt:
    fields = dict(
        key="receipts/2026/12/04/153012.000000-aa", received_at=RECEIVED,
        message_key="messages/ab", sha256="00" * 32, size=10, peer="192.0.2.1",
        helo="mx.example.com", mail_from="alice@example.com",
        rcpt_tos=("journal@archive.example.com",), owners=("alice@example.com",),
        journaled=True, retain_until=RECEIVED + dt.timedelta(days=3650))
    return Receipt(**{**fields, **changes})


def test_transport_fields_round_trip():
    sent = receipt(tls_version="TLSv1.3", journal_sender="mx1.example.com")
    assert Receipt.from_json(sent.to_json()) == sent


def test_receipt_written_before_the_transport_fields_reads_as_unknown_transport():
    record = json.loads(receipt().to_json())
    del record["tls_version"], record["journal_sender"]
    old = Receipt.from_json(json.dumps(record).encode())
    assert (old.tls_version, old.journal_sender) == ("", "")
    assert old.owners == ("alice@example.com",)


def test_field_from_a_later_version_is_ignored():
    record = json.loads(receipt(tls_version="TLSv1.2").to_json())
    record["arrived_via"] = "a field this version does not know"
    assert Receipt.from_json(json.dumps(record).encode()) == receipt(tls_version="TLSv1.2")
