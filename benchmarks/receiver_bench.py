"""Measure the receiver against an SMTP server that does nothing.

Issue #4 asks for these figures, all from one run on one machine.  The
load generator is Postfix's ``smtp-source`` (Debian package ``postfix``,
installed by ``scripts/install-peers``), sending over 20 parallel sessions
that each keep their connection (``-d``), into:

(a) ``smtp-sink``, Postfix's C server that discards: the ceiling;
(b) a bare aiosmtpd server whose handler discards: what the SMTP library
    alone costs, the baseline the archive is judged against;
(c) ``strongroom serve`` on a new home, archiving durably (sealed, fsync'd,
    answered 250 only once durable), with group commit, and
(c0) the same without group commit (``receiver.group_commit = false``),
(c1) with ``--receiver-alone``: serve's receiver without the catalogue
     follower and portal, to tell the receiver's cost from the indexer's.

Serve runs ``receiver.processes`` receiver processes (``--processes``,
by default one per CPU as serve's own default), so the run also measures
(bN): bare aiosmtpd on as many processes sharing the port (SO_REUSEPORT),
and reports the ratio to it beside the ratio to (b), which stays one
process as the issue defines it.

Message sets: 10,000 messages of 100 kB and 10,000 of 10 kB (fewer with
``--quick``).  For each: messages/s and MB/s (payload bytes, 10^6), and the
ratios c/a and c/b.  Then the time from the end of DATA to the 250 reply,
median and p99, measured by this script's own asyncio client (smtp-source
cannot time replies), sending generated messages (text and a base64
attachment, each distinct) over the same 20 sessions.

Serve runs its catalogue follower too, which indexes what arrives on the
same two cores: the figures are those of the archive as deployed.  Every
measurement is repeated ``--rounds`` times with the servers interleaved, so
that load from other processes falls on all alike, and the median kept.
Nothing leaves 127.0.0.1; every file is written under one scratch
directory that the run removes.  Run from the repository root::

    python -m benchmarks.receiver_bench [--quick] [--json PATH] [--rounds N]
                                        [--receiver-alone] [--processes N]
                                        [--messages N] [--sizes 100,10]
                                        [--servers sink,aiosmtpd,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.vault_bench import email_message

MB = 1_000_000
SESSIONS = 20
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
JOURNAL = "journal@archive.test"
SENDER = "mta@example.com"
READY_SECONDS = 60.0
RUN_TIMEOUT = 1800.0
ADMIN_PASSWORD = "benchmark admin password"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to send: the default run or a quick smoke run."""

    name: str
    sets: tuple[tuple[str, int, int], ...]  # label, messages, payload bytes
    latency_messages: int
    rounds: int


DEFAULT_PLAN = Plan("default", (("100 kB", 10_000, 100_000), ("10 kB", 10_000, 10_000)),
                    latency_messages=400, rounds=1)
QUICK_PLAN = Plan("quick", (("100 kB", 1000, 100_000), ("10 kB", 2000, 10_000)),
                  latency_messages=400, rounds=1)


# The servers under test


class Server:
    """A server listening on a loopback port, started and stopped per run."""

    name = ""
    label = ""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = scratch / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(), start_new_session=True)
        wait_for_port(self.port, self.process, self.log)

    def stop(self) -> None:
        """Stop the server with SIGTERM (SIGKILL if it lingers)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Sink(Server):
    """(a) Postfix's smtp-sink: accepts and discards, written in C."""

    name, label = "sink", "(a) smtp-sink"

    def command(self) -> list[str]:
        # smtp-sink refuses to run as root without a user to drop to.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [SMTP_SINK, *user, f"127.0.0.1:{self.port}", "256"]


class BareAiosmtpd(Server):
    """(b) aiosmtpd with a handler that discards, as our receiver sets it up.

    With ``processes`` above 1, (bN): that many such servers on one port
    (SO_REUSEPORT), to compare with a receiver that runs as many.
    """

    def __init__(self, scratch: Path, processes: int = 1) -> None:
        self.processes = processes
        self.name = "aiosmtpd" if processes == 1 else f"aiosmtpd-{processes}"
        self.label = ("(b) bare aiosmtpd" if processes == 1
                      else f"(bN) bare aiosmtpd, {processes} processes")
        super().__init__(scratch)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.receiver_bench",
                "--discarding-server", str(self.port),
                "--discarding-processes", str(self.processes)]


