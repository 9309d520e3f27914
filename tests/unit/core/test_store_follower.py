"""An endorser reading its organisation's committer's ledger (core ledger/store_follower.py).

`Ledger.follow_stored` gives what `Ledger.commit` gave the committer (valid and invalid
transactions, trades, a cancel, orders expired at gate closure), one block or several read
together with the state as of the last one, without executing anything; a committer in
another process is killed -9 under the reader; a store that is not the chain followed is
refused. The follower keeps going through read failures and a failing listener, and says in
its health when the ledger read is stale while an orderer holds a final block."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import pytest
from ledger_helpers import ChainBuilder, endorsed
from market_helpers import BUY, SELL
from settlement_helpers import GATE, VALID, Net, new_net, tx_id
from signed_blocks import DeliverServer

from gridledger.common.v1 import block_pb2, envelope_pb2
from gridledger_core.consensus.signing import block_hash
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.ledger import CommitResult, Ledger, StoreMismatch
from gridledger_core.ledger.orderer_probe import OrdererProbe, Verdicts
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.ledger.store_follower import StoreFollower
from gridledger_core.market import ledger_view as view
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.storage import KeyValueStore, LmdbStore, MemoryStore

ASK = 250_000


def accept_proof(*_: object) -> None:
    """The committer verified the proofs; a follower never sees an unverified block."""


@pytest.fixture()
def net(genesis: Genesis, consortium_dir: Path) -> Net:
    return new_net(genesis, consortium_dir)


def block_of(net: Net, *envelopes: envelope_pb2.SignedEnvelope,
             at: int | None = None) -> block_pb2.Block:
    """The next block of `net`'s chain (kept in `net.blocks`), not committed anywhere yet."""
    net.time = at if at is not None else net.time
    block = net.chain.block([endorsed(e, net.endorser) for e in envelopes], timestamp=net.time)
    net.blocks.append(block)
    return block


def commit(net: Net, *envelopes: envelope_pb2.SignedEnvelope,
           at: int | None = None) -> CommitResult:
    return net.ledger.commit(block_of(net, *envelopes, at=at))


def follow(reader: Ledger) -> CommitResult | None:
    """What one `follow_stored` passes its listener (a copy: the snapshot ends with it)."""
    taken: list[CommitResult] = []
    count = reader.follow_stored(lambda r: taken.append(dataclasses.replace(r)))
    assert count == (taken[0].number - taken[0].first_number + 1 if taken else 0)
    return taken[0] if taken else None


def same_as_committed(followed: CommitResult | None, *committed: CommitResult) -> None:
    """`followed` is `committed`: one block's result, or several blocks' together."""
    assert followed is not None
    assert (followed.first_number, followed.number) == (committed[0].number,
                                                         committed[-1].number)
    assert (followed.block_hash, followed.state_root) == (committed[-1].block_hash,
                                                          committed[-1].state_root)
    assert followed.block_time == max(c.block_time for c in committed)
    for name in ("tx_ids", "codes", "messages", "expired_orders"):
        assert getattr(followed, name) == [x for c in committed for x in getattr(c, name)], name
    assert followed.transactions == [tx if code == VALID else None for c in committed
                                     for tx, code in zip(c.transactions, c.codes, strict=True)]


def trading(net: Net, each: Callable[[CommitResult], None] = lambda _: None
            ) -> list[CommitResult]:
    """Blocks after the set-up one (`each` is called after each commit): orders that rest, a
    trade, two invalid transactions, and the gate closure that expires the slot's open
    orders."""
    sell = net.order("meter-1", SELL, ASK, 3000)
    steps = [
        (sell, net.order("meter-2", BUY, 200_000, 1000)),  # one rests, one does not cross
        (net.order("meter-3", BUY, ASK, 500),),  # a trade with the resting sell
        (net.transfer("meter-2", "meter-1", 10**18),),  # invalid: more than it holds
        (net.cancel("meter-3", tx_id(sell)),),  # invalid: not its order
    ]
    committed = []
    for envelopes in [*steps, ()]:  # the last at gate closure: the prologue expires orders
        committed.append(commit(net, *envelopes, at=None if envelopes else GATE))
        each(committed[-1])
    assert committed[-1].expired_orders, "the gate closure block expired nothing"
    assert {c for r in committed[2:4] for c in r.codes} != {VALID}
    return committed


