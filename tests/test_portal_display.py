# What the portal's pages tell their reader: a result's sender is its From
# header (the envelope sender is a delivery detail of the message page);
# success, information and errors are told apart, to eyes and to screen
# readers; the case page gives human times, the real scope of a search,
# held messages (not objects) and refreshes itself while an export runs.

from __future__ import annotations

import re

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.ediscovery import make_home, message, person
from tests.test_ediscovery_portal import open_case, post, signed_in
from vault.cases import Cases
from vault.config import load
from vault.control import ControlDB
from vault.export import Exporter
from vault.ingest import open_vault
from vault.ownership import Envelope
from web.app import create_app
from web.times import time_element

BOUNCE = "bounces+2026-42@mailer.elsewhere.net"
ALERT = re.compile(r'<p class="flash error" role="alert">([^<]*)</p>')
STATUS = re.compile(r'<p class="flash (success|info)" role="status">([^<]*)</p>')


@pytest.fixture
def home(tmp_path, monkeypatch):
    return make_home(tmp_path, monkeypatch)


@pytest.fixture
def app(home):
    settings = load(home)
    vault = open_vault(settings)
    catalogue = Catalogue(settings.path(settings.catalogue.path))
    # A mailing: From names the person, the envelope the bounce handler.
    raw = message("Alice Liddell <alice@elsewhere.net>", "bob@example.com",
                  "Quarterly newsletter", "heron newsletter text")
    vault.archive(raw, Envelope(BOUNCE, ("bob@example.com",)))
    Follower(vault, catalogue).catch_up()
    app = create_app(settings, vault=vault, catalogue=catalogue)
    app.config["TESTING"] = True
    return app


def test_result_shows_the_from_header_and_the_message_page_the_envelope(app):
    bob = signed_in(app, "bob@example.com")
    page = bob.get("/search?q=heron").get_data(as_text=True)
    sender = re.search(r'<span class="from">([^<]*)</span>', page).group(1)
    assert sender == "Alice Liddell &lt;alice@elsewhere.net&gt;"
    assert BOUNCE not in page
    # from: still finds the envelope sender.
    assert "1 message" in bob.get(f"/search?q=from:{BOUNCE}").get_data(as_text=True)

    message_id = re.search(r'href="/messages/([0-9a-f]{64})"', page).group(1)
    view = bob.get(f"/messages/{message_id}").get_data(as_text=True)
    details = re.search(r'<details class="delivery">(.*?)</details>', view, re.S).group(1)
    assert re.search(rf"<dt>Envelope sender</dt><dd>{re.escape(BOUNCE)}</dd>", details)
    assert re.search(r'<dt>Received by the archive</dt><dd><time datetime="\d{4}-\d\d-\d\dT'
                     r'\d\d:\d\d:\d\dZ">\d{1,2} \w{3} \d{4}, \d\d:\d\d UTC</time></dd>', details)
    # The receipt's envelope recipients are not the reader's to see.
    assert "bob@example.com" not in details


def test_an_envelope_sender_that_was_not_utf8_shows_as_a_replacement_character(home):
    # Receipts written before the receiver refused such addresses hold the
    # byte as a lone surrogate; the message page could not be encoded (500).
    settings = load(home)
    vault = open_vault(settings)
    catalogue = Catalogue(settings.path(settings.catalogue.path))
    raw = message("Jurgen <jurgen@elsewhere.net>", "bob@example.com", "Eight bits",
                  "osprey text")
    vault.archive(raw, Envelope("j\udcfcrgen@elsewhere.net", ("bob@example.com",)))
    Follower(vault, catalogue).catch_up()
    app = create_app(settings, vault=vault, catalogue=catalogue)
    app.config["TESTING"] = True
    bob = signed_in(app, "bob@example.com")
    page = bob.get("/search?q=osprey").get_data(as_text=True)
    message_id = re.search(r'href="/messages/([0-9a-f]{64})"', page).group(1)
    view = bob.get(f"/messages/{message_id}")
    assert view.status_code == 200
    assert "<dt>Envelope sender</dt><dd>j\ufffdrgen@elsewhere.net</dd>" in view.get_data(
        as_text=True)


def test_errors_alert_and_successes_are_a_status(app):
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      client.get("/login").get_data(as_text=True)).group(1)
    page = client.post("/login", data={"address": "bob@example.com", "password": "wrong one",
                                       "csrf_token": token}).get_data(as_text=True)
    assert ALERT.findall(page) == ["Sign-in failed: the address or password is wrong."]
    assert STATUS.findall(page) == []

    officer = open_case(app)
    post(officer, "/cases/kestrel/searches/merger/hold", page="/cases/kestrel")
    page = officer.get("/cases/kestrel").get_data(as_text=True)
    assert STATUS.findall(page) == [("success", "3 messages are now held by this case.")]
    assert ALERT.findall(page) == []


def test_case_page_shows_scope_held_messages_and_human_times(app, home):
    officer = open_case(app)
    post(officer, "/cases/kestrel/searches", {"search": "carols", "query": "kestrel",
                                              "custodians": "carol@example.com,"},
         page="/cases/kestrel")
    post(officer, "/cases/kestrel/searches/merger/hold", page="/cases/kestrel")
    page = officer.get("/cases/kestrel").get_data(as_text=True)

    def custodians_of(search):
        row = re.search(rf"<td>{search}</td>.*?</td>\s*<td>(.*?)</td>", page, re.S)
        return row.group(1)

    assert custodians_of("merger") == (
        "all of the case's: bob@example.com, carol@example.com")
    assert custodians_of("carols") == "carol@example.com"
    # Three messages held, each with its receipt: six objects, three messages.
    assert "case:kestrel:merger: 3 messages, placed by comp@example.com on <time" in page
    created = re.search(r"Opened by comp@example.com on (<time[^>]*>[^<]*</time>)", page)
    assert created and re.fullmatch(
        r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ">\d{1,2} \w{3} \d{4}, '
        r'\d\d:\d\d UTC</time>', created.group(1))
    assert not re.search(r"\d\d:\d\d:\d\d\.\d+\+00:00</", page)  # no raw ISO shown


def test_case_page_refreshes_itself_only_while_an_export_runs(app, home):
    officer = open_case(app)
    page = officer.get("/cases/kestrel").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in page

    settings = load(home)
    control = ControlDB(settings.path(settings.control.database))
    cases = Cases(control, Catalogue(settings.path(settings.catalogue.path)))
    actor = person(home, "comp@example.com")
    case = cases.get("kestrel", actor)
    exporter = Exporter.for_settings(settings, control, cases, open_vault(settings))
    job = exporter.start(case, cases.search(case, "merger"), actor, "zip")
    page = officer.get("/cases/kestrel").get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "this page refreshes itself" in page

    exporter.run(job, actor)
    page = officer.get("/cases/kestrel").get_data(as_text=True)
    assert exporter.job(job)["state"] == "done"
    assert 'http-equiv="refresh"' not in page
    assert re.search(r"started <time datetime=[^>]*>[^<]*</time>, ended <time", page)


def test_time_element_keeps_the_exact_value_and_shows_text_as_itself():
    assert str(time_element("2026-12-04T15:30:12.345678+00:00")) == (
        '<time datetime="2026-12-04T15:30:12Z">4 Dec 2026, 15:30 UTC</time>')
    assert str(time_element("2026-12-04T16:30:00+01:00")).endswith(">4 Dec 2026, 15:30 UTC</time>")
    assert str(time_element("not a <time>")) == "not a &lt;time&gt;"
    assert str(time_element(None)) == "-"

