"""Run serve's receiver in several processes that share its addresses.

One Python process seals and stages messages under one interpreter lock,
however many threads it has.  With ``receiver.processes`` above 1, serve
starts that many receiver processes instead; each binds the SMTP (and
LMTP) address with SO_REUSEPORT, so the kernel spreads new sessions over
them, and each opens the vault with a group commit of its own (the local
store lets several processes publish into one home).  The follower and the
portal stay in serve's process, which a receiver wakes through a shared
event when it has archived something.

Lifecycle: serve checks that the address is free, starts the processes and
waits until each listens.  A process that dies is logged once and started
again.  ``stop`` sends each SIGTERM: it stops accepting, finishes the
messages in DATA (``Receiver.stop``) and exits.  If serve itself dies, a
receiver process sees its pipe to serve close and exits at once, as a
crash would end it: it never listens on without serve.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from vault import ConfigError
from vault.config import Settings, parse_listen
from vault.control import ControlDB
from vault.ingest import open_vault
from vault.receiver import JournalHandler, Receiver
from vault.transport import server_tls_context
from web.senders import JournalSenders

log = logging.getLogger(__name__)

# How long a new receiver process may take to import, open the vault and
# listen.
READY_SECONDS = 60.0
# How long an address taken by receivers of a serve that was just killed
# may take to be let go (they exit when they see serve gone).
ADDRESS_FREE_SECONDS = 5.0
# Pause before starting again a process that died, so one that cannot run
# does not spin.
RESTART_PAUSE_SECONDS = 1.0
# Least time between two wakes of the follower by one receiver process.
WAKE_SECONDS = 0.05
# Exit status of a receiver process that found serve gone.
EXIT_ORPHANED = 3


def process_count(settings: Settings) -> int:
    """Return how many receiver processes ``settings`` ask for."""
    return settings.receiver.processes or os.cpu_count() or 1


def build_receiver(settings: Settings, on_archived: Any, *,
                   reuse_port: bool = False) -> Receiver:
    """Make the receiver ``settings`` describe, over a vault of its own."""
    receiving = settings.receiver
    control = ControlDB(settings.path(settings.control.database))
    handler = JournalHandler(
        open_vault(settings), receiving.trusted_networks, receiving.max_recipients,
        on_archived=on_archived,
        trust=receiving.trust,
        require_tls=receiving.require_tls,
        authenticate=JournalSenders(control).authenticate,
        on_refused=control.record_refusal,
    )
    tls_context = None
    if receiving.tls_certificate:
        tls_context = server_tls_context(settings.path(receiving.tls_certificate),
                                         settings.path(receiving.tls_key))
    smtp_host, smtp_port = parse_listen("receiver.listen", receiving.listen)
    lmtp = None
    if receiving.lmtp_listen:
        lmtp = parse_listen("receiver.lmtp_listen", receiving.lmtp_listen)
    return Receiver(
        handler, smtp_host, smtp_port,
        hostname=receiving.hostname,
        max_message_size=receiving.max_message_size,
        lmtp=lmtp,
        tls_context=tls_context,
        timeout=receiving.timeout_seconds,
        shutdown_grace=receiving.shutdown_grace_seconds,
        reuse_port=reuse_port,
    )


class ReceiverProcesses:
    """Start, watch and stop serve's receiver processes; see the module."""

    def __init__(self, settings: Settings, count: int, wake: threading.Event) -> None:
        self.settings = settings
        self.count = count
        self._follower_wake = wake
        self._context = multiprocessing.get_context("spawn")
        self._archived = self._context.Event()
        self._children: dict[int, tuple[multiprocessing.process.BaseProcess,
                                        Connection]] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def pids(self) -> list[int]:
        """Return the process ids of the running receiver processes."""
        return [process.pid for process, _ in self._children.values()
                if process.pid is not None]

    def start(self) -> None:
        """Start every process and wait until each listens.

        Raises ConfigError if an address is taken, OSError or RuntimeError
        if a process cannot start (its log says why).
        """
        for name, address in self._addresses():
            _wait_until_free(name, *address)
        try:
            for slot in range(self.count):
                self._start_child(slot)
        except BaseException:
            self.stop()
            raise
        for target, name in ((self._watch, "receiver-watch"),
                             (self._relay_wakes, "receiver-wakes")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("receiver running in %d processes (%s)", self.count,
                 ", ".join(map(str, self.pids)), extra={"event": "receiver.processes"})

    def stop(self) -> None:
        """Stop every process gracefully (see the module) and wait for it."""
        self._stopping.set()
        for process, _ in self._children.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        grace = self.settings.receiver.shutdown_grace_seconds + 15
        deadline = time.monotonic() + grace
        for process, connection in self._children.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("receiver process %d did not stop in %.0f s; killing it",
                          process.pid, grace, extra={"event": "receiver.killed"})
                process.kill()
                process.join()
            connection.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _addresses(self) -> list[tuple[str, tuple[str, int]]]:
        receiving = self.settings.receiver
        wanted = [("receiver.listen", receiving.listen)]
        if receiving.lmtp_listen:
            wanted.append(("receiver.lmtp_listen", receiving.lmtp_listen))
        return [(name, parse_listen(name, value)) for name, value in wanted]

    def _start_child(self, slot: int) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=run_child, args=(self.settings, theirs, self._archived),
            name=f"strongroom-receiver-{slot}", daemon=False)
        process.start()
        theirs.close()
        self._children[slot] = (process, ours)
        if not ours.poll(READY_SECONDS):
            raise RuntimeError(f"receiver process {process.pid} did not start "
                               f"listening within {READY_SECONDS:.0f} s")
        try:
            status = ours.recv()
        except EOFError:
            raise RuntimeError(f"receiver process {process.pid} exited while starting "
                               f"(status {process.exitcode}); see its log") from None
        if status != "ready":
            raise OSError(f"receiver process {process.pid} could not start: {status}")
        log.info("receiver process %d listening", process.pid,
                 extra={"event": "receiver.process_started"})

    def _watch(self) -> None:
        # Start again any process that exits while serve is not stopping.
        while not self._stopping.is_set():
            sentinels = {process.sentinel: slot
                         for slot, (process, _) in self._children.items()}
            ended = multiprocessing.connection.wait(list(sentinels), timeout=1.0)
            for sentinel in ended:
                if self._stopping.is_set():
                    return
                slot = sentinels[sentinel]
                process, connection = self._children[slot]
                process.join()
                connection.close()
                log.error("receiver process %d exited with status %s; starting another",
                          process.pid, process.exitcode,
                          extra={"event": "receiver.process_died"})
                time.sleep(RESTART_PAUSE_SECONDS)
                try:
                    self._start_child(slot)
                except Exception:
                    log.exception("could not start a receiver process; trying again",
                                  extra={"event": "receiver.restart_failed"})

    def _relay_wakes(self) -> None:
        # A receiver process archived something: the follower looks now
        # rather than at its next poll.
        while not self._stopping.is_set():
            if self._archived.wait(timeout=0.5):
                self._archived.clear()
                self._follower_wake.set()