class Strongroom(Server):
    """(c) strongroom serve on a new home, with or without group commit."""

    def __init__(self, scratch: Path, group_commit: bool, processes: int = 0) -> None:
        self.group_commit = group_commit
        self.processes = processes
        self.name = "strongroom" if group_commit else "strongroom-nogc"
        self.label = ("(c) strongroom, group commit" if group_commit
                      else "(c0) strongroom, no group commit")
        if processes:
            self.label += f", {processes} proc."
        super().__init__(scratch)
        self.home = scratch / f"home-{self.name}-{secrets.token_hex(3)}"
        self.web_port = free_port()

    def environment(self) -> dict[str, str]:
        environment = {**os.environ, "STRONGROOM_ADMIN_PASSWORD": ADMIN_PASSWORD,
                       "STRONGROOM_RECEIVER_GROUP_COMMIT": str(self.group_commit).lower()}
        if self.processes:
            environment["STRONGROOM_RECEIVER_PROCESSES"] = str(self.processes)
        return environment

    def start(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "web.cli", "init", "--home", str(self.home),
             "--domain", "example.com"],
            env=self.environment(), check=True, capture_output=True)
        super().start()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "web.cli", "serve", "--home", str(self.home),
                "--smtp-listen", f"127.0.0.1:{self.port}",
                "--web-listen", f"127.0.0.1:{self.web_port}"]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)


class ReceiverOnly(Strongroom):
    """(c1) the receiver of serve alone, without the follower and portal."""

    def __init__(self, scratch: Path) -> None:
        super().__init__(scratch, True)
        self.name, self.label = "receiver", "(c1) receiver alone, group commit"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.receiver_bench",
                "--receiver-only", str(self.home), str(self.port)]


def run_receiver_only(home: Path, port: int) -> None:
    """Run serve's receiver on ``home`` alone until SIGTERM."""
    import signal
    import threading

    from vault.config import load
    from vault.ingest import open_vault
    from vault.receiver import JournalHandler, Receiver

    settings = load(home)
    receiving = settings.receiver
    handler = JournalHandler(open_vault(settings), receiving.trusted_networks,
                             receiving.max_recipients)
    receiver = Receiver(handler, "127.0.0.1", port, receiving.hostname,
                        receiving.max_message_size)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    receiver.start()
    stop.wait()
    receiver.stop()


def run_discarding_servers(port: int, processes: int) -> None:
    """Run ``processes`` discarding servers on ``port`` until SIGTERM."""
    import multiprocessing
    import signal

    if processes == 1:
        run_discarding_server(port)
        return
    children = [multiprocessing.Process(target=run_discarding_server, args=(port, True))
                for _ in range(processes)]
    for child in children:
        child.start()
    signal.signal(signal.SIGTERM, lambda *_: [child.terminate() for child in children])
    for child in children:
        child.join()


def run_discarding_server(port: int, reuse_port: bool = False) -> None:
    """Serve SMTP on ``port`` with aiosmtpd, discarding every message."""
    from aiosmtpd.smtp import SMTP

    class Discard:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 2.0.0 OK discarded"

    loop = asyncio.new_event_loop()
    handler = Discard()
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, data_size_limit=64 * MB, enable_SMTPUTF8=True,
                     decode_data=False, hostname="discard.test"),
        "127.0.0.1", port, reuse_port=reuse_port or None))
    try:
        loop.run_forever()
    finally:
        server.close()


# Load


def send_with_smtp_source(port: int, messages: int, payload: int) -> float:
    """Send ``messages`` of ``payload`` bytes with smtp-source; return seconds."""
    command = [SMTP_SOURCE, "-s", str(SESSIONS), "-d", "-m", str(messages),
               "-l", str(payload), "-f", SENDER, "-t", JOURNAL, "-M", "bench.test",
               f"127.0.0.1:{port}"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({completed.returncode}): "
                           f"{completed.stderr.strip()}")
    return elapsed


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


