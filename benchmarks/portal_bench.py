"""Load the portal's search with 20 signed-in users, against the bare catalogue.

Issue #6 asks for search requests/s and p95 latency for 20 concurrent
signed-in users on 100,000 messages, against the bare catalogue query time
in the same run (the portal's overhead).  This benchmark:

1. makes a temporary home with ``strongroom init`` and 20 end users
   (``user0@example.com`` .. ``user19@example.com``);
2. seals N messages of catalogue_bench's seeded generator into the home's
   vault, each addressed to one to three of those users, and indexes them
   with the real Follower (the same code ``serve`` runs), timed; the
   messages go through the real vault and follower, not a shortcut;
3. starts a real ``strongroom serve`` on 127.0.0.1 and signs the 20 users
   in over HTTP (CSRF token from the login form), keeping each one's
   session cookie;
4. measures the bare catalogue: the same queries through
   ``Catalogue.search(owners=...)`` in this process, first page of 20 with
   facets, as the portal asks;
5. runs Debian's ``wrk`` against ``/search`` with 20 connections (20 threads
   of one connection, each with its own user's cookie) for a bounded time,
   rotating single term, phrase, ``from:``, date range and ``has:attachment``
   queries; then once more with one connection, which separates the
   per-request cost from queueing behind the other 19 users.

Every response that is not a 200 is counted (a 302 back to the sign-in page
would otherwise pass as success); the run fails if any is.  Nothing leaves
127.0.0.1; the home is a scratch directory that the run removes.  Run from
the repository root (``make bench-portal`` installs wrk first)::

    python -m benchmarks.portal_bench [--quick] [--messages N] [--json PATH]
        [--duration SECONDS] [--tmp-dir DIR] [--profile PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchmarks.catalogue_bench import Corpus, _percentile, seal_corpus
from indexer.catalogue import open_catalogue
from indexer.follow import Follower
from tests.harness import USER_PASSWORD, ArchiveServer
from vault.config import load
from vault.ingest import open_vault

USERS = 20
FULL_MESSAGES = 10_000
QUICK_MESSAGES = 1_000
FULL_SECONDS = 30
QUICK_SECONDS = 5
QUERIES_PER_USER = 10
BARE_ROUNDS = 3
KINDS = ("term", "phrase", "from", "date_range", "has_attachment")

WRK_SCRIPT = r"""
-- Written by benchmarks/portal_bench.py: one signed-in user per thread.
local cookies = {%(cookies)s}
local queries = {%(queries)s}
local threads = {}
local next_user = 0

function setup(thread)
  next_user = next_user + 1
  thread:set("user", next_user)
  thread:set("cookie", cookies[next_user])
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  bad = 0
  wrk.headers["Cookie"] = cookie
  mine = queries[user]
end

