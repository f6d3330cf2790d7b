"""Measure evidence exports against a bare copy of the same sealed bytes.

Issue #6 asks for these figures, from one run on one machine:

1. Export throughput (messages/s and MB/s of original message bytes) of a
   zip export of N messages (100,000 in full mode), against a *bare copy*:
   for each of the same sealed objects, read it from the store, open it
   (authenticate, decrypt, decompress) and write the plaintext to one
   output file - the least any export must do.  The ratio export/bare is
   what the export's formats, hashing, manifest and custody record cost.
2. The same for the mbox and DAT (Concordance load file + natives)
   formats at the smaller size.
3. Peak resident memory (ru_maxrss) of the process running each export,
   at two sizes, N/10 and N (or those --sizes names): bounded means they
   are about the same.

Each measurement runs in a fresh child process, so that its peak RSS is
its own; the bare copy and each export are run twice, interleaved, and
the median kept.  The store is the embedded LocalWormStore; objects are
sealed as ingest seals them, but written without the per-object fsync of
ingest (setting up is not what is measured).  Search is not measured
either: the exported items are handed to ``Exporter.create_job`` as a
search would hand them.  MB is 10^6 bytes; memory is in MiB.

Run from the repository root::

    python -m benchmarks.export_bench [--quick] [--messages N] [--sizes N,N,...]
                                      [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vault.cases import Cases, Match
from vault.control import ControlDB
from vault.export import Exporter
from vault.ingest import MESSAGES, Vault
from vault.keys import LocalKeyFile
from vault.ownership import OwnershipRules
from vault.roles import Principal
from vault.sealing import open_sealed, seal_stream, segment_views
from vault.store import LocalWormStore

FULL_MESSAGES = 100_000
QUICK_MESSAGES = 5_000
REPETITIONS = 2
OPERATOR = Principal("bench@example.com", "compliance")
CUSTODIANS = [f"user{n:02d}@example.com" for n in range(20)]
WORDS = ("merger kestrel quarterly figures invoice meeting draft contract review "
         "please find attached the latest version regards thanks board budget").split()


class _EmptyCatalogue:
    """A catalogue with nothing in it: the bench hands items over itself."""

    def matching_ids(self, text: str) -> list[str]:
        return []

    def document(self, message_id: str) -> dict[str, Any] | None:
        return None

    def count(self) -> int:
        return 0


def message(rng: random.Random, number: int) -> tuple[bytes, list[str]]:
    """Return one plausible message of 2 to 40 KB, mostly text, and its owners."""
    sender, recipient = rng.sample(CUSTODIANS, 2)
    words = rng.randint(300, 6000)
    body = " ".join(rng.choices(WORDS, k=words))
    lines = "\r\n".join(body[i:i + 76] for i in range(0, len(body), 76))
    if number % 7 == 0:
        lines = "From the desk of the board\r\n" + lines
    return (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: Report {number}\r\n"
            f"Date: Tue, 03 Mar 2026 10:{number % 60:02d}:00 +0000\r\n"
            f"Message-ID: <{number}@bench.example.com>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{lines}\r\n").encode("utf-8"), sorted((sender, recipient))


def build_archive(root: Path, count: int) -> tuple[Path, int]:
    """Seal ``count`` messages into a store under ``root``; return items file and bytes."""
    keys = LocalKeyFile.create(root / "kek.json")
    store = LocalWormStore(root / "store")
    vault = Vault(store, keys, OwnershipRules(("example.com",)))
    objects = root / "store" / "objects" / MESSAGES
    objects.mkdir(parents=True, exist_ok=True)
    rng = random.Random(6)
    total = 0
    with open(root / "items.jsonl", "w", encoding="utf-8") as items:
        for number in range(count):
            raw, owners = message(rng, number)
            key = vault.message_key(raw)
            with open(root / "store" / "objects" / key, "wb") as handle:
                for chunk in seal_stream(keys, key, segment_views(raw)):
                    handle.write(chunk)
            items.write(json.dumps({
                "message_id": key.removeprefix(MESSAGES + "/"), "custodians": owners,
                "receipts": [f"receipts/2026/03/03/100000.{number:06d}-bench"],
                "size": len(raw)}) + "\n")
            total += len(raw)
    return root / "items.jsonl", total


def first_items(items_file: Path, count: int) -> Iterator[Match]:
    """Yield the first ``count`` items as the search would have found them."""
    with open(items_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number == count:
                return
            fields = json.loads(line)
            yield Match(fields["message_id"], tuple(fields["custodians"]),
                        tuple(fields["receipts"]), fields["size"])


# -- child processes: one measurement each --------------------------------

def child_bare(root: Path, count: int, output: Path) -> dict[str, Any]:
    """Open each sealed object and write its plaintext: the floor."""
    keys = LocalKeyFile(root / "kek.json")
    store = LocalWormStore(root / "store")
    started = time.perf_counter()
    written = 0
    with open(output, "wb") as handle:
        for match in first_items(root / "items.jsonl", count):
            key = f"{MESSAGES}/{match.message_id}"
            plain = open_sealed(keys, key, store.get(key))
            handle.write(plain)
            written += len(plain)
        handle.flush()
        os.fsync(handle.fileno())
    return {"seconds": time.perf_counter() - started, "bytes": written}


def child_export(root: Path, count: int, output: Path, format: str) -> dict[str, Any]:
    """Run one export job of the first ``count`` items, start to signature."""
    keys = LocalKeyFile(root / "kek.json")
    vault = Vault(LocalWormStore(root / "store"), keys, OwnershipRules(("example.com",)))
    control = ControlDB(output.parent / f"{output.name}.sqlite3")
    control.create()
    cases = Cases(control, _EmptyCatalogue(), root / "cursor")
    case = cases.create("bench", "", CUSTODIANS, OPERATOR)
    search = cases.add_search(case, "all", "bench", OPERATOR)
    exporter = Exporter(control, cases, vault, export_root=output,
                        key_path=root / "export-signing.pem", volume_messages=10_000)
    started = time.perf_counter()
    job = exporter.create_job(case, search, first_items(root / "items.jsonl", count),
                              {"documents": count, "cursor": ""}, OPERATOR, format,
                              destination=output)
    result = exporter.run(job, OPERATOR)
    return {"seconds": time.perf_counter() - started, "bytes": result.bytes,
            "messages": result.messages}


def run_child(mode: str, root: Path, count: int, scratch: Path, format: str = "") -> dict[str, Any]:
    """Run one measurement in a fresh process; return its figures and peak RSS."""
    output = scratch / f"{mode}-{format}-{count}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "benchmarks.export_bench", "--child", mode,
               "--root", str(root), "--messages", str(count), "--output", str(output),
               "--format", format or "zip"]
    finished = subprocess.run(command, cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{finished.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    if output.is_dir():
        shutil.rmtree(output)
    else:
        output.unlink(missing_ok=True)
    return figures


def child_main(arguments: argparse.Namespace) -> None:
    root, output = Path(arguments.root), Path(arguments.output)
    if arguments.child == "bare":
        figures = child_bare(root, arguments.messages, output)
    else:
        output.mkdir()
        figures = child_export(root, arguments.messages, output, arguments.format)
    figures["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


# -- the parent: set up, measure, report ------------------------------------

@dataclasses.dataclass
class Row:
    what: str
    messages: int
    seconds: float
    megabytes: float
    max_rss_mib: float

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / self.seconds


def measure(label: str, mode: str, root: Path, count: int, scratch: Path,
            format: str = "") -> Row:
    runs = [run_child(mode, root, count, scratch, format) for _ in range(REPETITIONS)]
    return Row(label, count, statistics.median(r["seconds"] for r in runs),
               runs[0]["bytes"] / 1e6, max(r["max_rss_mib"] for r in runs))


def measure_pair(root: Path, count: int, scratch: Path) -> tuple[Row, Row]:
    """Measure the bare copy and the zip export alternately, so that load
    from other processes falls on both alike."""
    bare_runs, export_runs = [], []
    for _ in range(REPETITIONS):
        bare_runs.append(run_child("bare", root, count, scratch))
        export_runs.append(run_child("export", root, count, scratch, "zip"))
    return tuple(  # type: ignore[return-value]
        Row(label, count, statistics.median(r["seconds"] for r in runs),
            runs[0]["bytes"] / 1e6, max(r["max_rss_mib"] for r in runs))
        for label, runs in (("bare copy (open + write)", bare_runs),
                            ("export zip", export_runs)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_MESSAGES} messages instead of {FULL_MESSAGES}")
    parser.add_argument("--messages", type=int, help="the larger export size")
    parser.add_argument("--sizes", metavar="N,N,...",
                        help="export sizes to measure (default: N/10 and N); the "
                             "peak RSS at each shows whether memory depends on size")
    parser.add_argument("--json", metavar="PATH", help="also write every figure here")
    parser.add_argument("--tmp-dir", metavar="DIR", help="scratch space (default: system)")
    parser.add_argument("--child", choices=("bare", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--format", default="zip", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child_main(arguments)
        return 0

    large = arguments.messages or (QUICK_MESSAGES if arguments.quick else FULL_MESSAGES)
    sizes = [max(1, large // 10), large]
    if arguments.sizes:
        sizes = sorted({int(size) for size in arguments.sizes.split(",")})
        large = sizes[-1]
    small = sizes[0]
    scratch = Path(tempfile.mkdtemp(prefix="strongroom-export-bench-", dir=arguments.tmp_dir))
    try:
        started = time.perf_counter()
        items_file, total = build_archive(scratch / "archive", large)
        print(f"sealed {large} messages ({total / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        rows = []
        for count in sizes:
            bare, exported = measure_pair(scratch / "archive", count, scratch)
            rows += [bare, exported]
            print_rows([bare, exported], bare)
        for format in ("mbox", "dat"):
            row = measure(f"export {format}", "export", scratch / "archive", small,
                          scratch, format)
            rows.append(row)
            print_rows([row], rows[0])
        rss = {row.messages: row.max_rss_mib for row in rows if row.what == "export zip"}
        print("peak RSS of the zip export: " + ", ".join(
            f"{rss[count]:.0f} MiB at {count} messages" for count in sizes))
        if arguments.json:
            Path(arguments.json).write_text(json.dumps(
                [dataclasses.asdict(row) | {"messages_per_second": row.messages_per_second,
                                            "megabytes_per_second": row.megabytes_per_second}
                 for row in rows], indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def print_rows(rows: list[Row], baseline: Row) -> None:
    for row in rows:
        ratio = row.seconds / row.messages / (baseline.seconds / baseline.messages)
        print(f"{row.what:<26} {row.messages:>7} msgs {row.seconds:>8.1f} s "
              f"{row.messages_per_second:>8.0f} msg/s {row.megabytes_per_second:>7.1f} MB/s "
              f"({row.megabytes_per_second * 60 / 1000:.2f} GB/min) "
              f"x{ratio:.2f} of bare  peak RSS {row.max_rss_mib:>5.0f} MiB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
