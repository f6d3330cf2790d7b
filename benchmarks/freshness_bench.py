"""Measure how soon new mail is searchable while the archive is busy receiving.

Issue #5 asks that new mail be searchable in under 2 s "at the issue-3
ingest rate": not on an idle machine, but while the receiver takes mail as
fast as it can.  This script runs ``strongroom serve`` on a new home (the
receivers, the follower and the portal, as deployed) and loads it with
Postfix's ``smtp-source`` (20 sessions, as the receiver benchmark does).
Meanwhile it sends probe messages one after another over its own SMTP
session, each with a word of its own, and times each from the 250 reply to
the first search that finds the word in the home's catalogue (opened in
this process, as the portal opens it; a search sees every commit at once).

It reports the load's rate (messages/s and MB/s), the probes' median, p95
and worst time to searchable while the load runs, and the time for one
last probe sent once the load is over (what the catalogue still had to
catch up on).  Nothing leaves 127.0.0.1; everything is written under one
scratch directory that the run removes.  Run from the repository root::

    python -m benchmarks.freshness_bench [--quick] [--messages N] [--size KB]
                                         [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from benchmarks.receiver_bench import (JOURNAL, SENDER, SESSIONS, SMTP_SOURCE, MB,
                                       Strongroom, percentile, running)

GOAL_SECONDS = 2.0
GIVE_UP_SECONDS = 300.0
POLL_SECONDS = 0.005
PROBE_OWNER = "probe@example.com"


def probe_message(number: int, word: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "partner@example.net"
    message["To"] = PROBE_OWNER
    message["Subject"] = f"freshness probe {word}"
    message["Message-ID"] = f"<probe-{number}-{os.getpid()}@bench.test>"
    message.set_content(f"Probe {number}: is {word} searchable yet?\n")
    return message


class Prober:
    """Send probes and time each until the catalogue finds it."""

    def __init__(self, port: int, home: Path) -> None:
        from indexer.catalogue import open_catalogue
        from vault.config import load

        self.catalogue = open_catalogue(load(home))
        self.smtp = smtplib.SMTP("127.0.0.1", port, timeout=GIVE_UP_SECONDS)
        self.sent = 0

    def probe(self) -> float:
        """Send one probe; return seconds from its 250 to searchable."""
        self.sent += 1
        word = f"fresh{self.sent}x{os.getpid()}"
        self.smtp.send_message(probe_message(self.sent, word), SENDER, [PROBE_OWNER])
        accepted = time.perf_counter()
        owners = frozenset({PROBE_OWNER})
        while not self.catalogue.search(word, owners=owners, facets=False).total:
            if time.perf_counter() - accepted > GIVE_UP_SECONDS:
                raise RuntimeError(f"{word} not searchable after {GIVE_UP_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - accepted

    def close(self) -> None:
        self.smtp.quit()


def measure(scratch: Path, messages: int, payload: int) -> dict[str, Any]:
    server = Strongroom(scratch, group_commit=True)
    with running(server):
        prober = Prober(server.port, server.home)
        idle = [prober.probe() for _ in range(3)]
        started = time.perf_counter()
        load = subprocess.Popen(
            [SMTP_SOURCE, "-s", str(SESSIONS), "-d", "-m", str(messages), "-l", str(payload),
             "-f", SENDER, "-t", JOURNAL, "-M", "bench.test", f"127.0.0.1:{server.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        busy = []
        while load.poll() is None:
            busy.append(prober.probe())
        load_seconds = time.perf_counter() - started
        if load.returncode != 0:
            raise RuntimeError(f"smtp-source failed ({load.returncode}): "
                               f"{load.stderr.read().strip() if load.stderr else ''}")
        after = prober.probe()
        prober.close()
    return {
        "messages": messages, "payload_bytes": payload, "sessions": SESSIONS,
        "load_seconds": load_seconds, "msgs_per_s": messages / load_seconds,
        "mb_per_s": messages * payload / load_seconds / MB,
        "idle_s": statistics.median(idle),
        "probes": len(busy),
        "busy_median_s": statistics.median(busy) if busy else None,
        "busy_p95_s": percentile(busy, 0.95) if busy else None,
        "busy_max_s": max(busy) if busy else None,
        "after_load_s": after,
        "goal_s": GOAL_SECONDS,
        "goal_met": bool(busy) and max(busy) < GOAL_SECONDS and after < GOAL_SECONDS,
    }


def print_report(rows: list[dict[str, Any]]) -> None:
    print(f"\nNew mail to searchable while smtp-source loads strongroom serve "
          f"({SESSIONS} sessions, {os.cpu_count()} CPUs):")
    print(f"  {'load':<22} {'msg/s':>7} {'MB/s':>6} {'idle':>7} {'probes':>6} "
          f"{'median':>7} {'p95':>7} {'worst':>7} {'after':>7}")
    for row in rows:
        load = f"{row['messages']} x {row['payload_bytes'] // 1000} kB"
        print(f"  {load:<22} {row['msgs_per_s']:7.1f} {row['mb_per_s']:6.1f} "
              f"{row['idle_s'] * 1000:5.0f}ms {row['probes']:>6} "
              + " ".join(f"{row[key] * 1000:5.0f}ms" for key in
                         ("busy_median_s", "busy_p95_s", "busy_max_s", "after_load_s")))
    for row in rows:
        print(f"  {row['payload_bytes'] // 1000} kB: every probe searchable in under "
              f"{GOAL_SECONDS:.0f} s: {'met' if row['goal_met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.freshness_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 messages per size")
    parser.add_argument("--messages", type=int, help="messages in the load (default 10,000)")
    parser.add_argument("--sizes", default="100,10",
                        help="payload sizes in kB, one load each (default 100,10)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures here")
    parser.add_argument("--tmp-dir", type=Path, metavar="DIR",
                        help="where the scratch directory goes")
    arguments = parser.parse_args(argv)
    if not os.access(SMTP_SOURCE, os.X_OK):
        print(f"freshness_bench: {SMTP_SOURCE} is missing; run scripts/install-peers "
              "(Debian package postfix)", file=sys.stderr)
        return 2
    messages = arguments.messages or (2000 if arguments.quick else 10_000)
    scratch = Path(tempfile.mkdtemp(prefix="freshness-bench-", dir=arguments.tmp_dir))
    try:
        rows = [measure(scratch, messages, int(size) * 1000)
                for size in arguments.sizes.split(",")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_report(rows)
    if arguments.json:
        arguments.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
