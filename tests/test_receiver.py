# The receiver over real TCP: the DATA octets are stored exactly (after
# dot-unstuffing), smuggled transactions are not, a store failure is a 451
# that loses nothing, limits and timeouts hold, LMTP answers per recipient,
# and a stop lets messages in DATA finish.

from __future__ import annotations

import hashlib
import smtplib
import socket
import threading
import time

import pytest

from tests.conftest import CASES
from tests.harness import ArchiveServer, RawSMTP, free_port
from tests.transcript import replay
from vault import StoreError
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import OwnershipRules
from vault.receiver import JournalHandler, Receiver, unstuff_bare_lf_lines
from vault.store import LocalWormStore


@pytest.fixture
def vault(tmp_path):
    return Vault(
        LocalWormStore(tmp_path / "store"),
        LocalKeyFile.create(tmp_path / "keys.json"),
        OwnershipRules(domains=("example.com",)),
    )


@pytest.fixture
def receiver(vault):
    started = []

    def start(trusted=("127.0.0.0/8",), max_recipients=100, max_size=1 << 20, *,
              lmtp=False, timeout=300.0, grace=30.0, **handler_options):
        handler = JournalHandler(vault, trusted, max_recipients, **handler_options)
        server = Receiver(handler, "127.0.0.1", 0, "archive.test", max_size,
                          lmtp=("127.0.0.1", 0) if lmtp else None,
                          timeout=timeout, shutdown_grace=grace)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def stored_messages(vault: Vault) -> list[tuple[object, bytes]]:
    receipts = [vault.read_receipt(key) for key in vault.receipts_after()]
    return [(receipt, vault.read_message(receipt.message_key)) for receipt in receipts]


def test_b01_dot_stuffed_lines_are_stored_unstuffed(vault, receiver):
    server = receiver()
    replies = replay((CASES / "B01.smtp").read_bytes(), server.port)

    assert replies[-2][1].startswith(b"250 ")
    [(receipt, raw)] = stored_messages(vault)
    assert raw == (CASES / "B01.eml").read_bytes()
    assert hashlib.sha256(raw).hexdigest().startswith("d351a299")
    assert receipt.mail_from == "alice@example.com"
    assert receipt.rcpt_tos == ("journal@archive.example.com",)


def test_b01_bare_lf_line_of_three_dots_is_stored_as_two(vault, receiver):
    # Either a 5xx with nothing stored, or the line stored as "..": we store.
    server = receiver()
    replies = replay((CASES / "B01-barelf.smtp").read_bytes(), server.port)

    assert replies[-2][1].startswith(b"250 ")
    [(_, raw)] = stored_messages(vault)
    assert b"\nthis is a test of dot\n..\n" in raw
    assert b"\n...\n" not in raw


def test_b02_smuggled_transaction_is_not_archived(vault, receiver):
    server = receiver()
    replies = replay((CASES / "B02.smtp").read_bytes(), server.port)

    messages = stored_messages(vault)
    assert len(messages) <= 1
    assert [r for r in replies if r[0] == b"<data>"][0][1].startswith(b"250 ")
    for receipt, raw in messages:
        assert receipt.mail_from == "alice@example.com"
        headers = raw.split(b"\r\n\r\n", 1)[0]
        assert b"Message-ID: <b02-genuine@example.com>" in headers
        assert b"b02-forged" not in headers


def test_bare_lf_unstuffing_leaves_crlf_lines_alone():
    assert unstuff_bare_lf_lines(b"a\n..b\r\n.c\n.\r\n") == b"a\n.b\r\n.c\n\r\n"


def test_store_failure_answers_451_and_the_retry_is_stored_once(vault, receiver, monkeypatch):
    server = receiver()
    raw = (CASES / "B05.eml").read_bytes()
    real_put = vault.store.put

    def failing_put(key, data):
        raise StoreError("disk full")

    monkeypatch.setattr(vault.store, "put", failing_put)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.com", ["bob@example.com"], raw)
    assert refused.value.smtp_code == 451
    assert stored_messages(vault) == []

    monkeypatch.setattr(vault.store, "put", real_put)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.com"], raw)
    [(receipt, stored)] = stored_messages(vault)
    assert stored == raw
    assert receipt.owners == ("alice@example.com", "bob@example.com")


