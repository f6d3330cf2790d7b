"""eDiscovery pages: cross-mailbox search, cases, holds, exports, the audit viewer.

Plain server-rendered pages; every form carries its CSRF token, every
view names its capability (``web.roles.requires``) and every action is
audited by the vault module that carries it out.  A case that is not the
viewer's answers 404, as a message that is not theirs does.
"""

from __future__ import annotations

import csv
import io
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from flask import (Blueprint, Flask, Response, current_app, flash, redirect,
                   render_template, request, url_for)
from werkzeug.exceptions import BadRequest, HTTPException, NotFound

from indexer import QueryError
from indexer.extract import extract, header_text
from vault import VaultError
from vault.approvals import ApprovalError, pending
from vault.case_holds import CaseHolds
from vault.cases import Case, CaseError, Cases, owners_of
from vault.config import Settings
from vault.export import ExportError, Exporter
from vault.volumes import spreadsheet_safe
from vault.holds import Holds
from vault.ingest import MESSAGES
from vault.roles import (AUDIT_VIEW, CASE_MANAGE, CASE_VIEW, EXPORT_DOWNLOAD, EXPORT_RUN,
                         HOLD_PLACE, HOLD_RELEASE, MAIL_ANY, PermissionDeniedError,
                         in_scope)
from web.archive import archive
from web.roles import principal, refuse, requires

cases_pages = Blueprint("cases", __name__)

SEARCH_LIMIT = 200
AUDIT_LIMIT = 500
SUMMARY_HEADERS = ("From", "To", "Cc", "Bcc", "Date", "Subject", "Message-ID")
# While an export is in these states the case page reloads itself this
# often (a meta refresh: the portal serves no script).
RUNNING_STATES = ("queued", "running")
REFRESH_SECONDS = 5


def register(app: Flask, settings: Settings) -> None:
    """Add the eDiscovery pages to the portal."""
    app.extensions["strongroom.settings"] = settings
    app.register_blueprint(cases_pages)


@cases_pages.errorhandler(VaultError)
def refused(error: VaultError) -> Any:
    """Answer a refusal from the vault with the HTTP error that fits it."""
    if isinstance(error, PermissionDeniedError):
        try:
            refuse(str(error).rpartition(" ")[2])
        except HTTPException as answer:
            return _error_page(answer)
    if isinstance(error, CaseError) and str(error).startswith("no case"):
        return _error_page(NotFound("No such case."))
    if isinstance(error, (CaseError, ApprovalError, ExportError)):
        return _error_page(BadRequest(str(error)))
    raise error


def _error_page(error: HTTPException) -> Any:
    code = error.code or 500
    return render_template("error.html", code=code, message=error.description), code


def _settings() -> Settings:
    settings: Settings = current_app.extensions["strongroom.settings"]
    return settings


def _cases() -> Cases:
    return Cases(archive().control, archive().catalogue)


def _holds(cases: Cases) -> CaseHolds:
    return CaseHolds(cases, Holds(archive().control, archive().vault.store), archive().vault)


def _exporter(cases: Cases) -> Exporter:
    return Exporter.for_settings(_settings(), archive().control, cases, archive().vault)


def _case(name: str) -> tuple[Cases, Case]:
    cases = _cases()
    return cases, cases.get(name, principal())


@cases_pages.get("/ediscovery/search")
@requires(MAIL_ANY)
def search() -> Any:
    query = request.args.get("q", "").strip()
    purpose = _purpose()
    hits, error, total = [], None, 0
    if query:
        try:
            found = archive().catalogue.matching_ids(query)
        except QueryError as err:
            error, found = str(err), []
        for message_id in found:
            document = archive().catalogue.document(message_id) or {}
            owners = owners_of(document)
            if not in_scope(principal(), owners):
                continue
            total += 1
            if len(hits) < SEARCH_LIMIT:
                hits.append({"id": message_id, "subject": document.get("subject", ""),
                             "from": document.get("from", ""), "date": document.get("date"),
                             "owners": owners})
        archive().control.audit(principal().address, "search", query=query, total=total,
                                scope="all mailboxes", **purpose)
    hits.sort(key=lambda hit: str(hit["date"] or ""), reverse=True)
    holds = Holds(archive().control, archive().vault.store)
    for hit in hits:
        hit["held"] = holds.is_held(f"{MESSAGES}/{hit['id']}")
    return render_template("ediscovery_search.html", query=query, hits=hits, total=total,
                           error=error, limit=SEARCH_LIMIT, case_name=purpose.get("case"))


