"""Rebuild the whole catalogue from the vault, then swap it in at once.

The new index is a new generation beside the current one, filled by a
follower of its own from the first receipt; searches keep using the
current generation meanwhile.  When the new one has caught up, one
rename makes it current; every process notices on its next call.  The
serving follower then carries on from the new generation's own cursor
(looking back over its overlap window), so mail that arrived during the
rebuild is indexed there too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
import time

from indexer.catalogue import Catalogue, swap_current
from indexer.follow import DEFAULT_OVERLAP, Follower
from vault.ingest import Vault

log = logging.getLogger(__name__)

# Receipts per commit while rebuilding: four times the follower's, since
# nobody searches the new generation until it is done, and each commit
# costs (tantivy writes a segment, Whoosh merges its small ones).
REINDEX_BATCH_RECEIPTS = 2000


@dataclasses.dataclass(frozen=True)
class ReindexReport:
    """What a rebuild did: receipts read, documents made, time taken.

    ``unreadable`` names the receipts and messages that could not be read
    (damaged or gone) and so are not in the new generation.
    """

    generation: str
    receipts: int
    documents: int
    seconds: float
    unreadable: tuple[str, ...] = ()


def reindex(vault: Vault, catalogue: Catalogue,
            overlap: dt.timedelta = DEFAULT_OVERLAP) -> ReindexReport:
    """Build a new generation from every receipt and make it current."""
    started = time.monotonic()
    target = catalogue.new_generation()
    building = catalogue.pinned(target)
    try:
        follower = Follower(vault, building, overlap=overlap,
                            batch_receipts=REINDEX_BATCH_RECEIPTS)
        receipts = follower.catch_up()
        # Receipts made while the first pass ran.
        receipts += follower.catch_up()
        documents = building.count()
    except BaseException:
        building.close()
        shutil.rmtree(target, ignore_errors=True)
        raise
    building.close()
    swap_current(catalogue.path, target.name)
    catalogue.prune()
    seconds = time.monotonic() - started
    log.info("reindexed %d receipts into %d documents in %.1f s (generation %s)",
             receipts, documents, seconds, target.name,
             extra={"event": "catalogue.reindexed"})
    unreadable = tuple(sorted(follower.unreadable))
    if unreadable:
        log.error("reindex left out %d object(s) that could not be read: %s",
                  len(unreadable), ", ".join(unreadable[:5]),
                  extra={"event": "catalogue.reindex_incomplete"})
    return ReindexReport(target.name, receipts, documents, seconds, unreadable)