def test_receipt_failure_after_message_stored_is_451_and_retry_completes(vault, receiver, monkeypatch):
    # The message object may land before the receipt fails; the retry must
    # still end with one message and one receipt.
    server = receiver()
    raw = (CASES / "B05.eml").read_bytes()
    real_put = vault.store.put

    def receipt_fails(key, data):
        if key.startswith("receipts/"):
            raise StoreError("permission denied")
        real_put(key, data)

    monkeypatch.setattr(vault.store, "put", receipt_fails)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.com", ["bob@example.com"], raw)
    assert refused.value.smtp_code == 451

    monkeypatch.setattr(vault.store, "put", real_put)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.com"], raw)
    assert len(stored_messages(vault)) == 1
    assert len(list(vault.store.list("messages"))) == 1


def test_untrusted_peer_is_refused_and_nothing_is_stored(vault, receiver):
    server = receiver(trusted=("192.0.2.0/24",))
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo()
        code, text = client.mail("alice@example.com")
    assert code == 550
    assert b"not allowed" in text
    assert stored_messages(vault) == []


def test_oversized_message_is_refused_with_552(vault, receiver):
    refusals = []
    server = receiver(max_size=4096, on_refused=lambda *answer: refusals.append(answer))
    raw = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 100 + b"y" * 8000 + b"\r\n"
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        client.command("MAIL FROM:<alice@example.com>")
        client.command("RCPT TO:<bob@example.com>")
        assert client.command("DATA")[0] == 354
        client.send(raw + b".\r\n")
        code, text = client.reply()
    assert (code, text) == (552, "552 5.3.4 Message exceeds the archive's size limit "
                                 "of 4096 bytes")
    assert stored_messages(vault) == []
    assert refusals == [("127.0.0.1", 552, text)]


def test_size_announced_too_big_is_refused_at_mail_from(vault, receiver):
    # RFC 1870: a declared SIZE over the limit is refused before any data.
    refusals = []
    server = receiver(max_size=4096, on_refused=lambda *answer: refusals.append(answer))
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        code, text = client.command("MAIL FROM:<alice@example.com> SIZE=4097")
    assert code == 552
    assert "5.3.4" in text and "4096 bytes" in text
    assert refusals == [("127.0.0.1", 552, text)]


def test_oversized_journal_copy_is_counted_against_the_journal_address(vault, receiver):
    # Status names a journal source by its journal address; a 552 for a
    # journal copy belongs there, beside that source's deliveries.
    refusals = []
    server = receiver(max_size=4096, on_refused=lambda *answer: refusals.append(answer))
    with RawSMTP(server.port) as client:
        client.command("EHLO mta.example.com")
        client.command("MAIL FROM:<alice@example.com>")
        client.command("RCPT TO:<Journal@Archive.Example.com>")
        assert client.command("DATA")[0] == 354
        client.send(b"Subject: big\r\n\r\n" + b"y" * 70 + b"\r\n" * 100
                    + b"z" * 5000 + b"\r\n.\r\n")
        code, text = client.reply()
    assert code == 552
    assert refusals == [("journal@archive.example.com", 552, text)]
    assert stored_messages(vault) == []


def test_lines_longer_than_rfc5321_allows_are_still_archived(vault, receiver):
    # Real mail breaks the 1000-octet line limit; refusing it would lose it.
    server = receiver()
    raw = b"Subject: long line\r\n\r\n" + b"z" * 20000 + b"\r\n"
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.com"], raw)
    [(_, stored)] = stored_messages(vault)
    assert stored == raw


