"""Orderers' acknowledgements checked against the ledger (ack_watch.py), tried as a hostile
member's orderer would: it answers OK to every transaction in time and drops them. Before, the
endorser believed that OK (and told its clients OK), the orderer kept the lead by answering in
time, and every later group went to it too: nothing this endorser endorsed reached a block.
Now what the ledger has not shown `lost_after` later is sent again to the other orderers first;
one with no recent strikes that takes it as new proves the first never passed it on, which
strikes that orderer. Honest orderers are not struck for what they held as `duplicate`, and
sending again moves no lead.

The Broadcaster is the real one (its watch thread included); the orderers are fakes at the
gRPC stub boundary over a shared pool (honest orderers forward to each other at once)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from signed_blocks import wait_for

from gridledger.orderer.v1 import orderer_pb2
from gridledger_endorser.ack_watch import ENTRY_OVERHEAD, AckWatch
from gridledger_endorser.broadcaster import Broadcaster

LOST_AFTER = 0.5  # seconds; the watch thread looks once a second


class Cluster:
    """What a group of honest orderers holds between them: each forwards what it takes new
    to the others of its group at once."""

    def __init__(self) -> None:
        self.pooled: set[str] = set()
        self.lock = threading.Lock()


class PoolOrderer:
    """An honest orderer of `cluster`: takes a transaction into the group's pool, or answers
    `duplicate` when the group holds it already. `drops`: a hostile one that answers OK as
    new to everything (or as `duplicate`, `says_duplicate`) and keeps nothing. `down`: its
    calls fail (UNAVAILABLE)."""

    def __init__(self, cluster: Cluster, drops: bool = False,
                 says_duplicate: bool = False) -> None:
        self.cluster = cluster
        self.drops = drops
        self.says_duplicate = says_duplicate  # a dropper claiming it held everything already
        self.down = False
        self.batches: list[list[str]] = []

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        tx_ids = [tx.decode() for tx in request.endorsed_transactions]
        self.batches.append(tx_ids)
        if self.down:
            raise Unavailable()
        results = []
        with self.cluster.lock:
            for tx_id in tx_ids:
                duplicate = self.says_duplicate or (not self.drops
                                                    and tx_id in self.cluster.pooled)
                if not self.drops:
                    self.cluster.pooled.add(tx_id)
                results.append(orderer_pb2.BroadcastResult(tx_id=tx_id, duplicate=duplicate))
        return orderer_pb2.BroadcastBatchResponse(results=results)

    def sent(self) -> list[str]:
        return [tx_id for batch in self.batches for tx_id in batch]


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "down"


def watched_broadcaster(*orderers: PoolOrderer,
                        committed: Callable[[str], bool] = lambda _tx_id: False,
                        watch: AckWatch | None = None) -> Broadcaster:
    b = Broadcaster.over([(f"orderer-{i + 1}", o) for i, o in enumerate(orderers)],  # type: ignore[misc]
                         timeout=1.0, senders=1, linger=0.0)
    b.watch_acknowledgements(committed, watch if watch is not None
                             else AckWatch(LOST_AFTER, give_up_after=60.0))
    return b


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lost(orderer: str) -> float:
    return sample("gridledger_endorser_lost_acknowledgements_total", {"orderer": orderer})


def lost_strikes(orderer: str) -> float:
    return sample("gridledger_endorser_orderer_cooldowns_total",
                  {"orderer": orderer, "reason": "lost"})


def tx_ids(count: int, prefix: str = "tx") -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def send(b: Broadcaster, ids: list[str]) -> None:
    answers = b.broadcast_many([(t.encode(), t) for t in ids])
    assert all(not isinstance(a, BaseException) for a in answers), answers


def test_an_orderer_that_acknowledges_and_drops_loses_them_to_another_and_the_lead() -> None:
    cluster = Cluster()
    dropper, honest = PoolOrderer(cluster, drops=True), PoolOrderer(cluster)
    b = watched_broadcaster(dropper, honest)  # orderer-1, the dropper, leads at first
    before = lost("orderer-1"), lost_strikes("orderer-1")
    try:
        send(b, tx_ids(5))
        assert dropper.sent() == tx_ids(5) and not honest.sent()  # it answered OK in time
        wait_for(lambda: lost("orderer-1") == before[0] + 5, "the lost acknowledgements")
        assert cluster.pooled >= set(tx_ids(5))  # the honest orderer holds them now
        assert lost_strikes("orderer-1") == before[1] + 1  # one strike for the round
        # The dropper lost the lead: the next group goes to the honest orderer first.
        b.broadcast(b"next", "next")
        assert honest.sent()[-1] == "next" and "next" not in dropper.sent()
    finally:
        b.close()


def test_a_dropper_claiming_duplicate_is_tried_last_so_the_transactions_still_commit() -> None:
    """orderer-1 leads, answers `duplicate` to everything and keeps nothing: nothing proves it
    dropped them (an orderer answering `duplicate` never undertook to forward), so it is not
    struck, but what it acknowledged is sent again to the others before it, and they take
    it. Before, the watch sent it to the lead first, which said `duplicate` again each time,
    until the watch gave up."""
    cluster = Cluster()
    dropper = PoolOrderer(cluster, drops=True, says_duplicate=True)
    honest = PoolOrderer(cluster)
    b = watched_broadcaster(dropper, honest)
    try:
        send(b, tx_ids(3))
        assert dropper.sent() == tx_ids(3) and not honest.sent()
        wait_for(lambda: cluster.pooled >= set(tx_ids(3)),
                 "the honest orderer to get what the dropper claimed to hold", timeout=10)
    finally:
        b.close()


def test_an_overdue_transaction_another_orderer_holds_blames_nobody() -> None:
    """orderer-1 passed its transactions on (orderer-2 answers `duplicate`), but the ledger
    shows none of them (a stalled cluster, a replica behind): sent again, twice, nobody
    struck, and orderer-1 keeps the lead (sending again moves no lead)."""
    cluster = Cluster()
    first, second = PoolOrderer(cluster), PoolOrderer(cluster)
    b = watched_broadcaster(first, second)
    before = lost_strikes("orderer-1"), lost_strikes("orderer-2")
    try:
        send(b, tx_ids(3))
        wait_for(lambda: len(first.sent() + second.sent()) >= 9, "two rounds sent again")
        assert (lost_strikes("orderer-1"), lost_strikes("orderer-2")) == before
        b.broadcast(b"next", "next")
        assert first.sent()[-1] == "next"
    finally:
        b.close()


def test_what_an_orderer_held_as_duplicate_is_never_blamed_on_it() -> None:
    """orderer-1 and orderer-2 are one group (they forward to each other), orderer-3 never
    got their forwards (its inbox was full). orderer-1 acknowledges; overdue, orderer-2
    answers `duplicate`. Overdue again, with orderer-1 and orderer-2 down, orderer-3 takes
    it as new: orderer-2 never took it as new, so it is not struck, nor is orderer-1."""
    group, alone = Cluster(), Cluster()
    first, second, third = PoolOrderer(group), PoolOrderer(group), PoolOrderer(alone)
    watch = AckWatch(LOST_AFTER, give_up_after=60.0)
    b = watched_broadcaster(first, second, third, watch=watch)
    before = [lost_strikes(f"orderer-{i}") for i in (1, 2, 3)]
    try:
        send(b, ["tx-0"])
        wait_for(lambda: second.sent() == ["tx-0"], "tx-0 sent again, to orderer-2 first")
        first.down = second.down = True
        wait_for(lambda: third.sent() == ["tx-0"], "tx-0 sent again, to orderer-3 now")
        wait_for(lambda: len(watch) == 1 and next(iter(watch._entries.values())).orderer == 2,
                 "orderer-3's acknowledgement watched")
        assert [lost_strikes(f"orderer-{i}") for i in (1, 2, 3)] == before
    finally:
        b.close()


def test_a_struck_orderer_is_no_witness() -> None:
    """orderer-3 was caught dropping (struck). orderer-1 acknowledges a transaction and
    forwards it to orderer-2; the ledger shows nothing (stalled). Overdue, with orderer-2
    down, orderer-3 claims it as new: its word frames nobody, and orderer-1 keeps the lead."""
    group, hostile = Cluster(), Cluster()
    first, second, dropper = PoolOrderer(group), PoolOrderer(group), PoolOrderer(hostile, True)
    b = watched_broadcaster(first, second, dropper)
    b._choice.strike(2)  # caught before (a cool-down of 1 s, a strike remembered a minute)
    before = lost_strikes("orderer-1")
    try:
        send(b, ["tx-0"])
        second.down = True
        wait_for(lambda: dropper.sent() == ["tx-0"], "tx-0 sent again, to orderer-3 too")
        assert lost_strikes("orderer-1") == before
        b.broadcast(b"next", "next")
        assert first.sent()[-1] == "next"
    finally:
        b.close()


def test_what_the_ledger_shows_committed_is_not_sent_again() -> None:
    cluster = Cluster()
    first, second = PoolOrderer(cluster), PoolOrderer(cluster)
    watch = AckWatch(LOST_AFTER, give_up_after=60.0)
    # tx-0's block comes before its acknowledgement is recorded: found by looking it up.
    b = watched_broadcaster(first, second, committed=lambda tx_id: tx_id == "tx-0",
                            watch=watch)
    try:
        send(b, tx_ids(3))
        wait_for(lambda: len(watch) == 3, "the three acknowledgements watched")
        b.on_block(["tx-1"])  # tx-1's block, reported by the follower
        wait_for(lambda: second.sent() == ["tx-2"], "tx-2 sent again")
        time.sleep(2 * LOST_AFTER)
        assert "tx-0" not in second.sent() + first.sent()[3:]
        assert "tx-1" not in second.sent() + first.sent()[3:]
    finally:
        b.close()


def test_sent_again_and_taken_by_nobody_is_tried_again_later() -> None:
    cluster = Cluster()
    first, second = PoolOrderer(cluster), PoolOrderer(cluster)
    watch = AckWatch(LOST_AFTER, give_up_after=60.0)
    b = watched_broadcaster(first, second, watch=watch)
    try:
        send(b, ["tx-0"])
        first.down = second.down = True
        wait_for(lambda: len(second.batches) >= 2, "two tries while every orderer is down")
        assert len(watch) == 1  # still watched
        first.down = second.down = False
        wait_for(lambda: len(second.batches) >= 3 and second.sent()[-1] == "tx-0",
                 "taken once an orderer is back")
    finally:
        b.close()


# -- the watch itself (pure, on a clock of its own) ---------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_due_after_lost_after_until_committed_and_given_up_after_give_up_after() -> None:
    clock = Clock()
    watch = AckWatch(10.0, give_up_after=25.0, clock=clock)
    watch.acknowledged(0, [("a", b"a", False), ("b", b"b", False)])
    clock.now = 9.9
    assert watch.due() == []
    watch.committed(["b"])
    clock.now = 10.0
    (due,) = watch.due()
    assert (due.tx_id, due.orderer) == ("a", 0)
    watch.retry(due)  # nobody took it: due again 10 s on
    clock.now = 19.9
    assert watch.due() == []
    clock.now = 20.0
    (due,) = watch.due()
    watch.acknowledged(2, [("a", b"a", True)])  # orderer 2 held it: nobody to blame
    assert due.orderer is None
    clock.now = 30.0
    assert watch.due() == []  # watched 30 s since its first acknowledgement: given up
    assert len(watch) == 0


def test_at_most_limit_due_per_look() -> None:
    clock = Clock()
    watch = AckWatch(1.0, clock=clock)
    watch.acknowledged(0, [(f"t{i}", b"x", False) for i in range(5)])
    clock.now = 1.0
    assert [w.tx_id for w in watch.due(limit=3)] == ["t0", "t1", "t2"]
    assert [w.tx_id for w in watch.due(limit=3)] == ["t3", "t4"]


def test_the_watch_keeps_at_most_max_bytes_dropping_the_oldest() -> None:
    clock = Clock()
    watch = AckWatch(10.0, give_up_after=10.0, max_bytes=2 * (40 + ENTRY_OVERHEAD) + 10,
                     clock=clock)
    watch.acknowledged(0, [(f"t{i}", bytes(40), False) for i in range(5)])
    assert len(watch) == 2  # the three oldest are no longer watched
    clock.now = 10.0
    assert watch.due() == [] and len(watch) == 0  # given up: nothing is sent


def apply(watch: AckWatch, clock: Clock, op: str, tx: int, size: int, orderers: int) -> None:
    """One step of a generated sequence: an acknowledgement (new or `duplicate`) by one of
    `orderers`, a commit, a look for what is due (some sent again and taken by nobody), or
    time passing."""
    if op in ("ack", "dup"):
        watch.acknowledged(tx % orderers, [(f"t{tx}", bytes(size), op == "dup")])
    elif op == "commit":
        watch.committed([f"t{tx}"])
    elif op == "due":
        for entry in watch.due(limit=size % 4 + 1):
            if size % 2:
                watch.retry(entry)
    else:
        clock.now += size / 10


@given(st.lists(st.tuples(st.sampled_from(["ack", "dup", "commit", "due", "tick"]),
                          st.integers(0, 5), st.integers(1, 50)), max_size=60))
def test_any_sequence_keeps_the_byte_count_and_bound(ops: list[tuple[str, int, int]]) -> None:
    clock = Clock()
    bound = 3 * ENTRY_OVERHEAD
    watch = AckWatch(3.0, give_up_after=7.0, max_bytes=bound, clock=clock)
    for op, tx, size in ops:
        apply(watch, clock, op, tx, size, orderers=2)
        entries = list(watch._entries.values())
        assert watch._bytes == sum(len(e.tx) + ENTRY_OVERHEAD for e in entries)
        assert watch._bytes <= bound or len(entries) == 1
        assert [e.due_at for e in entries] == sorted(e.due_at for e in entries)
