"""min_block_interval: the primary waits that long after a height was decided before it
proposes the next block, unless the block is full. A primary's timing, so the replicas'
verdicts and the blocks' contents are unchanged."""

from __future__ import annotations

import dataclasses

from consensus_harness import Cluster

from gridledger_core.consensus.protocol import ReplicaConfig

INTERVAL = 0.3


class SpacedCluster(Cluster):
    def config(self, oid: str) -> ReplicaConfig:
        return dataclasses.replace(super().config(oid), min_block_interval=INTERVAL)


def _heights(cluster: Cluster) -> set[int]:
    return {node.replica.height for node in cluster.nodes.values()}


def test_the_next_block_waits_for_the_interval_after_the_last_one() -> None:
    cluster = SpacedCluster()
    cluster.submit("o1", [b"ok:first"])
    cluster.advance(0.1)  # the first height has no previous decision to wait after
    assert _heights(cluster) == {1}
    decided = cluster.now
    cluster.submit("o2", [b"ok:second"])
    cluster.advance(INTERVAL - 0.15)  # max_batch_wait (0.05) long passed: still waits
    assert _heights(cluster) == {1}
    cluster.advance(0.2)
    assert _heights(cluster) == {2}
    assert cluster.now - decided >= INTERVAL
    assert all(list(node.blocks[1].transactions) == [b"ok:second"]
               for node in cluster.nodes.values())


def test_a_full_block_does_not_wait() -> None:
    cluster = SpacedCluster()
    cluster.submit("o1", [b"ok:first"])
    cluster.advance(0.1)
    full = [f"ok:{i}".encode() for i in range(10)]  # max_batch_txs of the harness
    cluster.submit("o3", full)
    cluster.advance(0.01)
    assert _heights(cluster) == {2}
    assert all(len(node.blocks[1].transactions) == 10 for node in cluster.nodes.values())


def test_without_the_interval_blocks_follow_each_other_at_once() -> None:
    cluster = Cluster()  # min_block_interval 0: the behaviour before
    cluster.submit("o1", [b"ok:first"])
    cluster.advance(0.1)
    cluster.submit("o2", [b"ok:second"])
    cluster.advance(0.1)
    assert _heights(cluster) == {2}
