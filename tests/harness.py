"""Run a real Strongroom home for tests: ``strongroom init`` then ``serve``.

The server runs as a subprocess on free loopback ports, exactly as an
administrator would start it; tests talk to it over SMTP and HTTP.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from web.cli import main as cli_main

ADMIN_PASSWORD = "admin-password-for-tests"
USER_PASSWORD = "user-password-for-tests"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def strongroom(*args: str, stdin: str | None = None, env: dict | None = None) -> str:
    """Run the ``strongroom`` CLI and return its standard output.

    The command runs in this process through the same entry point the
    installed script calls: a suite runs hundreds of commands, and a new
    interpreter importing the whole product for each one cost minutes.
    ``serve`` is the exception and always gets its own process
    (``ArchiveServer.start``).
    """
    if args and args[0] == "serve":
        raise ValueError("start serve with ArchiveServer, in its own process")
    out, err = io.StringIO(), io.StringIO()
    with _environment(env or {}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), _standard_input(stdin or ""):
        try:
            status = cli_main(list(args))
        except SystemExit as exit:  # argparse refusing the arguments
            status = exit.code if isinstance(exit.code, int) else 2
    if status != 0:
        raise RuntimeError(
            f"strongroom {' '.join(args)} failed ({status}):\n"
            f"{out.getvalue()}\n{err.getvalue()}"
        )
    return out.getvalue()


@contextlib.contextmanager
def _environment(changes: dict) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _standard_input(text: str) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


class ArchiveServer:
    """A Strongroom home with ``serve`` running on loopback ports."""

    def __init__(self, home: Path, domains: tuple[str, ...] = ("example.com",)) -> None:
        self.home = Path(home)
        self.domains = domains
        self.smtp_port = free_port()
        self.web_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        self.process: subprocess.Popen | None = None
        self.log_path = self.home.parent / f"{self.home.name}-serve.log"

    def init(self) -> None:
        """Create the home with ``strongroom init``."""
        domain_args = [arg for d in self.domains for arg in ("--domain", d)]
        strongroom("init", "--home", str(self.home), *domain_args,
                   env={"STRONGROOM_ADMIN_PASSWORD": ADMIN_PASSWORD})

    def start(self) -> None:
        """Start ``strongroom serve`` and wait until both listeners answer."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "serve", "--home", str(self.home),
             "--smtp-listen", f"127.0.0.1:{self.smtp_port}",
             "--web-listen", f"127.0.0.1:{self.web_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        for port in (self.smtp_port, self.web_port):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"serve exited:\n{self.log_path.read_text()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"serve did not listen on {port}")
                    time.sleep(0.1)

    def configure(self, section: str, text: str) -> None:
        """Append a ``[section]`` with TOML ``text`` to the home's config."""
        with open(self.home / "config.toml", "a") as config:
            config.write(f"\n[{section}]\n{text.strip()}\n")

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash or ``kill -9`` would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """Stop the server with SIGTERM and return its exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise RuntimeError("serve did not stop within 30 s of SIGTERM")

    def add_user(self, address: str, *aliases: str, role: str = "user") -> str:
        """Create an account and return a new API token for it."""
        alias_args = [arg for a in aliases for arg in ("--alias", a)]
        strongroom("user", "add", address, "--home", str(self.home), "--role", role,
                   *alias_args, "--password-stdin", stdin=USER_PASSWORD + "\n")
        return strongroom("token", "create", address, "--home", str(self.home)).strip()

    def send(self, raw: bytes, mail_from: str, rcpt_tos: list[str]) -> str:
        """Send one message over SMTP and return the server's 250 text."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=60) as client:
            client.ehlo("tests.example.com")
            client.mail(mail_from)
            for rcpt in rcpt_tos:
                code, text = client.rcpt(rcpt)
                if code != 250:
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
            code, text = client.data(raw)
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
            return text.decode()

    def session(self, timeout: float = 30.0) -> RawSMTP:
        """Open a raw SMTP session to the server (the greeting is read)."""
        return RawSMTP(self.smtp_port, timeout)

    def get(self, path: str, token: str | None) -> tuple[int, bytes, dict]:
        """GET a portal path with an optional bearer token."""
        request = urllib.request.Request(self.base_url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def search(self, token: str, query: str, **params: str) -> dict:
        """Run an API search and return its JSON."""
        query_string = urllib.parse.urlencode({"q": query, **params})
        status, body, _ = self.get(f"/api/v1/search?{query_string}", token)
        if status != 200:
            raise AssertionError(f"search {query!r} answered {status}: {body[:500]!r}")
        return json.loads(body)

    def raw(self, token: str, message_id: str) -> tuple[int, bytes]:
        """Download a message's original bytes through the API."""
        status, body, _ = self.get(f"/api/v1/messages/{message_id}/raw", token)
        return status, body

    def wait_for(self, token: str, query: str, count: int = 1,
                 timeout: float = 5.0) -> dict:
        """Search until at least ``count`` results appear or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.search(token, query)
            if found["total"] >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


class RawSMTP:
    """An SMTP client that sends exactly the bytes a test gives it.

    smtplib sends a whole command or message at once; a test that must
    stop half-way through DATA, or read a reply the server sends on its
    own (a 421), talks through this instead.
    """

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.stream = self.connection.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply; return its code and text."""
        lines = []
        while True:
            line = self.stream.readline()
            if not line:
                raise ConnectionError(f"server closed the connection after {lines!r}")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(lines[0][:3]), "\n".join(lines)

    def command(self, line: str) -> tuple[int, str]:
        """Send one command line and return the reply to it."""
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        """Send raw bytes, without waiting for a reply."""
        self.connection.sendall(data)

    def close(self) -> None:
        """Close the connection without QUIT."""
        self.stream.close()
        self.connection.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
