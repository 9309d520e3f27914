"""The acknowledgement watch on disk (ack_watch.py), so that it outlives the endorser.

The watch is what saves a transaction a hostile member's orderer acknowledged and dropped:
the endorser told its client OK on that orderer's word, and only the watch will send it
again. Kept in memory only, a crash or a restart of the endorser (a rolling upgrade) in
the `lost_after` seconds after such an OK lost the transaction for good, silently. So every
acknowledged entry is written here, in a synced LMDB transaction, before the endorser
tells its client OK (broadcaster.py), and removed when the watch lets it go (committed,
given up, or over the watch's byte bound). A restarted endorser loads them back
(`AckWatch.restore`); the ones its ledger holds by then leave at their first look.

Removals are written per call (one per block the ledger shows, one per look for overdue
entries), off the clients' path. One lost to a crash only brings an entry back, which the
restarted watch then finds committed.

Each entry is its tx id (key) and: the first acknowledgement's wall-clock time (so a
restart keeps its deadlines), the name of the orderer that last acknowledged it and
whether that orderer answered `duplicate` (so the blame survives too), and the endorsed
transaction's bytes.

A write that fails (a full or broken disk) turns readiness component `acknowledged` off
until one works (a restart would not mend a disk): the endorser still tells its clients OK
on an orderer's durable word, but can no longer promise to catch that orderer dropping them
across a restart.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from gridledger_core.storage import KeyValueStore, WriteBatch

log = logging.getLogger(__name__)

ENTRY = b"aj1/"  # + tx id
# first acknowledgement (wall-clock ms), duplicate flag, orderer name length
_HEAD = struct.Struct(">qBH")
# The journal holds at most the watch's byte bound (64 MiB by default) of entries.
DEFAULT_MAP_SIZE = 1 << 30

FAILURES = Counter("gridledger_endorser_ack_journal_failures",
                   "Writes of the acknowledgement journal that failed, by what they did: "
                   "'add' (an acknowledgement not on disk: this endorser's restart would "
                   "forget to check it), 'remove' (an entry kept that the watch let go).",
                   ["operation"])


@dataclass(frozen=True)
class JournalEntry:
    tx_id: str
    tx: bytes
    orderer: str  # the orderer that last acknowledged it
    duplicate: bool  # whether that orderer answered `duplicate`
    first_acknowledged: float  # wall-clock seconds


def encode(entry: JournalEntry) -> bytes:
    name = entry.orderer.encode()
    return _HEAD.pack(round(entry.first_acknowledged * 1000), entry.duplicate,
                      len(name)) + name + entry.tx


def decode(tx_id: str, value: bytes) -> JournalEntry:
    first_ms, duplicate, name_length = _HEAD.unpack_from(value)
    start = _HEAD.size
    name = value[start:start + name_length].decode()
    return JournalEntry(tx_id, value[start + name_length:], name, bool(duplicate),
                        first_ms / 1000)


class AckJournal:
    def __init__(self, store: KeyValueStore,
                 on_health: Callable[[bool], None] | None = None) -> None:
        self._store = store
        self._on_health = on_health
        self._failing = False
        # A write and the health it reports, one at a time: two reports must not arrive in
        # the other order than their writes (the last one's verdict must be the one shown).
        self._lock = threading.Lock()

    def write(self, added: Sequence[JournalEntry], removed: Iterable[str]) -> bool:
        """Remove `removed` and write `added` in one synced transaction: whether it worked."""
        batch = WriteBatch()
        for tx_id in removed:
            batch.delete(ENTRY + tx_id.encode())
        for entry in added:  # after the deletes: an entry both removed and added stays
            batch.put(ENTRY + entry.tx_id.encode(), encode(entry))
        if not batch.operations:
            return True
        return self._commit(batch, "add" if added else "remove", len(batch.operations))

    def entries(self) -> list[JournalEntry]:
        """Every entry, oldest acknowledgement first. An entry that does not decode (written
        by a newer version, or damaged) is skipped and logged: the journal is this process's
        own file, never another member's input."""
        out = []
        for key, value in self._store.scan(ENTRY):
            tx_id = key[len(ENTRY):].decode(errors="replace")
            try:
                out.append(decode(tx_id, value))
            except (struct.error, UnicodeDecodeError) as exc:
                log.error("acknowledgement journal entry %s skipped: %s", tx_id, exc)
        out.sort(key=lambda entry: entry.first_acknowledged)
        return out

    def close(self) -> None:
        self._store.close()

    def _commit(self, batch: WriteBatch, operation: str, count: int) -> bool:
        with self._lock:
            try:
                self._store.commit(batch)
            except Exception:
                log.exception("acknowledgement journal: %s of %d entries failed", operation,
                              count)
                FAILURES.labels(operation).inc(count)
                self._health(False)
                return False
            self._health(True)
            return True

    def _health(self, ok: bool) -> None:
        if self._failing == (not ok):
            return
        self._failing = not ok
        if self._on_health is not None:
            self._on_health(ok)
