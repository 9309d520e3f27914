"""Equivocation evidence through the orderer adapter: the replica detects two conflicting
prepare certificates signed by the same orderers (real keys of the consortium), the node
counts and stores the evidence, OrdererService.ListEvidence returns it (newest first) and
the store keeps the newest EVIDENCE_KEPT."""

from __future__ import annotations

import os
from pathlib import Path

from grpc_helpers import FakeContext
from prometheus_client import REGISTRY

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2, orderer_pb2
from gridledger_core.consensus import evidence
from gridledger_core.consensus.certificate import ed25519_verifier
from gridledger_core.consensus.signing import Phase, signing_bytes
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore
from gridledger_orderer import store as store_module
from gridledger_orderer.node import OrdererNode, OrderingParams
from gridledger_orderer.service import OrdererServicer
from gridledger_orderer.store import OrdererStore
from gridledger_orderer.transport import Transport


def _prepared(
    consortium_dir: Path, signers: list[str], bh: bytes
) -> consensus_pb2.ConsensusMessage:
    signed = signing_bytes(Phase.PREPARE, 0, 0, bh)
    cert = consensus_pb2.VoteCertificate(
        height=0, round=0, phase=consensus_pb2.VOTE_PHASE_PREPARE, block_hash=bh
    )
    for name in signers:
        signature = SigningIdentity.load(consortium_dir, name).signer.sign(signed)
        cert.signatures.append(block_pb2.CoSignature(orderer=name, signature=signature))
    return consensus_pb2.ConsensusMessage(prepared=cert)


def _count(orderer: str) -> float:
    value = REGISTRY.get_sample_value(
        "gridledger_orderer_equivocations_total", {"orderer": orderer}
    )
    return value or 0.0


def test_detected_equivocation_is_counted_stored_and_listed(
    consortium_dir: Path, genesis: Genesis, tmp_path: Path
) -> None:
    me = "orderer-1"
    others = sorted(o for o in genesis.orderer_keys if o != me)[:3]
    store = OrdererStore(LmdbStore(tmp_path / "orderer"))
    try:
        node = OrdererNode(genesis, SigningIdentity.load(consortium_dir, me), store,
                           Transport([], None), OrderingParams(),  # type: ignore[arg-type]
                           lambda block: None)
        api = OrdererServicer(node, store, HeightNotifier(lambda: 0))
        before = {o: _count(o) for o in others}
        now = 1.0
        node._execute(node.replica.on_message(
            others[0], _prepared(consortium_dir, others, os.urandom(32)), now))
        node._execute(node.replica.on_message(
            others[0], _prepared(consortium_dir, others, os.urandom(32)), now))
        listed = api.ListEvidence(orderer_pb2.ListEvidenceRequest(),
                                  FakeContext()).evidence  # type: ignore[arg-type]
        assert sorted(ev.orderer for ev in listed) == others
        verify = ed25519_verifier(genesis.orderer_keys)
        assert all(evidence.verify(ev, verify) for ev in listed)
        assert all(ev.reported_by == me for ev in listed)
        assert {o: _count(o) - before[o] for o in others} == {o: 1.0 for o in others}
    finally:
        store.close()


def test_store_keeps_the_newest_evidence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "EVIDENCE_KEPT", 5)
    store = OrdererStore(LmdbStore(tmp_path / "orderer"))
    try:
        for round_ in range(8):
            ev = consensus_pb2.EquivocationEvidence(orderer="o", round=round_)
            store.add_evidence(ev)
        assert [ev.round for ev in store.evidence(100)] == [7, 6, 5, 4, 3]
        assert [ev.round for ev in store.evidence(2)] == [7, 6]
    finally:
        store.close()
