# Trust and transport: STARTTLS with the configured certificate, AUTH only
# inside TLS and only as a journal sender, require_tls refusing mail in
# clear, and Postfix as a TLS (and SASL) client of the archive.

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import secrets
import smtplib
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import CASES, require
from tests.harness import ArchiveServer, RawSMTP, strongroom
from tests.peers.postfix import JOURNAL_ADDRESS, JournalingPostfix, require_postfix
from vault import ConfigError
from vault.config import load
from vault.control import ControlDB
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import OwnershipRules
from vault.receiver import JournalHandler, Receiver
from vault.transport import server_tls_context
from vault.store import LocalWormStore
from web.senders import JournalSenders

SENDER = "mx1.example.com"
SENDER_PASSWORD = "journal-sender-password"
# The name in the receiver's certificate that a verifying client checks.
ARCHIVE_NAME = "archive.test"


class Certificates:
    """A throwaway CA and a server certificate it signed, made per session.

    The certificate names localhost, archive.test and 127.0.0.1, so a
    client verifying either the host name or the address accepts it.
    """

    def __init__(self, directory: Path) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Strongroom test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ARCHIVE_NAME)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(ARCHIVE_NAME), x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "ca.pem"
        self.certificate_file = directory / "receiver.pem"
        self.key_file = directory / "receiver.key"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self.key_file.touch(mode=0o600)
        self.key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA, verifying names."""
        return ssl.create_default_context(cafile=self.ca_file)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def vault(tmp_path):
    return Vault(
        LocalWormStore(tmp_path / "store"),
        LocalKeyFile.create(tmp_path / "keys.json"),
        OwnershipRules(domains=("example.com",)),
    )


@pytest.fixture
def senders(tmp_path):
    control = ControlDB(tmp_path / "control.sqlite3")
    control.create()
    senders = JournalSenders(control)
    senders.add(SENDER, SENDER_PASSWORD)
    return senders


@pytest.fixture
def receiver(vault, senders, test_ca):
    """Start a TLS-capable receiver: receiver(trust=..., trusted=..., ...)."""
    started = []

    def start(trusted=("127.0.0.0/8",), **handler_options):
        handler = JournalHandler(vault, trusted, 100, authenticate=senders.authenticate,
                                 **handler_options)
        context = server_tls_context(test_ca.certificate_file, test_ca.key_file)
        server = Receiver(handler, "127.0.0.1", 0, "archive.test", 1 << 20,
                          tls_context=context)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def stored_count(vault: Vault) -> int:
    return len(list(vault.receipts_after()))


def accepted_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "receiver.accepted"]


def plain_credentials(name: str, password: str) -> str:
    return base64.b64encode(f"\0{name}\0{password}".encode()).decode()


def test_starttls_with_smtplib_verifies_the_configured_certificate(vault, receiver, test_ca,
                                                                   caplog):
    caplog.set_level(logging.INFO, logger="vault.receiver")
    server = receiver()
    raw = (CASES / "B05.eml").read_bytes()
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("mta.example.com")
        assert client.has_extn("starttls")
        client.starttls(context=test_ca.client_context())
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        version = client.sock.version()
        client.sendmail("alice@example.com", ["bob@example.com"], raw)

    [receipt_key] = vault.receipts_after()
    receipt = vault.read_receipt(receipt_key)
    assert vault.read_message(receipt.message_key) == raw
    [record] = accepted_records(caplog)
    assert record.tls == version
    assert record.sender is None
    # The receipt says how the copy came, as the log does.
    assert (receipt.tls_version, receipt.journal_sender) == (version, "")


def test_auth_before_tls_is_refused_and_not_even_offered(vault, receiver):
    # RFC 4954 section 4: no password crosses the network in clear.
    server = receiver(trusted=(), trust="auth")
    with RawSMTP(server.port) as client:
        code, features = client.command("EHLO mta.example.com")
        assert "AUTH" not in features
        code, text = client.command(
            "AUTH PLAIN " + plain_credentials(SENDER, SENDER_PASSWORD))
        assert code == 538
        assert client.command("MAIL FROM:<alice@example.com>")[0] == 530
    assert stored_count(vault) == 0


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_journal_sender_authenticated_inside_tls_may_journal(vault, receiver, test_ca,
                                                             mechanism, caplog):
    caplog.set_level(logging.INFO, logger="vault.receiver")
    server = receiver(trusted=(), trust="auth")
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.starttls(context=test_ca.client_context())
        client.ehlo("mta.example.com")
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        client.user, client.password = SENDER, SENDER_PASSWORD
        authenticator = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, text = client.auth(mechanism, authenticator)
        assert code == 235
        version = client.sock.version()
        client.sendmail("alice@example.com", ["bob@example.com"],
                        (CASES / "B05.eml").read_bytes())
    assert stored_count(vault) == 1
    [record] = accepted_records(caplog)
    assert record.sender == SENDER
    [receipt_key] = vault.receipts_after()
    receipt = vault.read_receipt(receipt_key)
    assert (receipt.tls_version, receipt.journal_sender) == (version, SENDER)


@pytest.mark.parametrize("name, password", [
    (SENDER, "not-the-password"), ("mx9.example.com", SENDER_PASSWORD)])
def test_wrong_credentials_get_535_and_mail_stays_refused(vault, receiver, test_ca,
                                                          name, password):
    refusals = []
    server = receiver(trusted=(), trust="auth",
                      on_refused=lambda *answer: refusals.append(answer))
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.starttls(context=test_ca.client_context())
        client.ehlo("mta.example.com")
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(name, password)
        assert refused.value.smtp_code == 535
        code, text = client.mail("alice@example.com")
    assert code == 530
    assert b"authenticate as a journal sender" in text
    assert stored_count(vault) == 0
    # Each failed AUTH is counted too (smtplib tries PLAIN, then LOGIN): a
    # sender whose password changed shows in status as refused, not silent.
    assert [(source, code) for source, code, _ in refusals] == [
        ("127.0.0.1", 535), ("127.0.0.1", 535), ("127.0.0.1", 530)]


def test_removed_journal_sender_can_no_longer_authenticate(receiver, senders, test_ca):
    server = receiver(trusted=(), trust="auth")
    senders.remove(SENDER)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.starttls(context=test_ca.client_context())
        client.ehlo("mta.example.com")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(SENDER, SENDER_PASSWORD)


@pytest.mark.parametrize("trusted, authenticates, accepted", [
    (("127.0.0.0/8",), False, True),
    (("192.0.2.0/24",), False, False),
    (("192.0.2.0/24",), True, True),
])
def test_networks_or_auth_admits_either(vault, receiver, test_ca, trusted, authenticates,
                                        accepted):
    server = receiver(trusted=trusted, trust="networks-or-auth")
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.starttls(context=test_ca.client_context())
        client.ehlo("mta.example.com")
        if authenticates:
            client.login(SENDER, SENDER_PASSWORD)
        code, _ = client.mail("alice@example.com")
    assert (code == 250) == accepted


def test_auth_is_not_offered_when_only_networks_are_trusted(receiver, test_ca):
    server = receiver(trust="networks")
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.starttls(context=test_ca.client_context())
        client.ehlo("mta.example.com")
        assert not client.has_extn("auth")
        code, _ = client.docmd("AUTH", "PLAIN " + plain_credentials(SENDER, SENDER_PASSWORD))
    assert code == 504


def test_require_tls_refuses_mail_in_clear_with_530(vault, receiver, test_ca):
    server = receiver(require_tls=True)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("mta.example.com")
        code, text = client.mail("alice@example.com")
        assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")
        client.rset()
        client.starttls(context=test_ca.client_context())
        client.sendmail("alice@example.com", ["bob@example.com"],
                        (CASES / "B05.eml").read_bytes())
    assert stored_count(vault) == 1


def test_certificate_that_cannot_be_loaded_is_a_config_error_naming_it(tmp_path, test_ca):
    with pytest.raises(ConfigError, match="receiver.tls_certificate"):
        server_tls_context(tmp_path / "missing.pem", test_ca.key_file)
    with pytest.raises(ConfigError, match="receiver.tls_certificate"):
        server_tls_context(test_ca.ca_file, test_ca.key_file)


@pytest.mark.parametrize("receiver_settings, named", [
    ('require_tls = true', "receiver.require_tls"),
    ('trust = "auth"', "receiver.trust"),
    ('trust = "networks-or-auth"', "receiver.trust"),
    ('trust = "anyone"', "receiver.trust"),
    ('tls_certificate = "tls/receiver.pem"', "receiver.tls_key"),
    ('timeout_seconds = 0', "receiver.timeout_seconds"),
    ('lmtp_listen = "nowhere"', "receiver.lmtp_listen"),
])
def test_receiver_settings_that_cannot_work_are_named(tmp_path, receiver_settings, named):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f"[receiver]\n{receiver_settings}\n")
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(home, {})


def test_serve_with_tls_and_auth_trust_takes_mail_from_a_journal_sender(tmp_path, test_ca):
    # The whole path an administrator sets up: certificate in the config,
    # a journal sender made with the CLI, serve, then STARTTLS + AUTH.
    server = ArchiveServer(tmp_path / "home")
    server.init()
    tls = server.home / "tls"
    tls.mkdir()
    for source, name in ((test_ca.certificate_file, "receiver.pem"),
                         (test_ca.key_file, "receiver.key")):
        (tls / name).write_bytes(source.read_bytes())
    server.configure("receiver", 'trust = "auth"\ntrusted_networks = []\n'
                                 'tls_certificate = "tls/receiver.pem"\n'
                                 'tls_key = "tls/receiver.key"\n')
    strongroom("sender", "add", SENDER, "--home", str(server.home), "--password-stdin",
               stdin=SENDER_PASSWORD + "\n")
    token = server.add_user("bob@example.com")
    word = f"TLSJOURNAL{secrets.token_hex(4)}"
    raw = (b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: over TLS\r\n\r\n"
           + word.encode() + b"\r\n")
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
            client.ehlo("mta.example.com")
            assert client.mail("alice@example.com")[0] == 530
            client.rset()
            client.starttls(context=test_ca.client_context())
            client.login(SENDER, SENDER_PASSWORD)
            client.sendmail("alice@example.com", ["journal@archive.test"], raw)
        found = server.wait_for(token, word)
        assert found["total"] == 1
        assert server.raw(token, found["results"][0]["id"]) == (200, raw)
    finally:
        assert server.stop() == 0
    log = server.log_path.read_text()
    assert f"as journal sender '{SENDER}'" in log
    assert "TLSv1." in log


# Postfix as the archive's TLS client.  Its smtp client reads the CA file
# before dropping privileges, so it may sit in the test's private tmp dir.

def journaling_postfix(root: Path, port: int, settings: dict[str, str]) -> JournalingPostfix:
    require_postfix()
    return JournalingPostfix(root, port, settings=settings)


def journal_one_message(postfix: JournalingPostfix) -> str:
    """Submit a message to Postfix and return the archive's reply to its
    journal copy."""
    word = f"POSTFIXTLS-{secrets.token_hex(4)}"
    raw = (b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: TLS\r\n"
           b"Message-ID: <" + word.encode() + b"@example.com>\r\n\r\nHello.\r\n")
    queue_id = postfix.submit(raw, "alice@example.com", ["bob@example.com"])
    return postfix.wait_for_delivery(queue_id, JOURNAL_ADDRESS, timeout=30)


@pytest.mark.peer
@pytest.mark.parametrize("level, established", [
    ("encrypt", "TLS connection established to 127.0.0.1"),
    ("secure", "Verified TLS connection established to 127.0.0.1"),
])
def test_postfix_journals_over_tls(tmp_path, vault, receiver, test_ca, caplog, level,
                                   established):
    # "encrypt" refuses to send in clear; "secure" also checks our
    # certificate against the test CA and the name archive.test.
    caplog.set_level(logging.INFO, logger="vault.receiver")
    server = receiver(require_tls=True)
    settings = {
        "smtp_tls_security_level": level,
        "smtp_tls_CAfile": str(test_ca.ca_file),
        "smtp_tls_secure_cert_match": ARCHIVE_NAME,
        "smtp_tls_loglevel": "1",
    }
    with journaling_postfix(tmp_path / "postfix", server.port, settings) as postfix:
        reply = journal_one_message(postfix)
        log = postfix.log_text()
    assert reply.startswith("250"), reply
    assert established in log, log
    assert stored_count(vault) == 1
    [record] = accepted_records(caplog)
    assert record.tls in ("TLSv1.2", "TLSv1.3")


def require_sasl_plain() -> None:
    require(any(Path(d).glob("sasl2/libplain.so*") for d in (
        "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")),
        "Cyrus SASL's PLAIN module is not installed (Debian package libsasl2-modules)")


@pytest.mark.peer
def test_postfix_authenticates_as_a_journal_sender_inside_tls(tmp_path, vault, receiver,
                                                              test_ca, caplog):
    require_sasl_plain()
    caplog.set_level(logging.INFO, logger="vault.receiver")
    server = receiver(trusted=(), trust="auth")
    settings = {
        "smtp_tls_security_level": "secure",
        "smtp_tls_CAfile": str(test_ca.ca_file),
        "smtp_tls_secure_cert_match": ARCHIVE_NAME,
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps":
            f"inline:{{ [127.0.0.1]:{server.port}={SENDER}:{SENDER_PASSWORD} }}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
    }
    with journaling_postfix(tmp_path / "postfix", server.port, settings) as postfix:
        reply = journal_one_message(postfix)
    assert reply.startswith("250"), reply
    assert stored_count(vault) == 1
    [record] = accepted_records(caplog)
    assert record.sender == SENDER
