"""Endorsing what travels together: the broadcaster's sender endorses each BroadcastBatch
group with one signature. A lone transaction is a group of one; what waits while a call is
in flight leaves as the next group under one signature (at most MAX_GROUP); every caller gets
its own endorsement with its proof, checked as committers check it; a sealing error reaches
every caller of its group and the broadcaster goes on. And the endorser's replica verifies
nothing the endorser verified or signed itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from broadcast_fakes import SealsThenBroadcasts
from ledger_helpers import ChainBuilder, identity, past_interval, reading
from test_broadcaster import FakeOrderer, broadcaster

from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Signers
from gridledger_core.ledger.checks import check_endorsements
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_core.storage import MemoryStore
from gridledger_endorser.broadcaster import Broadcaster
from gridledger_endorser.sealing import MAX_GROUP, Sealer
from gridledger_endorser.service import EndorserServicer


@pytest.fixture(scope="module")
def endorser_id(consortium_dir: Path) -> SigningIdentity:
    return identity(consortium_dir, "endorser-1")


@pytest.fixture(scope="module")
def envelopes(consortium_dir: Path) -> list[envelope_pb2.SignedEnvelope]:
    meter = identity(consortium_dir, "meter-1")
    return [meter.new_transaction("meter_reading", reading("meter-1", past_interval(n)))
            for n in range(1, 21)]


class CountingSealer(Sealer):
    def __init__(self, identity: SigningIdentity, fail: bool = False) -> None:
        super().__init__(identity)
        self.groups: list[int] = []
        self.fail = fail

    def __call__(self, payloads: Sequence[bytes]) -> list[envelope_pb2.Endorsement]:
        self.groups.append(len(payloads))
        if self.fail:
            raise RuntimeError("signing failed")
        return super().__call__(payloads)


def submit_concurrently(b: Broadcaster, seal: Sealer, orderer: FakeOrderer,
                        envelopes: list[envelope_pb2.SignedEnvelope]) -> dict[str, object]:
    """The first envelope's call is held in flight at the orderer while the others queue;
    then the orderer answers. Returns each tx id's (result, endorsement)."""
    results: dict[str, object] = {}

    def call(envelope: envelope_pb2.SignedEnvelope) -> None:
        [results[envelope_tx_id(envelope)]] = b.seal_and_broadcast(
            [(envelope, envelope_tx_id(envelope))], seal)

    gate = orderer.gate = threading.Event()
    first = threading.Thread(target=call, args=(envelopes[0],))
    first.start()
    assert orderer.entered.wait(5)
    others = [threading.Thread(target=call, args=(e,)) for e in envelopes[1:]]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 5
    while len(b._queue) < len(others) and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for thread in [first, *others]:
        thread.join(5)
    return results


def checked(payload: bytes, endorsement: object, genesis: Genesis) -> None:
    assert isinstance(endorsement, envelope_pb2.Endorsement)
    check_endorsements(payload, [endorsement], Signers(genesis.membership, None, None))


def test_a_lone_transaction_is_a_group_of_one(
        genesis: Genesis, endorser_id: SigningIdentity,
        envelopes: list[envelope_pb2.SignedEnvelope]) -> None:
    seal = CountingSealer(endorser_id)
    b = broadcaster(FakeOrderer())
    for envelope in envelopes[:2]:
        [(answer, endorsement)] = b.seal_and_broadcast([(envelope, envelope_tx_id(envelope))],
                                                       seal)
        assert isinstance(answer, orderer_pb2.BroadcastResponse)
        assert answer.tx_id == envelope_tx_id(envelope)
        assert (endorsement.leaf_index, endorsement.leaf_count) == (0, 1)  # type: ignore[union-attr]
        checked(envelope.payload, endorsement, genesis)
    assert seal.groups == [1, 1]
    b.close()


def test_what_waits_during_a_call_leaves_as_one_group_under_one_signature(
        genesis: Genesis, endorser_id: SigningIdentity,
        envelopes: list[envelope_pb2.SignedEnvelope]) -> None:
    seal = CountingSealer(endorser_id)
    orderer = FakeOrderer()
    b = broadcaster(orderer)
    results = submit_concurrently(b, seal, orderer, envelopes)
    assert seal.groups == [1, 19]
    assert [len(batch) for batch in orderer.batches] == [1, 19]
    by_id = {envelope_tx_id(e): e for e in envelopes}
    sent = [envelope_pb2.EndorsedTransaction.FromString(tx) for batch in orderer.batches
            for tx in batch]
    for tx_id, (answer, endorsement) in results.items():  # type: ignore[misc]
        assert answer.tx_id == tx_id
        checked(by_id[tx_id].payload, endorsement, genesis)
        # What the orderer received is exactly the endorsement the caller got back.
        assert [t.endorsements[0] for t in sent if envelope_tx_id(t.envelope) == tx_id] == [
            endorsement]
    assert len({e.signature for _, e in results.values()}) == 2  # type: ignore[misc]
    b.close()


