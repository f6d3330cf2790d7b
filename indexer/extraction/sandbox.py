"""Run document readers in worker processes, each call under a deadline.

pypdf, openpyxl, python-docx and the rest run Python and C code that
cannot be interrupted from another thread: a hostile PDF can loop for
minutes and a crafted workbook can allocate gigabytes.  A process can be
killed, so readers run in workers:

- each worker takes one call at a time over its own socket; the caller
  waits for the answer until the deadline, then kills that worker (and
  only that one) and starts a fresh one on next use;
- each worker caps its address space (``RLIMIT_AS``), so an allocation
  storm ends in ``MemoryError`` inside the worker instead of the kernel's
  OOM killer picking a victim on the archive host;
- each worker refuses to create, resolve or connect sockets (an audit
  hook, PEP 578), a second guard behind the readers' own settings (no
  remote references, no external entities);
- workers are fresh interpreters (``python -c``), so they inherit no
  locks or threads from the follower or the web server, and are recycled
  after ``CALLS_PER_WORKER`` calls to shed whatever a library leaks.
  multiprocessing's ``spawn`` would also give a fresh interpreter, but it
  re-runs the parent's main script in the child, which fails for a
  script read from stdin or one without a ``__main__`` guard.

:class:`concurrent.futures.ProcessPoolExecutor` was the obvious tool, but
a call that overruns its timeout cannot be cancelled there: the only way
to stop it is to break the whole pool, failing every other caller's
call in flight.  One socket per worker makes the kill precise.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from indexer import IndexerError

log = logging.getLogger(__name__)

CALLS_PER_WORKER = 1000
# Address space per worker: room for a 25 MiB part parsed into objects
# many times its size, far below the host's memory.
WORKER_MEMORY_BYTES = 2 << 30
JOIN_SECONDS = 5.0


class SandboxError(IndexerError):
    """A call in a worker did not return a result."""


class CallTimeoutError(SandboxError):
    """The worker overran its deadline and was killed."""


class WorkerLostError(SandboxError):
    """The worker died (out of memory, crash) before answering."""


class Sandbox:
    """A small pool of killable worker processes.

    ``workers`` bounds how many calls run at once; a caller beyond that
    waits for a free worker, and the wait counts against its deadline.
    Safe to share between threads.
    """

    def __init__(self, workers: int = 2,
                 memory_bytes: int = WORKER_MEMORY_BYTES,
                 calls_per_worker: int = CALLS_PER_WORKER) -> None:
        self.memory_bytes = memory_bytes
        self.calls_per_worker = calls_per_worker
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()

    def run(self, function: Callable[..., Any], args: tuple[Any, ...],
            timeout: float) -> Any:
        """Return ``function(*args)`` as computed in a worker.

        Raises :class:`CallTimeoutError` when no answer came within
        ``timeout`` seconds and :class:`WorkerLostError` when the worker
        died; an exception inside ``function`` comes back as
        :class:`SandboxError` naming its type.
        """
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=max(timeout, 0)):
            raise CallTimeoutError(f"no worker free within {timeout:.1f} s")
        try:
            worker = self._checkout()
            answer = worker.call(function, args, deadline - time.monotonic())
            if answer == ("error", "MemoryError"):
                worker.stop()
            else:
                self._checkin(worker)
        finally:
            self._slots.release()
        status, value = answer
        if status != "ok":
            raise SandboxError(value)
        return value

    def close(self) -> None:
        """Stop the idle workers (the pool stays usable)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    def _checkout(self) -> _Worker:
        with self._lock:
            if os.getpid() != self._owner_pid:
                # A forked copy of this object must not share its parent's
                # pipes; it starts workers of its own.
                self._idle, self._owner_pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        try:
            return _Worker(self.memory_bytes)
        except OSError as err:
            log.error("cannot start an extraction worker: %s", err,
                      extra={"event": "extract.worker_failed"})
            raise WorkerLostError(f"cannot start a worker: {err}") from err

    def _checkin(self, worker: _Worker) -> None:
        if worker.calls >= self.calls_per_worker or not worker.is_alive():
            worker.stop()
            return
        with self._lock:
            self._idle.append(worker)


