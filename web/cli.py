"""The ``strongroom`` command: set up a home, serve it, manage accounts."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from indexer import IndexerError
from vault import ConfigError, VaultError
from vault.audit import command_line_actor as _operator
from vault.config import CONFIG_NAME, Settings, load, parse_listen
from vault.control import ControlDB
from vault.keys import LocalKeyFile
from vault.store import LocalWormStore
from web.accounts import AccountError, Accounts, check_password, token_id_of

if TYPE_CHECKING:
    from indexer.reconcile import Coverage

log = logging.getLogger("strongroom")

CONFIG_TEMPLATE = """\
# Strongroom archive home.  Every setting, its meaning and its default is
# described in config.example.toml in the Strongroom distribution; settings
# not named here take their defaults.

[archive]
# The organisation's mail domains: their addresses are archive mailboxes.
domains = {domains}
"""


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every SMTP command at INFO; our receiver logs each
    # delivery itself.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # Keys, mail and password hashes live under the home: private by default.
    previous_umask = os.umask(0o077)
    try:
        status = arguments.command(arguments) or 0
    except (ConfigError, AccountError, VaultError, IndexerError) as err:
        print(f"strongroom: {err}", file=sys.stderr)
        status = 2
    finally:
        os.umask(previous_umask)
    if arguments.home is not None:
        _seal_audit(Path(arguments.home))
    return status


def _seal_audit(home: Path) -> None:
    # Whatever a command did is sealed into the audit chain before it
    # returns; serve also seals on its own schedule.
    from vault.audit import seal_pending
    from vault.ingest import open_vault

    try:
        settings = load(home)
        # The command already opened (and brought up to date) the database.
        control = ControlDB(settings.path(settings.control.database))
        seal_pending(control, open_vault(settings))
    except ConfigError:
        return
    except Exception:
        log.exception("could not seal the audit trail; it will be sealed later")


def init(arguments: argparse.Namespace) -> int:
    """Create a new archive home with keys, store, database and an admin."""
    home = Path(arguments.home)
    if home.exists() and any(home.iterdir()):
        raise ConfigError(f"{home} already exists and is not empty; not overwriting it")
    domains = [d.lower() for d in arguments.domain]
    if not domains:
        raise ConfigError("name at least one mail domain with --domain")
    admin = arguments.admin or f"admin@{domains[0]}"
    chosen = os.environ.get("STRONGROOM_ADMIN_PASSWORD", "")
    password = chosen or secrets.token_urlsafe(18)
    check_password(password)

    created = not home.exists()
    home.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        _create_home(home, domains, admin, password)
    except BaseException:
        # A half-made home would be served later as if it were whole.
        _remove_partial_home(home, created)
        raise
    print(f"Created the archive home {home}")
    print(f"Administrator: {admin}")
    if not chosen:
        print(f"Password (shown once): {password}")
    return 0


def _create_home(home: Path, domains: list[str], admin: str, password: str) -> None:
    (home / CONFIG_NAME).write_text(CONFIG_TEMPLATE.format(domains=json.dumps(domains)))
    settings = load(home)
    LocalKeyFile.create(settings.path(settings.keys.key_file))
    from web.app import create_secret

    create_secret(settings.path(settings.portal.secret_key_file))
    LocalWormStore(settings.path(settings.store.path))
    control = _control(settings)
    control.create()
    _accounts(settings, control).add(admin, password, role="admin")
    control.audit("strongroom-init", "home.created", str(home), domains=domains)


def _remove_partial_home(home: Path, created: bool) -> None:
    import shutil

    if created:
        shutil.rmtree(home, ignore_errors=True)
        return
    for child in home.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def serve(arguments: argparse.Namespace) -> int:
    """Run the receiver, the follower and the portal until told to stop."""
    settings = _settings(arguments)
    if arguments.smtp_listen:
        settings = settings.replace("receiver", listen=arguments.smtp_listen)
    if arguments.web_listen:
        settings = settings.replace("portal", listen=arguments.web_listen)
    parse_listen("--smtp-listen", settings.receiver.listen)
    parse_listen("--web-listen", settings.portal.listen)
    from web.service import Service

    service = Service(settings)
    stopping = threading.Event()

    def request_stop(signum, frame):
        if not stopping.is_set():
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stopping.set()
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    service.run()
    return 0


def user_add(arguments: argparse.Namespace) -> int:
    """Create an account for a local address."""
    settings = _settings(arguments)
    if arguments.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        raise ConfigError("give the password on standard input with --password-stdin")
    control = _control(settings)
    user = _accounts(settings, control).add(
        arguments.address, password, role=arguments.role, aliases=tuple(arguments.alias)
    )
    control.audit(_operator(), "user.created", user.address,
                  role=user.role, mailboxes=sorted(user.mailboxes))
    print(f"Created {user.role} {user.address} ({', '.join(sorted(user.mailboxes))})")
    return 0


def token_create(arguments: argparse.Namespace) -> int:
    """Create an API token for an account and print it."""
    settings = _settings(arguments)
    control = _control(settings)
    token = _accounts(settings, control).create_token(arguments.address)
    control.audit(_operator(), "token.created", arguments.address.lower(),
                  token=token_id_of(token))
    print(token)
    return 0


def token_list(arguments: argparse.Namespace) -> int:
    """List an account's API tokens by id (never the tokens themselves)."""
    settings = _settings(arguments)
    tokens = _accounts(settings, _control(settings)).tokens(arguments.address)
    for identifier, created_at in tokens:
        print(f"{identifier}  created {created_at}")
    if not tokens:
        print(f"{arguments.address.lower()} has no API tokens")
    return 0


