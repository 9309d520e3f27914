"""SubmitBatch gives every envelope exactly the outcome SubmitTransaction gives it: for a mix
of valid, invalid, malformed, already-committed, repeated, too large, and orderer-refused
transactions, the batch's per-transaction results (code, message, retry hint) equal the
single calls' statuses, details and trailers, made against an identical replica. Then the
call's own limits, and admission control inside a batch (a prefix admitted, the rest refused
with a hint)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from broadcast_fakes import SealsThenBroadcasts
from grpc_helpers import Aborted, FakeContext
from ledger_helpers import ChainBuilder, endorsed, identity, past_interval, reading

from gridledger.common.v1 import block_pb2, envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_ENVELOPES
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_core.storage import MemoryStore
from gridledger_endorser.admission import Admission, AdmissionConfig
from gridledger_endorser.broadcaster import OrdererUnavailable
from gridledger_endorser.service import EndorserServicer

Result = tuple[str, int, str, int]  # tx id, status code, message, retry hint


@dataclass
class Orderers(SealsThenBroadcasts):
    """Acknowledges, except: `full` tx ids are refused RESOURCE_EXHAUSTED (hint 70 ms),
    `down` ones get no answer; a tx id seen before is acknowledged as a duplicate."""

    full: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)

    def broadcast(self, tx: bytes, tx_id: str) -> orderer_pb2.BroadcastResponse:
        if tx_id in self.full:
            raise OrdererUnavailable("orderer-1: RESOURCE_EXHAUSTED: pool full", 70)
        if tx_id in self.down:
            raise OrdererUnavailable("orderer-1: UNAVAILABLE: connection refused")
        duplicate = tx_id in self.seen
        self.seen.add(tx_id)
        return orderer_pb2.BroadcastResponse(tx_id=tx_id, duplicate=duplicate)


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Consensus proofs are tested with the consensus core."""


def servicer(genesis: Genesis, consortium_dir: Path, committed: envelope_pb2.SignedEnvelope,
             orderers: Orderers, admission: Admission | None = None) -> EndorserServicer:
    """An endorser whose replica holds `committed` (so it is ALREADY_EXISTS)."""
    ledger = Ledger(MemoryStore(), genesis, accept_proof)
    endorser = identity(consortium_dir, "endorser-1")
    codes = ledger.commit(ChainBuilder().block([endorsed(committed, endorser)])).codes
    assert codes == [Code.TX_VALIDATION_CODE_VALID]
    return EndorserServicer(ledger, endorser, orderers, admission=admission)  # type: ignore[arg-type]


def single(s: EndorserServicer, envelope: envelope_pb2.SignedEnvelope) -> Result:
    context = FakeContext()
    try:
        response = s.SubmitTransaction(
            endorser_pb2.SubmitTransactionRequest(envelope=envelope), context)  # type: ignore[arg-type]
    except Aborted as exc:
        hint = dict(getattr(context, "trailers", ())).get("retry-after-ms", "0")
        return _claimed(envelope), exc.code.value[0], exc.details, int(hint)
    return response.tx_id, 0, "", 0


def batch(s: EndorserServicer, envelopes: list[envelope_pb2.SignedEnvelope]) -> list[Result]:
    response = s.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=envelopes),
                             FakeContext())  # type: ignore[arg-type]
    assert len(response.results) == len(envelopes)
    for r in response.results:
        assert r.HasField("endorsement") == (r.code == 0)
    return [(r.tx_id or _claimed(e), r.code, r.message, r.retry_after_ms)
            for r, e in zip(response.results, envelopes, strict=True)]


def _claimed(envelope: envelope_pb2.SignedEnvelope) -> str:
    try:
        return envelope_tx_id(envelope)
    except Exception:
        return ""


def signed(meter: SigningIdentity, n: int, produced: int = 500, account: str = ""
           ) -> envelope_pb2.SignedEnvelope:
    return meter.new_transaction("meter_reading",
                                 reading(account or meter.name, past_interval(n), produced))


@pytest.fixture()
def ids(consortium_dir: Path) -> dict[str, SigningIdentity]:
    return {n: identity(consortium_dir, n) for n in ("meter-1", "meter-2", "plant-1")}


def test_batch_results_equal_single_call_results(genesis: Genesis, consortium_dir: Path,
                                                 ids: dict[str, SigningIdentity]) -> None:
    m1, m2 = ids["meter-1"], ids["meter-2"]
    # Intervals inside the readings submission window (issue 14), distinct per meter.
    committed = signed(m1, 4)
    valid = signed(m1, 1)
    bad_signature = signed(m1, 2)
    bad_signature.signature = bytes(64)
    not_own = signed(m2, 3, account="meter-1")  # meter-2 reporting meter-1's interval
    conflict = signed(m1, 4, produced=999)  # another reading of a committed interval
    orderers_full, orderers_down = signed(m2, 1), signed(m2, 2)
    malformed = envelope_pb2.SignedEnvelope(payload=b"\xff\xff not a transaction",
                                            signer_certificate=m1.certificate)
    too_large = signed(m2, 3)
    too_large.signer_certificate += b" " * genesis.limits.max_tx_bytes
    future = m1.new_transaction("meter_reading", reading(m1.name, past_interval(-3)))
    mix = [valid, committed, bad_signature, not_own, conflict, orderers_full, malformed,
           valid, too_large, orderers_down, future, signed(m2, 4)]

    def orderers() -> Orderers:
        return Orderers(full={envelope_tx_id(orderers_full)},
                        down={envelope_tx_id(orderers_down)})

    one_by_one = servicer(genesis, consortium_dir, committed, orderers())
    expected = [single(one_by_one, e) for e in mix]
    got = batch(servicer(genesis, consortium_dir, committed, orderers()), mix)
    assert got == expected
    codes = [grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS,
             grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
             grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.UNAUTHENTICATED,  # the signature is checked before decoding
             grpc.StatusCode.OK,
             grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE]
    assert [c for _, c, _, _ in got[:len(codes)]] == [c.value[0] for c in codes]
    assert got[5][3] == 70  # the orderers' hint reaches the client
    assert got[-1][1] == 0


def test_the_calls_own_limit_refuses_the_whole_call(genesis: Genesis, consortium_dir: Path,
                                                   ids: dict[str, SigningIdentity]) -> None:
    s = servicer(genesis, consortium_dir, signed(ids["plant-1"], 1), Orderers())
    envelope = signed(ids["meter-1"], 2)
    with pytest.raises(Aborted) as refused:
        s.SubmitBatch(endorser_pb2.SubmitBatchRequest(
            envelopes=[envelope] * (SUBMIT_BATCH_ENVELOPES + 1)), FakeContext())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {SUBMIT_BATCH_ENVELOPES} envelopes" in refused.value.details
    assert batch(s, []) == []


def test_admission_admits_a_prefix_and_refuses_the_rest_with_a_hint(
        genesis: Genesis, consortium_dir: Path, ids: dict[str, SigningIdentity]) -> None:
    admission = Admission(AdmissionConfig(budget_ms=1000, floor=3, ceiling=3))
    s = servicer(genesis, consortium_dir, signed(ids["plant-1"], 1), Orderers(), admission)
    # Five readings inside the submission window: three intervals of meter-1, two of meter-2.
    envelopes = ([signed(ids["meter-1"], n) for n in range(1, 4)]
                 + [signed(ids["meter-2"], n) for n in range(1, 3)])
    got = batch(s, envelopes)
    full = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert [c for _, c, _, _ in got] == [0, 0, 0, full, full]
    assert all(hint > 0 and "admission bound" in message for _, _, message, hint in got[3:])
    assert admission.in_flight == 3
