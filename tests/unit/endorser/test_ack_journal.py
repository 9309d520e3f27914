"""The acknowledgement watch on disk (ack_journal.py), tried as a hostile member's orderer
would: it acknowledges and drops, and the endorser is then killed or restarted before the
watch sends anything again. Before, the watch lived in memory only and those transactions
were lost for good although their clients had been told OK. Now every acknowledgement is on
disk before the client is told OK, and a restarted endorser watches it again, with its
deadlines and blame, and catches the dropper.

The broadcaster and the watch are the real ones; the orderers are the fakes of
test_lost_acknowledgements.py; the journal is on a real LMDB store, reopened as a restarted
endorser would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from signed_blocks import wait_for
from test_lost_acknowledgements import (
    LOST_AFTER,
    Clock,
    Cluster,
    PoolOrderer,
    apply,
    lost,
    lost_strikes,
    send,
    tx_ids,
    watched_broadcaster,
)

from gridledger_core.storage import LmdbStore, MemoryStore
from gridledger_endorser.ack_journal import AckJournal, JournalEntry, decode, encode
from gridledger_endorser.ack_watch import ENTRY_OVERHEAD, AckWatch

NAMES = ["orderer-1", "orderer-2", "orderer-3"]


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "acknowledged"


@pytest.fixture
def journal(journal_dir: Path) -> Iterator[AckJournal]:
    opened = AckJournal(LmdbStore(journal_dir, map_size=64 << 20))
    yield opened
    opened.close()


def reopened(journal_dir: Path) -> AckJournal:
    return AckJournal(LmdbStore(journal_dir, map_size=64 << 20))


@given(st.text(min_size=1, max_size=64), st.binary(max_size=300), st.text(max_size=40),
       st.booleans(), st.floats(0, 4e9))
def test_an_entry_reads_back_as_written(tx_id: str, tx: bytes, orderer: str, duplicate: bool,
                                        first: float) -> None:
    entry = decode(tx_id, encode(JournalEntry(tx_id, tx, orderer, duplicate, first)))
    assert (entry.tx_id, entry.tx, entry.orderer, entry.duplicate) == (tx_id, tx, orderer,
                                                                       duplicate)
    assert abs(entry.first_acknowledged - first) <= 0.0005


def test_a_restarted_watch_keeps_every_entry_its_deadlines_and_blame(
        journal: AckJournal, journal_dir: Path) -> None:
    clock, wall = Clock(), Clock()
    wall.now = 1_000_000.0
    watch = AckWatch(10.0, give_up_after=40.0, clock=clock, journal=journal,
                     orderer_names=NAMES, wall_clock=wall)
    watch.acknowledged(0, [("a", b"tx-a", False), ("b", b"tx-b", False)])
    clock.now, wall.now = 4.0, 1_000_004.0
    watch.acknowledged(2, [("c", b"tx-c", True)])  # orderer-3 said `duplicate`
    watch.committed(["b"])
    journal.close()

    # A restart 3 s later, with a new monotonic clock and the orderers listed in another order.
    clock2, wall2 = Clock(), Clock()
    clock2.now, wall2.now = 500.0, 1_000_007.0
    again = AckWatch(10.0, give_up_after=40.0, clock=clock2, journal=reopened(journal_dir),
                     orderer_names=["orderer-3", "orderer-2", "orderer-1"], wall_clock=wall2)
    assert again.restore() == 2
    clock2.now = 502.9
    assert again.due() == []  # a was acknowledged 7 s ago: due in 3 s, as before the restart
    clock2.now = 503.0
    (a,) = again.due()
    assert (a.tx_id, a.tx, a.orderer, a.acknowledged_by) == ("a", b"tx-a", 2, 2)  # orderer-1
    clock2.now = 507.0
    (c,) = again.due()
    assert (c.tx_id, c.orderer, c.acknowledged_by) == ("c", None, 0)  # nobody to blame
    # 40 s after a's first acknowledgement: given up, and off the disk; c is due again.
    clock2.now = 533.0
    assert [w.tx_id for w in again.due()] == ["c"]
    assert [e.tx_id for e in again._journal.entries()] == ["c"]


def test_an_orderer_no_longer_listed_is_blamed_for_nothing(journal: AckJournal,
                                                           journal_dir: Path) -> None:
    watch = AckWatch(10.0, journal=journal, orderer_names=NAMES)
    watch.acknowledged(1, [("a", b"tx-a", False)])
    journal.close()
    again = AckWatch(10.0, journal=reopened(journal_dir), orderer_names=["orderer-9"])
    assert again.restore() == 1
    assert next(iter(again._entries.values())).orderer is None


@given(st.lists(st.tuples(st.sampled_from(["ack", "dup", "commit", "due", "tick"]),
                          st.integers(0, 5), st.integers(1, 50)), max_size=60))
def test_the_journal_holds_exactly_what_the_watch_watches(ops: list[tuple[str, int, int]]
                                                          ) -> None:
    clock = Clock()
    journal = AckJournal(MemoryStore())
    watch = AckWatch(3.0, give_up_after=7.0, max_bytes=3 * ENTRY_OVERHEAD, clock=clock,
                     journal=journal, orderer_names=NAMES)
    for op, tx, size in ops:
        apply(watch, clock, op, tx, size, orderers=3)
        on_disk = {e.tx_id: e for e in journal.entries()}
        assert set(on_disk) == set(watch._entries)
        for tx_id, entry in watch._entries.items():
            assert on_disk[tx_id].tx == entry.tx
            assert on_disk[tx_id].orderer == NAMES[entry.acknowledged_by]
            assert on_disk[tx_id].duplicate == (entry.orderer is None)


class GatedJournal(AckJournal):
    """Holds each write until released (unless `passing`), to see what happens meanwhile."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.passing = False
        self.writing = threading.Event()
        self.release = threading.Event()

    def write(self, added: object, removed: object) -> bool:  # type: ignore[override]
        if not self.passing:
            self.writing.set()
            assert self.release.wait(10)
        return super().write(added, removed)  # type: ignore[arg-type]


