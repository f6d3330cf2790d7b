"""Run the whole archive in one process: receiver, follower and portal."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import waitress

from indexer.catalogue import open_catalogue
from indexer.follow import Follower
from vault.audit import seal_pending
from vault.config import Settings, parse_listen
from vault.control import ControlDB
from vault.ingest import open_vault
from vault.receiver import JournalHandler, Receiver
from vault.transport import server_tls_context
from web.app import create_app
from web.senders import JournalSenders

log = logging.getLogger(__name__)

# How often the audit trail is sealed into the vault while serving.
AUDIT_SEAL_SECONDS = 5.0


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
        self.receiver = self._receiver(settings)
        self._stop = threading.Event()

    def _receiver(self, settings: Settings) -> Receiver:
        receiving = settings.receiver
        control = ControlDB(settings.path(settings.control.database))
        handler = JournalHandler(
            self.vault, receiving.trusted_networks, receiving.max_recipients,
            on_archived=self.follower.wake.set,
            trust=receiving.trust,
            require_tls=receiving.require_tls,
            authenticate=JournalSenders(control).authenticate,
            on_refused=control.record_refusal,
        )
        tls_context = None
        if receiving.tls_certificate:
            tls_context = server_tls_context(settings.path(receiving.tls_certificate),
                                             settings.path(receiving.tls_key))
        smtp_host, smtp_port = parse_listen("receiver.listen", receiving.listen)
        lmtp = None
        if receiving.lmtp_listen:
            lmtp = parse_listen("receiver.lmtp_listen", receiving.lmtp_listen)
        return Receiver(
            handler, smtp_host, smtp_port,
            hostname=receiving.hostname,
            max_message_size=receiving.max_message_size,
            lmtp=lmtp,
            tls_context=tls_context,
            timeout=receiving.timeout_seconds,
            shutdown_grace=receiving.shutdown_grace_seconds,
        )

    def _audit_ingest(self, receipt_keys: list[str]) -> None:
        # One audit event per indexed batch: which deliveries, not content.
        ControlDB(self.settings.path(self.settings.control.database)).audit(
            "follower", "ingest.batch", receipt_keys[0],
            last=receipt_keys[-1], receipts=len(receipt_keys))
        # Cases that hold their custodians' future mail take it now.
        from vault.case_holds import hold_new_deliveries

        hold_new_deliveries(ControlDB(self.settings.path(self.settings.control.database)),
                            self.vault, receipt_keys)

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
        self.receiver.start()
        follower = threading.Thread(
            target=self.follower.run,
            args=(self._stop, self.settings.catalogue.poll_interval,
                  self.settings.catalogue.repair_interval),
            name="follower",
        )
        follower.start()
        sealer = threading.Thread(target=self._seal_audit, name="audit-sealer")
        sealer.start()
        log.info("portal listening on http://%s:%d/", web_host, web_port,
                 extra={"event": "portal.started"})
        try:
            server.run()
        except (SystemExit, KeyboardInterrupt):
            pass
        finally:
            log.info("stopping", extra={"event": "service.stopping"})
            server.close()
            self.receiver.stop()
            self._stop.set()
            self.follower.wake.set()
            follower.join(timeout=60)
            sealer.join(timeout=60)
            log.info("stopped", extra={"event": "service.stopped"})
