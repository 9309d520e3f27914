"""Signed, bounded consensus messages (issue 13): round changes count only when signed,
duplicates cost no signature check, rounds stay in their fields, per-peer rates, bytes."""

from __future__ import annotations

import dataclasses
from typing import Any

from consensus_harness import Cluster, sends

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus.protocol import MAX_ROUND, Replica, ReplicaConfig
from gridledger_core.consensus.signing import Phase, block_hash

U32_MAX = (1 << 32) - 1


class TunedCluster(Cluster):
    """The harness cluster with some ReplicaConfig fields overridden."""

    def __init__(self, **overrides: Any) -> None:
        self.overrides = overrides
        super().__init__()

    def config(self, oid: str) -> ReplicaConfig:
        return dataclasses.replace(super().config(oid), **self.overrides)


def counting(replica: Replica) -> list[str]:
    """Record every signature check the replica makes, by signer."""
    calls: list[str] = []
    verify = replica.deps.verify_sig

    def verify_sig(orderer: str, message: bytes, signature: bytes) -> bool:
        calls.append(orderer)
        return verify(orderer, message, signature)

    replica.deps = dataclasses.replace(replica.deps, verify_sig=verify_sig)
    return calls


def unsigned(height: int, round_: int) -> consensus_pb2.ConsensusMessage:
    return consensus_pb2.ConsensusMessage(
        round_change=consensus_pb2.RoundChange(height=height, round=round_)
    )


# --- signed round changes ------------------------------------------------------------------


def test_round_change_counts_only_with_its_senders_signature() -> None:
    cluster = Cluster()
    replica = cluster.nodes["o0"].replica
    for other in ("o1", "o2", "o3"):
        replica.on_message(other, unsigned(0, 1), 0.0)
    assert replica.round == 0 and not replica.changing_round
    # Signed, but by another orderer than the sender: a forwarded or forged message.
    for other in ("o1", "o2", "o3"):
        replica.on_message(other, cluster.round_change("o0" if other != "o1" else "o2", 0, 1), 0.0)
    assert replica.round == 0
    for other in ("o1", "o2", "o3"):
        replica.on_message(other, cluster.round_change(other, 0, 1), 0.0)
    assert replica.round == 1


def test_duplicate_round_changes_are_dropped_before_any_signature_check() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    block = cluster.pre_block(p0, [b"ok:B"])
    cert = cluster.certificate(Phase.PREPARE, 0, block, cluster.ids[:3])
    replica = cluster.nodes["o3"].replica
    calls = counting(replica)
    msg = cluster.round_change("o1", 0, 1, cert)
    replica.on_message("o1", msg, 0.0)
    first = len(calls)
    assert first == 1 + 3  # the round change, then the certificate it carries
    for _ in range(20):
        replica.on_message("o1", msg, 0.0)
    assert len(calls) == first
    # The carried certificate is not verified again by a round change of a later round.
    replica.on_message("o1", cluster.round_change("o1", 0, 2, cert), 0.0)
    assert len(calls) == first + 1


def test_round_changes_are_rate_limited_per_peer() -> None:
    cluster = Cluster()
    replica = cluster.nodes["o0"].replica
    calls = counting(replica)
    for r in range(1, 201):
        replica.on_message("o1", cluster.round_change("o1", 0, r), 0.0)
    burst = replica.config.round_change_rate
    assert len(calls) <= burst
    # Rate is per peer: another orderer is not starved by o1's flood.
    replica.on_message("o2", cluster.round_change("o2", 0, 1), 0.0)
    assert calls[-1] == "o2"


def test_extreme_rounds_neither_raise_nor_cost_a_signature_check() -> None:
    cluster = Cluster()
    byz = cluster.primary(0)
    honest = [o for o in cluster.ids if o != byz]
    checks = {oid: counting(cluster.nodes[oid].replica) for oid in honest}
    for round_ in (U32_MAX, MAX_ROUND + 1):
        for oid in honest:
            replica = cluster.nodes[oid].replica
            replica.on_message(byz, cluster.round_change(byz, 0, round_), 0.0)
            vote = consensus_pb2.Vote(height=0, round=round_, phase=2, block_hash=bytes(32))
            replica.on_message(byz, consensus_pb2.ConsensusMessage(vote=vote), 0.0)
    assert all(calls == [] for calls in checks.values())
    # The byzantine orderer stays silent; the others still order.
    cluster.drop = lambda src, dst, msg: byz in (src, dst)
    cluster.submit(honest[0], [b"ok:after"])
    cluster.advance(60.0)
    assert all(len(cluster.nodes[oid].blocks) == 1 for oid in honest)
    assert all(cluster.nodes[oid].replica.round <= 8 for oid in honest)