def test_no_caller_is_told_ok_before_its_acknowledgement_is_on_disk() -> None:
    cluster = Cluster()
    journal = GatedJournal()
    watch = AckWatch(LOST_AFTER, give_up_after=60.0, journal=journal, orderer_names=NAMES[:1])
    b = watched_broadcaster(PoolOrderer(cluster), watch=watch)
    answers: list[object] = []
    caller = threading.Thread(target=lambda: answers.append(b.broadcast(b"tx-0", "tx-0")))
    try:
        caller.start()
        assert journal.writing.wait(10)
        caller.join(0.3)
        assert caller.is_alive() and not answers  # the orderer said OK; the disk has not
        journal.release.set()
        caller.join(10)
        assert answers and answers[0].tx_id == "tx-0"  # type: ignore[attr-defined]
        assert [e.tx_id for e in journal.entries()] == ["tx-0"]
    finally:
        journal.release.set()
        b.close()


def test_a_restarted_endorser_catches_what_a_dropper_acknowledged_before(
        journal_dir: Path) -> None:
    """The endorser tells its clients OK on orderer-1's word and stops (a crash: nothing is
    sent again before). The restarted one, on the same journal, sends them to orderer-2,
    which takes them as new: orderer-1 is struck, and they reach the cluster."""
    cluster = Cluster()
    dropper, honest = PoolOrderer(cluster, drops=True), PoolOrderer(cluster)
    first = AckJournal(LmdbStore(journal_dir, map_size=64 << 20))
    b = watched_broadcaster(dropper, honest, watch=AckWatch(
        60.0, give_up_after=120.0, journal=first, orderer_names=NAMES[:2]))
    try:
        send(b, tx_ids(4))
    finally:
        b.close()  # long before the 60 s after which it would have sent them again
        first.close()
    assert dropper.sent() == tx_ids(4) and not honest.sent() and not cluster.pooled

    before = lost("orderer-1"), lost_strikes("orderer-1")
    journal = reopened(journal_dir)
    watch = AckWatch(LOST_AFTER, give_up_after=60.0, journal=journal, orderer_names=NAMES[:2])
    assert watch.restore() == 4
    shown: set[str] = set()  # what the ledger holds
    restarted = watched_broadcaster(dropper, honest, watch=watch, committed=shown.__contains__)
    try:
        wait_for(lambda: cluster.pooled >= set(tx_ids(4)), "the restarted endorser to send "
                 "them to the honest orderer", timeout=10)
        wait_for(lambda: lost("orderer-1") == before[0] + 4, "the lost acknowledgements")
        assert lost_strikes("orderer-1") == before[1] + 1
        shown.update(tx_ids(4))
        restarted.on_block(tx_ids(4))
        assert journal.entries() == []  # committed: off the disk
    finally:
        restarted.close()
        journal.close()


class FailingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def commit(self, batch: object) -> None:  # type: ignore[override]
        if self.fail:
            raise OSError("No space left on device")
        super().commit(batch)  # type: ignore[arg-type]


def failures(operation: str) -> float:
    return REGISTRY.get_sample_value("gridledger_endorser_ack_journal_failures_total",
                                     {"operation": operation}) or 0.0


def test_a_journal_that_cannot_be_written_is_reported_and_the_orderers_ok_still_stands(
) -> None:
    store = FailingStore()
    health: list[bool] = []
    journal = AckJournal(store, on_health=health.append)
    # Nothing comes due within the test: each write below is the one it looks at.
    watch = AckWatch(60.0, give_up_after=120.0, journal=journal, orderer_names=NAMES[:1])
    b = watched_broadcaster(PoolOrderer(Cluster()), watch=watch)
    before = failures("add")
    try:
        assert b.broadcast(b"tx-0", "tx-0").tx_id == "tx-0"  # the orderer's durable word
        assert failures("add") == before + 1 and health == [False] and len(watch) == 1
        store.fail = False
        assert b.broadcast(b"tx-1", "tx-1").tx_id == "tx-1"
        assert health == [False, True]
        assert [e.tx_id for e in journal.entries()] == ["tx-1"]
    finally:
        b.close()


def test_a_removal_written_late_never_undoes_a_later_acknowledgement() -> None:
    """The watch gives tx-0 up (its removal's write is slow), then an orderer acknowledges
    tx-0 again (a client sent it again): the journal ends holding it, as the watch does.
    Before, each write went to disk when its thread got there, so the late removal could
    come last and leave the journal without an entry the watch held."""
    clock = Clock()
    journal = GatedJournal()
    watch = AckWatch(1.0, give_up_after=2.0, clock=clock, journal=journal,
                     orderer_names=NAMES)
    journal.passing = True  # the first acknowledgement's write passes
    watch.acknowledged(0, [("tx-0", b"tx", False)])
    journal.passing = False
    clock.now = 2.0
    giving_up = threading.Thread(target=watch.due)
    giving_up.start()
    assert journal.writing.wait(10)  # the removal is on its way to disk
    again = threading.Thread(target=watch.acknowledged, args=(1, [("tx-0", b"tx", False)]))
    again.start()
    again.join(0.3)
    journal.release.set()
    giving_up.join(10)
    again.join(10)
    assert set(watch._entries) == {"tx-0"}
    assert [e.tx_id for e in journal.entries()] == ["tx-0"]
