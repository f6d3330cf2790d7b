# The eDiscovery portal: an auditor searches and reads every mailbox but
# cannot hold or export; an administrator opens no mail; a compliance
# officer opens a case, holds, exports and downloads - all audited.

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
import zipfile

import pytest

from tests.ediscovery import audit_actions, make_home, message_id, portal_app
from tests.homes import damage
from tests.portal_accounts import csrf_token, signed_in
from vault.config import load


@pytest.fixture
def home(tmp_path, monkeypatch):
    return make_home(tmp_path, monkeypatch)


@pytest.fixture
def app(home):
    return portal_app(home)


def post(client, path, data=None, page="/cases"):
    return client.post(path, data={**(data or {}), "csrf_token": csrf_token(client, page)})


def ids_found(client, query):
    page = client.get(f"/ediscovery/search?q={query}").get_data(as_text=True)
    return re.findall(r'href="/ediscovery/messages/([0-9a-f]{64})"', page)


def open_case(app, actor="comp@example.com", members=()):
    client = signed_in(app, actor)
    assert post(client, "/cases", {"name": "kestrel", "description": "merger leak",
                                   "custodians": "bob@example.com carol@example.com"}
                ).status_code == 302
    post(client, "/cases/kestrel/searches", {"search": "merger", "query": "kestrel"},
         page="/cases/kestrel")
    for member in members:
        post(client, "/cases/kestrel/members", {"address": member}, page="/cases/kestrel")
    return client


def test_auditor_searches_and_reads_every_mailbox(app, home):
    auditor = signed_in(app, "aud@example.com")
    found = ids_found(auditor, "kestrel")
    assert len(found) == 4  # bob's, carol's and dave's
    page = auditor.get(f"/ediscovery/messages/{found[0]}")
    assert page.status_code == 200
    assert "kestrel" in page.get_data(as_text=True)
    assert audit_actions(home, "aud@example.com")[-2:] == ["search", "view"]


def test_auditor_cannot_hold_or_export_and_each_refusal_is_audited(app, home):
    open_case(app, members=["aud@example.com"])
    auditor = signed_in(app, "aud@example.com")
    assert auditor.get("/cases/kestrel").status_code == 200
    page = "/cases/kestrel"
    assert post(auditor, "/cases/kestrel/searches/merger/hold", page=page).status_code == 403
    assert post(auditor, "/cases/kestrel/searches/merger/export", {"format": "zip"},
                page=page).status_code == 403
    assert post(auditor, "/cases/kestrel/release", page=page).status_code == 403
    denied = [a for a in audit_actions(home, "aud@example.com") if a == "denied"]
    assert len(denied) == 3
    assert "hold.placed" not in audit_actions(home)


def test_a_case_that_is_not_yours_is_not_found(app):
    open_case(app)
    other = signed_in(app, "comp2@example.com")
    assert other.get("/cases/kestrel").status_code == 404
    assert post(other, "/cases/kestrel/searches/merger/hold").status_code == 404


def test_admin_opens_no_mail_content(app, home):
    auditor = signed_in(app, "aud@example.com")
    message_id = ids_found(auditor, "kestrel")[0]
    admin = signed_in(app, "admin@example.com", "admin password 1")
    assert admin.get("/search").headers["Location"] == "/audit"
    assert admin.get("/search?q=kestrel").status_code == 403
    assert admin.get(f"/messages/{message_id}").status_code == 404
    assert admin.get(f"/messages/{message_id}/original.eml").status_code == 404
    assert admin.get(f"/ediscovery/messages/{message_id}").status_code == 404
    assert admin.get("/ediscovery/search?q=kestrel").status_code == 403
    assert admin.get("/cases").status_code == 403
    # Every route of the reader's own blueprints is guarded, not only those
    # listed one by one.
    for path in ("body.html", "attachments/1", "inline/1", "conversation"):
        assert admin.get(f"/messages/{message_id}/{path}").status_code == 404, path
    assert admin.get("/restore/0123abcd").status_code == 404
    assert audit_actions(home, "admin@example.com").count("denied") == 11


def test_an_end_user_cannot_search_other_mailboxes(app, home):
    bob = signed_in(app, "bob@example.com")
    assert bob.get("/ediscovery/search?q=kestrel").status_code == 403
    assert bob.get("/search?q=kestrel").status_code == 200
    assert bob.get("/audit").status_code == 403


