"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness import ArchiveServer

REPOSITORY = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "fixtures" / "cases"


def in_ci() -> bool:
    """Tell whether the suite runs in CI, where nothing may be skipped."""
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (or, under CI=true, fail) a test whose peer or input is missing."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    # Settings from the developer's shell must not leak into a test's home.
    for name in list(os.environ):
        if name.startswith("STRONGROOM_") and name != "STRONGROOM_TEST_CORPUS":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The shared mail corpus, from STRONGROOM_TEST_CORPUS (default ../shared/corpus)."""
    location = Path(os.environ.get(
        "STRONGROOM_TEST_CORPUS", REPOSITORY.parent / "shared" / "corpus"
    ))
    require(
        (location / "CATALOG.csv").is_file(),
        f"the mail corpus is not at {location} (set STRONGROOM_TEST_CORPUS)",
    )
    return location


@pytest.fixture
def archive_server(tmp_path):
    """A fresh home served by ``strongroom serve`` on free loopback ports."""
    server = ArchiveServer(tmp_path / "home")
    server.init()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=("tantivy", "whoosh"))
def engine(request) -> str:
    """Each catalogue engine in turn: both pass the same tests."""
    return request.param


@pytest.fixture
def chromium(tmp_path):
    """Debian's Chromium, headless, downloading into the test's folder."""
    from tests.peers.chromium import Chromium, require_chromium

    require_chromium()
    browser = Chromium(downloads=tmp_path / "downloads")
    browser.start()
    yield browser
    browser.stop()