function request()
  sent = sent + 1
  return wrk.format("GET", "/search?q=" .. mine[(sent %% #mine) + 1])
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local not_ok = 0
  for _, thread in ipairs(threads) do
    not_ok = not_ok + thread:get("bad")
  end
  io.write(string.format(
    'WRK-JSON {"requests": %%d, "duration_us": %%d, "not_200": %%d, ' ..
    '"socket_errors": %%d, "p50_us": %%d, "p95_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "mean_us": %%.1f}\n',
    summary.requests, summary.duration, not_ok,
    summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def user_address(number: int) -> str:
    return f"user{number}@example.com"


def make_queries(corpus: Corpus, rng: random.Random) -> list[tuple[str, str]]:
    """A rotating set of (kind, query) for one user: each kind in turn."""
    common = corpus.words[10:400]
    makers = {
        "term": lambda: rng.choice(common),
        "phrase": lambda: f'"{rng.choice(corpus.words[:30])} {rng.choice(corpus.words[:30])}"',
        "from": lambda: f"from:{rng.choice(corpus.senders)}",
        "date_range": lambda: (f"after:{rng.randint(2018, 2023)}-0{rng.randint(1, 9)}-01 "
                               f"before:2025-06-01 {rng.choice(common)}"),
        "has_attachment": lambda: f"has:attachment {rng.choice(corpus.words[:200])}",
    }
    return [(kind, makers[kind]()) for _ in range(QUERIES_PER_USER // len(KINDS))
            for kind in KINDS]


def build_home(home: Path, messages: int) -> tuple[ArchiveServer, dict[str, Any]]:
    """Init a home, add the users, seal and index ``messages`` messages."""
    server = ArchiveServer(home)
    _progress("strongroom init")
    server.init()
    _add_users(home)
    corpus = _corpus()
    settings = load(home)
    vault = open_vault(settings)
    # The vault logs every message it archives; 100,000 lines help nobody.
    logging.disable(logging.INFO)
    try:
        _progress(f"sealing {messages} messages into the home's vault")
        started = time.perf_counter()
        seal_corpus(vault, corpus, range(messages))
        sealing = time.perf_counter() - started
        _progress("indexing them with the real Follower")
        catalogue = open_catalogue(settings)
        started = time.perf_counter()
        indexed = Follower(vault, catalogue).catch_up()
        indexing = time.perf_counter() - started
        catalogue.close()
    finally:
        logging.disable(logging.NOTSET)
    return server, {
        "messages": messages, "indexed": indexed,
        "filled_by": "real Vault.archive then the real Follower.catch_up "
                     "(the code serve runs), before serve starts",
        "sealing_s": sealing, "sealing_msgs_per_s": messages / sealing,
        "indexing_s": indexing, "indexing_docs_per_s": indexed / indexing,
    }


def _corpus() -> Corpus:
    corpus = Corpus()
    # Every message goes to one to three of the benchmark's users.
    corpus.mailboxes = [user_address(n) for n in range(USERS)]
    return corpus


def _add_users(home: Path) -> None:
    # In this process (argon2 hashing dominates; 20 CLI start-ups would not).
    import io

    from web.cli import main as strongroom

    stdin = sys.stdin
    try:
        for number in range(USERS):
            sys.stdin = io.StringIO(USER_PASSWORD + "\n")
            if strongroom(["user", "add", user_address(number), "--home", str(home),
                           "--password-stdin"]) != 0:
                raise RuntimeError(f"could not add {user_address(number)}")
    finally:
        sys.stdin = stdin


def sign_in(port: int, address: str) -> str:
    """Sign ``address`` in over HTTP; return its ``Cookie`` header value."""
    cookies: dict[str, str] = {}

    def exchange(method: str, path: str, body: str | None = None) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        for header, value in response.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                cookies[name] = rest.split(";", 1)[0]
        text = response.read().decode("utf-8", "replace")
        connection.close()
        return response.status, text

    status, page = exchange("GET", "/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if status != 200 or token is None:
        raise RuntimeError(f"/login answered {status} without a CSRF token")
    status, _ = exchange("POST", "/login", urllib.parse.urlencode({
        "address": address, "password": USER_PASSWORD, "csrf_token": token.group(1)}))
    if status != 302:
        raise RuntimeError(f"signing {address} in answered {status}, not 302")
    status, page = exchange("GET", "/search?q=test")
    if status != 200:
        raise RuntimeError(f"{address}'s first search answered {status}")
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def bare_catalogue(home: Path, plans: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """The same queries through Catalogue.search in this process."""
    catalogue = open_catalogue(load(home))
    times: list[float] = []
    by_kind: dict[str, list[float]] = {kind: [] for kind in KINDS}
    totals: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for address, plan in plans.items():  # warm each user's first query
        catalogue.search(plan[0][1], owners=frozenset({address}))
    for _ in range(BARE_ROUNDS):
        for address, plan in plans.items():
            for kind, query in plan:
                started = time.perf_counter()
                found = catalogue.search(query, owners=frozenset({address}), per_page=20)
                elapsed = (time.perf_counter() - started) * 1000
                times.append(elapsed)
                by_kind[kind].append(elapsed)
                totals[kind].append(found.total)
    catalogue.close()
    return {
        "queries": len(times),
        "p50_ms": _percentile(times, 50), "p95_ms": _percentile(times, 95),
        "p99_ms": _percentile(times, 99),
        "by_kind": {kind: {"p50_ms": _percentile(values, 50),
                           "p95_ms": _percentile(values, 95),
                           "median_hits": sorted(totals[kind])[len(totals[kind]) // 2]}
                    for kind, values in by_kind.items() if values},
    }


def run_wrk(port: int, cookies: list[str], plans: list[list[tuple[str, str]]],
            connections: int, seconds: int, scratch: Path) -> dict[str, Any]:
    """Run wrk with ``connections`` threads of one connection each."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: run scripts/install-peers (Debian's wrk)")
    script = scratch / f"portal-{connections}.lua"
    script.write_text(WRK_SCRIPT % {
        "cookies": ", ".join(_lua_string(cookie) for cookie in cookies[:connections]),
        "queries": ", ".join(
            "{" + ", ".join(_lua_string(urllib.parse.quote(query, safe=""))
                            for _, query in plan) + "}"
            for plan in plans[:connections]),
    })
    completed = subprocess.run(
        [wrk, f"-t{connections}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
         "-s", str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 120)
    found = re.search(r"^WRK-JSON (.*)$", completed.stdout, re.MULTILINE)
    if completed.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n"
                           f"{completed.stdout}\n{completed.stderr}")
    figures = json.loads(found.group(1))
    duration = figures["duration_us"] / 1e6
    return {
        "connections": connections, "seconds": duration,
        "requests": figures["requests"], "requests_per_s": figures["requests"] / duration,
        "not_200": figures["not_200"], "socket_errors": figures["socket_errors"],
        "p50_ms": figures["p50_us"] / 1000, "p95_ms": figures["p95_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000, "max_ms": figures["max_us"] / 1000,
    }


def _lua_string(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9%._~=;: -]*", text):
        raise ValueError(f"refusing to put {text!r} into the wrk script")
    return f'"{text}"'


def run(messages: int, seconds: int, scratch: Path,
        profile: str | None = None) -> dict[str, Any]:
    home = scratch / "home"
    server, fill = build_home(home, messages)
    corpus = _corpus()
    plans = {user_address(n): make_queries(corpus, random.Random(1000 + n))
             for n in range(USERS)}
    _progress("measuring the bare catalogue")
    bare = bare_catalogue(home, plans)
    _progress("starting strongroom serve on 127.0.0.1")
    server.start()
    try:
        cookies = [sign_in(server.web_port, address) for address in plans]
        _progress(f"wrk: {USERS} signed-in users for {seconds} s")
        profiler = None
        if profile:
            # py-spy samples serve's threads while the 20 users load it.
            profiler = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.process.pid), "--threads",
                 "--duration", str(seconds), "--format", "raw", "--output", profile],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        loaded = run_wrk(server.web_port, cookies, list(plans.values()), USERS, seconds,
                         scratch)
        if profiler is not None:
            profiler.wait(timeout=seconds + 60)
        _progress(f"wrk: one signed-in user for {max(3, seconds // 3)} s")
        single = run_wrk(server.web_port, cookies, list(plans.values()), 1,
                         max(3, seconds // 3), scratch)
    finally:
        server.stop()
    return {
        "fill": fill, "bare_catalogue": bare, "portal_20_users": loaded,
        "portal_1_user": single,
        "overhead_p95": loaded["p95_ms"] / bare["p95_ms"],
        "overhead_p95_1_user": single["p95_ms"] / bare["p95_ms"],
        "threads": load(home).portal.threads,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load": os.getloadavg()},
    }


def print_report(report: dict[str, Any]) -> None:
    fill, bare = report["fill"], report["bare_catalogue"]
    print(f"\nPortal search benchmark ({report['machine']['cpus']} CPUs, load "
          f"{report['machine']['load'][0]:.1f} at the end; waitress threads "
          f"{report['threads']})")
    print(f"{fill['messages']} messages for {USERS} users, filled by {fill['filled_by']}: "
          f"sealed at {fill['sealing_msgs_per_s']:.0f}/s, indexed at "
          f"{fill['indexing_docs_per_s']:.0f}/s ({fill['indexing_s']:.0f} s)")
    print(f"\n{'':<26} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'not 200':>8}")
    for label, key in (("portal, 20 users (wrk)", "portal_20_users"),
                       ("portal, 1 user (wrk)", "portal_1_user")):
        row = report[key]
        print(f"{label:<26} {row['requests_per_s']:>8.1f} {row['p50_ms']:>8.1f} "
              f"{row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['not_200']:>8}")
    print(f"{'bare Catalogue.search':<26} {1000 / bare['p50_ms']:>8.1f} {bare['p50_ms']:>8.1f} "
          f"{bare['p95_ms']:>8.1f} {bare['p99_ms']:>8.1f} {'-':>8}   (one thread, req/s = 1/p50)")
    print("\nbare by kind (p50/p95 ms, median hits): " + "; ".join(
        f"{kind} {row['p50_ms']:.1f}/{row['p95_ms']:.1f} ({row['median_hits']})"
        for kind, row in bare["by_kind"].items()))
    print(f"\nPortal overhead, p95 portal / p95 bare: {report['overhead_p95']:.1f}x with "
          f"{USERS} users, {report['overhead_p95_1_user']:.1f}x with one")


def _progress(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK_MESSAGES} messages, {QUICK_SECONDS} s of load")
    parser.add_argument("--messages", type=int, help=f"messages (default {FULL_MESSAGES})")
    parser.add_argument("--duration", type=int, help=f"seconds of load (default {FULL_SECONDS})")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--tmp-dir", help="where the scratch directory goes (/dev/shm "
                        "keeps the vault's fsyncs out of the filling time)")
    parser.add_argument("--profile", metavar="PATH",
                        help="sample serve with py-spy during the 20-user load "
                             "(collapsed stacks to PATH; py-spy from PyPI)")
    arguments = parser.parse_args(argv)
    messages = arguments.messages or (QUICK_MESSAGES if arguments.quick else FULL_MESSAGES)
    seconds = arguments.duration or (QUICK_SECONDS if arguments.quick else FULL_SECONDS)
    if messages < 1 or seconds < 1:
        parser.error("--messages and --duration must be positive")
    scratch = Path(tempfile.mkdtemp(prefix="portal-bench-", dir=arguments.tmp_dir))
    try:
        report = run(messages, seconds, scratch, arguments.profile)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_report(report)
    if report["portal_20_users"]["not_200"] or report["portal_1_user"]["not_200"]:
        print("FAILED: some search requests did not answer 200", file=sys.stderr)
        return 1
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
