"""Measure the catalogue on both engines, against the bare engine beneath.

Issue #5 asks for these figures, for tantivy and Whoosh in one run:

1. Indexing documents/s of the full path (list receipts, open the sealed
   receipt and message, extract in the worker pool, build the document,
   write the batch) against the bare engine: the engine's own writer
   (tantivy ``IndexWriter``, Whoosh ``SegmentWriter``) with the same
   settings and batch size, fed the same documents already in the
   engine's own form, and nothing else (the ratio is the catalogue's
   overhead; goal for the default engine: at least 0.8).
2. New mail to searchable: from ``Vault.archive`` returning to the first
   search that finds the message, with the follower woken at once as
   ``serve`` wakes it.
   Beside each rate, the CPU time per document (this process, every thread
   of it, and the extraction workers apart) and the cores it kept busy:
   the bare writer of tantivy keeps one core busy, so the full path has
   the other core for opening, decrypting and extracting, and what that
   costs per document bounds the ratio (see ``ratio_bound``).
3. Index size on disk as a share of the vault's size on disk.
4. p50/p95 search latency (first page of 20, newest first, with facets)
   for a single term, a phrase, ``from:``, a date range with a term, and a
   term under one end user's owner filter (goal: p95 under 50 ms).

at each corpus size in turn (10,000, 30,000 and 100,000 messages by
default; the corpus grows between sizes, which gives the curve).  Whoosh
at 100,000 takes hours on two cores: ``--limit whoosh=10000`` stops its
index at that size while tantivy goes on, and the report says so, with
the time Whoosh would have needed at its measured rate.

Messages are generated from a seeded ``random``: headers of a few hundred
senders and a thousand local mailboxes, bodies of Zipf-distributed words
with quoted replies, a tenth with a CSV attachment, dates over eight
years.  Nothing leaves the machine; everything is written under one
scratch directory that the run removes.  Run from the repository root::

    python -m benchmarks.catalogue_bench [--quick] [--json PATH]
        [--sizes 10000,30000,100000] [--engines tantivy,whoosh]
        [--limit whoosh=10000] [--tmp-dir /dev/shm]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from indexer import catalogue as catalogue_module
from indexer.catalogue import Catalogue, normalise
from indexer.extraction.parallel import CHUNK_MESSAGES, ExtractionPool
from indexer.follow import Follower
from indexer.reindex import REINDEX_BATCH_RECEIPTS
from indexer.query import parse
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.store import LocalWormStore

DOMAIN = "example.com"
SENDERS = 300
MAILBOXES = 1000
VOCABULARY = 20_000
QUERY_REPEATS = 40
LATENCY_REPEATS = 5
LATENCY_GIVE_UP_SECONDS = 120.0
FULL_SIZES = (10_000, 30_000, 100_000)
QUICK_SIZES = (1_000,)
SEALING_THREADS = 8
P95_GOAL_MS = 50.0
RATIO_GOAL = 0.8
FIRST_DAY = dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc)
SPAN_DAYS = 8 * 365


class Corpus:
    """Seeded, email-like messages, numbered from 0."""

    def __init__(self, seed: int = 5) -> None:
        rng = random.Random(seed)
        self.words = [_word(rng) for _ in range(VOCABULARY)]
        self.weights = [1.0 / (rank + 1) for rank in range(VOCABULARY)]
        # choices() would otherwise sum all 20,000 weights on every call.
        self.cumulative = list(itertools.accumulate(self.weights))
        self.senders = [f"{_word(rng)}.{_word(rng)}@partner{n % 40}.example.net"
                        for n in range(SENDERS)]
        self.mailboxes = [f"user{n}@{DOMAIN}" for n in range(MAILBOXES)]

    def message(self, number: int) -> tuple[bytes, Envelope]:
        rng = random.Random(number * 7919 + 1)
        sender = rng.choice(self.senders)
        rcpts = rng.sample(self.mailboxes, rng.randint(1, 3))
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(rcpts)
        message["Subject"] = " ".join(self._words(rng, rng.randint(3, 9)))
        message["Date"] = format_datetime(
            FIRST_DAY + dt.timedelta(seconds=rng.randrange(SPAN_DAYS * 86400)))
        message["Message-ID"] = f"<bench-{number}@partner.example.net>"
        paragraphs = [" ".join(self._words(rng, rng.randint(20, 90)))
                      for _ in range(rng.randint(1, 6))]
        quoted = ["> " + " ".join(self._words(rng, 15)) for _ in range(rng.randint(0, 12))]
        message.set_content("\n\n".join(paragraphs) + "\n\n" + "\n".join(quoted) + "\n")
        if rng.random() < 0.1:
            rows = "\n".join(",".join(self._words(rng, 5)) for _ in range(rng.randint(5, 60)))
            message.add_attachment(rows.encode(), maintype="text", subtype="csv",
                                   filename=f"{self._words(rng, 1)[0]}.csv")
        return message.as_bytes(), Envelope(sender, tuple(rcpts))

    def _words(self, rng: random.Random, count: int) -> list[str]:
        return rng.choices(self.words, cum_weights=self.cumulative, k=count)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10)))


@contextlib.contextmanager
def capturing_documents(into: list[dict]):
    """Record each normalised document the follower writes (for the bare run)."""
    originals = {name: getattr(catalogue_module._NormalisingBatch, name)
                 for name in ("put", "add")}

    def recording(name: str):
        def write(self, document: dict) -> None:
            into.append(normalise(document))
            originals[name](self, document)
        return write

    for name in originals:
        setattr(catalogue_module._NormalisingBatch, name, recording(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(catalogue_module._NormalisingBatch, name, original)


class BareTantivy:
    """tantivy's own writer, with the catalogue's schema and settings.

    One writer serves every batch of a stage, committing each, and its
    merges are waited for at the end: how tantivy is meant to be fed, and
    how the catalogue keeps its writer between close batches.
    """

    def __init__(self, path: Path) -> None:
        from indexer.engines import tantivy_engine as engine

        self.engine = engine
        path.mkdir(parents=True, exist_ok=True)
        self.index = engine.tantivy.Index(engine.SCHEMA, path=str(path))
        self.index.register_tokenizer(engine.ANALYZER, engine._analyzer())
        self.writer: Any = None

    def prepare(self, documents: list[dict]) -> list[Any]:
        return [self.engine._tantivy_document(document) for document in documents]

    def write(self, prepared: list[Any]) -> None:
        if self.writer is None:
            self.writer = self.index.writer(heap_size=self.engine.WRITER_HEAP_BYTES,
                                            num_threads=self.engine.WRITER_THREADS)
        for document in prepared:
            self.writer.add_document(document)
        self.writer.commit()

    def finish(self) -> None:
        self.writer.wait_merging_threads()
        self.writer = None


class BareWhoosh:
    """Whoosh's own writer, with the catalogue's schema."""

    def __init__(self, path: Path) -> None:
        from whoosh import index

        from indexer.engines import whoosh_engine as engine

        self.engine = engine
        path.mkdir(parents=True, exist_ok=True)
        self.index = index.create_in(str(path), engine.SCHEMA)

    def prepare(self, documents: list[dict]) -> list[Any]:
        return [self.engine._fields(document) for document in documents]

    def write(self, prepared: list[Any]) -> None:
        writer = self.index.writer()
        for fields in prepared:
            writer.add_document(**fields)
        writer.commit()

    def finish(self) -> None:
        return None


BARE_WRITERS = {"tantivy": BareTantivy, "whoosh": BareWhoosh}


def warm_up(pool: ExtractionPool) -> None:
    """Start every extraction worker, as a running follower has them."""
    probe = b"Subject: warm-up\r\n\r\nwords\r\n"
    list(pool.extract_all((number, probe)
                          for number in range(CHUNK_MESSAGES * max(1, pool.workers))))


def process_cpu_seconds() -> float:
    """Return the CPU time of this process so far, every thread of it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """Return the CPU time of this process's running children (the workers).

    Read from ``/proc``: the extraction workers live as long as the pool,
    so ``RUSAGE_CHILDREN`` (which counts children once they are reaped)
    never sees them.  Linux only; elsewhere 0.
    """
    me = str(os.getpid())
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after the command's closing parenthesis: state,
            # ppid, ..., utime and stime at 11 and 12.
            fields = entry.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[1] == me:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def ratio_bound(row: dict[str, float], cpus: int) -> float:
    """Return the highest ratio the full path could reach on ``cpus`` cores.

    The full path does the bare writer's work plus its own (opening,
    decrypting, extracting, building documents); even with every core
    busy it needs at least its CPU time per document divided by the
    cores, while the bare writer takes its measured time per document.
    """
    full_cpu = row["full_cpu_us_per_doc"]
    if not full_cpu:
        return 0.0
    return min(1.0, (1e6 / row["bare_docs_per_s"]) / (full_cpu / cpus))