def _wait_until_free(name: str, host: str, port: int) -> None:
    # SO_REUSEPORT would let a second serve share the address silently:
    # bind it alone first, as a single receiver would.
    deadline = time.monotonic() + ADDRESS_FREE_SECONDS
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError as err:
                if time.monotonic() > deadline:
                    raise ConfigError(f"setting {name}: cannot listen on "
                                      f"{host}:{port}: {err.strerror}") from None
        time.sleep(0.1)


def run_child(settings: Settings, parent: Connection, archived: Any) -> None:
    """Run one receiver process until SIGTERM or SIGINT; see the module."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        receiver = build_receiver(settings, _Wake(archived).set, reuse_port=True)
        receiver.start()
    except Exception as err:
        parent.send(f"{type(err).__name__}: {err}")
        return
    parent.send("ready")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="parent-watch").start()
    stop.wait()
    receiver.stop()


class _Wake:
    """Set a shared event at most every WAKE_SECONDS, and never miss one.

    Setting it takes locks shared with every receiver process, so a burst
    sets it once per WAKE_SECONDS, not once per message.  A message that
    comes within WAKE_SECONDS of the last set is not dropped: the event is
    set again once that time is up (a wake dropped here left the newest
    message unindexed until the follower's next poll, half a second on).
    """

    def __init__(self, event: Any) -> None:
        self.event = event
        self._last = -WAKE_SECONDS
        self._deferred = False
        self._lock = threading.Lock()

    def set(self) -> None:
        with self._lock:
            wait = self._last + WAKE_SECONDS - time.monotonic()
            if wait > 0:
                if not self._deferred:
                    self._deferred = True
                    timer = threading.Timer(wait, self._set_deferred)
                    timer.daemon = True
                    timer.start()
                return
            self._last = time.monotonic()
        self.event.set()

    def _set_deferred(self) -> None:
        with self._lock:
            self._deferred = False
            self._last = time.monotonic()
        self.event.set()


def _exit_with_parent(parent: Connection) -> None:
    try:
        parent.recv()
    except (EOFError, OSError):
        pass
    log.error("serve is gone; receiver process %d exits", os.getpid(),
              extra={"event": "receiver.orphaned"})
    os._exit(EXIT_ORPHANED)
