"""An endorser reading its organisation's committer's ledger (core ledger/store_follower.py):
`Ledger.follow_stored` gives, block by block, what `Ledger.commit` gave the committer (valid
and invalid transactions, trades, a cancel, orders expired at gate closure), without executing
anything; the follower keeps going through read failures and a failing listener, and says so
in its health."""

from __future__ import annotations

import subprocess
import sys
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
from gridledger_core.storage import KeyValueStore, LmdbStore, MemoryStore

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


def trading(net: Net) -> list[CommitResult]:
    """Blocks after the set-up one: orders that rest, a trade, two invalid transactions, and
    the gate closure that expires the slot's open orders."""
    sell = net.order("meter-1", SELL, ASK, 3000)
    steps = [
        (sell, net.order("meter-2", BUY, 200_000, 1000)),  # one rests, one does not cross
        (net.order("meter-3", BUY, ASK, 500),),  # a trade with the resting sell
        (net.transfer("meter-2", "meter-1", 10**18),),  # invalid: more than it holds
        (net.cancel("meter-3", tx_id(sell)),),  # invalid: not its order
    ]
    committed = [commit(net, *envelopes) for envelopes in steps]
    committed.append(commit(net, at=GATE))  # the prologue expires the slot's open orders
    assert committed[-1].expired_orders, "the gate closure block expired nothing"
    assert {c for r in committed[2:4] for c in r.codes} != {VALID}
    return committed


def test_follow_stored_gives_each_block_as_its_commit_gave_it(net: Net,
                                                              genesis: Genesis) -> None:
    reader = Ledger(net.ledger.store, genesis, accept_proof)  # the same store, read only
    assert reader.height == net.ledger.height  # the set-up block is already stored
    assert reader.follow_stored() is None
    for result in trading(net):
        same_as_committed(reader.follow_stored(), result)
    assert reader.follow_stored() is None
    assert reader.chain == net.ledger.chain
    assert reader.previous_header_bytes() == net.blocks[-1].header


# A committer in its own process: commits the given blocks up to each height read from
# stdin, says its height, and keeps its LMDB open until killed.
COMMITTER = """
import sys
from pathlib import Path
from gridledger.common.v1 import block_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.storage import LmdbStore
genesis = Genesis.load(Path(sys.argv[1]))
data, blocks = Path(sys.argv[3]).read_bytes(), []
while data:
    size = int.from_bytes(data[:4], "big")
    blocks.append(block_pb2.Block.FromString(data[4:4 + size]))
    data = data[4 + size:]
ledger = Ledger(LmdbStore(Path(sys.argv[2])), genesis, lambda *_: None)
for line in sys.stdin:
    for block in blocks[ledger.height:int(line)]:
        ledger.commit(block)
    print(ledger.height, flush=True)
"""


def test_another_process_commits_and_is_killed_while_the_ledger_is_followed(
        net: Net, genesis: Genesis, consortium_dir: Path, tmp_path: Path) -> None:
    """The devnet's arrangement: the committer's process writes its LMDB, the endorser's reads
    it read-only; the committer is killed -9 and started again under the reader."""
    trading(net)
    replay = Ledger(MemoryStore(), genesis, accept_proof)  # what the committer returns
    committed = [replay.commit(block) for block in net.blocks]
    blocks = tmp_path / "blocks"
    blocks.write_bytes(b"".join(len(raw).to_bytes(4, "big") + raw
                                for raw in (b.SerializeToString() for b in net.blocks)))
    ledger_dir = tmp_path / "committer" / "ledger"

    def committer() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", COMMITTER, str(consortium_dir / "genesis.json"),
             str(ledger_dir), str(blocks)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def commit_to(process: subprocess.Popen[str], height: int) -> None:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{height}\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == str(height)

    first = committer()
    try:
        commit_to(first, 1)
        reader = Ledger(LmdbStore(ledger_dir, readonly=True), genesis, accept_proof)
        assert reader.height == 1
        commit_to(first, 3)
        for number in (1, 2):
            same_as_committed(reader.follow_stored(), committed[number])
        assert reader.follow_stored() is None
    finally:
        first.kill()  # SIGKILL, with the reader's environment open
        first.wait()
    second = committer()
    try:
        commit_to(second, len(net.blocks))
        for number in range(3, len(net.blocks)):
            same_as_committed(reader.follow_stored(), committed[number])
        assert reader.follow_stored() is None
        assert reader.chain == replay.chain
    finally:
        second.kill()
        second.wait()
        reader.store.close()  # type: ignore[attr-defined]


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