def disk_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


class EngineRun:
    """One engine's catalogue and bare index, grown size by size."""

    def __init__(self, name: str, scratch: Path, vault: Vault) -> None:
        self.name = name
        self.catalogue = Catalogue(scratch / f"catalogue-{name}", name)
        # Indexing a grown vault is a bulk build, as reindex runs it.
        self.follower = Follower(vault, self.catalogue, batch_receipts=REINDEX_BATCH_RECEIPTS)
        self.bare = BARE_WRITERS[name](scratch / f"bare-{name}")
        self.vault = vault

    def index(self) -> dict[str, float]:
        prepared: list[dict] = []
        warm_up(self.follower.pool)
        cpu, workers_cpu = process_cpu_seconds(), children_cpu_seconds()
        started = time.perf_counter()
        with capturing_documents(prepared):
            count = self.follower.catch_up()
            self.catalogue.settle()
        full_seconds = time.perf_counter() - started
        cpu = process_cpu_seconds() - cpu
        workers_cpu = children_cpu_seconds() - workers_cpu
        native = self.bare.prepare(prepared)
        del prepared[:]
        bare_cpu = process_cpu_seconds()
        started = time.perf_counter()
        for start in range(0, len(native), REINDEX_BATCH_RECEIPTS):
            self.bare.write(native[start:start + REINDEX_BATCH_RECEIPTS])
        self.bare.finish()
        bare_seconds = time.perf_counter() - started
        bare_cpu = process_cpu_seconds() - bare_cpu
        full_rate = count / full_seconds
        bare_rate = len(native) / bare_seconds if native else 0.0
        per_doc = 1e6 / max(1, count)
        return {"documents": count, "full_docs_per_s": full_rate,
                "full_seconds": full_seconds, "bare_seconds": bare_seconds,
                "bare_docs_per_s": bare_rate,
                "ratio": full_rate / bare_rate if bare_rate else 0.0,
                "full_cpu_us_per_doc": (cpu + workers_cpu) * per_doc,
                "full_process_cpu_us_per_doc": cpu * per_doc,
                "full_workers_cpu_us_per_doc": workers_cpu * per_doc,
                "full_cores": (cpu + workers_cpu) / full_seconds,
                "bare_cpu_us_per_doc": bare_cpu * 1e6 / max(1, len(native)),
                "bare_cores": bare_cpu / bare_seconds if bare_seconds else 0.0}

    def latency(self, corpus: Corpus, first_number: int) -> list[float]:
        samples = []
        for number in range(first_number, first_number + LATENCY_REPEATS):
            raw, envelope = corpus.message(number)
            word = f"fresh{number}"
            # In the Subject: the first blank line of a multipart message
            # opens its preamble, which no reader indexes.
            # A long Subject is folded right after its colon: put the word
            # there, so the probe never sends a message without it.
            raw = raw.replace(b"\nSubject:", f"\nSubject: {word}".encode(), 1)
            assert word.encode() in raw, f"message {number} has no Subject"
            owners = frozenset({envelope.rcpt_tos[0]})
            started = time.perf_counter()
            self.vault.archive(raw, envelope)
            while not self.catalogue.search(word, owners=owners, facets=False).total:
                if time.perf_counter() - started > LATENCY_GIVE_UP_SECONDS:
                    raise RuntimeError(f"{self.name}: {word} not searchable after "
                                       f"{LATENCY_GIVE_UP_SECONDS:.0f} s")
                self.follower.catch_up()
            samples.append(time.perf_counter() - started)
        return samples

    def queries(self, corpus: Corpus, rng: random.Random) -> dict[str, dict[str, float]]:
        common = corpus.words[10:400]
        kinds = {
            "term": lambda: rng.choice(common),
            "phrase": lambda: f'"{rng.choice(corpus.words[:30])} {rng.choice(corpus.words[:30])}"',
            "from": lambda: f"from:{rng.choice(corpus.senders)}",
            "date_range_term": lambda: (f"after:{rng.randint(2018, 2024)}-0{rng.randint(1, 9)}-01 "
                                        f"before:2025-06-01 {rng.choice(common)}"),
            "owner_term": lambda: rng.choice(common),
        }
        results = {}
        for kind, make in kinds.items():
            times = []
            for _ in range(QUERY_REPEATS):
                text = make()
                started = time.perf_counter()
                if kind == "owner_term":
                    self.catalogue.search(parse(text),
                                          owners=frozenset({rng.choice(corpus.mailboxes)}))
                else:
                    self.catalogue.search_every_mailbox(parse(text))
                times.append((time.perf_counter() - started) * 1000)
            results[kind] = {"p50_ms": _percentile(times, 50), "p95_ms": _percentile(times, 95)}
        return results


