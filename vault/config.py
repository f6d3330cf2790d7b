"""Load the archive's settings: defaults, then config.toml, then environment.

Every setting is explained once, in ``config.example.toml``.  Environment
variables named ``STRONGROOM_<SECTION>_<KEY>`` override the file; lists are
given comma-separated.  Paths are relative to the archive home.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from vault import ConfigError

CONFIG_NAME = "config.toml"


@dataclasses.dataclass(frozen=True)
class ArchiveSettings:
    domains: tuple[str, ...] = ()


# Who may journal to the archive: peers in trusted networks, journal
# senders authenticated by SMTP AUTH, or either.
TRUST_MODES = ("networks", "auth", "networks-or-auth")


@dataclasses.dataclass(frozen=True)
class ReceiverSettings:
    listen: str = "127.0.0.1:2525"
    hostname: str = "strongroom.local"
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    journal_addresses: tuple[str, ...] = ("journal",)
    max_message_size: int = 64 * 1024 * 1024
    max_recipients: int = 1000
    trust: str = "networks"
    tls_certificate: str = ""
    tls_key: str = ""
    require_tls: bool = False
    timeout_seconds: float = 300.0
    lmtp_listen: str = ""
    shutdown_grace_seconds: float = 30.0
    group_commit: bool = True
    group_commit_max_messages: int = 64
    processes: int = 0


@dataclasses.dataclass(frozen=True)
class PortalSettings:
    listen: str = "127.0.0.1:8080"
    secret_key_file: str = "keys/portal-secret"
    secure_cookies: bool = False
    threads: int = 8
    trusted_proxies: int = 0


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    kind: str = "local"
    path: str = "store"
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str = ""
    region: str = ""


@dataclasses.dataclass(frozen=True)
class KeySettings:
    provider: str = "local"
    key_file: str = "keys/kek.json"
    kms_key_id: str = ""
    kms_previous_key_ids: tuple[str, ...] = ()
    kms_endpoint_url: str = ""
    kms_region: str = ""


@dataclasses.dataclass(frozen=True)
class CatalogueSettings:
    engine: str = "tantivy"
    path: str = "catalogue"
    poll_interval: float = 0.5
    overlap_seconds: float = 30.0
    repair_interval: float = 600.0


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    default: str = "10y"
    rules: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ControlSettings:
    database: str = "control.sqlite3"


# How the portal's restore reaches the IMAP server: TLS from the first byte
# (port 993), STARTTLS (RFC 3501 section 6.2.1), or none, which is allowed
# only to a loopback address so a password never crosses a network in clear.
RESTORE_TLS_MODES = ("implicit", "starttls", "none")


@dataclasses.dataclass(frozen=True)
class RestoreSettings:
    imap_host: str = ""
    imap_port: int = 993
    tls: str = "implicit"
    ca_file: str = ""
    login: str = "{address}"
    folder: str = "Restored/{date}"
    flags: tuple[str, ...] = ("\\Seen",)
    master_user: str = ""
    master_password_file: str = ""
    max_messages: int = 1000
    timeout_seconds: float = 60.0


@dataclasses.dataclass(frozen=True)
class AccountSettings:
    password_min_length: int = 12
    password_classes: int = 1
    password_history: int = 5
    password_max_age_days: int = 0
    lockout_attempts: int = 10
    lockout_minutes: float = 15.0
    client_failures: int = 30
    client_window_minutes: float = 15.0
    session_idle_minutes: float = 30.0
    session_absolute_hours: float = 12.0
    require_totp_roles: tuple[str, ...] = ()
    totp_issuer: str = "Strongroom"


@dataclasses.dataclass(frozen=True)
class DownloadSettings:
    max_messages: int = 1000
    max_bytes: int = 1024 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class EdiscoverySettings:
    two_person_release: bool = False
    two_person_disposition: bool = False
    export_path: str = "exports"
    signing_key_file: str = "keys/export-signing.pem"
    volume_messages: int = 10_000
    preview_sample: int = 10
    export_kind: str = "local"
    export_bucket: str = ""
    export_prefix: str = ""
    export_endpoint_url: str = ""
    export_region: str = ""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The archive's typed, frozen settings; ``home`` anchors every path."""

    home: Path
    archive: ArchiveSettings = ArchiveSettings()
    receiver: ReceiverSettings = ReceiverSettings()
    portal: PortalSettings = PortalSettings()
    store: StoreSettings = StoreSettings()
    keys: KeySettings = KeySettings()
    catalogue: CatalogueSettings = CatalogueSettings()
    control: ControlSettings = ControlSettings()
    retention: RetentionSettings = RetentionSettings()
    accounts: AccountSettings = AccountSettings()
    restore: RestoreSettings = RestoreSettings()
    downloads: DownloadSettings = DownloadSettings()
    ediscovery: EdiscoverySettings = EdiscoverySettings()

    def path(self, relative: str) -> Path:
        """Resolve a configured path against the archive home."""
        return self.home / relative

    def replace(self, section: str, **changes: Any) -> Settings:
        """Return a copy with some settings of one section changed."""
        current = getattr(self, section)
        return dataclasses.replace(
            self, **{section: dataclasses.replace(current, **changes)}
        )


