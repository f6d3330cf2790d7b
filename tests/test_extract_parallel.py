# Messages are extracted in worker processes, in the order given, with the
# same result as in the caller; a worker that fails costs speed, not text.

from __future__ import annotations

import base64
import io
import logging
import time
import zipfile

import pytest

from indexer.extract import PARTIAL, extract
from indexer.extraction.parallel import ExtractionPool
from indexer.extraction.sandbox import CallTimeoutError, InProcessDeadline
from tests.conftest import CASES


def messages() -> list[bytes]:
    corrupt_docx = io.BytesIO()
    with zipfile.ZipFile(corrupt_docx, "w") as container:
        container.writestr("word/document.xml", "<not-xml")
    plain = [(f"From: a{n}@example.org\r\nTo: bob@example.com\r\nSubject: LAPWING {n}\r\n"
              f"\r\nbody word HERON{n}\r\n").encode() for n in range(40)]
    with_docx = ("From: a@example.org\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
                 "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                 "Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
                 "Content-Type: application/vnd.openxmlformats-officedocument."
                 "wordprocessingml.document; name=plan.docx\r\n"
                 "Content-Transfer-Encoding: base64\r\n\r\n").encode()
    with_docx += base64.encodebytes(corrupt_docx.getvalue()) + b"\r\n--b--\r\n"
    return [*plain[:20], with_docx, (CASES / "B09.eml").read_bytes(), *plain[20:]]


def test_workers_return_every_extract_in_order_as_the_caller_would():
    raws = messages()
    pool = ExtractionPool(workers=2)
    try:
        found = list(pool.extract_all(enumerate(raws)))
    finally:
        pool.close()
    assert [tag for tag, _ in found] == list(range(len(raws)))
    for (_, remote), raw in zip(found, raws):
        assert remote == extract(raw)
    # The broken document is recorded as such, in the worker too.
    assert any(defect.startswith(PARTIAL) for defect in found[20][1].defects)
    assert found[3][1].subject == "LAPWING 3"


def test_a_worker_that_dies_leaves_its_messages_to_the_caller(caplog):
    # A worker capped at 1 MiB cannot even load the extractor; its
    # messages are extracted in the calling process instead.
    raws = messages()[:5]
    pool = ExtractionPool(workers=1, memory_bytes=1024 * 1024)
    try:
        with caplog.at_level(logging.WARNING, "indexer.extraction.parallel"):
            found = [result for _, result in pool.extract_all(enumerate(raws))]
    finally:
        pool.close()
    assert found == [extract(raw) for raw in raws]
    assert [record.event for record in caplog.records] == ["extract.retried"]


def test_a_reader_past_its_deadline_is_stopped_inside_a_worker():
    # Inside a worker, readers run under an alarm; a reader that catches
    # every Exception still cannot swallow its deadline.
    def stubborn() -> None:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                time.sleep(0.01)
            except Exception:
                pass

    started = time.monotonic()
    with pytest.raises(CallTimeoutError):
        InProcessDeadline().run(stubborn, (), 0.2)
    assert time.monotonic() - started < 2
    assert InProcessDeadline().run(sum, ([1, 2],), 1.0) == 3