def _percentile(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(percent / 100 * (len(ordered) - 1))))]


def seal_corpus(vault: Vault, corpus: Corpus, numbers: range) -> None:
    """Archive messages in threads: the store's fsyncs, not the CPU, bound it."""
    with ThreadPoolExecutor(SEALING_THREADS) as pool:
        for _ in pool.map(lambda number: vault.archive(*corpus.message(number)), numbers):
            pass


def run(sizes: tuple[int, ...], engines: tuple[str, ...], scratch: Path,
        limits: dict[str, int] | None = None, json_path: str | None = None) -> dict[str, Any]:
    corpus = Corpus()
    vault = Vault(LocalWormStore(scratch / "store"), LocalKeyFile.create(scratch / "kek.json"),
                  OwnershipRules(domains=(DOMAIN,)))
    runs = {name: EngineRun(name, scratch, vault) for name in engines}
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    sealing: list[dict[str, float]] = []
    stored = 0
    extra = 10_000_000
    started = time.perf_counter()
    for size in sizes:
        _progress(f"sealing messages {stored}..{size}")
        sealing_started = time.perf_counter()
        seal_corpus(vault, corpus, range(stored, size))
        sealing.append({"size": size, "messages_per_s":
                        (size - stored) / (time.perf_counter() - sealing_started)})
        stored = size
        for name, engine_run in runs.items():
            if size > (limits or {}).get(name, size):
                skipped.append(_skipped(name, size, limits or {}, rows))
                _progress(json.dumps(skipped[-1]))
                continue
            _progress(f"{name}: indexing up to {size}")
            stage_started = time.perf_counter()
            indexing = engine_run.index()
            latency = engine_run.latency(corpus, extra)
            extra += LATENCY_REPEATS
            queries = engine_run.queries(corpus, random.Random(size))
            rows.append({
                "engine": name, "size": size, **indexing,
                "new_mail_searchable_s": statistics.median(latency),
                "index_share_of_vault": (disk_bytes(engine_run.catalogue.generation)
                                         / disk_bytes(scratch / "store")),
                "queries": queries,
                "stage_seconds": time.perf_counter() - stage_started,
            })
            _progress(json.dumps(rows[-1]))
            if json_path:
                Path(json_path).write_text(json.dumps({"rows": rows}, indent=2))
        # Every engine saw the same new mail; the others index it next time.
    return {"sizes": list(sizes), "engines": list(engines), "rows": rows,
            "skipped": skipped, "sealing": sealing,
            "total_seconds": time.perf_counter() - started,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load": os.getloadavg()},
            "goals": judge(rows, engines[0])}


