# The catalogue can always be rebuilt from the vault: reindex builds a new
# index and swaps it in at once while search keeps answering, and the
# catalogue's coverage of the vault is counted per day, reported by
# status, and any gap is repaired by the follower.

from __future__ import annotations

import threading

import pytest

from indexer.catalogue import Catalogue
from indexer.follow import Follower
from indexer.reconcile import Reconciler
from indexer.reindex import reindex
from tests.conftest import CASES
from tests.homes import damage, make_home
from vault.ingest import Vault
from vault.keys import LocalKeyFile
from vault.ownership import Envelope, OwnershipRules
from vault.store import LocalWormStore
from web.cli import main as strongroom

BOB = frozenset({"bob@example.com"})
MESSAGES = 120


def numbered(number: int) -> bytes:
    return (f"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: report {number}\r\n"
            f"Message-ID: <r{number}@example.com>\r\nDate: Mon, 06 Jan 2025 09:00:00 +0000\r\n"
            f"\r\nQuarterly figures, code WREN{number:04d}.\r\n").encode()


@pytest.fixture
def vault(tmp_path):
    return Vault(LocalWormStore(tmp_path / "store"), LocalKeyFile.create(tmp_path / "k.json"),
                 OwnershipRules(domains=("example.com",)))


@pytest.fixture
def catalogue(tmp_path, engine):
    return Catalogue(tmp_path / "catalogue", engine)


def deliver(vault, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        vault.archive(numbered(number), Envelope("alice@example.com", ("bob@example.com",)))


def test_reindex_swaps_in_a_new_index_while_searches_keep_answering(vault, catalogue):
    deliver(vault, MESSAGES)
    Follower(vault, catalogue).catch_up()
    before = catalogue.generation
    answers: list[tuple[int, int]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def search_all_the_time() -> None:
        # A second catalogue object, as the portal of another process has.
        reader = Catalogue(catalogue.path, catalogue.engine_name)
        while not stop.is_set():
            try:
                answers.append((reader.search("*", owners=BOB).total,
                                reader.search("WREN0077", owners=BOB).total))
            except BaseException as err:
                failures.append(err)
                return

    searcher = threading.Thread(target=search_all_the_time)
    searcher.start()
    try:
        report = reindex(vault, catalogue)
        # Keep searching a moment on the new generation too.
        stop.wait(0.3)
    finally:
        stop.set()
        searcher.join(timeout=60)

    assert failures == []
    assert len(answers) > 10
    assert set(answers) == {(MESSAGES, 1)}
    assert report.documents == MESSAGES and report.receipts == MESSAGES
    assert catalogue.generation != before
    assert catalogue.generation.name == report.generation
    assert catalogue.count() == MESSAGES


def test_follower_continues_in_the_new_generation(vault, catalogue):
    deliver(vault, 3)
    follower = Follower(vault, catalogue)
    follower.catch_up()
    reindex(vault, catalogue)
    deliver(vault, 2, start=3)
    assert follower.catch_up() >= 2
    assert catalogue.count() == 5
    assert catalogue.search("WREN0004", owners=BOB).total == 1
    # Only the current generation and the one before it are kept.
    reindex(vault, catalogue)
    reindex(vault, catalogue)
    generations = [entry for entry in catalogue.path.iterdir()
                   if entry.is_dir() and not entry.is_symlink()]
    assert len(generations) == 2


def test_coverage_counts_per_day_and_repair_fills_a_gap(vault, catalogue, monkeypatch):
    import indexer.extraction.parallel as parallel

    deliver(vault, 4)
    vault.archive((CASES / "B09.eml").read_bytes(), Envelope("x@elsewhere.net", ("bob@example.com",)))
    real_extract = parallel.extract
    monkeypatch.setattr(parallel, "extract", lambda raw, limits: (
        (_ for _ in ()).throw(RuntimeError("bug")) if b"PELICAN" in raw
        else real_extract(raw, limits)))
    # A bug cannot be planted in worker processes: extract in this one.
    follower = Follower(vault, catalogue, pool=parallel.ExtractionPool(workers=0))
    follower.catch_up()

    [day] = Reconciler(vault).coverage(catalogue).days
    assert (day.stored, day.indexed, day.partial, day.gap) == (5, 5, 1, 0)

    lost = catalogue.search("WREN0002", owners=BOB).hits[0].id
    catalogue.delete([lost])
    coverage = Reconciler(vault).coverage(catalogue)
    assert (coverage.stored, coverage.indexed) == (5, 4)
    assert list(coverage.missing) == [lost]
    assert coverage.days[0].gap == 1

    # The cursor has passed it: only the repair pass brings it back.
    assert follower.catch_up() == 0
    assert follower.repair() == 1
    assert catalogue.search("WREN0002", owners=BOB).total == 1
    assert Reconciler(vault).coverage(catalogue).missing == {}
    assert follower.repair() == 0


def test_status_shows_coverage_and_gap_and_reindex_rebuilds(tmp_path, monkeypatch, capsys):
    from vault.config import load
    from vault.ingest import open_vault

    home = make_home(tmp_path, people={})
    settings = load(home)
    vault = open_vault(settings)
    deliver(vault, 3)
    catalogue = Catalogue(settings.path(settings.catalogue.path), settings.catalogue.engine)
    Follower(vault, catalogue).catch_up()
    catalogue.delete([catalogue.search("WREN0001", owners=BOB).hits[0].id])
    capsys.readouterr()

    assert strongroom(["status", "--home", str(home)]) == 0
    shown = capsys.readouterr().out
    assert "catalogue: 2 of 3 messages indexed, 0 partially; gap 1" in shown
    assert "GAP 1" in shown

    assert strongroom(["reindex", "--home", str(home)]) == 0
    assert "Reindexed 3 receipts into 3 documents" in capsys.readouterr().out
    assert strongroom(["status", "--home", str(home)]) == 0
    assert "catalogue: 3 of 3 messages indexed, 0 partially; gap 0" in capsys.readouterr().out


def test_reindex_names_what_it_could_not_read_and_exits_1(tmp_path, capsys):
    # A damaged message and a damaged receipt dropped out of the rebuilt
    # catalogue while reindex said nothing and exited 0.
    from vault.config import load
    from vault.ingest import open_vault

    home = make_home(tmp_path, people={})
    settings = load(home)
    vault = open_vault(settings)
    deliver(vault, 3)
    receipts = [vault.read_receipt(key) for key in vault.receipts_after("")]
    for key in (receipts[0].message_key, receipts[1].key):
        damage(home, key)
    capsys.readouterr()

    assert strongroom(["reindex", "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert "Reindexed 3 receipts into 1 documents" in out
    assert "2 object(s) could not be read and are not in the catalogue" in out
    assert receipts[0].message_key in out and receipts[1].key in out


def test_another_engine_in_the_config_searches_the_current_index_until_reindex(
        vault, tmp_path, caplog):
    # A process started with the other engine in its config (a `status`
    # run after the config was edited) swapped in a new, empty index.
    path = tmp_path / "catalogue"
    tantivy = Catalogue(path, "tantivy")
    deliver(vault, 5)
    Follower(vault, tantivy).catch_up()
    built = tantivy.generation

    whoosh = Catalogue(path, "whoosh")
    assert whoosh.generation == built
    assert whoosh.search("wren0003", owners=BOB).total == 1
    assert "the config names whoosh" in caplog.text
    assert tantivy.search("quarterly", owners=BOB).total == 5

    reindex(vault, whoosh)
    assert whoosh.generation.name.startswith("whoosh-")
    assert tantivy.generation == whoosh.generation
    assert tantivy.search("wren0003", owners=BOB).total == 1