def token_revoke(arguments: argparse.Namespace) -> int:
    """Revoke one API token of an account by its id, or all of them."""
    if (arguments.id is None) == (not arguments.all):
        raise AccountError("name one token id, or --all")
    settings = _settings(arguments)
    revoked = _accounts(settings, _control(settings)).revoke_tokens(
        arguments.address, arguments.id, _operator())
    print(f"Revoked {revoked} API token(s) of {arguments.address.lower()}")
    return 0


def sender_add(arguments: argparse.Namespace) -> int:
    """Create a journal sender that mail servers authenticate as (SMTP AUTH)."""
    from web.senders import JournalSenders

    settings = _settings(arguments)
    if not arguments.password_stdin:
        raise ConfigError("give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    control = _control(settings)
    JournalSenders(control).add(arguments.name, password)
    control.audit(_operator(), "sender.created", arguments.name)
    print(f"Created journal sender {arguments.name}")
    if settings.receiver.trust == "networks":
        print("receiver.trust is 'networks': set it to 'auth' or 'networks-or-auth' "
              "for the receiver to accept this sender")
    return 0


def sender_remove(arguments: argparse.Namespace) -> int:
    """Remove a journal sender; its next AUTH fails."""
    from web.senders import JournalSenders

    settings = _settings(arguments)
    control = _control(settings)
    JournalSenders(control).remove(arguments.name)
    control.audit(_operator(), "sender.removed", arguments.name)
    print(f"Removed journal sender {arguments.name}")
    return 0


def verify(arguments: argparse.Namespace) -> int:
    """Open and cross-check every object; exit 1 if anything is wrong."""
    import datetime as dt

    from indexer.catalogue import open_catalogue
    from indexer.follow import overlap_floor, read_cursor
    from vault.ingest import open_vault
    from vault.verification import verify as verify_vault

    settings = _settings(arguments)
    vault = open_vault(settings)
    catalogue = open_catalogue(settings)
    # The cursor before the ids: every receipt through it is in the ids.
    indexed_through = overlap_floor(
        read_cursor(catalogue.cursor_path),
        dt.timedelta(seconds=settings.catalogue.overlap_seconds))
    report = verify_vault(vault, catalogue_ids=catalogue.ids(),
                          indexed_through=indexed_through, sample=arguments.sample,
                          progress=_progress_bar)
    control = _control(settings)
    control.audit(_operator(), "verify", "", messages=report.messages,
                  receipts=report.receipts, opened=report.opened, faults=len(report.faults))
    for fault in report.faults:
        print(f"FAULT {fault}")
    if report.not_yet_indexed:
        print(f"{report.not_yet_indexed} message(s) received since the catalogue's cursor, "
              "not yet indexed (not a fault)")
    print(f"{report.messages} messages ({report.opened} opened), {report.receipts} receipts, "
          f"{len(report.faults)} fault(s)")
    return 0 if report.is_clean else 1


def keys_rotate(arguments: argparse.Namespace) -> int:
    """Make a new key-encryption key current; old objects still open."""
    settings = _settings(arguments)
    if settings.keys.provider != "local":
        raise ConfigError(
            "with keys.provider = 'kms', rotate the key in KMS (automatic rotation keeps "
            "its ARN), or set a new keys.kms_key_id and list the old one in "
            "keys.kms_previous_key_ids")
    keys = LocalKeyFile(settings.path(settings.keys.key_file))
    key_id = keys.rotate()
    _control(settings).audit(
        _operator(), "keys.rotated", key_id)
    print(f"New objects are sealed under {key_id} once serve is restarted; "
          "every older key stays in the key file.")
    return 0


def hold_place(arguments: argparse.Namespace) -> int:
    """Hold every message matching a query, in every mailbox, with its receipts."""
    from indexer.catalogue import open_catalogue
    from vault.holds import Holds
    from vault.ingest import MESSAGES, open_vault

    settings = _settings(arguments)
    vault = open_vault(settings)
    catalogue = open_catalogue(settings)
    keys = []
    for message_id in catalogue.matching_ids(arguments.query):
        keys.append(f"{MESSAGES}/{message_id}")
        keys.extend((catalogue.document(message_id) or {}).get("receipts", []))
    control = _control(settings)
    held = Holds(control, vault.store).place(arguments.name, arguments.query, keys,
                                             actor=arguments.actor)
    print(f"Hold {arguments.name!r} covers {held} objects "
          f"({sum(k.startswith(MESSAGES) for k in keys)} messages and their receipts)")
    return 0


def hold_release(arguments: argparse.Namespace) -> int:
    """Release a hold; objects no other hold covers lose their legal hold."""
    from vault.holds import Holds
    from vault.ingest import open_vault

    settings = _settings(arguments)
    control = _control(settings)
    cleared = Holds(control, open_vault(settings).store).release(
        arguments.name, actor=arguments.actor)
    print(f"Released {arguments.name!r}; {cleared} objects are no longer held")
    return 0


def purge(arguments: argparse.Namespace) -> int:
    """Delete what is past retention and not held; --dry-run only lists it."""
    from indexer.catalogue import open_catalogue
    from vault.disposition import purge as purge_vault
    from vault.holds import Holds
    from vault.ingest import open_vault

    settings = _settings(arguments)
    if (settings.ediscovery.two_person_disposition and not arguments.dry_run
            and not getattr(arguments, "approved", False)):
        from web.ediscovery_cli import request_disposition

        return request_disposition(settings, arguments.actor)
    vault = open_vault(settings)
    control = _control(settings)
    catalogue = open_catalogue(settings)
    try:
        report = purge_vault(vault, control, Holds(control, vault.store), actor=arguments.actor,
                             dry_run=arguments.dry_run, remove_documents=catalogue.delete)
    finally:
        catalogue.close()
    verb = "Would delete" if arguments.dry_run else "Deleted"
    for key in report.messages:
        print(f"{verb} {key}")
    print(f"{verb} {len(report.messages)} messages and {len(report.receipts)} receipts; "
          f"kept {report.kept_retained} under retention and {report.kept_held} on hold")
    return 0


def status(arguments: argparse.Namespace) -> int:
    """Show what each journal source sent in the last hour and day."""
    from vault.clock import now
    from vault.ingest import open_vault
    from vault.status import collect

    settings = _settings(arguments)
    control = _control(settings)
    sources = collect(open_vault(settings), control)
    at = now()
    print(f"{'journal source':<32} {'last hour':>18} {'last day':>20} "
          f"{'last message (UTC)':>20} {'4xx/day':>7} {'5xx/day':>7}")
    for source in sources:
        last = f"{source.last_message:%Y-%m-%d %H:%M:%S}" if source.last_message else "never"
        print(f"{source.source:<32} "
              f"{source.messages_hour:>6} msg {_megabytes(source.bytes_hour):>8} "
              f"{source.messages_day:>7} msg {_megabytes(source.bytes_day):>9} "
              f"{last:>20} {source.deferred_day:>7} {source.refused_day:>7}"
              + ("  SILENT" if source.is_silent(at) else ""))
    if not sources:
        print("no mail and no refusals in the last 7 days")
    unreadable = _print_coverage(settings).unreadable
    if unreadable:
        # Exit 1: the figures above are shown, but leave these out.
        print(f"{len(unreadable)} receipt(s) cannot be read and are not counted above "
              f"(run `strongroom verify`): {_first_keys(unreadable)}")
        return 1
    return 0


def _print_coverage(settings: Settings) -> Coverage:
    # Catalogue coverage: messages stored vs indexed, per day of receipt.
    from indexer.catalogue import open_catalogue
    from indexer.reconcile import Reconciler
    from vault.ingest import open_vault

    coverage = Reconciler(open_vault(settings)).coverage(open_catalogue(settings))
    print(f"catalogue: {coverage.indexed} of {coverage.stored} messages indexed, "
          f"{coverage.partial} partially; gap {coverage.stored - coverage.indexed}")
    for day in coverage.days:
        if day.gap or day.partial:
            print(f"  {day.day}  stored {day.stored:>7}  indexed {day.indexed:>7}  "
                  f"partial {day.partial:>5}" + (f"  GAP {day.gap}" if day.gap else ""))
    return coverage


def reindex(arguments: argparse.Namespace) -> int:
    """Rebuild the catalogue from the vault and swap it in atomically."""
    import datetime as dt

    from indexer.catalogue import open_catalogue
    from indexer.reindex import reindex as rebuild
    from vault.ingest import open_vault

    settings = _settings(arguments)
    report = rebuild(open_vault(settings), open_catalogue(settings),
                     overlap=dt.timedelta(seconds=settings.catalogue.overlap_seconds))
    _control(settings).audit(_operator(), "catalogue.reindexed", report.generation,
                             receipts=report.receipts, documents=report.documents,
                             unreadable=len(report.unreadable))
    print(f"Reindexed {report.receipts} receipts into {report.documents} documents "
          f"in {report.seconds:.1f} s; generation {report.generation} is current")
    if report.unreadable:
        # Exit 1: the new catalogue is current, but lacks these.
        print(f"{len(report.unreadable)} object(s) could not be read and are not in the "
              f"catalogue (run `strongroom verify`): {_first_keys(report.unreadable)}")
        return 1
    return 0


def _first_keys(keys: Sequence[str], shown: int = 5) -> str:
    """Return the first ``shown`` object keys, and "..." if there are more."""
    return ", ".join(keys[:shown]) + (" ..." if len(keys) > shown else "")


def _megabytes(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB"


def audit_verify(arguments: argparse.Namespace) -> int:
    """Walk the sealed audit chain; exit 1 at the first break."""
    from vault.audit import verify_chain
    from vault.ingest import open_vault

    settings = _settings(arguments)
    control = _control(settings)
    report = verify_chain(control, open_vault(settings))
    if report.first_break:
        print(f"BREAK {report.first_break}")
    print(f"{report.batches} batches, {report.events} sealed events, "
          f"{report.unsealed} not yet sealed: "
          + ("chain broken" if report.first_break else "chain intact"))
    return 1 if report.first_break else 0


def audit_show(arguments: argparse.Namespace) -> int:
    """Print audit events, newest first, filtered."""
    settings = _settings(arguments)
    control = _control(settings)
    events = control.audit_events(actor=arguments.actor, action=arguments.action,
                                  since=arguments.since, limit=arguments.limit)
    for event in events:
        print(f"{event['at']}  {event['actor']}  {event['action']}  {event['target']}  "
              f"{event['detail']}")
    return 0


def _progress_bar(items, label: str, total: int | None):
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, total=total, unit="obj", file=sys.stderr)


def _control(settings: Settings) -> ControlDB:
    control = ControlDB(settings.path(settings.control.database))
    # Tables added since the home was made appear here (all idempotent).
    control.create()
    return control


def _settings(arguments: argparse.Namespace) -> Settings:
    return load(Path(arguments.home))


def _accounts(settings: Settings, control: ControlDB) -> Accounts:
    from vault.ownership import OwnershipRules

    rules = OwnershipRules(settings.archive.domains, settings.receiver.journal_addresses)
    from web.passwords import PasswordPolicy

    return Accounts(control, rules, PasswordPolicy.from_settings(settings.accounts))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strongroom", description="Self-hosted compliance archive for email."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name, function, help_text, parent=commands):
        sub = parent.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(command=function)
        sub.add_argument("--home", required=True, help="the archive home directory")
        return sub

    sub = command("init", init, "create a new archive home")
    sub.add_argument("--domain", action="append", default=[],
                     help="an organisation mail domain (repeatable)")
    sub.add_argument("--admin", help="the administrator's address (default admin@DOMAIN)")

    sub = command("serve", serve, "run the receiver, the catalogue follower and the portal")
    sub.add_argument("--smtp-listen", metavar="HOST:PORT", help="SMTP listen address")
    sub.add_argument("--web-listen", metavar="HOST:PORT", help="portal listen address")

    users = commands.add_parser("user", help="manage accounts").add_subparsers(
        required=True, metavar="ACTION")
    sub = command("add", user_add, "create an account", parent=users)
    sub.add_argument("address")
    sub.add_argument("--role", default="user", choices=("user", "auditor", "compliance", "admin"))
    sub.add_argument("--alias", action="append", default=[],
                     help="another mailbox this user owns (repeatable)")
    sub.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")

    from web.account_commands import add_commands

    add_commands(users, command, _operator())

    sub = command("verify", verify, "open every object and cross-check the archive")
    sub.add_argument("--sample", type=int, metavar="N",
                     help="open only N randomly chosen messages")

    holds = commands.add_parser("hold", help="legal holds").add_subparsers(
        required=True, metavar="ACTION")
    sub = command("place", hold_place, "hold every message a query matches", parent=holds)
    sub.add_argument("name")
    sub.add_argument("--query", required=True, help="search query, across all mailboxes")
    sub.add_argument("--actor", default=_operator(), help="who places it (for the audit)")
    sub = command("release", hold_release, "release a hold", parent=holds)
    sub.add_argument("name")
    sub.add_argument("--actor", default=_operator(), help="who releases it (for the audit)")

    command("status", status, "show what each journal source sent, and when")
    command("reindex", reindex, "rebuild the catalogue from the vault and swap it in")

    sub = command("purge", purge, "delete what is past retention and not on hold")
    sub.add_argument("--dry-run", action="store_true", help="only list what would go")
    sub.add_argument("--actor", default=_operator(), help="who runs it (for the audit)")

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        required=True, metavar="ACTION")
    command("verify", audit_verify, "walk the sealed audit chain", parent=audit)
    sub = command("show", audit_show, "print audit events, newest first", parent=audit)
    sub.add_argument("--actor", help="only events by this account or tool")
    sub.add_argument("--action", help="only this action (e.g. login.failure)")
    sub.add_argument("--since", metavar="ISO-TIME", help="only events at or after this time")
    sub.add_argument("--limit", type=int, default=100)

    keys = commands.add_parser("keys", help="manage key-encryption keys").add_subparsers(
        required=True, metavar="ACTION")
    command("rotate", keys_rotate, "make a new key current for new objects", parent=keys)

    senders = commands.add_parser(
        "sender", help="mail servers that journal by SMTP AUTH").add_subparsers(
        required=True, metavar="ACTION")
    sub = command("add", sender_add, "create a journal sender", parent=senders)
    sub.add_argument("name")
    sub.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    sub = command("remove", sender_remove, "remove a journal sender", parent=senders)
    sub.add_argument("name")

    tokens = commands.add_parser("token", help="manage API tokens").add_subparsers(
        required=True, metavar="ACTION")
    sub = command("create", token_create, "create an API token and print it", parent=tokens)
    sub.add_argument("address")
    sub = command("list", token_list, "list an account's API tokens by id", parent=tokens)
    sub.add_argument("address")
    sub = command("revoke", token_revoke, "revoke an API token by id, or all of an account's",
                  parent=tokens)
    sub.add_argument("address")
    sub.add_argument("id", nargs="?", help="the token's id, as `token list` shows it")
    sub.add_argument("--all", action="store_true", help="revoke every token of the account")

    from web.ediscovery_cli import add_commands

    add_commands(commands, command)
    return parser


if __name__ == "__main__":
    sys.exit(main())