def _skipped(name: str, size: int, limits: dict[str, int],
             rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Say what an engine held at its limit would have cost at ``size``."""
    measured = [row for row in rows if row["engine"] == name]
    if not measured:
        return {"engine": name, "size": size, "limit": limits[name], "estimate_s": None}
    last = max(measured, key=lambda row: row["size"])
    # Indexing rates only fall as an index grows: a lower bound.
    growth = size - last["size"]
    estimate = growth / last["full_docs_per_s"] + growth / last["bare_docs_per_s"]
    return {"engine": name, "size": size, "limit": limits[name],
            "estimate_s": estimate + last["stage_seconds"] - last["full_seconds"]
            - last["bare_seconds"]}


def judge(rows: list[dict[str, Any]], default: str) -> dict[str, Any]:
    mine = [row for row in rows if row["engine"] == default]
    largest = max(mine, key=lambda row: row["size"]) if mine else None
    if largest is None:
        return {}
    worst = max(query["p95_ms"] for query in largest["queries"].values())
    return {"engine": default, "size": largest["size"], "worst_p95_ms": worst,
            "p95_goal_met": worst < P95_GOAL_MS,
            "ratio": largest["ratio"], "ratio_goal_met": largest["ratio"] >= RATIO_GOAL}


def print_report(report: dict[str, Any]) -> None:
    print(f"\nCatalogue benchmark ({report['machine']['cpus']} CPUs, "
          f"load {report['machine']['load'][0]:.1f} at start)")
    print(f"{'engine':<8} {'size':>7} {'full/s':>8} {'bare/s':>8} {'ratio':>6} "
          f"{'new→found':>9} {'index/vault':>11}")
    for row in report["rows"]:
        print(f"{row['engine']:<8} {row['size']:>7} {row['full_docs_per_s']:>8.0f} "
              f"{row['bare_docs_per_s']:>8.0f} {row['ratio']:>6.2f} "
              f"{row['new_mail_searchable_s'] * 1000:>7.0f}ms "
              f"{row['index_share_of_vault']:>10.0%}")
    cpus = report["machine"]["cpus"] or 1
    print(f"\nCPU per document (µs) and cores kept busy; the ratio's bound on {cpus} cores:")
    print(f"{'engine':<8} {'size':>7} {'full':>6} {'(proc':>6} {'+work)':>6} {'cores':>5} "
          f"{'bare':>6} {'cores':>5} {'bound':>6}")
    for row in report["rows"]:
        print(f"{row['engine']:<8} {row['size']:>7} {row['full_cpu_us_per_doc']:>6.0f} "
              f"{row['full_process_cpu_us_per_doc']:>6.0f} "
              f"{row['full_workers_cpu_us_per_doc']:>6.0f} {row['full_cores']:>5.2f} "
              f"{row['bare_cpu_us_per_doc']:>6.0f} {row['bare_cores']:>5.2f} "
              f"{ratio_bound(row, cpus):>6.2f}")
    print(f"\n{'engine':<8} {'size':>7} " + " ".join(
        f"{kind:>17}" for kind in report["rows"][0]["queries"]) + "   (p50/p95 ms)")
    for row in report["rows"]:
        print(f"{row['engine']:<8} {row['size']:>7} " + " ".join(
            f"{q['p50_ms']:>8.1f}/{q['p95_ms']:<8.1f}" for q in row["queries"].values()))
    for row in report["skipped"]:
        estimate = (f"; indexing to it would take at least "
                    f"{row['estimate_s'] / 60:.1f} min at its last measured rates"
                    if row["estimate_s"] else "")
        print(f"{row['engine']:<8} {row['size']:>7}  NOT RUN: held at "
              f"{row['limit']} by --limit{estimate}")
    rates = ", ".join(f"{stage['messages_per_s']:.0f}/s to {stage['size']}"
                      for stage in report["sealing"])
    print(f"\nSealing (corpus set-up, not a goal): {rates}; whole run "
          f"{report['total_seconds'] / 60:.1f} min")
    goals = report["goals"]
    if goals:
        print(f"\nGoals for {goals['engine']} at {goals['size']}: worst p95 "
              f"{goals['worst_p95_ms']:.1f} ms (< {P95_GOAL_MS:.0f}: "
              f"{'met' if goals['p95_goal_met'] else 'NOT met'}); indexing ratio "
              f"{goals['ratio']:.2f} (>= {RATIO_GOAL}: "
              f"{'met' if goals['ratio_goal_met'] else 'NOT met'})")


def _progress(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on 1,000 messages")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--sizes", help="comma-separated corpus sizes, growing")
    parser.add_argument("--engines", default="tantivy,whoosh",
                        help="comma-separated engines; the first is judged by the goals")
    parser.add_argument("--tmp-dir", help="where the scratch directory goes")
    parser.add_argument("--limit", action="append", default=[], metavar="ENGINE=SIZE",
                        help="stop growing ENGINE's index past SIZE (Whoosh at 100,000 "
                             "takes hours)")
    arguments = parser.parse_args(argv)
    sizes = QUICK_SIZES if arguments.quick else FULL_SIZES
    if arguments.sizes:
        sizes = tuple(int(size) for size in arguments.sizes.split(","))
    engines = tuple(arguments.engines.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="catalogue-bench-", dir=arguments.tmp_dir))
    try:
        limits = {name: int(size) for name, _, size in
                  (limit.partition("=") for limit in arguments.limit)}
        report = run(sizes, engines, scratch, limits, arguments.json)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_report(report)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