def _purpose() -> dict[str, str]:
    """Return the case a cross-mailbox read is for (``?case=``), checked.

    Reading across mailboxes needs no case: that is how a case is built
    (docs/ediscovery.md, "Compliance reads outside a case").  A read for a
    case says so in the audit trail, and only a member may claim the case.
    """
    name = request.args.get("case", "").strip()
    if not name:
        return {}
    return {"case": _case(name)[1].name}


@cases_pages.get("/ediscovery/messages/<message_id>")
@requires(MAIL_ANY, NotFound)
def message(message_id: str) -> Any:
    document = archive().catalogue.document(message_id) if len(message_id) == 64 else None
    owners = owners_of(document or {})
    if document is None or not in_scope(principal(), owners):
        refuse(MAIL_ANY, NotFound, message_id)
    purpose = _purpose()
    raw = archive().vault.read_message(f"{MESSAGES}/{message_id}")
    archive().control.audit(principal().address, "view", message_id, scope="all mailboxes",
                            **purpose)
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:1024 * 1024])
    summary = [(name, header_text(headers, name)) for name in SUMMARY_HEADERS
               if headers.get(name) is not None]
    held = Holds(archive().control, archive().vault.store).is_held(f"{MESSAGES}/{message_id}")
    return render_template("ediscovery_message.html", summary=summary, owners=owners, held=held,
                           found=extract(raw, read_attachments=False), message_id=message_id)


@cases_pages.get("/cases")
@requires(CASE_VIEW)
def index() -> Any:
    return render_template("cases.html", cases=_cases().visible(principal()))


@cases_pages.post("/cases")
@requires(CASE_MANAGE)
def create() -> Any:
    form = request.form
    custodians = form.get("custodians", "").replace(",", " ").split()
    case = _cases().create(form.get("name", "").strip(), form.get("description", ""),
                           custodians, principal())
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.get("/cases/<name>")
@requires(CASE_VIEW)
def show(name: str, preview: Any = None, previewed: str = "") -> Any:
    cases, case = _case(name)
    holds = _holds(cases)
    jobs = _exporter(cases).jobs(case)
    return render_template(
        "case.html", case=case, searches=cases.searches(case), notes=cases.notes(case),
        holds=holds.active_holds(case), jobs=jobs,
        requests=pending(archive().control, "case:" + case.name),
        preview=preview, previewed=previewed, files=_finished_files,
        running=any(job["state"] in RUNNING_STATES for job in jobs),
        refresh_seconds=REFRESH_SECONDS)


def _finished_files(job: dict[str, Any]) -> list[str]:
    """List what a member can download: the top-level files, and each
    volume of natives as one zip made as it is sent."""
    return _exporter(_cases()).files(job)


@cases_pages.post("/cases/<name>/searches")
@requires(CASE_MANAGE)
def add_search(name: str) -> Any:
    cases, case = _case(name)
    form = request.form
    try:
        cases.add_search(case, form.get("search", "").strip(), form.get("query", ""),
                         principal(),
                         custodians=form.get("custodians", "").replace(",", " ").split(),
                         date_from=form.get("date_from", "").strip(),
                         date_to=form.get("date_to", "").strip())
    except QueryError as err:
        raise BadRequest(str(err)) from None
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/searches/<search>/preview")
@requires(CASE_VIEW)
def preview(name: str, search: str) -> Any:
    cases, case = _case(name)
    result = cases.preview(case, cases.search(case, search), principal(),
                           sample=_settings().ediscovery.preview_sample)
    return show(name, preview=result, previewed=search)


