"""Process-level faults under steady load, on a real devnet started by the launcher:
the orderer cluster survives a killed primary, a frozen orderer and a restart; a committer
survives SIGKILL mid-commit and fails over when its orderer dies."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator

import pytest
from devnet_support import committer_stub, current_primary, height, metric, same_chain, wait_for

from gridctl import devnet
from gridctl.loadgen import LoadGenerator, prepare_readings
from gridledger.committer.v1 import committer_pb2

pytestmark = pytest.mark.integration

# Pre-signed past readings from the load generator: the genesis accepts them (consortium.LOAD).
GENESIS_PROFILE = "load"
RATE = 30.0  # readings per second: steady, and light enough for a 2-core machine


@pytest.fixture(scope="module")
def loaded(network: devnet.Network) -> Iterator[devnet.Network]:
    envelopes = prepare_readings(network.consortium_dir, ["meter-1", "meter-2", "meter-3"],
                                 int(RATE * 600))
    generator = LoadGenerator(network.by_role("endorser")[0].grpc, network.tls(), envelopes,
                              RATE).start()
    try:
        yield network
    finally:
        generator.stop()


def grows(net: devnet.Network, by: int, timeout: float, committer: str = "committer-1") -> None:
    stub = committer_stub(net, committer)
    start = height(stub)
    wait_for(lambda: height(stub) >= start + by, timeout, f"{committer} to grow by {by} blocks")


def test_killed_primary_is_replaced(loaded: devnet.Network) -> None:
    grows(loaded, 3, 60)
    primary = current_primary(loaded)
    os.kill(primary.pid, signal.SIGKILL)
    grows(loaded, 5, 60)
    same_chain(loaded)
    devnet.restart_node(loaded, primary)
    target = height(committer_stub(loaded, "committer-1"))
    wait_for(lambda: (metric(primary, "gridledger_orderer_height") or 0) >= target, 60,
             f"restarted {primary.name} to catch up to {target}")


def test_frozen_orderer_then_thawed(loaded: devnet.Network) -> None:
    frozen = current_primary(loaded)
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        grows(loaded, 5, 60)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    target = height(committer_stub(loaded, "committer-1"))
    wait_for(lambda: (metric(frozen, "gridledger_orderer_height") or 0) >= target, 60,
             f"{frozen.name} to catch up after SIGCONT")
    grows(loaded, 3, 60)
    same_chain(loaded)


def test_restarted_orderer_takes_part_again(loaded: devnet.Network) -> None:
    victim = loaded.node("orderer-3")
    devnet.stop_node(victim, sig=signal.SIGKILL)
    grows(loaded, 3, 60)
    devnet.restart_node(loaded, victim)
    stub = committer_stub(loaded, "committer-1")
    start = height(stub)

    def cosigned_by_victim() -> bool:
        for number in range(start, height(stub)):
            block = stub.GetBlock(committer_pb2.GetBlockRequest(number=number), timeout=5).block
            if any(s.orderer == victim.name
                   for s in block.metadata.commit_certificate.signatures):
                return True
        return False

    wait_for(cosigned_by_victim, 90, f"{victim.name} to co-sign a block after its restart")


def test_committer_survives_sigkill_during_commits(loaded: devnet.Network) -> None:
    victim = loaded.node("committer-2")
    rng = random.Random(5)
    for _ in range(5):
        time.sleep(rng.uniform(0.2, 1.5))
        devnet.stop_node(victim, sig=signal.SIGKILL)
        devnet.restart_node(loaded, victim)
    grows(loaded, 3, 60, committer="committer-2")
    c1, c2 = committer_stub(loaded, "committer-1"), committer_stub(loaded, "committer-2")
    wait_for(lambda: height(c2) >= height(c1) - 1, 60, "committer-2 to catch up")
    same_chain(loaded)
    info = c2.GetChainInfo(committer_pb2.GetChainInfoRequest())
    last = c2.GetBlock(committer_pb2.GetBlockRequest(number=info.height - 1))
    assert last.block.header  # the tip is readable: nothing half-written


def test_committer_fails_over_when_its_orderer_dies(loaded: devnet.Network) -> None:
    # Committers pull from the first orderer of their list while it works: orderer-1.
    first = loaded.node("orderer-1")
    devnet.stop_node(first, sig=signal.SIGKILL)
    try:
        grows(loaded, 5, 90, committer="committer-1")
        grows(loaded, 2, 60, committer="committer-2")
    finally:
        devnet.restart_node(loaded, first)
    same_chain(loaded)
