"""An endorser reading its organisation's committer's ledger (core ledger/store_follower.py):
`Ledger.follow_stored` gives, block by block, what `Ledger.commit` gave the committer (valid
and invalid transactions, trades, a cancel, orders expired at gate closure), without executing
anything; the follower keeps going through read failures and a failing listener, and says so
in its health."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from pathlib import Path

import lmdb
import pytest
from ledger_helpers import endorsed
from market_helpers import BUY, SELL
from settlement_helpers import GATE, VALID, Net, new_net, tx_id

from gridledger_core.genesis import Genesis
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.ledger.store_follower import StoreFollower
from gridledger_core.storage import KeyValueStore

ASK = 250_000


def accept_proof(*_: object) -> None:
    """The committer verified the proofs; a follower never sees an unverified block."""


@pytest.fixture()
def net(genesis: Genesis, consortium_dir: Path) -> Net:
    return new_net(genesis, consortium_dir)


def commit(net: Net, *envelopes: object, at: int | None = None) -> CommitResult:
    net.time = at if at is not None else net.time
    block = net.chain.block([endorsed(e, net.endorser) for e in envelopes],  # type: ignore[arg-type]
                            timestamp=net.time)
    net.blocks.append(block)
    return net.ledger.commit(block)


def same_as_committed(followed: CommitResult | None, committed: CommitResult) -> None:
    assert followed is not None
    for name in ("number", "block_hash", "state_root", "tx_ids", "codes", "messages",
                 "block_time", "expired_orders"):
        assert getattr(followed, name) == getattr(committed, name), name
    assert followed.transactions == [tx if code == VALID else None for tx, code in
                                     zip(committed.transactions, committed.codes, strict=True)]


def test_follow_stored_gives_each_block_as_its_commit_gave_it(net: Net,
                                                              genesis: Genesis) -> None:
    reader = Ledger(net.ledger.store, genesis, accept_proof)  # the same store, read only
    assert reader.height == net.ledger.height  # the set-up block is already stored
    assert reader.follow_stored() is None
    sell = net.order("meter-1", SELL, ASK, 3000)
    steps = [
        (sell, net.order("meter-2", BUY, 200_000, 1000)),  # one rests, one does not cross
        (net.order("meter-3", BUY, ASK, 500),),  # a trade with the resting sell
        (net.transfer("meter-2", "meter-1", 10**18),),  # invalid: more than it holds
        (net.cancel("meter-3", tx_id(sell)),),  # invalid: not its order
    ]
    committed = []
    for envelopes in steps:
        committed.append(commit(net, *envelopes))
    committed.append(commit(net, at=GATE))  # the prologue expires the slot's open orders
    assert committed[-1].expired_orders, "the gate closure block expired nothing"
    assert {c for r in committed[2:4] for c in r.codes} != {VALID}
    for result in committed:
        same_as_committed(reader.follow_stored(), result)
    assert reader.follow_stored() is None
    assert reader.chain == net.ledger.chain
    assert reader.previous_header_bytes() == net.blocks[-1].header


class Flaky:
    """A store whose reads fail while `failing` is set (the committer's store gone)."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self.failing = threading.Event()

    def snapshot(self) -> AbstractContextManager[KeyValueStore]:
        if self.failing.is_set():
            raise lmdb.ReadonlyError("the committer's ledger went away")
        return self.store.snapshot()

    def get(self, key: bytes) -> bytes | None:
        return self.store.get(key)


def test_the_follower_reports_read_failures_and_recovers(net: Net, genesis: Genesis) -> None:
    flaky = Flaky(net.ledger.store)
    reader = Ledger(flaky, genesis, accept_proof)  # type: ignore[arg-type]
    health: list[tuple[bool, str]] = []
    seen: list[int] = []
    changed = threading.Condition()

    def on_health(ok: bool, why: str) -> None:
        with changed:
            health.append((ok, why))
            changed.notify_all()

    def on_commit(result: CommitResult) -> None:
        with changed:
            seen.append(result.number)
            changed.notify_all()
        raise RuntimeError("a listener's bug")  # counted; the follower goes on

    follower = StoreFollower(reader, on_commit=on_commit, on_health=on_health, poll=0.001)
    follower.start()
    try:
        flaky.failing.set()
        with changed:
            assert changed.wait_for(lambda: health, timeout=10)
        assert health[0][0] is False and "went away" in health[0][1]
        assert not follower.healthy and "ReadonlyError" in follower.problem
        first = commit(net, net.order("meter-1", SELL, ASK, 1000))
        flaky.failing.clear()
        second = commit(net, net.order("meter-2", BUY, ASK, 500))
        with changed:
            assert changed.wait_for(lambda: len(seen) == 2 and len(health) == 2, timeout=10)
        assert seen == [first.number, second.number]
        assert health[1] == (True, "") and follower.healthy
    finally:
        follower.stop()
