"""Run the whole archive: receiver, follower and portal.

The follower and the portal run in serve's process; the receiver runs
there too or, with ``receiver.processes`` above 1, in processes of its own
(``web.receivers``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading

import waitress

from indexer.catalogue import open_catalogue
from indexer.follow import Follower
from vault.audit import seal_pending
from vault.config import Settings, parse_listen
from vault.control import ControlDB
from vault.ingest import open_vault
from vault.receiver import Receiver
from web.app import create_app
from web.receivers import ReceiverProcesses, build_receiver, process_count

log = logging.getLogger(__name__)

# How often the audit trail is sealed into the vault while serving.
AUDIT_SEAL_SECONDS = 5.0

# How much lower than serve's the follower's CPU priority is (nice(1)
# steps): under a burst of mail the receivers come first, and the
# catalogue takes the rest.  At +10 the follower got about a tenth of a
# busy core, and a burst of 100 kB journal copies (~300 msg/s on two
# cores) left new mail up to 2.5 s from searchable; at +5 (about a
# quarter) the worst was 1.1 s and the receivers took as much mail.
FOLLOWER_NICENESS = 5


class Service:
    """The embedded archive: every part started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Tables added since the home was made appear here (all idempotent).
        ControlDB(settings.path(settings.control.database)).create()
        self.vault = open_vault(settings)
        self.catalogue = open_catalogue(settings)
        self.follower = Follower(
            self.vault, self.catalogue,
            overlap=dt.timedelta(seconds=settings.catalogue.overlap_seconds),
            on_batch=self._audit_ingest,
        )
        processes = process_count(settings)
        self.receiver: Receiver | ReceiverProcesses
        if processes > 1:
            self.receiver = ReceiverProcesses(settings, processes, self.follower.wake)
        else:
            self.receiver = build_receiver(settings, self.follower.wake.set)
        self._stop = threading.Event()

    def _audit_ingest(self, receipt_keys: list[str]) -> None:
        # One audit event per indexed batch: which deliveries, not content.
        ControlDB(self.settings.path(self.settings.control.database)).audit(
            "follower", "ingest.batch", receipt_keys[0],
            last=receipt_keys[-1], receipts=len(receipt_keys))
        # Cases that hold their custodians' future mail take it now.
        from vault.case_holds import hold_new_deliveries

        hold_new_deliveries(ControlDB(self.settings.path(self.settings.control.database)),
                            self.vault, receipt_keys)

    def _follow(self, stop: threading.Event, interval: float,
                repair_interval: float) -> None:
        # Receiving comes first: a message is safe only once it is
        # durable, while indexing it can wait a moment.  On Linux a thread
        # has a priority of its own; elsewhere this lowers nothing.
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread,
                           os.getpriority(os.PRIO_PROCESS, thread) + FOLLOWER_NICENESS)
        except (AttributeError, OSError) as err:
            log.debug("follower keeps its priority: %s", err)
        self.follower.run(stop, interval, repair_interval)

    def _seal_audit(self) -> None:
        control = ControlDB(self.settings.path(self.settings.control.database))
        while True:
            stopping = self._stop.wait(AUDIT_SEAL_SECONDS)
            try:
                seal_pending(control, self.vault)
            except Exception:
                log.exception("could not seal the audit trail; retrying",
                              extra={"event": "audit.seal_failed"})
            if stopping:
                return

    def run(self) -> None:
        """Serve until SystemExit or KeyboardInterrupt, then stop every part."""
        web_host, web_port = parse_listen("portal.listen", self.settings.portal.listen)
        app = create_app(self.settings, vault=self.vault, catalogue=self.catalogue)
        server = waitress.create_server(
            app, host=web_host, port=web_port, threads=self.settings.portal.threads,
            ident="strongroom",
        )
        follower = threading.Thread(
            target=self._follow,
            args=(self._stop, self.settings.catalogue.poll_interval,
                  self.settings.catalogue.repair_interval),
            name="follower",
        )
        sealer = threading.Thread(target=self._seal_audit, name="audit-sealer")
        try:
            # A stop may come while receiver processes are still starting.
            self.receiver.start()
            follower.start()
            sealer.start()
            log.info("portal listening on http://%s:%d/", web_host, web_port,
                     extra={"event": "portal.started"})
            server.run()
        except (SystemExit, KeyboardInterrupt):
            pass
        finally:
            log.info("stopping", extra={"event": "service.stopping"})
            server.close()
            self.receiver.stop()
            self._stop.set()
            self.follower.wake.set()
            self.catalogue.stop_waiting()
            for thread in (follower, sealer):
                if thread.ident is not None:
                    thread.join(timeout=60)
            # The follower's last writer: its merges, and the index lock.
            self.catalogue.close()
            log.info("stopped", extra={"event": "service.stopped"})