def test_round_changes_to_the_top_of_uint32_from_f_plus_1_senders_do_not_stop_the_chain() -> None:
    """The reported halt: with one orderer frozen, ROUND_CHANGE(2^32 - 1) from two orderer
    identities (then obtainable by a TLS forgery) made the others compute round + 1 into a
    uint32 and fail for good. Now such rounds are ignored before anything else, even when
    f + 1 senders sign them with real keys, and the chain keeps growing."""
    cluster = Cluster()
    frozen = cluster.primary(0)
    senders = [o for o in cluster.ids if o != frozen][:2]
    receivers = [o for o in cluster.ids if o not in senders]
    for sender in senders:
        for oid in receivers:
            cluster.nodes[oid].replica.on_message(
                sender, cluster.round_change(sender, 0, U32_MAX), 0.0)
    assert all(cluster.nodes[oid].replica.round <= MAX_ROUND for oid in cluster.ids)
    cluster.drop = lambda src, dst, msg: frozen in (src, dst)  # frozen while the others work
    cluster.submit(senders[0], [b"ok:while-frozen"])
    cluster.advance(60.0)
    cluster.drop = lambda src, dst, msg: False  # it resumes
    cluster.submit(senders[0], [b"ok:after-resume"])
    cluster.advance(60.0)
    assert all(len(cluster.nodes[oid].blocks) == 2 for oid in cluster.ids)


# --- catch-up and fetch limits --------------------------------------------------------------


def _chain(cluster: Cluster, blocks: int, tx_bytes: int) -> None:
    for i in range(blocks):
        cluster.submit("o0", [b"ok:%d:" % i + b"x" * tx_bytes])
        cluster.advance(1.0)


def test_sync_requests_are_rate_limited_per_peer() -> None:
    cluster = Cluster()
    _chain(cluster, 1, 10)
    replica = cluster.nodes["o0"].replica
    request = consensus_pb2.ConsensusMessage(sync_request=consensus_pb2.SyncRequest(from_height=0))
    answers = sum(
        len(sends(replica.on_message("o1", request, cluster.now), "sync_response"))
        for _ in range(200)
    )
    assert 1 <= answers <= replica.config.sync_request_rate


def test_sync_response_stops_at_the_byte_cap_but_carries_at_least_one_block() -> None:
    cluster = TunedCluster(max_sync_bytes=150_000)
    late = "o3"
    cluster.down.add(late)
    _chain(cluster, 4, 100_000)
    assert len(cluster.nodes["o0"].blocks) == 4
    request = consensus_pb2.ConsensusMessage(sync_request=consensus_pb2.SyncRequest(from_height=0))
    (response,) = sends(
        cluster.nodes["o0"].replica.on_message(late, request, cluster.now), "sync_response"
    )
    assert len(response.message.sync_response.blocks) == 1  # two would pass 150 kB
    # The lagging replica catches up through such responses.
    cluster.down.discard(late)
    cluster.restart(late)
    cluster.deliver_all()
    assert [block_hash(b.header) for b in cluster.nodes[late].blocks] == [
        block_hash(b.header) for b in cluster.nodes["o0"].blocks
    ]


def test_a_replica_behind_blocks_larger_than_the_cap_still_catches_up() -> None:
    cluster = TunedCluster(max_sync_bytes=1_000)
    late = "o3"
    cluster.down.add(late)
    _chain(cluster, 3, 5_000)
    cluster.down.discard(late)
    cluster.restart(late)
    cluster.deliver_all()
    assert len(cluster.nodes[late].blocks) == 3


