"""Measure what server-side sessions cost a signed-in page view.

Two clients sign in to the same portal, one through the server-side
sessions (``web.sessions``: one SELECT per request, an UPDATE at most once
a minute) and one through Flask's signed-cookie sessions, which the portal
used before.  Each then fetches the same signed-in page (``/account``, which
also reads the control database) many times, interleaved so that other
load on the machine falls on both alike, and the medians are compared.

Run from the repository root (nothing leaves the machine; the home is a
temporary directory)::

    python -m benchmarks.session_bench [--requests N]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

PASSWORD = "correct horse battery"


def build_app(home: Path):
    """Make a home with one user and return its portal application."""
    from vault.config import load
    from web.app import create_app
    from web.cli import main as strongroom

    os.environ["STRONGROOM_ADMIN_PASSWORD"] = "admin password 1"
    strongroom(["init", "--home", str(home), "--domain", "example.com"])
    stdin, sys.stdin = sys.stdin, io.StringIO(PASSWORD + "\n")
    try:
        strongroom(["user", "add", "bob@example.com", "--home", str(home),
                    "--password-stdin"])
    finally:
        sys.stdin = stdin
    app = create_app(load(home))
    app.config["TESTING"] = True
    return app


def signed_in(app):
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/login", data={"address": "bob@example.com",
                                           "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302, response.status_code
    return client


def main(argv: list[str] | None = None) -> int:
    from flask.sessions import SecureCookieSessionInterface

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        app = build_app(Path(scratch) / "home")
        server_side = app.session_interface
        server_client = signed_in(app)
        signed_cookie = app.session_interface = SecureCookieSessionInterface()
        cookie_client = signed_in(app)

        timings: dict[str, list[float]] = {"server-side": [], "signed cookie": []}
        runs = (("server-side", server_side, server_client),
                ("signed cookie", signed_cookie, cookie_client))
        for _ in range(arguments.requests):
            for name, interface, client in runs:
                app.session_interface = interface
                started = time.perf_counter()
                assert client.get("/account").status_code == 200
                timings[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    for name, value in medians.items():
        print(f"{name:>14}: median {value:.2f} ms per signed-in GET /account "
              f"({arguments.requests} requests)")
    print(f"ratio server-side / signed cookie: "
          f"{medians['server-side'] / medians['signed cookie']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