async def _session(port: int, messages: list[bytes], delays: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _read_reply(reader)
        writer.write(b"EHLO latency.bench.test\r\n")
        await _read_reply(reader)
        for raw in messages:
            for command in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{JOURNAL}>", "DATA"):
                writer.write(command.encode() + b"\r\n")
                reply = await _read_reply(reader)
                if reply[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"{command}: {reply!r}")
            writer.write(raw + b".\r\n")
            await writer.drain()
            sent = time.perf_counter()
            reply = await _read_reply(reader)
            delays.append(time.perf_counter() - sent)
            if not reply.startswith(b"250"):
                raise RuntimeError(f"end of DATA: {reply!r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def measure_latency(port: int, messages: list[bytes]) -> list[float]:
    """Send ``messages`` over SESSIONS sessions; return seconds to each 250."""
    delays: list[float] = []

    async def run() -> None:
        await asyncio.gather(*(_session(port, messages[i::SESSIONS], delays)
                               for i in range(SESSIONS)))

    asyncio.run(run())
    return delays


def latency_messages(count: int, payload: int) -> list[bytes]:
    """Return ``count`` distinct generated messages, dot-stuffed for DATA."""
    result = []
    for number in range(count):
        raw = email_message(payload, seed=number)
        if not raw.endswith(b"\r\n"):
            raw += b"\r\n"
        result.append(raw.replace(b"\r\n.", b"\r\n.."))
    return result


def tagged(messages: list[bytes], tag: str) -> list[bytes]:
    """Make each message distinct from earlier runs by its Message-ID."""
    marker = b"Message-ID: <"
    return [raw.replace(marker, marker + f"{tag}.".encode(), 1) for raw in messages]


# Measuring


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``port`` accepts; raise with the log if the process died."""
    deadline = time.monotonic() + READY_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not listen on {port}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Run ``server`` for the duration of the block."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


def percentile(values: list[float], share: float) -> float:
    """Return the nearest-rank percentile ``share`` (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


SERVER_NAMES = ("sink", "aiosmtpd", "aiosmtpd-N", "strongroom", "strongroom-nogc",
                "receiver")


@dataclasses.dataclass(frozen=True)
class Lineup:
    """Which servers a run measures, and with how many receiver processes."""

    names: tuple[str, ...] = ("sink", "aiosmtpd", "aiosmtpd-N", "strongroom",
                              "strongroom-nogc")
    processes: int = 0


def make_servers(scratch: Path, lineup: Lineup) -> list[Server]:
    """Return the servers of ``lineup``, in the order they are measured."""
    servers: dict[str, Server] = {
        "sink": Sink(scratch), "aiosmtpd": BareAiosmtpd(scratch),
        "strongroom": Strongroom(scratch, True, lineup.processes),
        "strongroom-nogc": Strongroom(scratch, False, lineup.processes),
        "receiver": ReceiverOnly(scratch)}
    if lineup.processes > 1:
        servers["aiosmtpd-N"] = BareAiosmtpd(scratch, lineup.processes)
    return [servers[name] for name in SERVER_NAMES
            if name in lineup.names and name in servers]


def run_benchmark(plan: Plan, scratch: Path, lineup: Lineup = Lineup(),
                  with_latency: bool = True) -> dict[str, Any]:
    """Measure every server on every message set; return the figures."""
    throughput: dict[str, dict[str, list[float]]] = {}
    latency: dict[str, list[float]] = {}
    names = {}
    generated = latency_messages(plan.latency_messages, 100_000)
    for round_number in range(plan.rounds):
        for server in make_servers(scratch, lineup):
            names[server.name] = server.label
            with running(server):
                for label, count, payload in plan.sets:
                    seconds = send_with_smtp_source(server.port, count, payload)
                    throughput.setdefault(label, {}).setdefault(server.name, []).append(
                        seconds)
                    print(f"  round {round_number + 1}: {server.label:<34} {label:>7}: "
                          f"{count / seconds:8.1f} msg/s", flush=True)
                if not with_latency:
                    continue
                messages = tagged(generated, f"{server.name}.{round_number}")
                delays = measure_latency(server.port, messages)
                latency.setdefault(server.name, []).extend(delays)
                print(f"  round {round_number + 1}: {server.label:<34} to 250: median "
                      f"{statistics.median(delays) * 1000:.0f} ms, p99 "
                      f"{percentile(delays, 0.99) * 1000:.0f} ms", flush=True)
    return summarise(plan, names, throughput, latency)


def summarise(plan: Plan, names: dict[str, str],
              throughput: dict[str, dict[str, list[float]]],
              latency: dict[str, list[float]]) -> dict[str, Any]:
    """Turn the timings into the figures the issue asks for."""
    figures: dict[str, Any] = {"sets": {}, "latency": {}}
    for label, count, payload in plan.sets:
        rows = {}
        for name, timings in throughput[label].items():
            seconds = statistics.median(timings)
            rows[name] = {"label": names[name], "seconds": seconds,
                          "msgs_per_s": count / seconds,
                          "mb_per_s": count * payload / seconds / MB}
        baselines = {"sink": "sink", "aiosmtpd": "aiosmtpd"}
        baselines.update({"aiosmtpd-N": name for name in rows
                          if name.startswith("aiosmtpd-")})
        for row in rows.values():
            for key, baseline in baselines.items():
                if baseline in rows:
                    row[f"ratio_to_{key}"] = (row["msgs_per_s"]
                                              / rows[baseline]["msgs_per_s"])
        figures["sets"][label] = {"messages": count, "payload_bytes": payload,
                                  "servers": rows}
    for name, delays in latency.items():
        figures["latency"][name] = {
            "label": names[name], "messages": len(delays),
            "median_ms": statistics.median(delays) * 1000,
            "p99_ms": percentile(delays, 0.99) * 1000}
    return figures


def print_figures(figures: dict[str, Any]) -> None:
    print()
    for label, figures_set in figures["sets"].items():
        print(f"{figures_set['messages']} messages of {label} over {SESSIONS} sessions "
              "(smtp-source -d):")
        print(f"  {'server':<40} {'msg/s':>8} {'MB/s':>7} {'vs (a)':>7} {'vs (b)':>7} "
              f"{'vs (bN)':>7}")
        for row in figures_set["servers"].values():
            ratios = " ".join(
                f"{row[key]:7.2f}" if key in row else f"{'-':>7}"
                for key in ("ratio_to_sink", "ratio_to_aiosmtpd", "ratio_to_aiosmtpd-N"))
            print(f"  {row['label']:<40} {row['msgs_per_s']:8.1f} {row['mb_per_s']:7.1f} "
                  f"{ratios}")
    if not figures["latency"]:
        return
    print(f"\nEnd of DATA to 250, 100 kB generated messages over {SESSIONS} sessions:")
    print(f"  {'server':<34} {'median ms':>10} {'p99 ms':>8}")
    for row in figures["latency"].values():
        print(f"  {row['label']:<34} {row['median_ms']:10.1f} {row['p99_ms']:8.1f}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures and optionally write JSON."""
    arguments = _parse_arguments(argv)
    if arguments.discarding_server:
        run_discarding_servers(arguments.discarding_server,
                               arguments.discarding_processes)
        return 0
    if arguments.receiver_only:
        run_receiver_only(Path(arguments.receiver_only[0]), int(arguments.receiver_only[1]))
        return 0
    for program in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(program, os.X_OK):
            print(f"receiver_bench: {program} is missing; run scripts/install-peers "
                  "(Debian package postfix)", file=sys.stderr)
            return 2
    plan = QUICK_PLAN if arguments.quick else DEFAULT_PLAN
    if arguments.rounds:
        plan = dataclasses.replace(plan, rounds=arguments.rounds)
    if arguments.messages or arguments.sizes:
        sizes = ({int(size) * 1000 for size in arguments.sizes.split(",")}
                 if arguments.sizes else {payload for _, _, payload in plan.sets})
        plan = dataclasses.replace(plan, name="custom", sets=tuple(
            (f"{payload // 1000} kB", arguments.messages or count, payload)
            for _, count, payload in DEFAULT_PLAN.sets if payload in sizes))
    names = (tuple(arguments.servers.split(",")) if arguments.servers
             else Lineup.names + (("receiver",) if arguments.receiver_alone else ()))
    unknown = set(names) - set(SERVER_NAMES)
    if unknown:
        print(f"receiver_bench: unknown server(s) {', '.join(sorted(unknown))}; "
              f"expected some of {', '.join(SERVER_NAMES)}", file=sys.stderr)
        return 2
    lineup = Lineup(names, arguments.processes or os.cpu_count() or 1)
    print(f"receiver benchmark, {plan.name} plan, {plan.rounds} round(s), "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, strongroom with "
          f"receiver.processes = {lineup.processes}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="receiver-bench-", dir=arguments.tmp_dir))
    try:
        figures = run_benchmark(plan, scratch, lineup, not arguments.no_latency)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures["plan"] = dataclasses.asdict(plan)
    figures["receiver_processes"] = lineup.processes
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}
    print_figures(figures)
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.receiver_bench",
        description="Receiver throughput and time-to-250 against smtp-sink and aiosmtpd.")
    parser.add_argument("--quick", action="store_true", help="a smaller smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures here")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="repetitions of every measurement (median kept)")
    parser.add_argument("--receiver-alone", action="store_true",
                        help="also measure serve's receiver without follower and portal")
    parser.add_argument("--tmp-dir", type=Path, metavar="DIR",
                        help="where the scratch directory goes (default: system temp)")
    parser.add_argument("--messages", type=int, metavar="N",
                        help="messages in every set (instead of the plan's)")
    parser.add_argument("--sizes", metavar="KB,...",
                        help="message sets to run, by payload in kB (e.g. 100 or 100,10)")
    parser.add_argument("--servers", metavar="NAME,...",
                        help="servers to run (default all): " + ", ".join(SERVER_NAMES))
    parser.add_argument("--processes", type=int, metavar="N",
                        help="receiver.processes for strongroom serve (default: one "
                             "per CPU, as serve's default); above 1, also bare aiosmtpd "
                             "on N processes")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the time-to-250 measurement")
    parser.add_argument("--discarding-server", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)
    parser.add_argument("--discarding-processes", type=int, default=1,
                        help=argparse.SUPPRESS)
    parser.add_argument("--receiver-only", nargs=2, metavar=("HOME", "PORT"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
