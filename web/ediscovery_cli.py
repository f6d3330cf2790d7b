"""The eDiscovery commands of ``strongroom``: roles, cases, holds, exports.

Each command acts as an account named with ``--actor``: the same role
checks apply as in the portal, and the audit trail names the person, so
that the two-person rule means two people here too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vault import ConfigError
from vault.audit import command_line_actor
from vault.config import Settings, load
from vault.control import ControlDB
from vault.roles import CAPABILITIES, ROLES, Principal, load_principal

# verify-export's exit status when the folder is intact but its signer was
# not compared with a published fingerprint (--require-fingerprint).
UNPINNED = 3
# verify-export's exit status when the folder is intact, exactly as the
# archive signed it, but the archive recorded messages it could not read
# and left out.  Not 1, which says "do not trust this folder": here the
# folder is sound and the gap is documented.  Not 0: nothing may take the
# export for complete.
INCOMPLETE = 4
# export's exit status when the export finished but left messages out.
EXPORT_FAULTS = 1


def add_commands(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the eDiscovery commands to the ``strongroom`` parser."""
    roles = commands.add_parser("role", help="roles, grants and domain scopes").add_subparsers(
        required=True, metavar="ACTION")
    sub = command("set", role_set, "change an account's role", parent=roles)
    sub.add_argument("address")
    sub.add_argument("role", choices=ROLES)
    sub = command("grant", role_grant, "give an account one more capability", parent=roles)
    sub.add_argument("address")
    sub.add_argument("capability", choices=CAPABILITIES)
    sub = command("scope", role_scope, "limit an account to a mail domain", parent=roles)
    sub.add_argument("address")
    sub.add_argument("domain")

    cases = commands.add_parser("case", help="eDiscovery cases").add_subparsers(
        required=True, metavar="ACTION")
    sub = _acting(command("create", case_create, "open a case", parent=cases))
    sub.add_argument("name")
    sub.add_argument("--description", default="")
    sub.add_argument("--custodian", action="append", default=[],
                     help="a mailbox whose mail is in question (repeatable)")
    sub.add_argument("--member", action="append", default=[],
                     help="another person who works on the case (repeatable)")
    sub = _acting(command("add-search", case_add_search, "save a search in a case",
                          parent=cases))
    sub.add_argument("case")
    sub.add_argument("name")
    sub.add_argument("--query", default="", help="the archive's query language")
    sub.add_argument("--custodian", action="append", default=[],
                     help="limit to these custodians (default: all of the case's)")
    sub.add_argument("--from", dest="date_from", default="", metavar="YYYY-MM-DD")
    sub.add_argument("--to", dest="date_to", default="", metavar="YYYY-MM-DD",
                     help="before this day")
    sub = _acting(command("preview", case_preview, "count and sample what a search finds",
                          parent=cases))
    sub.add_argument("case")
    sub.add_argument("search")
    sub = _acting(command("hold", case_hold, "hold what a saved search finds", parent=cases))
    sub.add_argument("case")
    sub.add_argument("search", nargs="?")
    sub.add_argument("--future", action="store_true",
                     help="also hold all future mail of the custodians")
    sub = _acting(command("release", case_release, "release every hold of a case",
                          parent=cases))
    sub.add_argument("case")

    sub = _acting(command("approve", approve, "approve another person's pending request"))
    sub.add_argument("request", type=int)

    sub = _acting(command("export", export, "export what a case's saved search finds"))
    sub.add_argument("case", nargs="?")
    sub.add_argument("search", nargs="?")
    sub.add_argument("--format", choices=("zip", "mbox", "dat"), default="zip")
    sub.add_argument("--to", dest="destination", metavar="DIR",
                     help="write here (default: the configured export location); "
                          "with --fetch, the folder to copy the export into")
    sub.add_argument("--resume", type=int, metavar="JOB",
                     help="finish an interrupted export job")
    sub.add_argument("--fetch", type=int, metavar="JOB",
                     help="copy a finished export (from S3, say) into the --to folder, "
                          "ready for verify-export")

    command("export-key", export_key,
            "print the export signing key's fingerprint, for recipients to pin")

    sub = commands.add_parser(
        "verify-export", help="check an export folder against its manifest and signature",
        description="check an export folder against its manifest and signature; "
                    "needs nothing but the folder",
        epilog="exit status: 0 intact and complete; 1 the folder is not what was "
               "signed (a file missing, extra or altered, or a bad signature); "
               f"{UNPINNED} with --require-fingerprint and no --fingerprint; "
               f"{INCOMPLETE} intact, but the archive recorded messages it could not "
               "read and left out (listed as LEFT OUT)")
    sub.set_defaults(command=verify_export, home=None)
    sub.add_argument("path")
    sub.add_argument("--fingerprint", default="",
                     help="the archive's published export-key fingerprint, to pin")
    sub.add_argument("--require-fingerprint", action="store_true",
                     help=f"exit {UNPINNED} when no --fingerprint was given (the "
                          "signer was not checked)")


