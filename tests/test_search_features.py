# Search results come in the order asked for (newest first by default, or
# best match), with hit counts by year and by sender for narrowing, on
# both engines, in the portal and in the API, never counting another
# mailbox's mail.

from __future__ import annotations

import json

import pytest

from indexer import QueryError
from indexer.catalogue import Catalogue
from indexer.follow import Follower
from tests.test_portal import app, home, sign_in  # noqa: F401 (fixtures)
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.store import LocalWormStore

BOB = frozenset({"bob@example.com"})

# (sender, date, body) of each message bob owns; carol owns one more.
MAIL = [
    ("ann@example.org", "Tue, 04 Mar 2025 09:00:00 +0000", "PLOVER once"),
    ("ann@example.org", "Fri, 10 Jan 2025 09:00:00 +0000", "PLOVER PLOVER PLOVER PLOVER"),
    ("ben@example.org", "Mon, 03 Jun 2024 09:00:00 +0000", "PLOVER and more words here"),
    ("ann@example.org", "Wed, 01 Feb 2023 09:00:00 +0000", "nothing to see"),
]


def raw_message(sender: str, date: str, body: str, number: int) -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.com\r\nSubject: note {number}\r\n"
            f"Date: {date}\r\nMessage-ID: <f{number}@example.org>\r\n\r\n{body}\r\n").encode()


@pytest.fixture
def catalogue(tmp_path, engine):
    vault = Vault(LocalWormStore(tmp_path / "store"), LocalKeyFile.create(tmp_path / "k.json"),
                  OwnershipRules(("example.com",)))
    for number, (sender, date, body) in enumerate(MAIL):
        vault.archive(raw_message(sender, date, body, number),
                      Envelope(sender, ("bob@example.com",)))
    vault.archive(raw_message("cy@example.org", "Thu, 01 May 2025 09:00:00 +0000",
                              "PLOVER for carol", 9),
                  Envelope("cy@example.org", ("carol@example.com",)))
    catalogue = Catalogue(tmp_path / "catalogue", engine)
    Follower(vault, catalogue, tmp_path / "cursor").catch_up()
    return catalogue


def test_results_are_newest_first_unless_relevance_is_asked(catalogue):
    by_date = catalogue.search("PLOVER", owners=BOB)
    assert [hit.subject for hit in by_date.hits] == ["note 0", "note 1", "note 2"]
    assert by_date.sort == "date"
    by_relevance = catalogue.search("PLOVER", owners=BOB, sort="relevance")
    assert by_relevance.hits[0].subject == "note 1"
    assert sorted(hit.subject for hit in by_relevance.hits) == ["note 0", "note 1", "note 2"]
    with pytest.raises(QueryError, match="sort"):
        catalogue.search("PLOVER", owners=BOB, sort="size")


def test_pages_follow_the_chosen_order(catalogue):
    second = catalogue.search("*", owners=BOB, page=2, per_page=2)
    assert second.total == 4
    assert [hit.subject for hit in second.hits] == ["note 2", "note 3"]


def test_facets_count_hits_by_year_and_sender_within_the_owner_filter(catalogue):
    results = catalogue.search("PLOVER", owners=BOB)
    assert results.facets.years == ((2025, 2), (2024, 1))
    assert results.facets.senders == (("ann@example.org", 2), ("ben@example.org", 1))
    everything = catalogue.search("*", owners=BOB)
    assert everything.facets.years == ((2025, 2), (2024, 1), (2023, 1))
    assert everything.facets.senders == (("ann@example.org", 3), ("ben@example.org", 1))
    assert catalogue.search("PLOVER", owners=frozenset({"carol@example.com"})).facets.senders \
        == (("cy@example.org", 1),)


def test_snippets_mark_the_words_searched_for(catalogue):
    [hit] = catalogue.search("PLOVER date:2024", owners=BOB).hits
    assert ("PLOVER", True) in hit.snippet
    assert any(text.startswith(" and more") for text, matched in hit.snippet if not matched)


def test_portal_shows_sort_choice_and_facets_that_narrow(app):  # noqa: F811
    client = app.test_client()
    sign_in(client)
    page = client.get("/search?q=AVOCET&sort=relevance").get_data(as_text=True)
    assert '<option value="relevance" selected>' in page
    assert "By year" in page and "By sender" in page
    assert "q=AVOCET+date:2025" in page.replace("%3A", ":").replace("%20", "+")
    # An unknown order falls back to newest first rather than failing.
    assert client.get("/search?q=AVOCET&sort=bogus").status_code == 200


def test_api_takes_sort_and_returns_counts(app):  # noqa: F811
    token = app.extensions["strongroom"].accounts.create_token("bob@example.com")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    answer = client.get("/api/v1/search?q=AVOCET&sort=relevance", headers=headers)
    assert answer.status_code == 200
    body = json.loads(answer.data)
    assert body["sort"] == "relevance"
    assert body["facets"]["years"] == [{"year": 2025, "count": 1}]
    assert [entry["count"] for entry in body["facets"]["senders"]] == [1]
    refused = client.get("/api/v1/search?q=AVOCET&sort=size", headers=headers)
    assert refused.status_code == 400
    assert "sort" in json.loads(refused.data)["message"]


def test_snippet_fragments_start_and_end_on_whole_words():
    # A fragment cut 60 characters before the match used to open inside
    # a word ("ycles were ..."); it now opens on the next whole word.
    from indexer.snippets import snippet_runs

    text = ("the electric bicycles were delivered to the warehouse in "
            "Hamburg on Tuesday PLOVER arrived with the second shipment of "
            "spare parts and batteries for the whole fleet")
    runs = snippet_runs(text, ({"plover"}, ()))
    assert ("PLOVER", True) in runs
    words = set(text.split())
    fragment = "".join(run for run, _ in runs)
    assert fragment.split()[0] in words and fragment.split()[-1] in words
    assert fragment.startswith("were delivered") and fragment.endswith("parts and ")


def test_a_chinese_word_inside_a_sentence_is_highlighted():
    # The engines find a run of Han characters anywhere in a longer one; the
    # snippet looked for it between word boundaries, found none, and fell
    # back to the start of the body.
    from indexer import query as query_tree
    from indexer.snippets import snippet_runs, snippet_words

    text = ("Weekly notes. " + "x " * 80 + "会议在北京举行，请审阅财务报告并回复。 "
            "plover concatenate")
    runs = snippet_runs(text, snippet_words(query_tree.parse("财务报告 OR 审阅 OR cat")))
    assert [run for run, marked in runs if marked] == ["审阅", "财务报告"]
    assert not runs[0][0].startswith("Weekly")
