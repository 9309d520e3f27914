"""Equivocation is detected, counted and kept as evidence (issue 13)."""

from __future__ import annotations

import os

from consensus_harness import Cluster

from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import evidence
from gridledger_core.consensus.actions import Action, Evidence
from gridledger_core.consensus.signing import Phase, block_hash, signing_bytes

PREPARE = consensus_pb2.VOTE_PHASE_PREPARE


def found(actions: list[Action]) -> list[consensus_pb2.EquivocationEvidence]:
    return [a.evidence for a in actions if isinstance(a, Evidence)]


def proposal(block, round_: int = 0) -> consensus_pb2.ConsensusMessage:
    return consensus_pb2.ConsensusMessage(
        proposal=consensus_pb2.Proposal(height=0, round=round_, block=block)
    )


def test_two_pre_blocks_from_one_primary_in_one_round() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    me = next(o for o in cluster.ids if o != p0)
    replica = cluster.nodes[me].replica
    first = cluster.pre_block(p0, [b"ok:one"])
    # The second one is not even valid (unendorsed transaction): the signature is what counts.
    second = cluster.pre_block(p0, [b"bad:two"])
    assert found(replica.on_message(p0, proposal(first), 0.0)) == []
    assert found(replica.on_message(p0, proposal(first), 0.0)) == []  # retransmission
    (ev,) = found(replica.on_message(p0, proposal(second), 0.0))
    assert (ev.orderer, ev.height, ev.round, ev.kind) == (p0, 0, 0, evidence.PROPOSAL)
    assert ev.reported_by == me
    assert evidence.verify(ev, cluster.crypto.verify_sig)
    assert found(replica.on_message(p0, proposal(second), 0.0)) == []  # reported once
    assert replica.equivocations.count == 1


def test_two_prepare_votes_from_one_orderer_in_one_round() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    voter = next(o for o in cluster.ids if o != p0)
    replica = cluster.nodes[p0].replica
    out = replica.on_transactions([b"ok:v"], 0.0) + replica.on_timer("batch", 1.0)
    (sent,) = [a for a in out if getattr(a, "message", None) and a.message.HasField("proposal")]
    ours = block_hash(sent.message.proposal.block.header)
    other = os.urandom(32)

    def vote(bh: bytes) -> consensus_pb2.ConsensusMessage:
        sig = cluster.crypto.signer(voter)(signing_bytes(Phase.PREPARE, 0, 0, bh))
        return consensus_pb2.ConsensusMessage(
            vote=consensus_pb2.Vote(height=0, round=0, phase=PREPARE, block_hash=bh, signature=sig)
        )

    assert found(replica.on_message(voter, vote(ours), 1.0)) == []
    (ev,) = found(replica.on_message(voter, vote(other), 1.0))
    assert (ev.orderer, ev.kind) == (voter, evidence.PREPARE)
    assert evidence.verify(ev, cluster.crypto.verify_sig)
    # A forged second vote (bad signature) is no evidence against anyone.
    forged = vote(os.urandom(32))
    forged.vote.signature = bytes(64)
    assert found(replica.on_message(p0, forged, 1.0)) == []


def test_conflicting_certificates_name_every_common_signer() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    me = next(o for o in cluster.ids if o != p0)
    replica = cluster.nodes[me].replica
    b = cluster.pre_block(p0, [b"ok:B"])
    b_other = cluster.pre_block(p0, [b"ok:B-prime"])
    signers = [o for o in cluster.ids if o != me]
    cert = cluster.certificate(Phase.PREPARE, 0, b, signers)
    forged = cluster.certificate(Phase.PREPARE, 0, b_other, signers)
    assert found(replica.on_message(p0, consensus_pb2.ConsensusMessage(prepared=cert), 0.0)) == []
    evs = found(replica.on_message(p0, consensus_pb2.ConsensusMessage(prepared=forged), 0.0))
    assert sorted(ev.orderer for ev in evs) == sorted(signers)
    assert all(ev.kind == evidence.PREPARE for ev in evs)
    assert all(evidence.verify(ev, cluster.crypto.verify_sig) for ev in evs)


