"""Orderers' acknowledgements checked against the ledger (ack_watch.py), tried as a hostile
member's orderer would: it answers OK to every transaction in time and drops them. Before, the
endorser believed that OK (and told its clients OK), the orderer kept the lead by answering in
time, and every later group went to it too: nothing this endorser endorsed reached a block.
Now what the ledger has not shown `lost_after` later is sent again to the other orderers first;
one that takes it as new proves the first never passed it on, which strikes that orderer.

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

from gridledger.orderer.v1 import orderer_pb2
from gridledger_endorser.ack_watch import AckWatch
from gridledger_endorser.broadcaster import Broadcaster

LOST_AFTER = 0.5  # seconds; the watch thread looks once a second


class Cluster:
    """What the honest orderers hold between them: each forwards what it takes at once."""

    def __init__(self) -> None:
        self.pooled: set[str] = set()
        self.lock = threading.Lock()


class PoolOrderer:
    """An honest orderer: takes a transaction into the shared pool, or answers `duplicate`
    when the cluster holds it already. `drops`: a hostile one that answers OK as new to
    everything and keeps nothing."""

    def __init__(self, cluster: Cluster, drops: bool = False) -> None:
        self.cluster = cluster
        self.drops = drops
        self.batches: list[list[str]] = []

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        tx_ids = [tx.decode() for tx in request.endorsed_transactions]
        self.batches.append(tx_ids)
        results = []
        with self.cluster.lock:
            for tx_id in tx_ids:
                duplicate = not self.drops and tx_id in self.cluster.pooled
                if not self.drops:
                    self.cluster.pooled.add(tx_id)
                results.append(orderer_pb2.BroadcastResult(tx_id=tx_id, duplicate=duplicate))
        return orderer_pb2.BroadcastBatchResponse(results=results)

    def sent(self) -> list[str]:
        return [tx_id for batch in self.batches for tx_id in batch]


def watched_broadcaster(*orderers: PoolOrderer,
                        committed: Callable[[str], bool] = lambda _tx_id: False
                        ) -> Broadcaster:
    b = Broadcaster.over([(f"orderer-{i + 1}", o) for i, o in enumerate(orderers)],  # type: ignore[misc]
                         timeout=1.0, senders=1, linger=0.0)
    b.watch_acknowledgements(committed, AckWatch(LOST_AFTER, give_up_after=60.0))
    return b


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def lost(orderer: str) -> float:
    return sample("gridledger_endorser_lost_acknowledgements_total", {"orderer": orderer})


def lost_strikes(orderer: str) -> float:
    return sample("gridledger_endorser_orderer_cooldowns_total",
                  {"orderer": orderer, "reason": "lost"})


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def tx_ids(count: int, prefix: str = "tx") -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_an_orderer_that_acknowledges_and_drops_loses_them_to_another_and_the_lead() -> None:
    cluster = Cluster()
    dropper, honest = PoolOrderer(cluster, drops=True), PoolOrderer(cluster)
    b = watched_broadcaster(dropper, honest)  # orderer-1, the dropper, leads at first
    before = lost("orderer-1"), lost_strikes("orderer-1")
    try:
        answers = b.broadcast_many([(t.encode(), t) for t in tx_ids(5)])
        assert all(not isinstance(a, BaseException) for a in answers)
        assert dropper.sent() == tx_ids(5) and not honest.sent()  # it answered OK in time
        wait_for(lambda: cluster.pooled >= set(tx_ids(5)),
                 "the dropped transactions to reach an honest orderer")
        wait_for(lambda: lost_strikes("orderer-1") == before[1] + 1, "the dropper's strike")
        assert lost("orderer-1") == before[0] + 5
        # The dropper lost the lead: the next group goes to the honest orderer first.
        b.broadcast(b"next", "next")
        assert honest.sent()[-1] == "next" and "next" not in dropper.sent()
    finally:
        b.close()


def test_an_overdue_transaction_another_orderer_holds_blames_nobody() -> None:
    """orderer-1 passed its transactions on (orderer-2 answers `duplicate`), but the ledger
    shows none of them (a stalled cluster, a follower behind): sent again, nobody struck,
    and orderer-1 keeps the lead."""
    cluster = Cluster()
    first, second = PoolOrderer(cluster), PoolOrderer(cluster)
    b = watched_broadcaster(first, second)
    before = lost_strikes("orderer-1"), lost_strikes("orderer-2")
    try:
        b.broadcast_many([(t.encode(), t) for t in tx_ids(3)])
        wait_for(lambda: second.sent() == tx_ids(3), "the overdue transactions sent again")
        time.sleep(2 * LOST_AFTER)  # and again, now to orderer-1 first (orderer-2's now)
        assert (lost_strikes("orderer-1"), lost_strikes("orderer-2")) == before
        b.broadcast(b"next", "next")
        assert first.sent()[-1] == "next"
    finally:
        b.close()


def test_what_the_ledger_shows_committed_is_not_sent_again() -> None:
    cluster = Cluster()
    first, second = PoolOrderer(cluster), PoolOrderer(cluster)
    # tx-0's block comes before its acknowledgement is recorded: found by looking it up.
    b = watched_broadcaster(first, second, committed=lambda tx_id: tx_id == "tx-0")
    try:
        b.broadcast_many([(t.encode(), t) for t in tx_ids(3)])
        b.on_block(["tx-1"])  # tx-1's block, reported by the follower
        wait_for(lambda: second.sent() == ["tx-2"], "tx-2 sent again")
        time.sleep(2 * LOST_AFTER)
        assert "tx-0" not in second.sent() + first.sent()[3:]
        assert "tx-1" not in second.sent() + first.sent()[3:]
    finally:
        b.close()


def test_sent_again_and_taken_by_nobody_is_tried_again_later() -> None:
    class Down:
        calls = 0

        def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                           timeout: float) -> orderer_pb2.BroadcastBatchResponse:
            self.calls += 1
            raise _Unavailable()

    cluster = Cluster()
    dropper, down = PoolOrderer(cluster, drops=True), Down()
    b = Broadcaster.over([("orderer-1", dropper), ("orderer-2", down)],  # type: ignore[list-item]
                         timeout=1.0, senders=1, linger=0.0)
    watch = AckWatch(LOST_AFTER, give_up_after=60.0)
    b.watch_acknowledgements(lambda _tx_id: False, watch)
    try:
        b.broadcast(b"tx-0", "tx-0")
        wait_for(lambda: down.calls >= 2, "two tries at the other orderer")
        assert len(watch) == 1  # still watched: the dropper acknowledged it again
    finally:
        b.close()


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "down"


# -- the watch itself (pure, on a clock of its own) ---------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_due_after_lost_after_until_committed_and_given_up_after_give_up_after() -> None:
    clock = Clock()
    watch = AckWatch(10.0, give_up_after=25.0, clock=clock)
    watch.acknowledged(0, "a", b"a")
    watch.acknowledged(1, "b", b"b")
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
    watch.acknowledged(2, "a", b"a")  # taken again, by orderer 2, at 20: due at 30
    clock.now = 30.0
    assert watch.due() == []  # watched 30 s since its first acknowledgement: given up
    assert len(watch) == 0


def test_the_watch_keeps_at_most_max_bytes_dropping_the_oldest() -> None:
    watch = AckWatch(10.0, max_bytes=100, clock=Clock())
    for i in range(5):
        watch.acknowledged(0, f"t{i}", bytes(40))
    assert len(watch) == 2  # 80 of 100 bytes: the three oldest are no longer watched
    assert [w.tx_id for w in _all_due(watch)] == ["t3", "t4"]


def _all_due(watch: AckWatch) -> list:
    watch._clock.now = 1e9  # type: ignore[attr-defined]
    watch._give_up_after = 2e9
    return watch.due()


@given(st.lists(st.tuples(st.sampled_from(["ack", "commit", "due", "tick"]),
                          st.integers(0, 5), st.integers(1, 50)), max_size=60))
def test_any_sequence_keeps_the_byte_count_and_bound(ops: list[tuple[str, int, int]]) -> None:
    clock = Clock()
    watch = AckWatch(3.0, give_up_after=7.0, max_bytes=120, clock=clock)
    for op, tx, size in ops:
        if op == "ack":
            watch.acknowledged(tx % 2, f"t{tx}", bytes(size))
        elif op == "commit":
            watch.committed([f"t{tx}"])
        elif op == "due":
            for entry in watch.due():
                if size % 2:
                    watch.retry(entry)
        else:
            clock.now += size / 10
        entries = list(watch._entries.values())
        assert watch._bytes == sum(len(e.tx) for e in entries)
        assert watch._bytes <= 120 or len(entries) == 1
        assert [e.due_at for e in entries] == sorted(e.due_at for e in entries)