def load(home: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``home/config.toml`` and the environment into validated Settings.

    Raises ConfigError naming the setting and the value it cannot use.
    """
    home = Path(home).resolve()
    config_file = home / CONFIG_NAME
    if not config_file.is_file():
        raise ConfigError(f"no {CONFIG_NAME} in {home}; run 'strongroom init'")
    try:
        document = tomllib.loads(config_file.read_text("utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{config_file}: {err}") from None

    environment: Mapping[str, str] = os.environ if environ is None else environ
    sections = {}
    for field in dataclasses.fields(Settings):
        if field.name == "home":
            continue
        sections[field.name] = _load_section(
            field.name, field.default, document.get(field.name, {}), environment
        )
    unknown = set(document) - set(sections)
    if unknown:
        raise ConfigError(f"unknown section(s) in {CONFIG_NAME}: {sorted(unknown)}")
    settings = Settings(home=home, **sections)
    validate(settings)
    return settings


def _load_section(
    name: str, default: Any, table: dict[str, Any], environ: Mapping[str, str]
) -> Any:
    values = {}
    known = {field.name: field for field in dataclasses.fields(default)}
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{name}]: {sorted(unknown)}")
    for key, field in known.items():
        value = table.get(key, getattr(default, key))
        env_name = f"STRONGROOM_{name}_{key}".upper()
        if env_name in environ:
            value = _from_environment(env_name, environ[env_name], field.default)
        values[key] = _coerce(f"{name}.{key}", value, getattr(default, key))
    return dataclasses.replace(default, **values)


def _from_environment(env_name: str, raw: str, default: Any) -> Any:
    if isinstance(default, tuple):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{env_name}={raw!r}: expected true or false")
        return raw.lower() in ("1", "true", "yes")
    return raw


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, tuple):
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(str(item) for item in value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"setting {name} = {value!r}: expected {type(default).__name__}"
        ) from None


def parse_listen(name: str, value: str) -> tuple[str, int]:
    """Split a ``HOST:PORT`` listen address, naming the setting on error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"setting {name} = {value!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def validate(settings: Settings) -> None:
    """Check values that types alone cannot; raise ConfigError on the first."""
    parse_listen("receiver.listen", settings.receiver.listen)
    parse_listen("portal.listen", settings.portal.listen)
    if not 0 <= settings.portal.trusted_proxies <= 10:
        raise ConfigError(f"setting portal.trusted_proxies = {settings.portal.trusted_proxies!r}:"
                          " expected 0 (none) to 10")
    for network in settings.receiver.trusted_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"setting receiver.trusted_networks: {network!r} is not a network"
            ) from None
    _validate_receiver(settings.receiver)
    _validate_store(settings.store)
    _validate_keys(settings.keys)
    if settings.catalogue.engine not in ("tantivy", "whoosh"):
        raise ConfigError(
            f"setting catalogue.engine = {settings.catalogue.engine!r}: "
            "expected 'tantivy' or 'whoosh'"
        )
    _validate_restore(settings.restore)
    if settings.catalogue.repair_interval < 1:
        raise ConfigError("setting catalogue.repair_interval: at least 1 second")
    from vault.retention import RetentionPolicy

    RetentionPolicy.from_settings(settings.retention.default, settings.retention.rules)
    _validate_accounts(settings.accounts)
    if settings.downloads.max_messages < 1 or settings.downloads.max_bytes < 1:
        raise ConfigError("settings downloads.max_messages and downloads.max_bytes: "
                          "at least 1")
    _validate_ediscovery(settings.ediscovery)


