"""A lock without content must not stall the cluster (issue 12).

Reported schedule, n = 4: the byzantine primary of round 0 sends pre-block B to the honest
replicas, collects their PREPAREs and withholds the prepare certificate; round 1's honest
proposal C gets no certificate (one PREPARE is delayed), so every honest replica's last
prepare is C; the honest replicas restart one by one; then the byzantine orderer sends a
ROUND_CHANGE carrying B's prepare certificate, and every honest replica locks on B. Before
the fix no honest replica still held B's content and none could propose: height 0 after 600
simulated seconds.
"""

from __future__ import annotations

from consensus_harness import Cluster, sends

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus.signing import Phase, block_hash

PREPARE = consensus_pb2.VOTE_PHASE_PREPARE


def _is_prepare(msg: consensus_pb2.ConsensusMessage, round_: int) -> bool:
    return (
        msg.WhichOneof("body") == "vote" and msg.vote.phase == PREPARE and msg.vote.round == round_
    )


def _propose(cluster: Cluster, sender: str, to: list[str], block: block_pb2.Block) -> None:
    """The byzantine primary hands its pre-block to some replicas, outside the network."""
    msg = consensus_pb2.ConsensusMessage(
        proposal=consensus_pb2.Proposal(height=0, round=0, block=block)
    )
    for oid in to:
        cluster.apply(oid, cluster.nodes[oid].replica.on_message(sender, msg, cluster.now))
    cluster.deliver_all()


def _send(cluster: Cluster, sender: str, msg: consensus_pb2.ConsensusMessage) -> None:
    for oid in cluster.ids:
        if oid != sender:
            cluster.apply(oid, cluster.nodes[oid].replica.on_message(sender, msg, cluster.now))
    cluster.deliver_all()


def test_lock_on_a_withheld_block_after_restarts_still_commits() -> None:
    cluster = Cluster()
    byz, p1 = cluster.primary(0), cluster.primary(1)
    honest = [o for o in cluster.ids if o != byz]
    delayed = next(o for o in honest if o != p1)  # its round-1 PREPARE never arrives in time
    captured: list[consensus_pb2.Vote] = []

    def drop(src: str, dst: str, msg: consensus_pb2.ConsensusMessage) -> bool:
        if dst == byz and _is_prepare(msg, 0):
            captured.append(msg.vote)
        if _is_prepare(msg, 1) and src == delayed:
            return True
        return byz in (src, dst)  # the byzantine orderer speaks only when the test says

    cluster.drop = drop
    block_b = cluster.pre_block(byz, [b"ok:B"])
    _propose(cluster, byz, honest, block_b)
    assert sorted({v.block_hash for v in captured}) == [block_hash(block_b.header)]
    assert len(captured) == 3  # the three honest PREPAREs: a certificate, withheld

    # Round 0 times out; round 1's primary proposes C, which gets only two PREPAREs.
    cluster.advance(1.5)
    for oid in honest:
        replica = cluster.nodes[oid].replica
        assert replica.round == 1 and replica.height == 0
        assert replica._last_prepare is not None and replica._last_prepare.round == 1
    assert all(not node.blocks for node in cluster.nodes.values())

    # The honest replicas restart one by one, from what they persisted.
    for oid in honest:
        cluster.restart(oid)
        cluster.deliver_all()

    # The byzantine orderer reveals B's prepare certificate in a signed round change.
    cert = cluster.certificate(Phase.PREPARE, 0, block_b, honest)
    _send(cluster, byz, cluster.round_change(byz, 0, 2, cert))
    for oid in honest:
        lock = cluster.nodes[oid].replica._lock
        assert lock is not None and lock.block_hash == block_hash(block_b.header)

    cluster.advance(600.0)
    for oid in honest:
        node = cluster.nodes[oid]
        assert node.replica.height >= 1, f"{oid} stalled at round {node.replica.round}"
        assert block_hash(node.blocks[0].header) == block_hash(block_b.header)
        # Within a few rounds of the reveal, not after a long backoff.
        assert node.blocks[0].metadata.commit_certificate.round <= 4


def test_replica_locked_without_the_block_fetches_it_from_the_signers() -> None:
    """Round 1's primary never saw B; it learns B's certificate from a round change and gets
    B from the certificate's signers, then re-proposes it in round 1."""
    cluster = Cluster()
    byz, p1 = cluster.primary(0), cluster.primary(1)
    holders = [o for o in cluster.ids if o not in (byz, p1)]
    cluster.drop = lambda src, dst, msg: byz in (src, dst)
    block_b = cluster.pre_block(byz, [b"ok:B"])
    _propose(cluster, byz, holders, block_b)
    cert = cluster.certificate(Phase.PREPARE, 0, block_b, [byz, *holders])
    replica = cluster.nodes[p1].replica
    out = cluster.apply(p1, replica.on_message(byz, cluster.round_change(byz, 0, 1, cert), 0.1))
    fetches = sends(out, "block_fetch_request")
    assert fetches and {a.to for a in fetches} <= {byz, *holders}  # type: ignore[union-attr]
    assert all(
        a.message.block_fetch_request.block_hash == block_hash(block_b.header) for a in fetches
    )
    cluster.deliver_all()
    assert block_hash(block_b.header) in replica._blocks  # a holder answered
    cluster.advance(10.0)
    for oid in [p1, *holders]:
        final = cluster.nodes[oid].blocks[0]
        assert block_hash(final.header) == block_hash(block_b.header)
        assert final.metadata.commit_certificate.round == 1  # p1 proposed it at once


def test_a_fetched_block_must_hash_to_the_lock() -> None:
    cluster = Cluster()
    byz, p1 = cluster.primary(0), cluster.primary(1)
    holders = [o for o in cluster.ids if o not in (byz, p1)]
    block_b = cluster.pre_block(byz, [b"ok:B"])
    other = cluster.pre_block(byz, [b"ok:other"])
    cert = cluster.certificate(Phase.PREPARE, 0, block_b, [byz, *holders])
    replica = cluster.nodes[p1].replica
    replica.on_message(byz, cluster.round_change(byz, 0, 1, cert), 0.1)
    wrong = consensus_pb2.ConsensusMessage(
        block_fetch_response=consensus_pb2.BlockFetchResponse(height=0, block=other)
    )
    assert replica.on_message(holders[0], wrong, 0.2) == []
    assert block_hash(other.header) not in replica._blocks
