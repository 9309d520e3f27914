"""Specific transitions of the replica state machine, with real Ed25519 and ECVRF."""

from __future__ import annotations

import pytest
from consensus_harness import Cluster, sends

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import lottery
from gridledger_core.consensus.actions import Persist, Send
from gridledger_core.consensus.protocol import (
    _RECENT_FINAL,
    BLOCKS_KEY,
    STATE_KEY,
    ChainTip,
    Replica,
)
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, Phase, block_hash
from gridledger_core.consensus.simulation import tx_id_of

PREPARE = consensus_pb2.VOTE_PHASE_PREPARE
COMMIT = consensus_pb2.VOTE_PHASE_COMMIT


def proposal(
    block: block_pb2.Block, round_: int = 0, justify=None
) -> consensus_pb2.ConsensusMessage:
    number = block_pb2.BlockHeader.FromString(block.header).number
    p = consensus_pb2.Proposal(height=number, round=round_, block=block)
    if justify is not None:
        p.justify.CopyFrom(justify)
    return consensus_pb2.ConsensusMessage(proposal=p)


def prepared(cert: consensus_pb2.VoteCertificate) -> consensus_pb2.ConsensusMessage:
    return consensus_pb2.ConsensusMessage(prepared=cert)


def votes(actions, phase: int) -> list[consensus_pb2.Vote]:
    return [a.message.vote for a in sends(actions, "vote") if a.message.vote.phase == phase]


def bystander(cluster: Cluster, *exclude: str) -> str:
    return next(o for o in cluster.ids if o not in exclude)


def test_happy_path_every_replica_delivers_the_same_certified_block() -> None:
    cluster = Cluster()
    cluster.submit("o2", [b"ok:a", b"ok:b", b"bad:c"])
    cluster.advance(0.2)
    hashes = {block_hash(node.blocks[0].header) for node in cluster.nodes.values()}
    assert len(hashes) == 1
    block = cluster.nodes["o0"].blocks[0]
    header = block_pb2.BlockHeader.FromString(block.header)
    assert header.proposer == lottery.primary(cluster.ids, cluster.tip([], []).previous_seed, 0, 0)
    assert list(block.transactions) == [b"ok:a", b"ok:b"]  # the unendorsed one is dropped
    assert all(node.replica.height == 1 for node in cluster.nodes.values())
    assert all(node.replica.pending_transactions == 0 for node in cluster.nodes.values())
    assert all(node.replica.knows_tx(tx_id_of(b"ok:a")) for node in cluster.nodes.values())
    assert not any(node.replica.knows_tx(tx_id_of(b"bad:c")) for node in cluster.nodes.values())


def test_every_signature_is_persisted_before_it_is_sent() -> None:
    cluster = Cluster()
    cluster.submit("o1", [b"ok:1"])
    cluster.advance(0.2)
    persisted: dict[str, set[bytes]] = {oid: set() for oid in cluster.ids}
    checked = 0
    for oid, actions in cluster.log:
        for action in actions:
            if isinstance(action, Persist) and action.key == STATE_KEY:
                state = consensus_pb2.ReplicaState.FromString(action.value)
                persisted[oid].update({state.last_prepare.signature, state.last_commit.signature})
            elif isinstance(action, Send) and action.message.WhichOneof("body") == "vote":
                assert action.message.vote.signature in persisted[oid]
                checked += 1
    assert checked >= 4  # at least the auxiliaries' prepare and commit votes