def test_follow_stored_gives_each_block_as_its_commit_gave_it(net: Net,
                                                              genesis: Genesis) -> None:
    reader = Ledger(net.ledger.store, genesis, accept_proof)  # the same store, read only
    assert reader.height == net.ledger.height  # the set-up block is already stored
    assert follow(reader) is None
    trading(net, lambda result: same_as_committed(follow(reader), result))
    assert follow(reader) is None
    assert reader.chain == net.ledger.chain
    assert reader.previous_header_bytes() == net.blocks[-1].header


def test_blocks_read_together_come_as_one_result_with_the_state_of_the_last(
        tmp_path: Path, net: Net, genesis: Genesis) -> None:
    """The committer may be blocks ahead when the endorser looks, and commit more while the
    book cache applies them: the cache gets those blocks together, and the state it reads is
    as of their last block, not the committer's newer one."""
    store = LmdbStore(tmp_path / "ledger")  # one environment, shared by writer and reader
    writer = Ledger(store, genesis, accept_proof)
    writer.commit(net.blocks[0])
    reader = Ledger(store, genesis, accept_proof)

    def both(envelope: envelope_pb2.SignedEnvelope) -> CommitResult:
        """Committed by `net` too, so its next options match against the same book."""
        block = block_of(net, envelope)
        net.ledger.commit(block)
        return writer.commit(block)

    sell = net.order("meter-1", SELL, ASK, 3000)
    results = [both(sell), both(net.order("meter-2", BUY, ASK, 1000))]
    later = block_of(net, net.order("meter-3", BUY, ASK, 500))
    seen: list[tuple[int, int, int]] = []

    def listener(result: CommitResult) -> None:
        writer.commit(later)  # meanwhile the committer fills more of the resting sell
        assert result.committed_state is not None
        as_of = view.load_order(StateOverlay(result.committed_state), tx_id(sell))
        now = view.load_order(StateOverlay(store), tx_id(sell))
        assert as_of is not None and now is not None
        seen.append((result.first_number, result.number, as_of.remaining_wh))
        assert now.remaining_wh == 1500
        same_as_committed(dataclasses.replace(result), *results)

    assert reader.follow_stored(listener) == 2
    assert seen == [(1, 2, 2000)]
    assert (reader.height, writer.height) == (3, 4)
    store.close()


def test_a_store_that_is_not_the_chain_followed_is_refused(net: Net, genesis: Genesis) -> None:
    """Another ledger put in the place of the committer's (emptied, or another chain): the
    endorser must not go on as if its book and admission counts still held."""
    reader = Ledger(net.ledger.store, genesis, accept_proof)
    trading(net)
    assert follow(reader) is not None
    followed = reader.chain
    shorter = MemoryStore()
    Ledger(shorter, genesis, accept_proof).commit(net.blocks[0])
    reader.store = shorter
    with pytest.raises(StoreMismatch, match="holds 1 blocks"):
        follow(reader)
    other = MemoryStore()  # longer, but another chain from block 1 on
    replica = Ledger(other, genesis, accept_proof)
    replica.commit(net.blocks[0])
    forked = ChainBuilder()
    forked.number, forked.previous = 1, block_hash(net.blocks[0].header)
    for _ in net.blocks:
        replica.commit(forked.block([], timestamp=net.time))
    reader.store = other
    with pytest.raises(StoreMismatch, match="does not chain on"):
        follow(reader)
    assert reader.chain == followed  # nothing of either was taken


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
    """The devnet's arrangement: the committer's process writes its LMDB, the endorser's
    reads it read-only (with the committer's map size); the committer is killed -9 and
    started again under the reader."""
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
        reader = Ledger(LmdbStore(ledger_dir, map_size=0, readonly=True), genesis, accept_proof)
        assert reader.height == 1
        commit_to(first, 3)
        same_as_committed(follow(reader), *committed[1:3])
        assert follow(reader) is None
    finally:
        first.kill()  # SIGKILL, with the reader's environment open
        first.wait()
    second = committer()
    try:
        commit_to(second, len(net.blocks))
        same_as_committed(follow(reader), *committed[3:])
        assert follow(reader) is None
        assert reader.chain == replay.chain
        assert not reader.store.replaced()  # type: ignore[attr-defined]
    finally:
        second.kill()
        second.wait()
        reader.store.close()  # type: ignore[attr-defined]


