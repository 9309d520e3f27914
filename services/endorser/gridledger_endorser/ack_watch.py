"""Orderers' acknowledgements checked against the ledger.

An orderer's OK to a transaction new to it means it synced the transaction into its pool and
forwards it to its peers (broadcaster.py), and the endorser tells its client OK on that word
alone. An orderer of a hostile member may answer OK and drop the transaction. While it
answers in time it also keeps the lead (orderer_choice.py), so every later group would go to
it too: every client told OK for transactions no block will hold, and a client that sends
one again dropped again.

So the broadcaster keeps each acknowledged transaction (its bytes, who acknowledged it, when)
until the endorser's ledger shows it committed, valid or not. One not shown `lost_after`
seconds after its acknowledgement is sent again, to the other orderers first (the tx id makes
that idempotent). Their answer is the evidence:

- `duplicate`: that orderer holds it already (pooled, from a peer's forward, or final). The
  transaction is watched again with nobody to blame: an orderer that answers `duplicate` did
  not take it as new, so never undertook to forward it, and what stalls it now (a stalled
  cluster, a congested pool, a replica behind) is no orderer's fault we can prove. It is
  still tried last next time: a hostile orderer may claim `duplicate` and hold nothing.
- accepted as new by an orderer with no recent strikes: no such orderer had it, so the one
  that acknowledged it as new did not forward it to that peer in `lost_after` seconds (an
  honest orderer forwards within milliseconds). That orderer gets one strike per round (it
  loses the lead and cools down) and the transactions count as lost acknowledgements. An
  orderer itself struck or cooling is no witness: a hostile orderer once caught cannot frame
  the honest ones in turn, and sending again never moves the lead.

`lost_after` (30 s) is above the time a replica kept behind by a withholding orderer needs to
follow another (the follower's lag bound, 10 s, plus the clock skew the orderers allow, 5 s),
so a replica held back does not make honest acknowledgements look overdue; and far above the
submit-to-commit latency admission control keeps (about its 1 s budget). An honest orderer
can still be struck when the peer asked lost its forward (a full inbox or pool, a restart)
and the transaction waited that long: a strike costs it the lead for a cool-down, no
transaction. A hostile orderer can delay what it takes by up to `lost_after` (plus a block),
once per time it leads; detection needs no block: a network whose every transaction went to
the dropping orderer makes none.

Bounded: the entries are this endorser's acknowledged, uncommitted transactions (admission
control bounds them); at most `max_bytes` of them are kept, counting an entry's bookkeeping
(the oldest stop being watched, counted), each for at most `give_up_after` seconds from its
first acknowledgement (then counted; a client told OK that keeps it until committed, as
meter agents do, sends it again), and at most `MAX_DUE_PER_LOOK` are sent again per look.

Durable with a journal (ack_journal.py): every acknowledgement is written to disk before
`acknowledged` returns, so before the endorser tells its client OK, and every entry the
watch lets go is removed from it; a restarted endorser loads them back (`restore`) with
their deadlines and blame. Without one (tests, tools) the watch lives in memory only.

The clocks are injected; the broadcaster's watch thread drives it (`due`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from gridledger_endorser.ack_journal import AckJournal, JournalEntry

DEFAULT_LOST_AFTER = 30.0
DEFAULT_GIVE_UP_AFTER = 120.0
MAX_WATCHED_BYTES = 64 << 20
ENTRY_OVERHEAD = 200  # bytes an entry costs besides its transaction (its object, its key)
MAX_DUE_PER_LOOK = 1024  # transactions sent again per look (4 groups): a bounded rate

WATCHED = Gauge("gridledger_endorser_acknowledged_watched",
                "Transactions an orderer acknowledged that this endorser's ledger has not "
                "shown committed yet (kept to be sent again if overdue).")
UNWATCHED = Counter("gridledger_endorser_acknowledged_unwatched",
                    "Acknowledged transactions no longer watched before their commit, by "
                    "why: 'full' (the watch's byte bound), 'gave_up' (uncommitted for the "
                    "watch's give-up time).", ["reason"])
RESTORED = Counter("gridledger_endorser_acknowledged_restored",
                   "Acknowledged transactions loaded back from the acknowledgement journal "
                   "when the endorser started, to be watched until committed.")


@dataclass(slots=True)
class Watched:
    tx_id: str
    tx: bytes  # the endorsed transaction, as sent
    # The index of the orderer that last acknowledged it as new (so undertook to forward
    # it); None when the last answer was `duplicate` (nobody to blame).
    orderer: int | None
    # The index of the orderer that last acknowledged it, either way: tried last when it is
    # sent again (an orderer claiming `duplicate` may hold nothing).
    acknowledged_by: int
    due_at: float  # when it is overdue (the clock's time)
    first_acknowledged: float


class AckWatch:
    def __init__(self, lost_after: float = DEFAULT_LOST_AFTER,
                 give_up_after: float = DEFAULT_GIVE_UP_AFTER,
                 max_bytes: int = MAX_WATCHED_BYTES,
                 clock: Callable[[], float] = time.monotonic,
                 journal: AckJournal | None = None, orderer_names: Sequence[str] = (),
                 wall_clock: Callable[[], float] = time.time) -> None:
        """`journal`: where acknowledgements are kept on disk; `orderer_names`: the names of
        the orderers whose indices `acknowledged` is given (the journal names them, since
        the list may change across a restart)."""
        if lost_after <= 0 or give_up_after < lost_after:
            raise ValueError("need 0 < lost_after <= give_up_after")
        if journal is not None and not orderer_names:
            raise ValueError("a journal needs the orderers' names")
        self.lost_after = lost_after
        self._give_up_after = give_up_after
        self._max_bytes = max_bytes
        self._clock = clock
        self._wall_clock = wall_clock
        self._journal = journal
        self._names = list(orderer_names)
        self._lock = threading.Lock()
        # tx id -> entry, in the order they fall due (each waits the same lost_after, timed
        # under the lock, so appending keeps the order)
        self._entries: collections.OrderedDict[str, Watched] = collections.OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def acknowledged(self, orderer: int, items: Iterable[tuple[str, bytes, bool]]) -> None:
        """`orderer` acknowledged these (tx id, endorsed transaction, whether it answered
        `duplicate`): watch each from now (again, if it was). With a journal, they are on
        disk when this returns (or the journal reports its failure)."""
        written: list[JournalEntry] = []
        dropped: list[str] = []
        with self._lock:
            now = self._clock()
            wall = self._wall_clock()
            due_at = now + self.lost_after
            for tx_id, tx, duplicate in items:
                blame = None if duplicate else orderer
                entry = self._entries.get(tx_id)
                if entry is None:
                    entry = Watched(tx_id, tx, blame, orderer, due_at, now)
                    dropped += self._add(entry)
                else:
                    entry.orderer, entry.acknowledged_by, entry.due_at = blame, orderer, due_at
                    self._entries.move_to_end(tx_id)
                if self._journal is not None:
                    written.append(JournalEntry(
                        tx_id, entry.tx, self._names[orderer], duplicate,
                        wall - (now - entry.first_acknowledged)))
            WATCHED.set(len(self._entries))
            # What the watch holds now: an entry dropped over the bound by a later one of
            # this call is removed, not written.
            written = [e for e in written if e.tx_id in self._entries]
            dropped = [tx_id for tx_id in dropped if tx_id not in self._entries]
            self._journal_write(written, dropped)

    def restore(self) -> int:
        """Watch the journal's entries again (an endorser's start), each with its
        deadlines (from its first acknowledgement's wall-clock time) and blame; returns how
        many. An orderer no longer listed leaves its entries with nobody to blame."""
        if self._journal is None:
            return 0
        entries = self._journal.entries()
        index = {name: i for i, name in enumerate(self._names)}
        dropped: list[str] = []
        with self._lock:
            now, wall = self._clock(), self._wall_clock()
            for saved in entries:
                if saved.tx_id in self._entries:
                    continue
                age = min(max(0.0, wall - saved.first_acknowledged), self._give_up_after)
                acknowledged_by = index.get(saved.orderer)
                blame = None if saved.duplicate or acknowledged_by is None else acknowledged_by
                first = now - age
                dropped += self._add(Watched(saved.tx_id, saved.tx, blame, acknowledged_by or 0,
                                             max(now, first + self.lost_after), first))
            # Appended oldest first: order them by when they fall due, as `due` expects.
            self._entries = collections.OrderedDict(
                sorted(self._entries.items(), key=lambda item: item[1].due_at))
            WATCHED.set(len(self._entries))
            self._journal_write((), dropped)
        RESTORED.inc(len(self._entries))
        return len(self._entries)

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
        removed = []
        with self._lock:
            if not self._entries:
                return
            for tx_id in tx_ids:
                entry = self._entries.pop(tx_id, None)
                if entry is not None:
                    self._bytes -= len(entry.tx) + ENTRY_OVERHEAD
                    removed.append(tx_id)
            WATCHED.set(len(self._entries))
            if removed:
                self._journal_write((), removed)

    def due(self, limit: int = MAX_DUE_PER_LOOK) -> list[Watched]:
        """Up to `limit` entries that are overdue, each due again `lost_after` from now: the
        caller sends each again and reports the outcome (`acknowledged` or `retry`; an
        entry it fails to report on simply comes due again). Entries watched for
        `give_up_after` since their first acknowledgement are dropped and counted instead."""
        taken: list[Watched] = []
        gave_up: list[str] = []
        with self._lock:
            now = self._clock()
            while self._entries and len(taken) < limit:
                tx_id, entry = next(iter(self._entries.items()))
                if entry.due_at > now:
                    break
                if now - entry.first_acknowledged >= self._give_up_after:
                    del self._entries[tx_id]
                    self._bytes -= len(entry.tx) + ENTRY_OVERHEAD
                    gave_up.append(tx_id)
                    continue
                entry.due_at = now + self.lost_after
                self._entries.move_to_end(tx_id)
                taken.append(entry)
            WATCHED.set(len(self._entries))
            if gave_up:
                self._journal_write((), gave_up)
        if gave_up:
            UNWATCHED.labels("gave_up").inc(len(gave_up))
        return taken

    def _journal_write(self, added: Sequence[JournalEntry], removed: Sequence[str]) -> None:
        """Under `_lock`: the disk takes the changes in the order the watch made them, so a
        removal written late cannot undo an entry acknowledged again after it. (The journal
        serialises its writes anyway; the others wait for one write at most.)"""
        if self._journal is not None:
            self._journal.write(added, removed)

    def _add(self, entry: Watched) -> list[str]:
        """Watch `entry`; returns the tx ids of the oldest entries dropped over the bound."""
        self._entries[entry.tx_id] = entry
        self._bytes += len(entry.tx) + ENTRY_OVERHEAD
        dropped = []
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            tx_id, oldest = self._entries.popitem(last=False)
            self._bytes -= len(oldest.tx) + ENTRY_OVERHEAD
            dropped.append(tx_id)
        if dropped:
            UNWATCHED.labels("full").inc(len(dropped))
        return dropped