def test_after_a_failed_write_the_replica_writes_its_blocks_again() -> None:
    """The replica writes its prepared blocks only when they change, and noted them written
    as it asked: a write that failed left them off the disk for good (a restart then held a
    vote for a block it could not hand out). The adapter's `persist_failed` makes the next
    persist write them again."""
    cluster = Cluster()
    primary = cluster.primary()
    cluster.submit(primary, [b"ok:1"])
    cluster.advance(0.1)  # the primary proposes (and prepares) its block; nothing delivered
    replica = cluster.nodes[primary].replica

    def blocks_written() -> int:
        out: list = []
        replica._persist(out)
        return sum(isinstance(a, Persist) and a.key == BLOCKS_KEY for a in out)

    assert any(isinstance(a, Persist) and a.key == BLOCKS_KEY
               for oid, actions in cluster.log if oid == primary for a in actions)
    assert blocks_written() == 0  # unchanged since
    replica.persist_failed()
    assert blocks_written() == 1
    assert blocks_written() == 0


def test_duplicate_submission_is_recognised() -> None:
    cluster = Cluster()
    first = cluster.nodes["o1"].replica.on_transactions([b"ok:x"], 0.0)
    assert sends(first, "tx_forward")
    assert cluster.nodes["o1"].replica.on_transactions([b"ok:x"], 0.0) == []


def test_proposal_from_a_replica_that_is_not_primary_is_ignored() -> None:
    cluster = Cluster()
    primary = cluster.primary(0)
    impostor = bystander(cluster, primary)
    target = bystander(cluster, primary, impostor)
    replica = cluster.nodes[target].replica
    own = cluster.pre_block(impostor, [b"ok:1"])
    assert replica.on_message(impostor, proposal(own), 0.0) == []
    # A genuine pre-block relayed by someone who is not the round's primary: ignored too.
    genuine = cluster.pre_block(primary, [b"ok:1"])
    assert replica.on_message(impostor, proposal(genuine), 0.0) == []
    assert votes(replica.on_message(primary, proposal(genuine), 0.0), PREPARE)


def test_block_with_a_primary_not_entitled_for_its_round_is_ignored() -> None:
    cluster = Cluster()
    primary = cluster.primary(0)
    target = bystander(cluster, primary)
    block = cluster.pre_block(primary, [b"ok:1"], round_=1)  # claims round 1, sent in round 0
    assert cluster.nodes[target].replica.on_message(primary, proposal(block), 0.0) == []


@pytest.mark.parametrize(
    "txs", [[b"ok:same", b"ok:same"], [b"ok:fine", b"bad:unendorsed"]], ids=["dup", "invalid"]
)
def test_invalid_batches_get_no_vote(txs: list[bytes]) -> None:
    cluster = Cluster()
    primary = cluster.primary(0)
    target = bystander(cluster, primary)
    block = cluster.pre_block(primary, txs)
    assert (
        votes(cluster.nodes[target].replica.on_message(primary, proposal(block), 0.0), PREPARE)
        == []
    )


def test_tx_already_on_chain_is_a_duplicate() -> None:
    cluster = Cluster()
    cluster.submit("o0", [b"ok:once"])
    cluster.advance(0.2)
    node = cluster.nodes["o0"]
    tip = node.replica
    primary = lottery.primary(cluster.ids, tip.previous_seed, 1, 0)
    target = bystander(cluster, primary)
    again = cluster.pre_block(
        primary,
        [b"ok:once"],
        height=1,
        previous_hash=tip.previous_hash,
        previous_seed=tip.previous_seed,
    )
    assert (
        votes(cluster.nodes[target].replica.on_message(primary, proposal(again), 1.0), PREPARE)
        == []
    )