@cases_pages.post("/cases/<name>/searches/<search>/hold")
@requires(HOLD_PLACE)
def hold(name: str, search: str) -> Any:
    cases, case = _case(name)
    count = _holds(cases).hold_search(case, cases.search(case, search), principal())
    flash(f"{count} messages are now held by this case.", "success")
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/hold-future")
@requires(HOLD_PLACE)
def hold_future(name: str) -> Any:
    cases, case = _case(name)
    _holds(cases).hold_future(case, principal())
    flash("Future mail of the custodians is held.", "success")
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/release")
@requires(HOLD_RELEASE)
def release(name: str) -> Any:
    cases, case = _case(name)
    request_id = _holds(cases).release(case, principal(),
                                       two_person=_settings().ediscovery.two_person_release)
    flash(f"Release request {request_id} waits for a second person." if request_id
          else "The case's holds are released.", "success")
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/approvals/<int:request_id>")
@requires(HOLD_RELEASE)
def approve(name: str, request_id: int) -> Any:
    cases, case = _case(name)
    _holds(cases).approve(request_id, principal())
    flash(f"Request {request_id} approved; the case's holds are released.", "success")
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/notes")
@requires(CASE_MANAGE)
def add_note(name: str) -> Any:
    cases, case = _case(name)
    text = request.form.get("text", "").strip()
    if not text:
        raise BadRequest("A note needs some text.")
    cases.add_note(case, text, principal())
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/members")
@requires(CASE_MANAGE)
def add_member(name: str) -> Any:
    cases, case = _case(name)
    cases.add_member(case, request.form.get("address", "").strip(), principal())
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/custodians")
@requires(CASE_MANAGE)
def add_custodian(name: str) -> Any:
    cases, case = _case(name)
    cases.add_custodian(case, request.form.get("mailbox", "").strip(), principal())
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/searches/<search>/export")
@requires(EXPORT_RUN)
def export(name: str, search: str) -> Any:
    cases, case = _case(name)
    exporter = _exporter(cases)
    job = exporter.start(case, cases.search(case, search), principal(),
                         request.form.get("format", "zip"))
    exporter.run_in_background(job, principal())
    flash(f"Export job {job} started; its progress shows below.", "success")
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.post("/cases/<name>/exports/<int:job>/resume")
@requires(EXPORT_RUN)
def resume(name: str, job: int) -> Any:
    cases, case = _case(name)
    exporter = _exporter(cases)
    if exporter.job(job)["case_id"] != case.id:
        raise NotFound("No such export.")
    exporter.run_in_background(job, principal())
    return redirect(url_for("cases.show", name=case.name))


@cases_pages.get("/cases/<name>/exports/<int:job>/<path:relative>")
@requires(EXPORT_DOWNLOAD)
def download(name: str, job: int, relative: str) -> Any:
    cases, case = _case(name)
    try:
        sent = _exporter(cases).download(case, job, relative, principal())
    except ExportError:
        raise NotFound("No such export file.") from None
    headers = {"Content-Disposition": f'attachment; filename="{sent.name}"'}
    if sent.size is not None:
        headers["Content-Length"] = str(sent.size)
    return Response(sent.chunks, mimetype=sent.mimetype, headers=headers)


@cases_pages.get("/audit")
@requires(AUDIT_VIEW)
def audit() -> Any:
    from vault.audit import verify_chain
    from vault.audit_redaction import redact

    filters = {name: request.args.get(name, "").strip()
               for name in ("actor", "action", "case", "since", "until")}
    events = [redact(event, principal()) for event in _audit_events(filters)]
    archive().control.audit(principal().address, "audit.viewed",
                            filters={k: v for k, v in filters.items() if v},
                            csv=request.args.get("format") == "csv")
    if request.args.get("format") == "csv":
        return _audit_csv(events)
    chain = verify_chain(archive().control, archive().vault)
    return render_template("audit.html", events=events, filters=filters, chain=chain,
                           limit=AUDIT_LIMIT)


def _audit_events(filters: dict[str, str]) -> list[dict[str, Any]]:
    clauses, parameters = [], []
    for column, operator, value in (("actor", "=", filters["actor"]),
                                    ("action", "=", filters["action"]),
                                    ("at", ">=", filters["since"]),
                                    ("at", "<", filters["until"])):
        if value:
            clauses.append(f"{column} {operator} ?")
            parameters.append(value)
    if filters["case"]:
        # Case events name the case as target; hold events name "case:<case>:...".
        # Reads made for a case carry it in their detail.
        clauses.append("(target = ? OR target LIKE ? OR json_extract(detail, '$.case') = ?)")
        parameters += [filters["case"], f"case:{filters['case']}:%", filters["case"]]
    query = "SELECT * FROM audit"
    if clauses:
        query += " WHERE " + " AND ".join(clauses)
    with archive().control.connect() as connection:
        rows = connection.execute(query + " ORDER BY id DESC LIMIT ?",
                                  (*parameters, AUDIT_LIMIT)).fetchall()
    return [dict(row) for row in rows]


def _audit_csv(events: list[dict[str, Any]]) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("id", "at", "actor", "action", "target", "detail"))
    for event in events:
        writer.writerow(tuple(_csv_safe(str(event[c])) for c in
                              ("id", "at", "actor", "action", "target", "detail")))
    return Response(buffer.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="audit.csv"'})


def _csv_safe(value: str) -> str:
    # Audit targets can carry user-typed text.
    return spreadsheet_safe(value)