def _validate_ediscovery(ediscovery: EdiscoverySettings) -> None:
    if ediscovery.volume_messages < 1:
        raise ConfigError(f"setting ediscovery.volume_messages = "
                          f"{ediscovery.volume_messages!r}: must be at least 1")
    if not 0 <= ediscovery.preview_sample <= 1000:
        raise ConfigError(f"setting ediscovery.preview_sample = "
                          f"{ediscovery.preview_sample!r}: expected 0 to 1000")
    _validate_export_location(ediscovery)


def _validate_export_location(ediscovery: EdiscoverySettings) -> None:
    if ediscovery.export_kind not in ("local", "s3"):
        raise ConfigError(f"setting ediscovery.export_kind = {ediscovery.export_kind!r}: "
                          "expected 'local' or 's3'")
    if ediscovery.export_kind != "s3":
        return
    bucket = ediscovery.export_bucket
    if not bucket:
        raise ConfigError("setting ediscovery.export_bucket: required when "
                          "ediscovery.export_kind = 's3'")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"setting ediscovery.export_bucket = {bucket!r}: not a valid "
                          "S3 bucket name")
    if not re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*/?)*", ediscovery.export_prefix):
        raise ConfigError(f"setting ediscovery.export_prefix = {ediscovery.export_prefix!r}:"
                          " expected names of letters, digits, '.', '_' or '-' separated "
                          "by '/'")
    _check_url("ediscovery.export_endpoint_url", ediscovery.export_endpoint_url)


def _validate_receiver(receiver: ReceiverSettings) -> None:
    if receiver.max_message_size < 1024:
        raise ConfigError("setting receiver.max_message_size: at least 1024 bytes")
    if receiver.trust not in TRUST_MODES:
        raise ConfigError(
            f"setting receiver.trust = {receiver.trust!r}: expected one of "
            + ", ".join(repr(mode) for mode in TRUST_MODES))
    if bool(receiver.tls_certificate) != bool(receiver.tls_key):
        raise ConfigError("settings receiver.tls_certificate and receiver.tls_key: "
                          "give both or neither")
    if receiver.require_tls and not receiver.tls_certificate:
        raise ConfigError("setting receiver.require_tls = true needs "
                          "receiver.tls_certificate and receiver.tls_key")
    # AUTH is offered only after STARTTLS (RFC 4954 section 4), so a trust
    # that relies on it needs a certificate.
    if receiver.trust != "networks" and not receiver.tls_certificate:
        raise ConfigError(f"setting receiver.trust = {receiver.trust!r} needs "
                          "receiver.tls_certificate and receiver.tls_key")
    if receiver.timeout_seconds <= 0:
        raise ConfigError(f"setting receiver.timeout_seconds = {receiver.timeout_seconds!r}: "
                          "must be more than 0")
    if receiver.shutdown_grace_seconds < 0:
        raise ConfigError("setting receiver.shutdown_grace_seconds = "
                          f"{receiver.shutdown_grace_seconds!r}: must not be negative")
    if receiver.lmtp_listen:
        parse_listen("receiver.lmtp_listen", receiver.lmtp_listen)
        if receiver.lmtp_listen == receiver.listen:
            raise ConfigError(f"setting receiver.lmtp_listen = {receiver.lmtp_listen!r}: "
                              "the same address as receiver.listen")
    if receiver.group_commit_max_messages < 1:
        raise ConfigError("setting receiver.group_commit_max_messages = "
                          f"{receiver.group_commit_max_messages!r}: must be at least 1")
    if receiver.processes < 0:
        raise ConfigError(f"setting receiver.processes = {receiver.processes!r}: must "
                          "be 0 (one per CPU) or more")


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _validate_store(store: StoreSettings) -> None:
    if store.kind not in ("local", "s3"):
        raise ConfigError(f"setting store.kind = {store.kind!r}: expected 'local' or 's3'")
    if store.kind != "s3":
        return
    if not store.bucket:
        raise ConfigError("setting store.bucket: required when store.kind = 's3'")
    if not _BUCKET.fullmatch(store.bucket) or ".." in store.bucket:
        raise ConfigError(f"setting store.bucket = {store.bucket!r}: not a valid S3 bucket name")
    _check_url("store.endpoint_url", store.endpoint_url)