def test_groups_never_exceed_the_maximum(
        genesis: Genesis, endorser_id: SigningIdentity,
        envelopes: list[envelope_pb2.SignedEnvelope]) -> None:
    seal = CountingSealer(endorser_id)
    b = broadcaster(FakeOrderer())
    items = [(envelopes[i % len(envelopes)], f"id-{i}") for i in range(MAX_GROUP + 44)]
    # Only the grouping is looked at: the claimed ids "id-<i>" are not the envelopes' own,
    # so the orderer's answers do not acknowledge them.
    b.seal_and_broadcast(items, seal)
    assert seal.groups == [MAX_GROUP, 44]
    with pytest.raises(ValueError, match="1 to 256"):
        seal([b"x"] * (MAX_GROUP + 1))
    b.close()


def test_a_sealing_error_reaches_every_caller_of_the_group_and_nothing_is_sent(
        endorser_id: SigningIdentity, envelopes: list[envelope_pb2.SignedEnvelope]) -> None:
    seal = CountingSealer(endorser_id, fail=True)
    orderer = FakeOrderer()
    b = broadcaster(orderer)
    results = b.seal_and_broadcast([(e, envelope_tx_id(e)) for e in envelopes[:5]], seal)
    assert [type(answer) for answer, _ in results] == [RuntimeError] * 5
    assert [endorsement for _, endorsement in results] == [None] * 5
    assert orderer.batches == []
    seal.fail = False
    [(answer, endorsement)] = b.seal_and_broadcast(
        [(envelopes[0], envelope_tx_id(envelopes[0]))], seal)
    assert isinstance(answer, orderer_pb2.BroadcastResponse) and endorsement is not None
    b.close()


def test_its_own_group_signatures_are_remembered(endorser_id: SigningIdentity) -> None:
    remembered: list[tuple[bytes, bytes, bytes]] = []
    seal = Sealer(endorser_id, remember=lambda *args: remembered.append(args))
    [endorsement] = seal([b"payload"])
    [(key, signature, message)] = remembered
    assert key == endorser_id.signer.public_key_bytes
    assert signature == endorsement.signature
    assert message.startswith(b"gridledger/endorsement-batch/v1\x00")


class Recording(SealsThenBroadcasts):
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def broadcast(self, endorsed_transaction: bytes,
                  tx_id: str) -> orderer_pb2.BroadcastResponse:
        self.sent.append(endorsed_transaction)
        return orderer_pb2.BroadcastResponse(tx_id=tx_id)


class FakeContext:
    def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def test_the_replica_does_not_verify_what_the_endorser_verified_or_signed(
        genesis: Genesis, consortium_dir: Path, endorser_id: SigningIdentity,
        verifications: list[bytes]) -> None:
    meter = identity(consortium_dir, "meter-1")
    ledger = Ledger(MemoryStore(), genesis, lambda *_: None)
    broadcaster = Recording()
    servicer = EndorserServicer(ledger, endorser_id, broadcaster)  # type: ignore[arg-type]
    # Intervals within the readings submission window (the last four, and one of meter-2).
    envelopes = [meter.new_transaction("meter_reading", reading("meter-1", past_interval(n)))
                 for n in range(1, 5)]
    envelopes.append(identity(consortium_dir, "meter-2").new_transaction(
        "meter_reading", reading("meter-2", past_interval(1))))
    threads = [threading.Thread(target=servicer.SubmitTransaction, args=(
        endorser_pb2.SubmitTransactionRequest(envelope=e), FakeContext())) for e in envelopes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(broadcaster.sent) == 5
    assert len(verifications) == 5  # the creators' signatures, at submit
    verifications.clear()
    result = ledger.commit(ChainBuilder().block(broadcaster.sent))
    assert set(result.codes) == {Code.TX_VALIDATION_CODE_VALID}
    assert verifications == []  # the replica paid no Ed25519 for creators or endorsements