def test_round_changes_with_different_locks_of_one_round() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    byz = next(o for o in cluster.ids if o != p0)
    me = next(o for o in cluster.ids if o not in (p0, byz))
    replica = cluster.nodes[me].replica
    b = cluster.pre_block(p0, [b"ok:B"])
    b_other = cluster.pre_block(p0, [b"ok:B-prime"])
    signers = [o for o in cluster.ids if o != me]
    cert = cluster.certificate(Phase.PREPARE, 0, b, signers)
    cert_other = cluster.certificate(Phase.PREPARE, 0, b_other, signers)
    assert found(replica.on_message(byz, cluster.round_change(byz, 0, 1), 0.0)) == []
    assert found(replica.on_message(byz, cluster.round_change(byz, 0, 1, cert), 0.0)) == []
    out = replica.on_message(byz, cluster.round_change(byz, 0, 1, cert_other), 0.0)
    kinds = {(ev.orderer, ev.kind) for ev in found(out)}
    assert (byz, evidence.ROUND_CHANGE) in kinds
    (rc_ev,) = [ev for ev in found(out) if ev.kind == evidence.ROUND_CHANGE]
    assert evidence.verify(rc_ev, cluster.crypto.verify_sig)


def test_an_honest_replica_resending_with_a_higher_lock_is_not_equivocating() -> None:
    cluster = Cluster()
    p0, p1 = cluster.primary(0), cluster.primary(1)
    me = next(o for o in cluster.ids if o not in (p0, p1))
    sender = next(o for o in cluster.ids if o not in (p0, p1, me))
    replica = cluster.nodes[me].replica
    b0 = cluster.pre_block(p0, [b"ok:B"])
    b1 = cluster.pre_block(p1, [b"ok:C"], round_=1)
    lock0 = cluster.certificate(Phase.PREPARE, 0, b0, cluster.ids[:3])
    lock1 = cluster.certificate(Phase.PREPARE, 1, b1, cluster.ids[:3])
    out = replica.on_message(sender, cluster.round_change(sender, 0, 2, lock0), 0.0)
    out += replica.on_message(sender, cluster.round_change(sender, 0, 2, lock1), 0.0)
    assert found(out) == []


def test_tampered_evidence_does_not_verify() -> None:
    cluster = Cluster()
    p0 = cluster.primary(0)
    me = next(o for o in cluster.ids if o != p0)
    replica = cluster.nodes[me].replica
    replica.on_message(p0, proposal(cluster.pre_block(p0, [b"ok:one"])), 0.0)
    (ev,) = found(replica.on_message(p0, proposal(cluster.pre_block(p0, [b"ok:two"])), 0.0))
    blamed = consensus_pb2.EquivocationEvidence()
    blamed.CopyFrom(ev)
    blamed.orderer = me  # pin it on someone else
    assert not evidence.verify(blamed, cluster.crypto.verify_sig)
    same = consensus_pb2.EquivocationEvidence()
    same.CopyFrom(ev)
    same.second.CopyFrom(ev.first)  # one statement twice is no conflict
    assert not evidence.verify(same, cluster.crypto.verify_sig)


def test_a_final_block_conflicting_with_a_pre_block_seen_here_is_evidence() -> None:
    """The primary showed this replica B and the others B' (same round): when B' comes back
    final through catch-up, the two signed pre-blocks are evidence."""
    cluster = Cluster()
    p0 = cluster.primary(0)
    me = next(o for o in cluster.ids if o != p0)
    replica = cluster.nodes[me].replica
    shown = cluster.pre_block(p0, [b"ok:shown-to-me"])
    assert found(replica.on_message(p0, proposal(shown), 0.0)) == []
    final = cluster.pre_block(p0, [b"ok:shown-to-others"])
    cert = cluster.certificate(Phase.COMMIT, 0, final, [o for o in cluster.ids if o != me])
    final.metadata.commit_certificate.round = 0
    final.metadata.commit_certificate.signatures.extend(cert.signatures)
    sync = consensus_pb2.ConsensusMessage(sync_response=consensus_pb2.SyncResponse(blocks=[final]))
    (ev,) = found(replica.on_message(p0, sync, 0.1))
    assert (ev.orderer, ev.kind, ev.height, ev.round) == (p0, evidence.PROPOSAL, 0, 0)
    assert evidence.verify(ev, cluster.crypto.verify_sig)
    assert replica.height == 1
