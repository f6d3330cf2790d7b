# A restore's status page outlives the process that ran it: jobs are kept
# in the control database, a job cut off by a restart shows as interrupted
# with what it had done, and only its owner ever sees it.

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.peers.dovecot import Dovecot, require_dovecot
from tests.test_restore import (BOB_IMAP, audit, dovecot, finished, home,  # noqa: F401
                                ids_for, make_app, restore, restored_folder, signed_in)

BOB = "bob@example.com"


def job_row(app, job_id):
    with app.extensions["strongroom"].control.connect() as connection:
        return dict(connection.execute("SELECT * FROM restore_jobs WHERE id = ?",
                                       (job_id,)).fetchone())


def test_a_finished_restore_still_answers_after_a_restart(home):
    # Dovecot's quota refuses B16 (over 800 bytes): one failure with the
    # server's reason, three restored.
    require_dovecot()
    server = Dovecot({BOB: BOB_IMAP}, settings=(
        "mail_plugins = quota\nplugin {\n  quota = count:User quota\n"
        "  quota_vsizes = yes\n  quota_max_mail_size = 800\n}\n"))
    server.start()
    try:
        before = make_app(home, imap_port=server.port)
        client = signed_in(before)
        response = restore(client, ids_for(client, "from:elsewhere.net"))
        location = response.headers["Location"]
        page = finished(client, response)
        assert "3 restored" in page and "1 failed" in page

        after = make_app(home, imap_port=server.port)       # serve restarted
        page = signed_in(after).get(location)
        assert page.status_code == 200 and "Refresh" not in page.headers
        text = page.get_data(as_text=True)
        assert "3 restored" in text and "1 failed" in text and "of 4 messages" in text
        assert "the mail server refused it" in text
        assert "interrupted" not in text
        assert signed_in(after, "carol@example.com").get(location).status_code == 404
        row = job_row(after, location.rsplit("/", 1)[1])
        assert (row["state"], row["restored"], row["failed"], row["total"]) == (
            "partial", 3, 1, 4)
        assert row["finished_at"] >= row["started_at"]
        assert audit(after, "restore.interrupted") == []
    finally:
        server.stop()


def test_a_restore_cut_off_by_a_restart_shows_as_interrupted(home, dovecot, monkeypatch):
    # One message a batch, and the second APPEND hangs as a dying server
    # would; meanwhile a new process starts on the same home.
    import web.mailbox
    import web.restore

    monkeypatch.setattr(web.restore, "BATCH_MESSAGES", 1)
    release = threading.Event()
    appended = []
    original = web.mailbox.Mailbox.append

    def append(self, folder, raw, when):
        appended.append(folder)
        if len(appended) == 2:
            release.wait(30)
        return original(self, folder, raw, when)

    monkeypatch.setattr(web.mailbox.Mailbox, "append", append)
    before = make_app(home)
    client = signed_in(before)
    response = restore(client, ids_for(client, "from:elsewhere.net"))
    location = response.headers["Location"]
    job_id = location.rsplit("/", 1)[1]
    deadline = time.monotonic() + 30
    while job_row(before, job_id)["restored"] < 1:
        assert time.monotonic() < deadline, "the first message was never restored"
        time.sleep(0.1)
    assert "1 of 4 done" in client.get(location).get_data(as_text=True)

    after = make_app(home)                                  # serve restarted
    page = signed_in(after).get(location)
    assert page.status_code == 200 and "Refresh" not in page.headers
    text = page.get_data(as_text=True)
    assert "interrupted" in text and "after 1 of 4 messages" in text
    assert "1 restored" in text and "0 failed" in text and "3 not attempted" in text
    assert signed_in(after, "carol@example.com").get(location).status_code == 404
    (event,) = audit(after, "restore.interrupted")
    assert event["actor"] == BOB
    assert json.loads(event["detail"]) == {"job": job_id, "restored": 1, "failed": 0,
                                           "not_attempted": 3}
    assert len(dovecot.folder_messages(BOB, restored_folder(dovecot))) == 1

    # The old process, had it lived on, cannot undo the interruption.
    release.set()
    job = before.extensions["strongroom.restore"].job(job_id, before.extensions[
        "strongroom"].accounts.get(address=BOB))
    assert job.done.wait(30)
    assert job_row(after, job_id)["state"] == "interrupted"


def test_an_unknown_job_is_not_found(home, dovecot):
    app = make_app(home)
    assert signed_in(app).get("/restore/no-such-job").status_code == 404
