"""Orderers' acknowledgements checked against the ledger.

An orderer's OK means it synced the transaction into its pool and forwards it to the cluster
(broadcaster.py), and the endorser tells its client OK on that word alone. An orderer of a
hostile member may answer OK and drop the transaction. While it answers in time it also keeps
the lead (orderer_choice.py), so every later group would go to it too: every client told OK
for transactions no block will hold, and a client that sends one again dropped again.

So the broadcaster keeps each acknowledged transaction (its bytes, who acknowledged it, when)
until the endorser's ledger shows it committed, valid or not. One not shown `lost_after`
seconds after its acknowledgement is sent again, to the other orderers first (the tx id makes
that idempotent). Their answer is the evidence:

- `duplicate`: another orderer holds it (pooled, forwarded to it, or final), so the first one
  passed it on. It is watched again, now as that orderer's (a congested pool, a slow
  follower, a stalled cluster: nobody is blamed).
- accepted as new: no other orderer had it, so the one that acknowledged it did not forward
  it in `lost_after` seconds (an honest orderer forwards within milliseconds). That orderer
  gets a strike (it loses the lead and cools down) and the acknowledgement counts as lost.

A hostile orderer thus loses what it dropped for at most `lost_after` (plus the block), and
the lead with it; it can make an honest one look bad only by claiming as new what the honest
one forwarded to it, which costs the honest one a strike, not a transaction. Detection needs
no block: a cluster whose every transaction went to a dropping orderer makes none.

Bounded: the entries are this endorser's acknowledged, uncommitted transactions (admission
control bounds them); at most `max_bytes` of them are kept (the oldest stop being watched,
counted), and each for at most `give_up_after` seconds from its first acknowledgement (then
counted; a client told OK that keeps it until committed, as meter agents do, sends it again).

Pure: the clock is injected; the broadcaster's watch thread drives it (`due`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

# An honest orderer forwards what it takes within milliseconds, and admission control keeps
# what is in flight to about its latency budget (1 s): a transaction still uncommitted after
# this long is overdue by an order of magnitude.
DEFAULT_LOST_AFTER = 10.0
DEFAULT_GIVE_UP_AFTER = 120.0
MAX_WATCHED_BYTES = 64 << 20

WATCHED = Gauge("gridledger_endorser_acknowledged_watched",
                "Transactions an orderer acknowledged that this endorser's ledger has not "
                "shown committed yet (kept to be sent again if overdue).")
UNWATCHED = Counter("gridledger_endorser_acknowledged_unwatched",
                    "Acknowledged transactions no longer watched before their commit, by "
                    "why: 'full' (the watch's byte bound), 'gave_up' (uncommitted for "
                    "--ack-give-up-s).", ["reason"])


@dataclass(slots=True)
class Watched:
    tx_id: str
    tx: bytes  # the endorsed transaction, as sent
    orderer: int  # the index of the orderer that acknowledged it last
    due_at: float  # when it is overdue (the clock's time)
    first_acknowledged: float


class AckWatch:
    def __init__(self, lost_after: float = DEFAULT_LOST_AFTER,
                 give_up_after: float = DEFAULT_GIVE_UP_AFTER,
                 max_bytes: int = MAX_WATCHED_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if lost_after <= 0 or give_up_after < lost_after:
            raise ValueError("need 0 < lost_after <= give_up_after")
        self.lost_after = lost_after
        self._give_up_after = give_up_after
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        # tx id -> entry, in the order they fall due (every entry waits the same lost_after)
        self._entries: collections.OrderedDict[str, Watched] = collections.OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def acknowledged(self, orderer: int, tx_id: str, tx: bytes) -> None:
        """`orderer` acknowledged the transaction: watch it from now (again, if it was)."""
        self.acknowledged_many(orderer, [(tx_id, tx)])

    def acknowledged_many(self, orderer: int, items: Iterable[tuple[str, bytes]]) -> None:
        """`acknowledged` for each (tx id, endorsed transaction) of one answer."""
        now = self._clock()
        due_at = now + self.lost_after
        with self._lock:
            for tx_id, tx in items:
                entry = self._entries.get(tx_id)
                if entry is None:
                    self._add(Watched(tx_id, tx, orderer, due_at, now))
                else:
                    entry.orderer, entry.due_at = orderer, due_at
                    self._entries.move_to_end(tx_id)
            WATCHED.set(len(self._entries))

    def retry(self, watched: Watched) -> None:
        """Sent again and no orderer took it: look again after another `lost_after` (unless
        it was committed meanwhile)."""
        with self._lock:
            entry = self._entries.get(watched.tx_id)
            if entry is not None:
                entry.due_at = self._clock() + self.lost_after
                self._entries.move_to_end(watched.tx_id)

    def committed(self, tx_ids: Iterable[str]) -> None:
        """The ledger showed these transactions in a block."""
        with self._lock:
            if not self._entries:
                return
            for tx_id in tx_ids:
                entry = self._entries.pop(tx_id, None)
                if entry is not None:
                    self._bytes -= len(entry.tx)
            WATCHED.set(len(self._entries))

    def due(self) -> list[Watched]:
        """The entries that are overdue, each due again `lost_after` from now: the caller
        sends each again and reports the outcome (`acknowledged` or `retry`; an entry it
        fails to report on simply comes due again). Entries watched for `give_up_after`
        since their first acknowledgement are dropped and counted instead."""
        now = self._clock()
        taken: list[Watched] = []
        gave_up = 0
        with self._lock:
            while self._entries:
                tx_id, entry = next(iter(self._entries.items()))
                if entry.due_at > now:
                    break
                if now - entry.first_acknowledged >= self._give_up_after:
                    del self._entries[tx_id]
                    self._bytes -= len(entry.tx)
                    gave_up += 1
                    continue
                entry.due_at = now + self.lost_after
                self._entries.move_to_end(tx_id)
                taken.append(entry)
            WATCHED.set(len(self._entries))
        if gave_up:
            UNWATCHED.labels("gave_up").inc(gave_up)
        return taken

    def _add(self, entry: Watched) -> None:
        self._entries[entry.tx_id] = entry
        self._bytes += len(entry.tx)
        dropped = 0
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= len(oldest.tx)
            dropped += 1
        if dropped:
            UNWATCHED.labels("full").inc(dropped)
