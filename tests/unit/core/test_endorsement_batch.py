"""Batch endorsements: one signature over an RFC 6962 root of many transactions, each carrying
its proof; every verifier checks the proof and the signature over (count, root), and a block
of many transactions from few batches costs one verification per batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import ChainBuilder, identity, past_interval, reading

from gridledger.common.v1 import envelope_pb2, settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Signers
from gridledger_core.ledger.checks import check_endorsements, check_for_ordering
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore


@pytest.fixture(scope="module")
def endorser(consortium_dir: Path) -> SigningIdentity:
    return identity(consortium_dir, "endorser-1")


def refusal(payload: bytes, endorsement: envelope_pb2.Endorsement, genesis: Genesis) -> str:
    with pytest.raises(TxInvalid) as err:
        check_endorsements(payload, [endorsement], Signers(genesis.membership, None, None))
    assert err.value.code == Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE
    return err.value.message


def test_every_transaction_of_a_batch_verifies(genesis: Genesis,
                                               endorser: SigningIdentity) -> None:
    payloads = [f"payload {i}".encode() for i in range(13)]
    _, endorsements = endorser.endorse_batch(payloads)
    assert {e.signature for e in endorsements} == {endorsements[0].signature}
    for i, (payload, endorsement) in enumerate(zip(payloads, endorsements, strict=True)):
        assert (endorsement.leaf_index, endorsement.leaf_count) == (i, 13)
        [who] = check_endorsements(payload, [endorsement], Signers(genesis.membership, None, None))
        assert who.name == "endorser-1"


def test_a_single_endorsement_is_a_batch_of_one(genesis: Genesis,
                                                endorser: SigningIdentity) -> None:
    envelope = envelope_pb2.SignedEnvelope(payload=b"alone")
    endorsement = endorser.endorse(envelope)
    assert (endorsement.leaf_index, endorsement.leaf_count, list(endorsement.audit_path)) == \
        (0, 1, [])
    check_endorsements(b"alone", [endorsement], Signers(genesis.membership, None, None))


def test_tampered_proofs_are_refused_with_the_reason(genesis: Genesis,
                                                     endorser: SigningIdentity) -> None:
    payloads = [bytes([i]) for i in range(5)]
    _, endorsements = endorser.endorse_batch(payloads)
    good = endorsements[3]

    def altered(**fields: object) -> envelope_pb2.Endorsement:
        copy = envelope_pb2.Endorsement()
        copy.CopyFrom(good)
        for name, value in fields.items():
            if name == "audit_path":
                del copy.audit_path[:]
                copy.audit_path.extend(value)  # type: ignore[arg-type]
            else:
                setattr(copy, name, value)
        return copy

    path = list(good.audit_path)
    assert "leaf count" in refusal(payloads[3], altered(leaf_count=0), genesis)
    assert "not below the leaf count" in refusal(payloads[3], altered(leaf_index=5), genesis)
    assert "shorter" in refusal(payloads[3], altered(audit_path=path[:-1]), genesis)
    assert "longer" in refusal(payloads[3], altered(audit_path=[*path, bytes(32)]), genesis)
    assert "33 bytes" in refusal(payloads[3], altered(audit_path=[path[0] + b"\x00",
                                                                    *path[1:]]), genesis)
    signature_failures = [
        (payloads[3], altered(leaf_index=2)),           # another position
        (payloads[3], altered(leaf_count=6)),           # another tree size (same path length)
        (payloads[3], altered(audit_path=[bytes(32), *path[1:]])),
        (payloads[2], good),                            # another transaction's proof
        (payloads[3], altered(signature=bytes(64))),
    ]
    for payload, endorsement in signature_failures:
        assert "does not verify" in refusal(payload, endorsement, genesis)
    # A proof from another batch by the same endorser, at the same position and size.
    _, others = endorser.endorse_batch([b"x" + p for p in payloads])
    assert "does not verify" in refusal(payloads[3], others[3], genesis)


def test_an_orderer_accepts_batch_endorsements(genesis: Genesis, consortium_dir: Path,
                                               endorser: SigningIdentity) -> None:
    meter = identity(consortium_dir, "meter-1")
    envelopes = [meter.new_transaction("meter_reading", reading("meter-1", past_interval(n)))
                 for n in range(1, 4)]
    _, endorsements = endorser.endorse_batch([e.payload for e in envelopes])
    for envelope, endorsement in zip(envelopes, endorsements, strict=True):
        raw = envelope_pb2.EndorsedTransaction(envelope=envelope, endorsements=[endorsement])
        assert check_for_ordering(raw.SerializeToString(), genesis.membership)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 300), st.data())
def test_any_flipped_bit_of_an_endorsement_fails(genesis: Genesis, endorser: SigningIdentity,
                                                 size: int, data: st.DataObject) -> None:
    payloads = [i.to_bytes(4, "big") + b"tx" for i in range(size)]
    _, endorsements = endorser.endorse_batch(payloads)
    index = data.draw(st.integers(0, size - 1), label="index")
    payload, good = payloads[index], endorsements[index]
    check_endorsements(payload, [good], Signers(genesis.membership, None, None))
    bit = data.draw(st.integers(0, 511), label="bit")
    target = data.draw(st.sampled_from(["payload", "path", "index", "count", "signature"]))
    bad = envelope_pb2.Endorsement()
    bad.CopyFrom(good)
    if target == "payload":
        payload = _flip(payload, bit)
    elif target == "path":
        if not good.audit_path:
            return  # a batch of one has no path to change
        which = bit % len(good.audit_path)
        bad.audit_path[which] = _flip(good.audit_path[which], bit)
    elif target == "index":
        bad.leaf_index ^= 1 << (bit % 32)
    elif target == "count":
        bad.leaf_count ^= 1 << (bit % 32)
    else:
        bad.signature = _flip(good.signature, bit)
    refusal(payload, bad, genesis)


def _flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_a_block_of_three_batches_costs_three_endorsement_verifications(
        genesis: Genesis, consortium_dir: Path, endorser: SigningIdentity,
        verifications: list[bytes]) -> None:
    meters = [identity(consortium_dir, f"meter-{m}") for m in (1, 2, 3)]
    # Old intervals: onboarding history (live readings are due within the submission window).
    envelopes = [meter.new_transaction("history_readings", settlement_pb2.HistoryReadings(
                     readings=[settlement_pb2.MeterReadingEntry(
                         interval_start=past_interval(n), produced_wh=500, consumed_wh=300)]))
                 for meter in meters for n in range(1, 101)]
    raws = []
    for batch in (envelopes[:100], envelopes[100:200], envelopes[200:]):
        _, endorsements = endorser.endorse_batch([e.payload for e in batch])
        raws += [envelope_pb2.EndorsedTransaction(envelope=e, endorsements=[x])
                 .SerializeToString() for e, x in zip(batch, endorsements, strict=True)]
    ledger = Ledger(MemoryStore(), genesis, lambda *_: None)
    result = ledger.commit(ChainBuilder().block(raws))
    assert set(result.codes) == {Code.TX_VALIDATION_CODE_VALID}
    creator = [d for d in verifications if not d.startswith(b"gridledger/endorsement-batch")]
    assert len(creator) == 300
    assert len(verifications) - len(creator) == 3
