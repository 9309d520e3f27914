"""How full a node's LMDB store is, for Prometheus: its map is reserved once at open and never
grows (lmdb_store.py), so a store that reaches it stops the node's writes (StoreFull); the
GridLedgerStoreFilling alert compares these two gauges long before that."""

from __future__ import annotations

import math
from collections.abc import Callable

import lmdb
from prometheus_client import Gauge

from gridledger_core.storage.lmdb_store import LmdbStore

USED_BYTES = Gauge("gridledger_lmdb_used_bytes",
                   "Bytes of this node's LMDB store in use (its file grows with them), by "
                   "store (the ledger, or the orderer's).", ["store"])
MAP_BYTES = Gauge("gridledger_lmdb_map_bytes",
                  "The LMDB map size: the most the store can hold before writes fail "
                  "(--lmdb-map-gib).", ["store"])


def export_store_size(store: LmdbStore, name: str) -> None:
    """Serve `store`'s used and map bytes as gauges, read at every scrape."""
    USED_BYTES.labels(name).set_function(_unless_closed(store.size_bytes))
    MAP_BYTES.labels(name).set_function(_unless_closed(store.map_size_bytes))


def _unless_closed(read: Callable[[], int]) -> Callable[[], float]:
    """`read`, or NaN once the store is closed: a node closes its store while stopping and
    its metrics endpoint may still be scraped, and a gauge that raises fails the whole
    scrape (every metric of the node), not just itself."""
    def value() -> float:
        try:
            return float(read())
        except lmdb.Error:
            return math.nan
    return value
