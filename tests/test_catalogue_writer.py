# tantivy's writer is kept between batches that come close together (making
# one and waiting for its merges held new mail up), and given up when
# writing pauses, when it has held the index lock long enough for another
# process to need it, when a batch fails, and on settle.

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest

from indexer import IndexerError
from indexer.catalogue import Catalogue
from indexer.engines import tantivy_engine

WHEN = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.timezone.utc)


def document(number: int) -> dict:
    return {"id": f"m{number:04d}", "owners": ["bob@example.com"], "subject": f"note {number}",
            "from": "alice@example.com", "to": "bob@example.com", "body": "kestrel",
            "date": WHEN, "size": 100, "receipts": [f"r{number:04d}"]}


@pytest.fixture
def short_waits(monkeypatch):
    # Another process's writer is waited for this long before giving up.
    monkeypatch.setattr(tantivy_engine, "WRITER_WAIT_SECONDS", 0.3)


@pytest.fixture
def writers_made(monkeypatch):
    made: list[int] = []
    original = tantivy_engine.TantivyEngine._writer

    def counting(self):
        made.append(1)
        return original(self)

    monkeypatch.setattr(tantivy_engine.TantivyEngine, "_writer", counting)
    return made


def add(catalogue: Catalogue, *numbers: int) -> None:
    with catalogue.batch() as batch:
        for number in numbers:
            batch.add(document(number))


def test_close_batches_share_one_writer_and_settle_frees_the_lock(tmp_path, short_waits,
                                                                  writers_made):
    follower = Catalogue(tmp_path / "catalogue", "tantivy")
    for number in range(5):
        add(follower, number)
    assert len(writers_made) == 1
    assert follower.search("kestrel", owners=frozenset({"bob@example.com"})).total == 5

    # Another process (here another catalogue on the same directory) waits
    # for the kept writer, and gets the lock once it is settled.
    other = Catalogue(tmp_path / "catalogue", "tantivy")
    with pytest.raises(IndexerError, match="stayed locked"):
        other.delete(["m0000"])
    follower.settle()
    other.delete(["m0000"])
    assert follower.count() == 4


def test_a_pause_in_writing_releases_the_writer(tmp_path, short_waits, writers_made,
                                                monkeypatch):
    monkeypatch.setattr(tantivy_engine, "WRITER_IDLE_SECONDS", 0.1)
    follower = Catalogue(tmp_path / "catalogue", "tantivy")
    add(follower, 1)
    time.sleep(0.5)
    Catalogue(tmp_path / "catalogue", "tantivy").delete(["m0001"])
    add(follower, 2)
    assert len(writers_made) == 3
    assert follower.count() == 1


def test_a_failed_batch_releases_the_writer_at_once(tmp_path, short_waits):
    follower = Catalogue(tmp_path / "catalogue", "tantivy")
    add(follower, 1)
    with pytest.raises(RuntimeError), follower.batch() as batch:
        batch.add(document(2))
        raise RuntimeError("extraction failed")
    Catalogue(tmp_path / "catalogue", "tantivy").delete(["m0001"])
    assert follower.count() == 0


def test_writing_without_pause_still_lets_another_writer_in(tmp_path, monkeypatch):
    monkeypatch.setattr(tantivy_engine, "WRITER_HOLD_SECONDS", 0.3)
    follower = Catalogue(tmp_path / "catalogue", "tantivy")
    add(follower, 0)
    disposed = threading.Event()
    deadline = time.monotonic() + 20

    def busy_follower() -> None:
        number = 1
        while not disposed.is_set() and time.monotonic() < deadline:
            add(follower, number)
            number += 1

    writing = threading.Thread(target=busy_follower)
    writing.start()
    try:
        Catalogue(tmp_path / "catalogue", "tantivy").delete(["m0000"])
        disposed.set()
        assert time.monotonic() < deadline
    finally:
        disposed.set()
        writing.join()
    assert follower.search("subject:note", owners=frozenset({"bob@example.com"})).total > 1
    assert follower.document("m0000") is None


PREVIEW = 'Kestrel "quoted"\n\ttabbed, café 東京 \x00 after a NUL, \U0001F426 a bird, end'


def test_the_preview_is_stored_apart_and_reads_back_exactly(tmp_path):
    catalogue = Catalogue(tmp_path / "catalogue", "tantivy")
    with catalogue.batch() as batch:
        batch.add({**document(1), "preview": PREVIEW})
    assert catalogue.document("m0001")["preview"] == PREVIEW
    stored = tantivy_engine.pack_record({"id": "m0001", "preview": PREVIEW})
    assert stored.startswith(b'{"id": "m0001"}\0')
    # The catalogue puts U+FFFD for lone surrogates before this; the
    # format keeps them all the same.
    odd = {"id": "m0002", "preview": "a \udcff b"}
    assert tantivy_engine.unpack_record(tantivy_engine.pack_record(odd)) == odd
    [hit] = catalogue.search("kestrel", owners=frozenset({"bob@example.com"})).hits
    assert "Kestrel" in "".join(text for text, _ in hit.snippet)


def test_records_stored_as_json_alone_still_read(tmp_path, monkeypatch):
    catalogue = Catalogue(tmp_path / "catalogue", "tantivy")
    monkeypatch.setattr(tantivy_engine, "pack_record",
                        lambda record: json.dumps(record).encode("utf-8"))
    with catalogue.batch() as batch:
        batch.add({**document(1), "preview": PREVIEW})
    monkeypatch.undo()
    with catalogue.batch() as batch:
        batch.add({**document(1), "id": "m0002", "preview": PREVIEW})
    old, new = catalogue.document("m0001"), catalogue.document("m0002")
    assert old["preview"] == new["preview"] == PREVIEW
    assert {**old, "id": ""} == {**new, "id": ""}


@pytest.mark.parametrize("engine", ["tantivy", "whoosh"])
def test_a_stopping_service_stops_waiting_for_another_writer(tmp_path, engine, monkeypatch):
    # serve's follower waited out the whole 60 s for a writer that `purge`
    # or another process held before serve could end.
    monkeypatch.setattr(tantivy_engine, "WRITER_IDLE_SECONDS", 60)
    holder = Catalogue(tmp_path / "catalogue", engine)
    follower = Catalogue(tmp_path / "catalogue", engine)
    if engine == "tantivy":
        add(holder, 1)                      # kept: holds the lock
        held = None
    else:
        from whoosh import index

        held = index.open_dir(str(holder.generation)).writer()
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            add(follower, 2)
        except Exception as err:
            outcome.append(err)

    writing = threading.Thread(target=write)
    writing.start()
    time.sleep(0.5)
    assert writing.is_alive()
    stopped = time.monotonic()
    follower.stop_waiting()
    writing.join(timeout=5)
    assert time.monotonic() - stopped < 1.0
    [error] = outcome
    assert isinstance(error, IndexerError) and "stopped waiting" in str(error)
    if held is not None:
        held.cancel()
    holder.settle()
