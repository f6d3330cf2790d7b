"""The portal load benchmark measures what it claims (issue #6).

wrk alone counts only 4xx and 5xx answers as errors: a search whose
session was not accepted answers 302 to the sign-in page and would pass as
a fast success.  These tests run the benchmark's own pieces against a real
``strongroom serve`` and check that signed-in searches find mail and that
a forged cookie is counted as a failure, not as throughput.
"""

from __future__ import annotations

import shutil
import urllib.parse

import pytest

from benchmarks import portal_bench
from tests.conftest import require


def test_lua_strings_refuse_what_could_break_out_of_the_script():
    assert portal_bench._lua_string("strongroom_session=abc-_.123") == \
        '"strongroom_session=abc-_.123"'
    for hostile in ('a"b', "a\\b", "a\nb", "a]]b"):
        with pytest.raises(ValueError):
            portal_bench._lua_string(hostile)


def test_every_user_gets_every_kind_of_query():
    corpus = portal_bench._corpus()
    plan = portal_bench.make_queries(corpus, portal_bench.random.Random(1))
    assert [kind for kind, _ in plan[:len(portal_bench.KINDS)]] == list(portal_bench.KINDS)
    queries = dict(plan)
    assert queries["from"].startswith("from:") and "@" in queries["from"]
    assert queries["phrase"].startswith('"') and queries["phrase"].endswith('"')
    assert queries["has_attachment"].startswith("has:attachment ")


def test_signed_in_load_is_counted_and_forged_sessions_are_not(tmp_path):
    require(shutil.which("wrk") is not None, "wrk is not installed (scripts/install-peers)")
    # 40 sealed and indexed by the Follower, 20 written straight to the catalogue.
    server, fill = portal_bench.build_home(tmp_path / "home", 60, sealed=40)
    assert (fill["indexed"], fill["direct"]) == (40, 20)
    assert "Catalogue.batch()" in fill["filled_by"]
    corpus = portal_bench._corpus()
    # A word of an unsealed message, to search for over HTTP as its owner.
    number = 45
    owner = corpus.message(number)[1].rcpt_tos[0]
    other = next(portal_bench.user_address(n) for n in range(portal_bench.USERS)
                 if portal_bench.user_address(n) != owner)
    subject = corpus.message(number)[0].split(b"Subject: ")[1].split(b"\n")[0]
    word = max(subject.decode().split(), key=len)
    plans = [[("term", word)], [("term", "zzzznothing")]]

    server.start()
    try:
        cookies = [portal_bench.sign_in(server.web_port, owner),
                   portal_bench.sign_in(server.web_port, other)]
        assert all(cookie.startswith("strongroom_session=") for cookie in cookies)
        status, page, _ = _get(server, f"/search?q={urllib.parse.quote(word)}", cookies[0])
        assert status == 200 and "/messages/" in page

        loaded = portal_bench.run_wrk(server.web_port, cookies, plans, 2, 1, tmp_path)
        assert loaded["requests"] > 0
        assert loaded["not_200"] == 0
        assert loaded["p95_ms"] >= loaded["p50_ms"] > 0

        forged = portal_bench.run_wrk(server.web_port, ["strongroom_session=forged"],
                                      plans, 1, 1, tmp_path)
        assert forged["requests"] > 0
        assert forged["not_200"] == forged["requests"]
    finally:
        server.stop()

    bare = portal_bench.bare_catalogue(tmp_path / "home", {owner: plans[0]})
    assert bare["by_kind"]["term"]["median_hits"] >= 1
    assert bare["p95_ms"] >= bare["p50_ms"] > 0


def _get(server, path, cookie):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.web_port, timeout=60)
    connection.request("GET", path, headers={"Cookie": cookie})
    response = connection.getresponse()
    body = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, body, dict(response.getheaders())