class _Worker:
    """One worker process and the parent's end of its socket pair."""

    def __init__(self, memory_bytes: int) -> None:
        ours, theirs = socket.socketpair()
        # The worker imports this package as the parent does.
        search_path = os.pathsep.join(filter(None, sys.path))
        environment = dict(os.environ, PYTHONPATH=search_path)
        command = (f"from indexer.extraction.sandbox import serve_descriptor; "
                   f"serve_descriptor({theirs.fileno()}, {memory_bytes})")
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", command], pass_fds=(theirs.fileno(),),
                env=environment, stdin=subprocess.DEVNULL)
        self.connection = multiprocessing.connection.Connection(ours.detach())
        self.calls = 0

    def call(self, function: Callable[..., Any], args: tuple[Any, ...],
             timeout: float) -> tuple[str, Any]:
        self.calls += 1
        try:
            self.connection.send((function, args))
            if not self.connection.poll(max(timeout, 0)):
                log.warning("extraction worker %s overran %.1f s; killing it",
                            self.process.pid, timeout,
                            extra={"event": "extract.worker_overran"})
                self.kill()
                raise CallTimeoutError(f"no answer within {timeout:.1f} s")
            answer: tuple[str, Any] = self.connection.recv()
        except (EOFError, OSError) as err:
            self.kill()
            raise WorkerLostError(
                f"worker exited with {self.process.returncode}") from err
        return answer

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.connection.close()
        try:
            self.process.wait(JOIN_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.connection.close()


def serve_descriptor(descriptor: int, memory_bytes: int) -> None:
    """Serve calls on an inherited socket (the worker's entry point)."""
    serve(multiprocessing.connection.Connection(descriptor), memory_bytes)


def serve(connection: multiprocessing.connection.Connection, memory_bytes: int) -> None:
    """Answer calls until the parent closes the pipe (the worker's main)."""
    confine(memory_bytes)
    while True:
        try:
            function, args = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[str, Any] = ("ok", function(*args))
        except MemoryError:
            # The heap may be left fragmented near the limit; answer, then
            # exit so that the parent starts a clean worker.
            connection.send(("error", "MemoryError"))
            return
        except Exception as err:
            answer = ("error", type(err).__name__)
        connection.send(answer)


def confine(memory_bytes: int) -> None:
    """Limit this process: its address space, and no sockets."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Ctrl-C in a terminal reaches the whole process group; the parent
    # decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.addaudithook(_refuse_network)


# Audit events (PEP 578) raised before a socket is made, resolved or
# connected; raising in a hook stops the operation.
NETWORK_EVENTS = frozenset({"socket.__new__", "socket.connect", "socket.getaddrinfo",
                            "socket.gethostbyname", "urllib.Request"})


def _refuse_network(event: str, args: tuple[object, ...]) -> None:
    if event in NETWORK_EVENTS:
        raise PermissionError("extraction workers may not use the network")


class InProcessDeadline:
    """Run calls in this process, interrupted by an alarm at the deadline.

    The stand-in for a :class:`Sandbox` inside a worker that is itself
    confined (a whole message extracted in a sandbox worker): a reader
    written in Python stops at its deadline, and one stuck in C code is
    stopped by the outer worker's deadline instead.  Main thread only.
    """

    def run(self, function: Callable[..., Any], args: tuple[Any, ...],
            timeout: float) -> Any:
        """Return ``function(*args)``; raise CallTimeoutError past ``timeout``."""
        if timeout <= 0:
            raise CallTimeoutError("no time left")
        previous = signal.signal(signal.SIGALRM, _raise_overrun)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return function(*args)
        except _Overrun:
            raise CallTimeoutError(f"no answer within {timeout:.1f} s") from None
        except MemoryError:
            raise WorkerLostError("the reader ran out of memory") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class _Overrun(BaseException):
    # Not an Exception: readers catch Exception to record a broken part,
    # and must not swallow their own deadline.
    pass


def _raise_overrun(signum: int, frame: object) -> None:
    raise _Overrun


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


def shared_sandbox() -> Sandbox:
    """Return the process's sandbox, creating it on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox(workers=min(2, os.cpu_count() or 1))
        return _shared
