"""Fixtures for the account tests that use Flask's test client.

A home made by ``strongroom init`` and ``user add``, as an administrator
would, and the portal application built on it; the ``[accounts]`` section
can be given per test.
"""

from __future__ import annotations

import re

import pytest

from tests.homes import ADMIN, ADMIN_PASSWORD, BOB, CAROL, PASSWORD, make_home  # noqa: F401 (re-exported)
from vault.config import load
from web.app import create_app



@pytest.fixture
def portal_home(tmp_path):
    return make_home(tmp_path)


def make_app(home, accounts: str = ""):
    """Build the portal for ``home``, with ``accounts`` appended as [accounts]."""
    if accounts:
        with open(home / "config.toml", "a") as config:
            config.write(f"\n[accounts]\n{accounts.strip()}\n")
    app = create_app(load(home))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def portal_app(portal_home):
    return make_app(portal_home)


def csrf_token(client, path="/login"):
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client, address=BOB, password=PASSWORD):
    return client.post("/login", data={
        "address": address, "password": password, "csrf_token": csrf_token(client)})


def signed_in(app, address=BOB, password=PASSWORD):
    """Return a test client of ``app`` signed in as ``address``."""
    client = app.test_client()
    response = sign_in(client, address, password)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def post_form(client, path, fields, csrf_from=None):
    """Post a form with the CSRF token of the page at ``csrf_from`` (or ``path``)."""
    token = csrf_token(client, csrf_from or path)
    return client.post(path, data={"csrf_token": token, **fields})


def audit_actions(app, limit=50):
    events = app.extensions["strongroom"].control.audit_events(limit=limit)
    return [(e["actor"], e["action"], e["target"]) for e in reversed(events)]