def test_compliance_officer_holds_exports_and_downloads_with_every_step_audited(app, home):
    officer = open_case(app)
    page = "/cases/kestrel"
    preview = post(officer, "/cases/kestrel/searches/merger/preview", page=page)
    assert "3 messages" in preview.get_data(as_text=True)
    assert post(officer, "/cases/kestrel/searches/merger/hold", page=page).status_code == 302
    assert "case:kestrel:merger" in officer.get(page).get_data(as_text=True)
    listing = officer.get("/ediscovery/search?q=kestrel").get_data(as_text=True)
    assert listing.count("on legal hold") == 3  # dave's is no custodian's
    assert post(officer, "/cases/kestrel/searches/merger/export", {"format": "dat"},
                page=page).status_code == 302
    deadline = time.monotonic() + 240  # a busy machine can take its time
    while "done" not in (text := officer.get(page).get_data(as_text=True)):
        assert time.monotonic() < deadline and "failed" not in text
        time.sleep(0.2)
    assert '<progress max="3" value="3">' in text
    link = re.search(r'href="(/cases/kestrel/exports/\d+/manifest.json)"', text).group(1)
    manifest = json.loads(officer.get(link).get_data())
    assert len(manifest["items"]) == 3
    assert officer.get(link.replace("manifest.json", "../../../keys/kek.json")
                       ).status_code == 404
    natives = officer.get(link.replace("manifest.json", "NATIVES/VOL0001.zip"))
    with zipfile.ZipFile(io.BytesIO(natives.get_data())) as volume:
        names = sorted(volume.namelist())
        assert len(names) == 3
        for item in manifest["items"]:
            inside = item["path"].removeprefix("NATIVES/VOL0001/")
            assert hashlib.sha256(volume.read(inside)).hexdigest() == item["sha256"]
    actions = audit_actions(home, "comp@example.com")
    for step in ("case.created", "case.search_saved", "case.previewed", "hold.placed",
                 "case.held", "export.started", "export.finished", "export.downloaded"):
        assert step in actions, step


def test_two_person_release_through_the_portal(tmp_path, monkeypatch):
    home = make_home(tmp_path, monkeypatch, config="[ediscovery]\ntwo_person_release = true\n")
    app = portal_app(home)
    officer = open_case(app, members=["comp2@example.com"])
    page = "/cases/kestrel"
    post(officer, "/cases/kestrel/searches/merger/hold", page=page)
    # The release waits for a second officer: a request, not a release.
    assert post(officer, "/cases/kestrel/release", page=page).status_code == 302
    request_id = re.search(r"Request (\d+)", officer.get(page).get_data(as_text=True)).group(1)
    assert "Approve" not in officer.get(page).get_data(as_text=True)
    assert post(officer, f"/cases/kestrel/approvals/{request_id}", page=page).status_code == 400
    second = signed_in(app, "comp2@example.com")
    assert post(second, f"/cases/kestrel/approvals/{request_id}", page=page).status_code == 302
    assert "None." in second.get(page).get_data(as_text=True)
    assert "approval.granted" in audit_actions(home, "comp2@example.com")


def test_audit_viewer_filters_exports_csv_and_shows_the_chain(app, home):
    open_case(app)
    auditor = signed_in(app, "aud@example.com")
    page = auditor.get("/audit?actor=comp@example.com&case=kestrel").get_data(as_text=True)
    assert "case.created" in page and "case.search_saved" in page
    assert "login" not in re.findall(r"<td>([a-z.]+)</td>", page)
    assert "Chain intact" in page
    response = auditor.get("/audit?action=case.created&format=csv")
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [row["action"] for row in rows] == ["case.created"]
    assert rows[0]["actor"] == "comp@example.com" and rows[0]["target"] == "kestrel"


def test_admin_token_reaches_no_mail_through_the_api(app, home):
    from vault.control import ControlDB
    from vault.ownership import OwnershipRules
    from web.accounts import Accounts

    auditor = signed_in(app, "aud@example.com")
    message_id = ids_found(auditor, "kestrel")[0]
    settings = load(home)
    token = Accounts(ControlDB(settings.path(settings.control.database)),
                     OwnershipRules(("example.com",))).create_token("admin@example.com")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/search?q=kestrel", headers=headers).status_code == 403
    assert client.get(f"/api/v1/messages/{message_id}/raw", headers=headers).status_code == 404
    assert client.get("/api/v1/search?q=kestrel").status_code == 401
    assert audit_actions(home, "admin@example.com")[-2:] == ["denied", "denied"]


def test_an_export_with_a_damaged_message_says_completed_with_one_fault(app, home):
    # The job used to end "failed" with the integrity error, exporting
    # nothing; the other two messages are evidence all the same.
    damaged = message_id(home, "From line test")
    damage(home, f"messages/{damaged}")
    officer = open_case(app)
    page = "/cases/kestrel"
    assert post(officer, "/cases/kestrel/searches/merger/export", {"format": "zip"},
                page=page).status_code == 302
    deadline = time.monotonic() + 240
    while "done" not in (text := officer.get(page).get_data(as_text=True)):
        assert time.monotonic() < deadline and "failed" not in text
        time.sleep(0.2)
    assert "completed with 1 fault(s)" in text
    assert '<progress max="3" value="2">' in text
    link = re.search(r'href="(/cases/kestrel/exports/\d+/manifest.json)"', text).group(1)
    manifest = json.loads(officer.get(link).get_data())
    assert len(manifest["items"]) == 2
    assert [fault["id"] for fault in manifest["faults"]] == [damaged]