class Flaky:
    """A store whose reads fail while `failing` is set (the committer's store unreadable)."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self.failing = threading.Event()

    def snapshot(self) -> AbstractContextManager[KeyValueStore]:
        if self.failing.is_set():
            raise lmdb.ReadonlyError("the committer's ledger cannot be read")
        return self.store.snapshot()

    def get(self, key: bytes) -> bytes | None:
        return self.store.get(key)


class Watch:
    """A follower's health and listener calls, waited on."""

    def __init__(self) -> None:
        self.health: list[tuple[bool, str]] = []
        self.seen: list[tuple[int, int]] = []
        self.changed = threading.Condition()

    def on_health(self, ok: bool, why: str) -> None:
        with self.changed:
            self.health.append((ok, why))
            self.changed.notify_all()

    def on_commit(self, result: CommitResult) -> None:
        with self.changed:
            self.seen.append((result.first_number, result.number))
            self.changed.notify_all()
        raise RuntimeError("a listener's bug")  # counted; the follower goes on

    def until(self, done: Callable[[], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(done, timeout=10), (self.health, self.seen)


def test_the_follower_reports_read_failures_and_recovers(net: Net, genesis: Genesis) -> None:
    flaky = Flaky(net.ledger.store)
    reader = Ledger(flaky, genesis, accept_proof)  # type: ignore[arg-type]
    watch = Watch()
    follower = StoreFollower(reader, on_commit=watch.on_commit, on_health=watch.on_health,
                             poll=0.001)
    follower.start()
    try:
        flaky.failing.set()
        watch.until(lambda: bool(watch.health))
        assert watch.health[0][0] is False and "cannot be read" in watch.health[0][1]
        assert not follower.healthy and "ReadonlyError" in follower.problem
        first = commit(net, net.order("meter-1", SELL, ASK, 1000))
        second = commit(net, net.order("meter-2", BUY, ASK, 500))
        flaky.failing.clear()
        watch.until(lambda: len(watch.health) == 2 and bool(watch.seen))
        assert watch.seen == [(first.number, second.number)]  # read together, passed on
        assert watch.health[1] == (True, "") and follower.healthy
    finally:
        follower.stop()


def test_a_stale_ledger_is_reported_only_while_the_orderers_hold_a_newer_block(
        net: Net, genesis: Genesis) -> None:
    """The committer stopped, hung, or behind: no read fails, the store just stays. Every
    tick looks at the orderers once; only after `watch_after` seconds without a block does
    the look's stall verdict count: the same reason twice in a row is a stall (not the moment
    between an orderer's decision and the committer's write); "I cannot tell" keeps the
    verdict; a block ends it. An idle chain is not stale."""
    reader = Ledger(net.ledger.store, genesis, accept_proof)
    asked: list[int] = []
    answer: dict[str, str | None] = {"why": ""}

    def probe(height: int) -> Verdicts:
        asked.append(height)
        return Verdicts(answer["why"], "")

    now = [0.0]
    watch = Watch()
    follower = StoreFollower(reader, on_health=watch.on_health, probe=probe,
                             watch_after=5.0, clock=lambda: now[0])
    answer["why"] = "orderer-2 holds block 1 final"
    follower.watch_once()
    follower.watch_once()
    assert asked == [1, 1] and follower.healthy  # a block (the start) under 5 s ago: no stall
    now[0] = 5.0
    answer["why"] = ""
    follower.watch_once()
    assert asked == [1, 1, 1] and follower.healthy  # idle
    answer["why"] = "orderer-2 holds block 1 final"
    follower.watch_once()
    assert follower.healthy  # once may be the moment before the committer writes it
    answer["why"] = None
    follower.watch_once()
    assert follower.healthy  # cannot tell: no verdict either way
    answer["why"] = "orderer-2 holds block 1 final"
    follower.watch_once()
    follower.watch_once()
    assert not follower.healthy and follower.problem == "orderer-2 holds block 1 final"
    answer["why"] = None
    follower.watch_once()
    assert not follower.healthy  # cannot tell: the stall stands
    assert follower.step() is False and not follower.healthy  # a read is not a block
    commit(net, net.order("meter-1", SELL, ASK, 1000))
    assert follower.step() is True and follower.healthy
    assert watch.health == [(False, "orderer-2 holds block 1 final"), (True, "")]


def test_a_block_during_the_look_sets_no_stall_and_a_failed_look_keeps_one(
        net: Net, genesis: Genesis) -> None:
    """The look at the orderers takes time (up to 2 s per orderer): a block the committer
    writes meanwhile answers it, so its stall verdict (about the height before) must not
    count; a look that fails says nothing about the ledger, so a stall found before stands
    (the lag is another matter: a failed look ends it)."""
    reader = Ledger(net.ledger.store, genesis, accept_proof)
    now = [0.0]
    looks: list[str] = []  # what each look does: "", "block" (one comes meanwhile), "fail"
    follower: StoreFollower

    def probe(height: int) -> Verdicts:
        look = looks.pop(0)
        if look == "fail":
            raise RuntimeError("orderers unreachable in a way the probe did not expect")
        if look == "block":  # the committer writes a block while the orderers are asked
            commit(net, net.order("meter-1", SELL, ASK, 1000))
            assert follower.step() is True
            now[0] += 5.0  # ... and none again for 5 s by the next tick
        return Verdicts(f"orderer-2 holds block {height} final", "")

    follower = StoreFollower(reader, probe=probe, watch_after=5.0, clock=lambda: now[0])
    now[0] = 5.0  # no block for 5 s
    looks += ["", "block", ""]
    follower.watch_once()  # the first finding at height 1
    follower.watch_once()  # a second finding about height 1, while block 1 came: no stall
    assert follower.healthy and reader.height == 2
    follower.watch_once()  # one finding at height 2: not yet
    assert follower.healthy
    looks += ["", "fail"]
    follower.watch_once()
    assert not follower.healthy and "block 2" in follower.problem
    follower.watch_once()
    assert not follower.healthy and "block 2" in follower.problem  # the stall stands


def test_a_lag_is_reported_while_two_ticks_in_a_row_find_it(net: Net, genesis: Genesis) -> None:
    """A committer that writes blocks, but slower than the orderers decide: every tick's look
    at the orderers gives a lag verdict; a lag found on two ticks in a row makes the endorser
    NOT_SERVING, and any tick that does not find it again ends it: "none", "cannot tell" (an
    orderer that cannot be asked must not keep a node down) or a failed probe. Blocks end
    nothing (a lagging committer writes them); one finding alone, or two apart, is the
    moment before a slow block is written. One look per tick, idle or not."""
    reader = Ledger(net.ledger.store, genesis, accept_proof)
    asked: list[int] = []
    answers: list[str | Exception | None] = []

    def probe(height: int) -> Verdicts:
        asked.append(height)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Verdicts(None if answer is None else "", answer)

    now = [0.0]
    follower = StoreFollower(reader, probe=probe, watch_after=5.0, clock=lambda: now[0])

    def tick(answer: str | Exception | None) -> bool:
        answers.append(answer)
        follower.watch_once()
        return follower.healthy

    lag = "it lacks block 1, final at orderer-1 and stamped 40 s ago"
    assert tick("") and tick(lag)  # once: the moment before a slow block is written
    assert tick(None) and tick(lag)  # not in a row
    assert tick("") and tick(lag) and not tick(lag) and follower.problem == lag
    commit(net, net.order("meter-1", SELL, ASK, 1000))
    assert follower.step() is True and not follower.healthy  # a lagging committer's block
    assert not tick("it lacks block 2 ...") and "block 2" in follower.problem
    assert tick(None)  # cannot tell: no evidence, no lag
    assert tick(lag) and not tick(lag) and tick(RuntimeError("probe bug"))
    assert tick(lag) and not tick(lag) and tick("")
    ticks = len(asked)
    now[0] = 20.0  # no block for 5 s: the stall verdict counts too, from the same look
    assert tick("")
    assert asked[ticks:] == [2]


def test_files_replaced_under_the_reader_are_reported_whatever_blocks_come(
        net: Net, genesis: Genesis) -> None:
    """A lock file made anew (or a data file swapped) under the endorser: the committer no
    longer sees its readers and may reuse pages it reads. Checked every watch tick, also
    while blocks come, and never cleared by one."""
    reader = Ledger(net.ledger.store, genesis, accept_proof)
    replaced = {"why": ""}
    follower = StoreFollower(reader, broken=lambda: replaced["why"])
    follower.watch_once()
    assert follower.healthy
    replaced["why"] = "the committer's ledger was replaced under this endorser; restart it"
    commit(net, net.order("meter-1", SELL, ASK, 1000))
    follower.watch_once()  # a block just came: still checked
    assert not follower.healthy and "replaced" in follower.problem
    commit(net, net.order("meter-2", BUY, ASK, 500))
    assert follower.step() is True and not follower.healthy


class ProbeRig(NamedTuple):
    signed: Net  # the chain (signed blocks, checked by the production verifier)
    reader: Ledger  # the endorser's read of it
    honest: DeliverServer  # orderer-1
    hostile: DeliverServer  # orderer-2, asked first
    probe: OrdererProbe


@contextlib.contextmanager
def probe_of_two_orderers(genesis: Genesis, consortium_dir: Path,
                          **probe: Any) -> Iterator[ProbeRig]:
    """A reader of a signed chain, an honest and a hostile orderer that both hold it, and
    an OrdererProbe over them."""
    signed = new_net(genesis, consortium_dir, signed=True)
    reader = Ledger(signed.ledger.store, genesis, block_verifier(genesis))
    honest, hostile = DeliverServer(consortium_dir), DeliverServer(consortium_dir, "orderer-2")
    try:
        for block in signed.blocks:
            honest.append(block)
            hostile.append(block)
        made = OrdererProbe(reader, [("orderer-2", hostile.address),
                                     ("orderer-1", honest.address)],
                            TlsFiles.for_node(consortium_dir, "endorser-1"),
                            block_verifier(genesis), **probe)
        yield ProbeRig(signed, reader, honest, hostile, made)
        made.close()
    finally:
        honest.stop()
        hostile.stop()


def made_up_next_block(reader: Ledger, timestamp: float | None = None) -> block_pb2.Block:
    """The block after the reader's tip as a hostile orderer could make it: it chains on and
    carries no certificate."""
    made_up = ChainBuilder()
    made_up.number, made_up.previous = reader.height, reader.chain.last_block_hash
    return made_up.block([], timestamp=timestamp)


def test_the_orderer_probe_names_an_orderer_only_for_a_valid_final_block(
        genesis: Genesis, consortium_dir: Path) -> None:
    """What says the committer's ledger is stale: an orderer that delivers block `height`
    with a valid proof. A block a hostile orderer made up (no quorum) says nothing."""
    with probe_of_two_orderers(genesis, consortium_dir) as (signed, reader, honest, hostile,
                                                             probe):
        assert probe.verdicts(reader.height) == ("", "")  # nobody has the next block: idle
        hostile.append(made_up_next_block(reader))
        assert probe.verdicts(reader.height) == ("", "")
        honest.append(block_of(signed, signed.order("meter-1", SELL, ASK, 1000)))
        stall = probe.verdicts(reader.height).stall
        assert stall is not None and "orderer-1 holds block" in stall
        hostile.stop()
        honest.blocks.pop()  # one cannot be asked, the other has nothing: cannot tell
        assert probe.verdicts(reader.height) == (None, None)


def test_the_orderer_probe_says_a_ledger_lags_only_for_an_old_valid_final_block(
        genesis: Genesis, consortium_dir: Path) -> None:
    """Lag is an orderer delivering the block after the ledger's tip, final (its proof
    verified against the ledger's own block before it), stamped more than `max_lag` seconds
    before this node's clock: a hostile orderer's made-up block says nothing, and a recent
    one is the usual moment before the committer writes it."""
    now = [0.0]
    with probe_of_two_orderers(genesis, consortium_dir, max_lag=30.0, wall_clock=lambda: now[0]
                               ) as (signed, reader, honest, hostile, probe):
        assert probe.verdicts(reader.height).lag == ""  # nobody has the next block
        hostile.append(made_up_next_block(reader, timestamp=1_000.0))
        now[0] = 1_000_000.0
        assert probe.verdicts(reader.height).lag == ""
        final = block_of(signed, signed.order("meter-1", SELL, ASK, 1000))
        honest.append(final)
        stamped = block_pb2.BlockHeader.FromString(final.header).timestamp.seconds
        now[0] = stamped + 29.0
        assert probe.verdicts(reader.height).lag == ""  # final 29 s ago: not yet a lag
        now[0] = stamped + 31.0
        why = probe.verdicts(reader.height).lag
        assert why is not None and f"lacks block {reader.height}" in why and \
            "orderer-1" in why and "31 s ago" in why
        hostile.stop()
        honest.blocks.pop()
        assert probe.verdicts(reader.height).lag is None  # one cannot be asked: cannot tell