def _validate_keys(keys: KeySettings) -> None:
    if keys.provider not in ("local", "kms"):
        raise ConfigError(f"setting keys.provider = {keys.provider!r}: expected 'local' or 'kms'")
    if keys.provider == "kms" and not keys.kms_key_id:
        raise ConfigError("setting keys.kms_key_id: required when keys.provider = 'kms'")
    _check_url("keys.kms_endpoint_url", keys.kms_endpoint_url)


def _check_url(name: str, value: str) -> None:
    if value and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ConfigError(f"setting {name} = {value!r}: expected an http:// or https:// URL")


def _validate_accounts(accounts: AccountSettings) -> None:
    for name in ("password_min_length", "lockout_attempts"):
        if getattr(accounts, name) < 1:
            raise ConfigError(f"setting accounts.{name} = {getattr(accounts, name)!r}: "
                              "must be at least 1")
    if not 1 <= accounts.password_classes <= 4:
        raise ConfigError(f"setting accounts.password_classes = {accounts.password_classes!r}:"
                          " expected 1 to 4")
    for name in ("password_history", "password_max_age_days", "lockout_minutes",
                 "client_failures"):
        if getattr(accounts, name) < 0:
            raise ConfigError(f"setting accounts.{name} = {getattr(accounts, name)!r}: "
                              "must not be negative")
    for name in ("session_idle_minutes", "session_absolute_hours", "client_window_minutes"):
        if not getattr(accounts, name) > 0:
            raise ConfigError(f"setting accounts.{name} = {getattr(accounts, name)!r}: "
                              "must be more than 0")
    for role in accounts.require_totp_roles:
        if role not in ("user", "auditor", "compliance", "admin"):
            raise ConfigError(f"setting accounts.require_totp_roles: unknown role {role!r}; "
                              "expected user, auditor, compliance or admin")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
_IMAP_FLAG = re.compile(r"\\(Seen|Answered|Flagged|Draft)|[A-Za-z0-9$_.-]{1,64}")


def _validate_restore(restore: RestoreSettings) -> None:
    if restore.tls not in RESTORE_TLS_MODES:
        raise ConfigError(f"setting restore.tls = {restore.tls!r}: expected one of "
                          + ", ".join(repr(mode) for mode in RESTORE_TLS_MODES))
    if restore.tls == "none" and restore.imap_host and not _is_loopback(restore.imap_host):
        raise ConfigError(f"setting restore.tls = 'none' with restore.imap_host = "
                          f"{restore.imap_host!r}: passwords may go in clear only to loopback")
    if not 0 < restore.imap_port < 65536:
        raise ConfigError(f"setting restore.imap_port = {restore.imap_port!r}: not a port")
    for flag in restore.flags:
        if not _IMAP_FLAG.fullmatch(flag):
            raise ConfigError(f"setting restore.flags: {flag!r} is not a flag a restore "
                              "may set (\\Seen, \\Answered, \\Flagged, \\Draft or a keyword)")
    if "{address}" not in restore.login and "{local}" not in restore.login:
        raise ConfigError(f"setting restore.login = {restore.login!r}: "
                          "must contain {address} or {local}")
    try:
        folder = restore.folder.format(date="2000-01-01", time="000000")
    except (KeyError, IndexError, ValueError):
        folder = ""
    if not folder.strip("/ ") or "*" in folder or "%" in folder:
        raise ConfigError(f"setting restore.folder = {restore.folder!r}: expected a folder "
                          "name, with {date} or {time} at most")
    if bool(restore.master_user) != bool(restore.master_password_file):
        raise ConfigError("settings restore.master_user and restore.master_password_file: "
                          "give both or neither")
    if restore.max_messages < 1:
        raise ConfigError(f"setting restore.max_messages = {restore.max_messages!r}: "
                          "at least 1")
    if restore.timeout_seconds <= 0:
        raise ConfigError(f"setting restore.timeout_seconds = {restore.timeout_seconds!r}: "
                          "must be more than 0")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