def test_too_many_recipients_get_452_and_the_rest_are_accepted(vault, receiver):
    server = receiver(max_recipients=2)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo()
        client.mail("alice@example.com")
        assert client.rcpt("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[0] == 452


def test_addresses_with_control_characters_get_501_and_nothing_is_stored(vault, receiver):
    # A NUL in an address went into the log and the receipt as it came.
    server = receiver()
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo()
        code, text = client.mail("ali\x00ce@example.com")
        assert (code, text) == (501, b"5.1.3 Bad sender address: control characters "
                                     b"are not allowed")
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt("bob\x00@example.com")[0] == 501
        assert client.rcpt("bob\x1b@example.com")[0] == 501
        assert client.rcpt("bob@example.com")[0] == 250
        assert client.data(b"Subject: controls\r\n\r\nbody\r\n")[0] == 250
    [(receipt, _)] = stored_messages(vault)
    assert receipt.rcpt_tos == ("bob@example.com",)


def test_addresses_that_are_not_utf8_get_501_and_nothing_is_stored(vault, receiver):
    # An 8-bit Latin-1 address took a 250, and then no engine would index
    # it: tantivy refused the batch, and every message after it, for good.
    server = receiver()

    def command(client, line: bytes):
        client.send(line + b"\r\n")
        return client.reply()

    with RawSMTP(server.port) as client:
        assert command(client, b"EHLO client.example.com")[0] == 250
        assert command(client, b"MAIL FROM:<j\xfcrgen\xff@example.net>") == (
            501, "501 5.1.3 Bad sender address: not ASCII or UTF-8")
        assert command(client, b"MAIL FROM:<alice@example.com>")[0] == 250
        assert command(client, b"RCPT TO:<b\xffob@example.com>")[0] == 501
        assert command(client, b"RCPT TO:<bob@example.com>")[0] == 250
        assert command(client, b"DATA")[0] == 354
        client.send(b"Subject: eight bits\r\n\r\nbody\r\n.\r\n")
        assert client.reply()[0] == 250
        # UTF-8 addresses (RFC 6531) are still taken.
        assert command(client, "MAIL FROM:<jürgen@example.net> SMTPUTF8".encode())[0] == 250
    [(receipt, _)] = stored_messages(vault)
    assert (receipt.mail_from, receipt.rcpt_tos) == ("alice@example.com", ("bob@example.com",))


def test_ehlo_announces_size_8bitmime_and_smtputf8_and_no_auth_in_clear(receiver):
    server = receiver(max_size=1 << 20)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.example.com")
        features = client.esmtp_features
    assert features["size"] == str(1 << 20)
    assert "8bitmime" in features
    assert "smtputf8" in features
    assert "auth" not in features
    assert "starttls" not in features


def test_smtputf8_sender_and_8bit_body_are_archived_as_sent(vault, receiver):
    # RFC 6531: an internationalised address travels in MAIL FROM as UTF-8.
    server = receiver()
    raw = ("From: José <josé@example.com>\r\nTo: bob@example.com\r\n"
           "Subject: café\r\n\r\nCrème brûlée, 8-bit.\r\n").encode("utf-8")
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("josé@example.com", ["bob@example.com"], raw,
                        mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [(receipt, stored)] = stored_messages(vault)
    assert stored == raw
    assert receipt.mail_from == "josé@example.com"


def test_untrusted_peer_refusal_is_counted_against_the_peer(vault, receiver):
    refusals = []
    server = receiver(trusted=("192.0.2.0/24",),
                      on_refused=lambda *answer: refusals.append(answer))
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        code, text = client.command("MAIL FROM:<alice@example.com>")
    assert code == 550
    assert refusals == [("127.0.0.1", 550, text)]


def test_store_failure_is_counted_against_the_journal_address(vault, receiver, monkeypatch):
    refusals = []
    server = receiver(on_refused=lambda *answer: refusals.append(answer))

    def failing_put(key, data, **options):
        raise StoreError("disk full")

    monkeypatch.setattr(vault.store, "put", failing_put)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail("alice@example.com", ["Journal@archive.example.com"],
                            (CASES / "B05.eml").read_bytes())
    assert [(source, code) for source, code, _ in refusals] == [
        ("journal@archive.example.com", 451)]


def test_auth_trust_refuses_mail_from_an_unauthenticated_session_with_530(vault, receiver):
    server = receiver(trusted=(), trust="auth", authenticate=lambda name, password: True)
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        code, text = client.command("MAIL FROM:<alice@example.com>")
    assert code == 530
    assert text.startswith("530 5.7.0 Authentication required")
    assert stored_messages(vault) == []


def test_idle_session_is_closed_after_the_timeout(vault, receiver):
    server = receiver(timeout=0.5)
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        time.sleep(1.0)
        with pytest.raises(OSError):
            client.command("MAIL FROM:<alice@example.com>")
            client.command("RCPT TO:<bob@example.com>")


def test_timeout_bounds_silence_inside_data_not_the_whole_message(vault, receiver):
    # A large message on a slow link may take longer than the timeout; it
    # must only never fall silent for longer (RFC 5321 section 4.5.3.2.6).
    server = receiver(timeout=0.6)
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        client.command("MAIL FROM:<alice@example.com>")
        client.command("RCPT TO:<bob@example.com>")
        assert client.command("DATA")[0] == 354
        client.send(b"Subject: slow\r\n\r\n")
        for line in range(6):
            time.sleep(0.25)
            client.send(b"line %d\r\n" % line)
        client.send(b".\r\n")
        code, _ = client.reply()
    assert code == 250
    [(_, stored)] = stored_messages(vault)
    assert stored.endswith(b"line 5\r\n")


def test_client_silent_inside_data_is_disconnected_and_nothing_is_stored(vault, receiver):
    server = receiver(timeout=0.5)
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        client.command("MAIL FROM:<alice@example.com>")
        client.command("RCPT TO:<bob@example.com>")
        assert client.command("DATA")[0] == 354
        client.send(b"Subject: stalled\r\n\r\nhalf a message\r\n")
        time.sleep(1.0)
        with pytest.raises(OSError):
            client.send(b"the rest\r\n.\r\n")
            client.reply()
    assert stored_messages(vault) == []


def lmtp_transaction(port: int, recipients: list[str], raw: bytes) -> list[tuple[int, str]]:
    """Deliver one message over LMTP; return the replies to DATA."""
    with RawSMTP(port) as client:
        assert client.command("LHLO mta.example.com")[0] == 250
        assert client.command("MAIL FROM:<alice@example.com>")[0] == 250
        for recipient in recipients:
            assert client.command(f"RCPT TO:<{recipient}>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(raw + b".\r\n")
        return [client.reply() for _ in recipients]


def test_lmtp_answers_data_once_per_recipient(vault, receiver):
    # RFC 2033 section 4.2: one reply per accepted RCPT, in order.
    server = receiver(lmtp=True)
    recipients = ["bob@example.com", "carol@example.com", "dave@example.com"]
    replies = lmtp_transaction(server.lmtp_port, recipients,
                               (CASES / "B05.eml").read_bytes())

    assert [code for code, _ in replies] == [250, 250, 250]
    for recipient, (_, text) in zip(recipients, replies):
        assert f"<{recipient}>" in text
    [(receipt, stored)] = stored_messages(vault)
    assert stored == (CASES / "B05.eml").read_bytes()
    assert receipt.rcpt_tos == tuple(recipients)


def test_lmtp_store_failure_is_451_for_every_recipient(vault, receiver, monkeypatch):
    server = receiver(lmtp=True)

    def failing_put(key, data, **options):
        raise StoreError("disk full")

    monkeypatch.setattr(vault.store, "put", failing_put)
    replies = lmtp_transaction(server.lmtp_port, ["bob@example.com", "carol@example.com"],
                               (CASES / "B05.eml").read_bytes())
    assert [code for code, _ in replies] == [451, 451]
    assert stored_messages(vault) == []


def test_lmtp_listener_refuses_ehlo(receiver):
    server = receiver(lmtp=True)
    with RawSMTP(server.lmtp_port) as client:
        assert client.command("EHLO mta.example.com")[0] == 500


def test_serve_listens_for_lmtp_when_configured(tmp_path):
    server = ArchiveServer(tmp_path / "home")
    server.init()
    lmtp_port = free_port()
    server.configure("receiver", f'lmtp_listen = "127.0.0.1:{lmtp_port}"')
    token = server.add_user("bob@example.com")
    raw = b"From: alice@example.com\r\nTo: bob@example.com\r\n\r\nby lmtp kittiwake\r\n"
    server.start()
    try:
        replies = lmtp_transaction(lmtp_port, ["bob@example.com"], raw)
        assert [code for code, _ in replies] == [250]
        found = server.wait_for(token, "kittiwake")
        assert server.raw(token, found["results"][0]["id"]) == (200, raw)
    finally:
        server.stop()


def is_refusing_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def start_transaction(port: int) -> RawSMTP:
    """Open a session and take it into DATA."""
    client = RawSMTP(port)
    client.command("EHLO client.example.com")
    client.command("MAIL FROM:<alice@example.com>")
    client.command("RCPT TO:<bob@example.com>")
    assert client.command("DATA")[0] == 354
    return client


def test_stop_finishes_the_message_in_data_and_sends_421_to_idle_sessions(vault, receiver):
    # Graceful stop: nothing new is accepted, an idle session is told 421,
    # and a message already in DATA is still archived and answered 250.
    server = receiver()
    raw = (CASES / "B05.eml").read_bytes()
    idle = RawSMTP(server.port)
    idle.command("EHLO idle.example.com")
    sending = start_transaction(server.port)
    sending.send(raw[:len(raw) // 2])

    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert idle.reply()[0] == 421
    deadline = time.monotonic() + 5
    while not is_refusing_connections(server.port):
        assert time.monotonic() < deadline, "still accepting connections"
        time.sleep(0.05)
    sending.send(raw[len(raw) // 2:] + b".\r\n")
    assert sending.reply()[0] == 250
    assert sending.reply()[0] == 421
    stopper.join(timeout=10)

    assert not stopper.is_alive()
    [(_, stored)] = stored_messages(vault)
    assert stored == raw
    idle.close()
    sending.close()


def test_stop_closes_a_stalled_message_after_the_grace_and_stores_nothing(vault, receiver):
    server = receiver(grace=0.5)
    sending = start_transaction(server.port)
    sending.send(b"Subject: stalled\r\n\r\nhalf\r\n")

    started = time.monotonic()
    server.stop()
    assert 0.4 < time.monotonic() - started < 5
    assert sending.reply()[0] == 421
    assert stored_messages(vault) == []
    sending.close()


def send_slowly(client: RawSMTP, pieces: list[bytes]) -> None:
    # Each piece in its own segment, so the server reads them separately.
    client.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in pieces:
        client.send(piece)
        time.sleep(0.05)


@pytest.mark.parametrize("pieces, stored", [
    # A line of just "..", its dots in two reads.
    ([b"Subject: a\r\n\r\n.", b".\r\nafter\r\n.\r\n"], b"Subject: a\r\n\r\n.\r\nafter\r\n"),
    # The end-of-data line split after each of its octets.
    ([b"Subject: b\r\n\r\nbody\r", b"\n", b".", b"\r", b"\n"], b"Subject: b\r\n\r\nbody\r\n"),
    ([b"Subject: c\r\n\r\nbody\r\n.", b"\r\n"], b"Subject: c\r\n\r\nbody\r\n"),
    # Bare LF line ends: "\n.\n" is not the end, and ".." after LF is unstuffed.
    ([b"Subject: d\n\none\n..\n.\n", b"two\r\n.\r\n"], b"Subject: d\n\none\n.\n\ntwo\r\n"),
])
def test_receiver_stores_dot_stuffed_data_split_across_reads(vault, receiver, pieces,
                                                            stored):
    server = receiver()
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        client.command("MAIL FROM:<alice@example.com>")
        client.command("RCPT TO:<bob@example.com>")
        assert client.command("DATA")[0] == 354
        send_slowly(client, pieces)
        assert client.reply()[0] == 250
        # The command after the message was not swallowed with it.
        assert client.command("NOOP")[0] == 250
    [(_, raw)] = stored_messages(vault)
    assert raw == stored


def test_receiver_reads_commands_pipelined_after_the_message(vault, receiver):
    # RFC 2920: the next transaction may follow the end-of-data line in the
    # same segment; it must start a transaction, not end up in the message.
    server = receiver()
    with RawSMTP(server.port) as client:
        client.command("EHLO client.example.com")
        client.command("MAIL FROM:<alice@example.com>")
        client.command("RCPT TO:<bob@example.com>")
        assert client.command("DATA")[0] == 354
        client.send(b"Subject: first\r\n\r\n.\r\nMAIL FROM:<carol@example.com>\r\n"
                    b"RCPT TO:<bob@example.com>\r\nDATA\r\n")
        assert [client.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.send(b"Subject: second\r\n\r\n.\r\n")
        assert client.reply()[0] == 250
    stored = sorted((receipt.mail_from, raw) for receipt, raw in stored_messages(vault))
    assert stored == [("alice@example.com", b"Subject: first\r\n\r\n"),
                      ("carol@example.com", b"Subject: second\r\n\r\n")]
