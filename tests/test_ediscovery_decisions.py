# Who sees what of the audit trail, and reads across mailboxes made for a
# case: the admin sees actions, actors and targets but no query text or
# file name; a read made for a case is recorded with it, and only a
# member may claim the case.

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from tests.ediscovery import make_home, portal_app
from tests.test_ediscovery_portal import ids_found, open_case, signed_in
from vault.audit_redaction import REDACTED
from vault.config import load
from vault.control import ControlDB

SECRET_QUERY = "kestrel"


@pytest.fixture
def home(tmp_path, monkeypatch):
    return make_home(tmp_path, monkeypatch)


@pytest.fixture
def app(home):
    return portal_app(home)


def events(home, **where):
    settings = load(home)
    rows = ControlDB(settings.path(settings.control.database)).audit_events(limit=1000)
    return [row for row in rows if all(row[k] == v for k, v in where.items())]


def audit_csv(client, **filters):
    answer = client.get("/audit", query_string={**filters, "format": "csv"})
    assert answer.status_code == 200
    return list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))


def test_admin_sees_who_searched_but_not_the_query(app, home):
    auditor = signed_in(app, "aud@example.com")
    assert ids_found(auditor, SECRET_QUERY)
    admin = signed_in(app, "admin@example.com", "admin password 1")
    page = admin.get("/audit", query_string={"actor": "aud@example.com"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "aud@example.com" in text
    assert SECRET_QUERY not in text and REDACTED in text
    (row,) = audit_csv(admin, actor="aud@example.com", action="search")
    detail = json.loads(row["detail"])
    assert detail["query"] == REDACTED and detail["total"] == 4
    # The auditor, who may read the mail, sees the query itself.
    (row,) = audit_csv(auditor, actor="aud@example.com", action="search")
    assert json.loads(row["detail"])["query"] == SECRET_QUERY
    # The stored trail is untouched: redaction is in the viewer only.
    (stored,) = events(home, actor="aud@example.com", action="search")
    assert json.loads(stored["detail"])["query"] == SECRET_QUERY


def test_a_read_made_for_a_case_is_audited_with_it(app, home):
    officer = open_case(app)
    page = officer.get(f"/ediscovery/search?q={SECRET_QUERY}&case=kestrel")
    found = re.findall(r'href="/ediscovery/messages/([0-9a-f]{64})\?case=kestrel"',
                       page.get_data(as_text=True))
    # Every mailbox is searched (dave's too, no custodian yet): the case
    # names the purpose, it does not narrow the search.
    assert len(found) == 4
    assert officer.get(f"/ediscovery/messages/{found[0]}?case=kestrel").status_code == 200
    reads = [row for row in events(home, actor="comp@example.com")
             if row["action"] in ("search", "view")]
    assert {json.loads(row["detail"]).get("case") for row in reads} == {"kestrel"}
    # The audit viewer's case filter finds the reads beside the case's steps.
    actions = {row["action"] for row in audit_csv(officer, case="kestrel")}
    assert {"case.created", "search", "view"} <= actions


def test_a_read_outside_any_case_is_audited_without_one(app, home):
    officer = signed_in(app, "comp@example.com")
    assert ids_found(officer, SECRET_QUERY)
    (row,) = events(home, actor="comp@example.com", action="search")
    assert "case" not in json.loads(row["detail"])
    assert json.loads(row["detail"])["scope"] == "all mailboxes"


def test_only_a_member_may_claim_a_case_for_a_read(app, home):
    open_case(app)
    other = signed_in(app, "comp2@example.com")
    answer = other.get(f"/ediscovery/search?q={SECRET_QUERY}&case=kestrel")
    assert answer.status_code == 404
    assert not events(home, actor="comp2@example.com", action="search")
