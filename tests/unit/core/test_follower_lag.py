"""A committer following one orderer, tried as a hostile member's orderer would treat it: it
withholds the next block, or hands blocks out one at a time (never quiet for the idle
timeout). Before, the follower left an orderer only when its stream broke, sent a refused
block or stayed quiet for the idle timeout (30 s), so a drip-fed node fell as far behind the
cluster as the orderer liked. Now the follower's lag watch asks the other orderers for the
block it waits for and follows one that holds it final, decided more than the lag bound ago;
an honest orderer is not left, and a block another orderer made up, or decided just now,
lures nobody.

Real final blocks (`SignedChain`: the consortium's orderer keys, the production verifier) on
in-process orderers (`DeliverServer`) over mTLS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_helpers import endorsed, identity, past_interval, reading
from prometheus_client import REGISTRY
from signed_blocks import DeliverServer, SignedChain, wait_for

from gridledger.common.v1 import block_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.follower import BlockFollower
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.storage import MemoryStore

OLD = 60.0  # seconds: blocks the cluster decided this long ago (the follower is behind)
NO_IDLE_FAILOVER = 3600.0  # the idle timeout out of the way: only the lag watch can move it


def lagging_failovers(orderer: str) -> float:
    return REGISTRY.get_sample_value("gridledger_ledger_lagging_orderer_failovers_total",
                                     {"orderer": orderer}) or 0.0


def blocks(genesis: Genesis, consortium_dir: Path, count: int,
           stamped: float | None = None) -> list[block_pb2.Block]:
    """`count` chained final blocks of one reading each, stamped at `stamped` (now if None)."""
    chain = SignedChain(genesis, consortium_dir)
    meter, endorser = identity(consortium_dir, "meter-1"), identity(consortium_dir, "endorser-1")
    return [chain.block([endorsed(meter.new_transaction(
        "meter_reading", reading("meter-1", past_interval(i + 1))), endorser)], timestamp=stamped)
        for i in range(count)]


@pytest.fixture()
def orderers(consortium_dir: Path) -> Iterator[dict[str, DeliverServer]]:
    made: dict[str, DeliverServer] = {}
    yield made
    for server in made.values():
        server.stop()


def serve(made: dict[str, DeliverServer], consortium_dir: Path, name: str,
          chain: list[block_pb2.Block], pace: float = 0.0) -> DeliverServer:
    server = made[name] = DeliverServer(consortium_dir, name, pace=pace)
    for block in chain:
        server.append(block)
    return server


def follower(consortium_dir: Path, made: dict[str, DeliverServer],
             ledger: Ledger) -> BlockFollower:
    return BlockFollower(ledger, [(name, server.address) for name, server in made.items()],
                         TlsFiles.for_node(consortium_dir, "committer-1"),
                         idle_timeout=NO_IDLE_FAILOVER)


@pytest.mark.parametrize(("count", "first_serves", "pace"), [
    pytest.param(6, 1, 0.0, id="withholding the next block"),
    # One block every 0.5 s (20 s for all) is never quiet for the idle timeout, nor for the
    # watch's wait: the blocks it hands out are already old, so the watch asks at every wait.
    pytest.param(40, 40, 0.5, id="handing out blocks slowly")])
def test_an_orderer_keeping_the_follower_behind_is_left_for_one_that_holds_the_block(
        genesis: Genesis, consortium_dir: Path, orderers: dict[str, DeliverServer],
        count: int, first_serves: int, pace: float) -> None:
    chain = blocks(genesis, consortium_dir, count, stamped=time.time() - OLD)
    serve(orderers, consortium_dir, "orderer-1", chain[:first_serves], pace=pace)
    serve(orderers, consortium_dir, "orderer-2", chain)
    ledger = Ledger(MemoryStore(), genesis, block_verifier(genesis))
    before = lagging_failovers("orderer-1")
    f = follower(consortium_dir, orderers, ledger)
    f.start()
    try:
        wait_for(lambda: lagging_failovers("orderer-1") > before,
                 "the follower to leave orderer-1", timeout=15)
        wait_for(lambda: ledger.height == count, "every block, from orderer-2", timeout=30)
    finally:
        f.stop()
    assert lagging_failovers("orderer-1") == before + 1
    assert f.healthy


def test_an_honest_orderer_is_not_left_while_blocks_come_and_while_none_do(
        genesis: Genesis, consortium_dir: Path, orderers: dict[str, DeliverServer]) -> None:
    chain = blocks(genesis, consortium_dir, 8)  # stamped as they are made
    first = serve(orderers, consortium_dir, "orderer-1", chain[:1])
    second = serve(orderers, consortium_dir, "orderer-2", chain[:1])
    ledger = Ledger(MemoryStore(), genesis, block_verifier(genesis))
    before = (lagging_failovers("orderer-1"), lagging_failovers("orderer-2"))
    f = follower(consortium_dir, orderers, ledger)
    f.start()
    try:
        for block in chain[1:]:  # the cluster decides a block every 0.4 s: both hold it
            time.sleep(0.4)
            second.append(block)
            first.append(block)
        wait_for(lambda: ledger.height == 8, "every block")
        time.sleep(3.0)  # an idle chain: the watch asks, nobody holds block 8
    finally:
        f.stop()
    assert (lagging_failovers("orderer-1"), lagging_failovers("orderer-2")) == before


@pytest.mark.parametrize("offered", [
    # Its proposer signature forged, stamped long ago: the watch's proof check refuses it.
    pytest.param("made up", id="a block another orderer made up"),
    # Real, decided just now: no sign of withholding (orderer-1 was a moment slower, or its
    # stream was): a block decided less than the lag bound ago lures nobody either.
    pytest.param("fresh", id="a block another orderer holds, decided just now")])
def test_a_block_another_orderer_offers_lures_nobody_unless_it_is_old_and_real(
        genesis: Genesis, consortium_dir: Path, orderers: dict[str, DeliverServer],
        offered: str) -> None:
    """orderer-2 offers a block 1 while orderer-1 holds block 1 back for 3 s: the follower
    stays with orderer-1 and commits the real block 1 from it."""
    chain = blocks(genesis, consortium_dir, 2,
                   stamped=time.time() - OLD if offered == "made up" else None)
    other = block_pb2.Block()
    other.CopyFrom(chain[1])
    if offered == "made up":
        other.metadata.proposer_signature = bytes(64)
    first = serve(orderers, consortium_dir, "orderer-1", chain[:1])
    serve(orderers, consortium_dir, "orderer-2", [chain[0], other])
    ledger = Ledger(MemoryStore(), genesis, block_verifier(genesis))
    before = lagging_failovers("orderer-1")
    f = follower(consortium_dir, orderers, ledger)
    f.start()
    try:
        wait_for(lambda: ledger.height == 1, "block 0")
        time.sleep(3.0)  # the watch asks orderer-2 at least once meanwhile
        first.append(chain[1])
        wait_for(lambda: ledger.height == 2, "the real block 1, from orderer-1")
    finally:
        f.stop()
    assert lagging_failovers("orderer-1") == before
    assert ledger.get_block(1)[0].metadata.proposer_signature == \
        chain[1].metadata.proposer_signature  # type: ignore[index]
