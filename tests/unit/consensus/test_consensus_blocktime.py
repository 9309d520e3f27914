"""Block time that no single orderer moves (issue 12).

A fresh pre-block must carry the proposal round's time: auxiliaries refuse one stamped
before their clock minus ``max_clock_skew``. A pre-block of an earlier round keeps its stamp
only together with the prepare certificate that justifies it.
"""

from __future__ import annotations

from consensus_harness import GENESIS_SEED, Cluster, sends

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import lottery
from gridledger_core.consensus.protocol import Replica
from gridledger_core.consensus.signing import Phase, block_hash

PREPARE = consensus_pb2.VOTE_PHASE_PREPARE
HOUR = 3600.0


def proposal(
    block: block_pb2.Block, round_: int, justify: consensus_pb2.VoteCertificate | None = None
) -> consensus_pb2.ConsensusMessage:
    p = consensus_pb2.Proposal(height=0, round=round_, block=block)
    if justify is not None:
        p.justify.CopyFrom(justify)
    return consensus_pb2.ConsensusMessage(proposal=p)


def prepares(actions) -> list[consensus_pb2.Vote]:
    return [a.message.vote for a in sends(actions, "vote") if a.message.vote.phase == PREPARE]


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def test_fresh_proposal_backdated_after_an_idle_hour_gets_no_vote() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    target = next(o for o in cluster.ids if o != p0)
    replica = cluster.nodes[target].replica
    skew = replica.config.max_clock_skew
    backdated = cluster.pre_block(p0, [b"ok:old"], timestamp_ns=ns(HOUR - 10 * skew))
    assert prepares(replica.on_message(p0, proposal(backdated, 0), HOUR)) == []
    current = cluster.pre_block(p0, [b"ok:old"], timestamp_ns=ns(HOUR - skew / 2))
    assert prepares(replica.on_message(p0, proposal(current, 0), HOUR))


def test_proposal_ahead_of_the_clock_is_still_refused() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    target = next(o for o in cluster.ids if o != p0)
    replica = cluster.nodes[target].replica
    ahead = cluster.pre_block(
        p0, [b"ok:x"], timestamp_ns=ns(HOUR + 10 * replica.config.max_clock_skew)
    )
    assert prepares(replica.on_message(p0, proposal(ahead, 0), HOUR)) == []


def _in_round_one(cluster: Cluster, me: str) -> Replica:
    replica = cluster.nodes[me].replica
    for other in cluster.ids:
        if other != me:
            replica.on_message(other, cluster.round_change(other, 0, 1), HOUR)
    assert replica.round == 1
    return replica


def test_reproposal_of_an_earlier_rounds_block_needs_its_certificate() -> None:
    cluster = Cluster()
    p0, p1 = cluster.primary(0), cluster.primary(1)
    me = next(o for o in cluster.ids if o not in (p0, p1))
    replica = _in_round_one(cluster, me)
    # Round 0's pre-block, an hour old: without its certificate p1 could pick any earlier
    # round's pre-block (its seed, its stamp) at will.
    old = cluster.pre_block(p0, [b"ok:B"], timestamp_ns=ns(1.0))
    assert prepares(replica.on_message(p1, proposal(old, 1), HOUR)) == []
    # A certificate for another block does not justify it either.
    other = cluster.pre_block(p0, [b"ok:other"], timestamp_ns=ns(1.0))
    wrong = cluster.certificate(Phase.PREPARE, 0, other, cluster.ids[:3])
    assert prepares(replica.on_message(p1, proposal(old, 1, wrong), HOUR)) == []


def test_justified_reproposal_keeps_its_original_stamp() -> None:
    cluster = Cluster()
    p0, p1 = cluster.primary(0), cluster.primary(1)
    me = next(o for o in cluster.ids if o not in (p0, p1))
    replica = _in_round_one(cluster, me)
    old = cluster.pre_block(p0, [b"ok:B"], timestamp_ns=ns(1.0))
    cert = cluster.certificate(Phase.PREPARE, 0, old, cluster.ids[:3])
    assert prepares(replica.on_message(p1, proposal(old, 1, cert), HOUR))


def test_next_block_may_not_predate_the_block_just_committed_in_the_same_input() -> None:
    """A proposal for h+1 held while this replica was at h is validated right after block h
    commits, before the adapter has stored it: the previous stamp must come from block h
    itself, not from a store lookup that still misses it."""
    cluster = Cluster()
    cluster.advance(100.0)
    p0 = cluster.primary(0)
    alpha = lottery.alpha(GENESIS_SEED, 0)
    seed = cluster.crypto.vrf_verify(
        cluster.crypto.public_keys[p0], cluster.crypto.vrf_prover(p0)(alpha), alpha
    )
    assert seed is not None
    p_next = lottery.primary(cluster.ids, seed, 1, 0)
    me = next(o for o in cluster.ids if o not in (p0, p_next))
    decided: list[consensus_pb2.ConsensusMessage] = []

    def drop(src: str, dst: str, msg: consensus_pb2.ConsensusMessage) -> bool:
        if dst == me and msg.WhichOneof("body") in ("decided", "sync_response"):
            decided.append(msg)
            return True
        return False

    cluster.drop = drop
    cluster.submit("o1", [b"ok:first"])
    cluster.advance(0.2)
    final = cluster.nodes[p0].blocks[0]
    stamp = block_pb2.BlockHeader.FromString(final.header).timestamp.ToNanoseconds()
    replica = cluster.nodes[me].replica
    assert replica.height == 0 and decided
    assert cluster.nodes[p0].seeds[0] == seed
    earlier = cluster.pre_block(
        p_next,
        [b"ok:second"],
        height=1,
        previous_hash=block_hash(final.header),
        previous_seed=seed,
        timestamp_ns=stamp - 1_000_000,  # within the skew of now, but before block 0
    )
    msg = consensus_pb2.ConsensusMessage(
        proposal=consensus_pb2.Proposal(height=1, round=0, block=earlier)
    )
    replica.on_message(p_next, msg, cluster.now)  # held for height 1
    out = replica.on_message(p0, next(m for m in decided if m.HasField("decided")), cluster.now)
    assert replica.height == 1
    assert prepares(out) == []