def test_locked_replica_never_commits_or_prepares_another_block() -> None:
    cluster = Cluster()
    p0, p1 = cluster.primary(0), cluster.primary(1)
    me = bystander(cluster, p0, p1)
    replica = cluster.nodes[me].replica
    b = cluster.pre_block(p0, [b"ok:B"])
    b_other = cluster.pre_block(p0, [b"ok:B-prime"])
    assert votes(replica.on_message(p0, proposal(b), 0.0), PREPARE)
    out = replica.on_message(
        p0, prepared(cluster.certificate(Phase.PREPARE, 0, b, cluster.ids[:3])), 0.0
    )
    assert [v.block_hash for v in votes(out, COMMIT)] == [block_hash(b.header)]
    # An equivocating quorum certifies B' in the same round: the lock holds, no commit vote.
    forged = cluster.certificate(Phase.PREPARE, 0, b_other, cluster.ids[:3])
    assert votes(replica.on_message(p0, prepared(forged), 0.0), COMMIT) == []
    # Round 1: the new primary's fresh B' (even with the round-0 certificate) gets no vote.
    for other in cluster.ids:
        if other != me:
            replica.on_message(other, cluster.round_change(other, 0, 1), 1.0)
    assert replica.round == 1
    fresh = cluster.pre_block(p1, [b"ok:B-prime"], round_=1)
    assert votes(replica.on_message(p1, proposal(fresh, 1), 1.0), PREPARE) == []
    assert votes(replica.on_message(p1, proposal(b_other, 1, forged), 1.0), PREPARE) == []
    # Re-proposing the locked block is accepted.
    lock = cluster.certificate(Phase.PREPARE, 0, b, cluster.ids[:3])
    assert votes(replica.on_message(p1, proposal(b, 1, lock), 1.0), PREPARE)


def test_restarted_replica_never_signs_a_conflicting_vote() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    me = bystander(cluster, p0)
    b = cluster.pre_block(p0, [b"ok:B"])
    b_other = cluster.pre_block(p0, [b"ok:B"], timestamp_ns=2)  # equivocating primary
    first = votes(
        cluster.apply(me, cluster.nodes[me].replica.on_message(p0, proposal(b), 0.0)), PREPARE
    )
    cluster.restart(me)
    replica = cluster.nodes[me].replica
    assert votes(replica.on_message(p0, proposal(b_other), 0.1), PREPARE) == []
    again = votes(replica.on_message(p0, proposal(b), 0.1), PREPARE)
    assert [v.signature for v in again] == [first[0].signature]  # the same vote, re-sent
    cert = cluster.certificate(Phase.PREPARE, 0, b, cluster.ids[:3])
    commit = votes(cluster.apply(me, replica.on_message(p0, prepared(cert), 0.2)), COMMIT)
    cluster.restart(me)
    replica = cluster.nodes[me].replica
    forged = cluster.certificate(Phase.PREPARE, 0, b_other, cluster.ids[:3])
    assert votes(replica.on_message(p0, prepared(forged), 0.3), COMMIT) == []
    repeat = votes(replica.on_message(p0, prepared(cert), 0.3), COMMIT)
    assert [v.signature for v in repeat] == [commit[0].signature]


def test_silent_primary_is_replaced_after_a_timeout_with_backoff() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    cluster.down.add(p0)
    live = [o for o in cluster.ids if o != p0]
    cluster.submit(live[0], [b"ok:1"])
    cluster.advance(30.0)
    for oid in live:
        assert len(cluster.nodes[oid].blocks) == 1
    header = block_pb2.BlockHeader.FromString(cluster.nodes[live[0]].blocks[0].header)
    assert header.round >= 1 and header.proposer != p0
    delays = [a.delay for _, acts in cluster.log for a in acts if getattr(a, "name", "") == "round"]
    assert max(delays) > min(delays)  # later rounds wait longer


def test_new_primary_reproposes_the_locked_block() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    # Commit votes of round 0 are lost: everyone locks on B but nobody finalises it.
    cluster.drop = lambda src, dst, msg: (
        msg.WhichOneof("body") == "vote" and msg.vote.phase == COMMIT and msg.vote.round == 0
    )
    cluster.submit("o1", [b"ok:locked"])
    cluster.advance(0.2)
    locked = cluster.nodes["o1"].replica._lock
    assert locked is not None and all(not n.blocks for n in cluster.nodes.values())
    cluster.advance(30.0)
    blocks = [node.blocks[0] for node in cluster.nodes.values()]
    assert {block_hash(b.header) for b in blocks} == {locked.block_hash}
    header = block_pb2.BlockHeader.FromString(blocks[0].header)
    assert header.round == 0 and header.proposer == p0
    assert blocks[0].metadata.commit_certificate.round >= 1