def _acting(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument("--actor", required=True,
                     help="the account acting (its role decides what it may do)")
    sub.set_defaults(command=_auditing_refusals(sub.get_default("command")))
    return sub


def _auditing_refusals(function: Callable[[argparse.Namespace], int]
                       ) -> Callable[[argparse.Namespace], int]:
    """Record a refused command in the audit trail, then let it fail."""
    from vault.approvals import ApprovalError
    from vault.roles import PermissionDeniedError

    def run(arguments: argparse.Namespace) -> int:
        try:
            return function(arguments)
        except (PermissionDeniedError, ApprovalError) as err:
            settings, control = _open(arguments)
            control.audit(arguments.actor.lower(), "denied",
                          " ".join(sys.argv[1:3]) or function.__name__, reason=str(err),
                          via="cli")
            raise

    return run


def role_set(arguments: argparse.Namespace) -> int:
    """Change an account's role."""
    from vault.roles import set_role

    _, control = _open(arguments)
    set_role(control, arguments.address, arguments.role, command_line_actor())
    print(f"{arguments.address.lower()} is now {arguments.role}")
    return 0


def role_grant(arguments: argparse.Namespace) -> int:
    """Give an account one capability beyond its role."""
    from vault.roles import grant

    _, control = _open(arguments)
    grant(control, arguments.address, arguments.capability, command_line_actor())
    print(f"{arguments.address.lower()} may now {arguments.capability}")
    return 0


def role_scope(arguments: argparse.Namespace) -> int:
    """Limit an account's cross-mailbox work to one more domain."""
    from vault.roles import scope

    _, control = _open(arguments)
    scope(control, arguments.address, arguments.domain, command_line_actor())
    print(f"{arguments.address.lower()} is scoped to {arguments.domain.lower()}")
    return 0


def case_create(arguments: argparse.Namespace) -> int:
    """Open a case."""
    settings, control = _open(arguments)
    cases = _cases(settings, control)
    case = cases.create(arguments.name, arguments.description, arguments.custodian,
                        _actor(control, arguments), members=arguments.member)
    print(f"Opened case {case.name} (custodians: {', '.join(case.custodians) or 'none'})")
    return 0


def case_add_search(arguments: argparse.Namespace) -> int:
    """Save a search in a case."""
    settings, control = _open(arguments)
    cases = _cases(settings, control)
    actor = _actor(control, arguments)
    case = cases.get(arguments.case, actor)
    search = cases.add_search(case, arguments.name, arguments.query, actor,
                              custodians=arguments.custodian,
                              date_from=arguments.date_from, date_to=arguments.date_to)
    print(f"Saved search {search.name} in {case.name}: {search.text}")
    return 0


def case_preview(arguments: argparse.Namespace) -> int:
    """Count and sample what a saved search finds."""
    settings, control = _open(arguments)
    cases = _cases(settings, control)
    actor = _actor(control, arguments)
    case = cases.get(arguments.case, actor)
    preview = cases.preview(case, cases.search(case, arguments.search), actor,
                            sample=settings.ediscovery.preview_sample)
    print(f"{preview.messages} messages, {preview.bytes} bytes "
          f"(catalogue: {preview.state['documents']} documents, "
          f"cursor {preview.state['cursor'] or '-'})")
    for custodian, count in sorted(preview.by_custodian.items()):
        print(f"  {custodian}: {count}")
    for example in preview.sample:
        print(f"  {example['date']}  {example['from'][:40]}  {example['subject'][:60]}")
    return 0


def case_hold(arguments: argparse.Namespace) -> int:
    """Hold what a saved search finds (and, with --future, all new mail)."""
    settings, control = _open(arguments)
    cases = _cases(settings, control)
    actor = _actor(control, arguments)
    case = cases.get(arguments.case, actor)
    holds = _case_holds(settings, cases)
    if not arguments.search and not arguments.future:
        raise ConfigError("name a saved search, or give --future")
    if arguments.search:
        count = holds.hold_search(case, cases.search(case, arguments.search), actor)
        print(f"Case {case.name}: {count} messages held by search {arguments.search}")
    if arguments.future:
        holds.hold_future(case, actor)
        print(f"Case {case.name}: future mail of {', '.join(case.custodians)} is held")
    return 0


def case_release(arguments: argparse.Namespace) -> int:
    """Release a case's holds, or ask a second person to."""
    settings, control = _open(arguments)
    cases = _cases(settings, control)
    actor = _actor(control, arguments)
    case = cases.get(arguments.case, actor)
    request = _case_holds(settings, cases).release(
        case, actor, two_person=settings.ediscovery.two_person_release)
    if request is not None:
        print(f"Request {request} filed: a second person must run "
              f"'strongroom approve {request}'")
    else:
        print(f"Released the holds of case {case.name}")
    return 0


def approve(arguments: argparse.Namespace) -> int:
    """Approve a pending hold release or disposition as the second person."""
    from vault.approvals import DISPOSITION, approving, pending

    settings, control = _open(arguments)
    actor = _actor(control, arguments)
    waiting = {request.id: request for request in pending(control)}
    if arguments.request in waiting and waiting[arguments.request].action == DISPOSITION:
        from web.cli import purge

        with approving(control, arguments.request, actor):
            purge(argparse.Namespace(home=arguments.home, dry_run=False,
                                     actor=actor.address, approved=True))
        return 0
    cases = _cases(settings, control)
    request = _case_holds(settings, cases).approve(arguments.request, actor)
    print(f"Approved request {request.id} by {request.requested_by}: released "
          f"{request.target}")
    return 0


def request_disposition(settings: Settings, actor_address: str) -> int:
    """File a purge for a second person to approve (the two-person rule)."""
    from vault.approvals import DISPOSITION, file_request

    control = ControlDB(settings.path(settings.control.database))
    control.create()
    actor = load_principal(control, actor_address)
    if actor is None:
        raise ConfigError("with ediscovery.two_person_disposition, --actor must name "
                          "an account")
    request = file_request(control, DISPOSITION, "purge", actor)
    print(f"Request {request} filed: a second person must run 'strongroom approve {request}'")
    return 0


def export(arguments: argparse.Namespace) -> int:
    """Export what a saved search finds, resumably, with a progress bar."""
    from vault.export import Exporter

    settings, control = _open(arguments)
    actor = _actor(control, arguments)
    cases = _cases(settings, control)
    exporter = Exporter.for_settings(settings, control, cases)
    if arguments.fetch is not None:
        return _fetch(exporter, cases, actor, arguments)
    if arguments.resume is not None:
        job = arguments.resume
    else:
        if not arguments.case or not arguments.search:
            raise ConfigError("name a CASE and a SEARCH, or --resume JOB")
        case = cases.get(arguments.case, actor)
        job = exporter.start(case, cases.search(case, arguments.search), actor,
                             arguments.format, destination=arguments.destination)
        print(f"Export job {job}")
    result = exporter.run(job, actor, progress=_progress)
    print(f"Exported {result.messages} messages ({result.bytes} bytes) to {result.path}")
    print(f"Export key fingerprint: {result.fingerprint}")
    if not result.faults:
        return 0
    print(f"Export job {result.job} completed with {result.faults} fault(s): message(s) "
          "that could not be read are left out, each named with its reason in "
          "manifest.json (run `strongroom verify`):")
    for message, reason in result.left_out:
        print(f"  {message}: {reason}")
    if result.faults > len(result.left_out):
        print(f"  ... and {result.faults - len(result.left_out)} more")
    return EXPORT_FAULTS


def _fetch(exporter: Any, cases: Any, actor: Principal, arguments: argparse.Namespace
           ) -> int:
    """Copy a finished export into a local folder (for verify-export)."""
    from pathlib import Path

    if not arguments.destination:
        raise ConfigError("--fetch JOB needs --to DIR, the folder to copy it into")
    row = exporter.job(arguments.fetch)
    case = cases.get(_case_name(cases, row["case_id"]), actor)
    folder = exporter.fetch(case, arguments.fetch, Path(arguments.destination), actor)
    print(f"Fetched export job {arguments.fetch} into {folder}")
    print(f"Check it with: strongroom verify-export {folder} --fingerprint "
          "<the archive's published fingerprint>")
    return 0


def _case_name(cases: Any, case_id: int) -> str:
    with cases.control.connect() as connection:
        row = connection.execute("SELECT name FROM cases WHERE id = ?", (case_id,)).fetchone()
    return str(row["name"]) if row else ""


def verify_export(arguments: argparse.Namespace) -> int:
    """Check an export folder; exit 1 on any missing, extra or altered item.

    Without --fingerprint the signature proves only that the folder is
    consistent with the key inside it, which whoever edited the folder
    could have replaced: say so, and with --require-fingerprint exit
    UNPINNED.  An intact folder whose manifest records messages left out
    exits INCOMPLETE, naming each.
    """
    from vault.custody import verify_folder

    report = verify_folder(arguments.path, fingerprint=arguments.fingerprint)
    for fault in report.faults:
        print(f"FAULT {fault}")
    for left_out in report.left_out:
        print(f"LEFT OUT {left_out}")
    if not report.is_clean:
        verdict = f"{len(report.faults)} fault(s)"
    elif not report.is_complete:
        verdict = (f"export intact as signed, but incomplete: {len(report.left_out)} "
                   "message(s) left out by the archive, which could not read them")
    else:
        verdict = "export intact"
    print(f"{report.files} files, {report.items} items checked; signed by key "
          f"{report.fingerprint or '?'}: {verdict}")
    if not report.is_clean:
        return 1
    if not arguments.fingerprint:
        print("WARNING: authenticity NOT checked.  The folder agrees with the key it "
              "carries, but anyone who alters it can re-sign it with a fresh key.  Get "
              "the archive's published export-key fingerprint (its operator prints it "
              "with 'strongroom export-key') from a channel you trust, not from this "
              "folder, and run again with --fingerprint FINGERPRINT.", file=sys.stderr)
        if arguments.require_fingerprint:
            return UNPINNED
    return 0 if report.is_complete else INCOMPLETE


def export_key(arguments: argparse.Namespace) -> int:
    """Print the fingerprint of the archive's export signing key, to publish."""
    from vault.custody import fingerprint, signing_key

    settings = load(Path(arguments.home))
    key = signing_key(settings.path(settings.ediscovery.signing_key_file))
    print(fingerprint(key.public_key()))
    return 0


def _progress(total: int, done: int) -> Callable[[int], None]:
    if not sys.stderr.isatty():
        return lambda count: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="msg", desc="export", file=sys.stderr)
    return bar.update


def _open(arguments: argparse.Namespace) -> tuple[Settings, ControlDB]:
    from pathlib import Path

    settings = load(Path(arguments.home))
    control = ControlDB(settings.path(settings.control.database))
    control.create()
    return settings, control


def _actor(control: ControlDB, arguments: argparse.Namespace) -> Principal:
    actor = load_principal(control, arguments.actor)
    if actor is None:
        raise ConfigError(f"--actor {arguments.actor}: no such enabled account")
    return actor


def _cases(settings: Settings, control: ControlDB) -> Any:
    from indexer.catalogue import open_catalogue
    from vault.cases import Cases

    return Cases(control, open_catalogue(settings))


def _case_holds(settings: Settings, cases: Any) -> Any:
    from vault.case_holds import CaseHolds
    from vault.holds import Holds
    from vault.ingest import open_vault

    vault = open_vault(settings)
    return CaseHolds(cases, Holds(cases.control, vault.store), vault)