def test_block_fetch_requests_are_rate_limited_per_peer() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    holder = next(o for o in cluster.ids if o != p0)
    asker = next(o for o in cluster.ids if o not in (p0, holder))
    block = cluster.pre_block(p0, [b"ok:B"])
    replica = cluster.nodes[holder].replica
    replica.on_message(
        p0, consensus_pb2.ConsensusMessage(proposal=consensus_pb2.Proposal(block=block)), 0.0
    )
    fetch = consensus_pb2.ConsensusMessage(
        block_fetch_request=consensus_pb2.BlockFetchRequest(
            height=0, block_hash=block_hash(block.header)
        )
    )
    answers = [
        sends(replica.on_message(asker, fetch, 0.0), "block_fetch_response") for _ in range(50)
    ]
    served = sum(len(a) for a in answers)
    assert 1 <= served <= replica.config.block_fetch_rate
    assert answers[0][0].message.block_fetch_response.block == block


# --- buffers bounded in bytes ----------------------------------------------------------------


def _big_block(cluster: Cluster, proposer: str, round_: int, height: int = 0) -> block_pb2.Block:
    return cluster.pre_block(proposer, [b"ok:" + b"y" * 50_000], round_=round_, height=height)


def test_future_messages_are_bounded_in_bytes() -> None:
    cluster = TunedCluster(max_buffer_bytes=200_000)
    replica = cluster.nodes["o0"].replica
    big = _big_block(cluster, "o1", 0, height=1)
    for i in range(40):
        msg = consensus_pb2.ConsensusMessage(
            proposal=consensus_pb2.Proposal(height=1, round=i, block=big)
        )
        replica.on_message("o1", msg, 0.0)
    held = sum(m.ByteSize() for _, m in replica._future)
    assert 0 < held <= 200_000


def test_proposals_for_later_rounds_are_bounded_in_bytes() -> None:
    cluster = TunedCluster(max_buffer_bytes=200_000)
    replica = cluster.nodes["o0"].replica
    for r in range(1, 60):
        primary = cluster.primary(r)
        if primary == "o0":
            continue
        msg = consensus_pb2.ConsensusMessage(
            proposal=consensus_pb2.Proposal(
                height=0, round=r, block=_big_block(cluster, primary, r)
            )
        )
        replica.on_message(primary, msg, 0.0)
    held = sum(entry[1].ByteSize() for entry in replica._pending.values())
    assert 0 < held <= 200_000


# --- block size ------------------------------------------------------------------------


def test_a_pre_block_above_the_batch_bounds_gets_no_prepare() -> None:
    """A byzantine primary's oversized pre-block (more transactions or bytes than any honest
    primary cuts) is refused by every auxiliary, so it never becomes final and never has to
    travel in sync responses; one at the bounds is voted for."""
    cluster = TunedCluster(max_batch_txs=10, max_batch_bytes=400)
    p0 = cluster.primary(0)
    auxiliary = next(oid for oid in cluster.ids if oid != p0)
    replica = cluster.nodes[auxiliary].replica
    now = 1.0
    too_many = cluster.pre_block(p0, [b"ok:n%d" % i for i in range(11)], timestamp_ns=10**9)
    too_big = cluster.pre_block(p0, [b"ok:" + bytes([65 + i]) * 100 for i in range(5)],
                                timestamp_ns=10**9)
    for block in (too_many, too_big):
        proposal = consensus_pb2.ConsensusMessage(
            proposal=consensus_pb2.Proposal(height=0, round=0, block=block))
        assert not sends(replica.on_message(p0, proposal, now), "vote")
    fits = cluster.pre_block(p0, [b"ok:f%d" % i for i in range(10)], timestamp_ns=10**9)
    proposal = consensus_pb2.ConsensusMessage(
        proposal=consensus_pb2.Proposal(height=0, round=0, block=fits))
    assert sends(replica.on_message(p0, proposal, now), "vote")


def test_the_next_height_buffer_is_emptied_of_its_bytes_when_it_is_replayed() -> None:
    """Messages held for the next height are replayed when it starts; their bytes must leave
    the budget with them, or the replica would stop buffering for good after 16 MiB."""
    cluster = Cluster()
    replica = cluster.nodes["o0"].replica
    vote = consensus_pb2.Vote(height=1, round=0, phase=1, block_hash=bytes(32))
    replica.on_message("o1", consensus_pb2.ConsensusMessage(vote=vote), 0.0)
    assert replica._future_bytes > 0
    cluster.submit("o0", [b"ok:h0"])
    cluster.advance(5.0)
    assert replica.height == 1
    assert replica._future_bytes == 0