def test_lagging_replica_catches_up_and_rejects_forged_blocks() -> None:
    cluster = Cluster()
    late = "o3"
    cluster.down.add(late)
    for i in range(3):
        cluster.submit("o0", [b"ok:h%d" % i])
        cluster.advance(2.0)
    assert len(cluster.nodes["o0"].blocks) == 3
    good = cluster.nodes["o0"].blocks
    # A forged copy of block 0 (certificate cut to one signature) is refused.
    forged = block_pb2.Block()
    forged.CopyFrom(good[0])
    del forged.metadata.commit_certificate.signatures[1:]
    response = consensus_pb2.ConsensusMessage(
        sync_response=consensus_pb2.SyncResponse(blocks=[forged])
    )
    assert cluster.nodes[late].replica.on_message("o0", response, cluster.now) == []
    cluster.down.discard(late)
    cluster.restart(late)
    cluster.deliver_all()
    assert [block_hash(b.header) for b in cluster.nodes[late].blocks] == [
        block_hash(b.header) for b in good
    ]


def test_record_ahead_of_the_chain_is_refused() -> None:
    cluster = Cluster()
    state = consensus_pb2.ReplicaState(height=5)
    with pytest.raises(ValueError):
        Replica(
            cluster.config("o0"),
            cluster.nodes["o0"].replica.deps,
            ChainTip(0, GENESIS_PREVIOUS_HASH, cluster.tip([], []).previous_seed),
            {STATE_KEY: state.SerializeToString()},
        )


def test_final_tx_ids_are_held_in_memory_only_for_recent_heights() -> None:
    """An orderer that kept every final tx id in memory (and read them all at start) grew
    without bound with the chain; older ids are now answered by the store (is_final)."""
    cluster = Cluster()
    heights = _RECENT_FINAL + 6
    for i in range(heights):
        cluster.submit(cluster.ids[i % 4], [f"ok:{i}".encode()])
        cluster.advance(0.2)
    assert all(node.replica.height == heights for node in cluster.nodes.values())
    first = tx_id_of(b"ok:0")
    for node in cluster.nodes.values():
        assert node.replica.final_ids_in_memory == _RECENT_FINAL  # one per block kept
        assert node.replica.knows_tx(first)  # final long ago: from the stored blocks
    # Submitted or forwarded again, it is not pooled; proposed again, it gets no vote.
    primary = cluster.primary(0)
    target = bystander(cluster, primary)
    replica = cluster.nodes[target].replica
    assert replica.on_transactions([b"ok:0"], cluster.now) == []
    forward = consensus_pb2.ConsensusMessage(tx_forward=consensus_pb2.TxForward(
        transactions=[b"ok:0"]))
    replica.on_message(primary, forward, cluster.now)
    assert replica.pending_transactions == 0
    again = cluster.pre_block(primary, [b"ok:0"], height=heights,
                              previous_hash=replica.previous_hash,
                              previous_seed=replica.previous_seed,
                              timestamp_ns=int(cluster.now * 1e9))
    assert votes(replica.on_message(primary, proposal(again), cluster.now), PREPARE) == []
    fresh = cluster.pre_block(primary, [b"ok:fresh"], height=heights,
                              previous_hash=replica.previous_hash,
                              previous_seed=replica.previous_seed,
                              timestamp_ns=int(cluster.now * 1e9))
    other = cluster.nodes[bystander(cluster, primary, target)].replica
    assert votes(other.on_message(primary, proposal(fresh), cluster.now), PREPARE)  # control
    # A restarted replica reads no ids at start and still knows every final one.
    cluster.restart(target)
    restarted = cluster.nodes[target].replica
    assert restarted.final_ids_in_memory == 0
    assert restarted.knows_tx(first) and restarted.knows_tx(tx_id_of(f"ok:{heights - 1}".encode()))
