"""The endorser's batch signer: a lone request is signed at once as a batch of one; what
queues while a batch is being signed becomes the next batch (up to the maximum); every
caller gets its own endorsement with its proof; errors reach every caller of the batch. And
the endorser's replica verifies nothing the endorser verified or signed itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from ledger_helpers import ChainBuilder, identity, past_interval, reading

from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Signers
from gridledger_core.ledger.checks import check_endorsements
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore
from gridledger_endorser.batch_signer import BatchSigner
from gridledger_endorser.service import EndorserServicer


class GatedIdentity:
    """A signing identity whose first batch waits for the test to open the gate, so later
    callers queue up behind it deterministically; records every batch size."""

    def __init__(self, real: SigningIdentity, fail: bool = False) -> None:
        self.real = real
        self.signer = real.signer
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        self.fail = fail

    def endorse_batch(self, payloads: Sequence[bytes]
                      ) -> tuple[bytes, list[envelope_pb2.Endorsement]]:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(payloads))
        if self.fail:
            raise RuntimeError("signing failed")
        return self.real.endorse_batch(payloads)


@pytest.fixture(scope="module")
def endorser_id(consortium_dir: Path) -> SigningIdentity:
    return identity(consortium_dir, "endorser-1")


def run_concurrently(signer: BatchSigner, gated: GatedIdentity, count: int
                     ) -> dict[bytes, envelope_pb2.Endorsement | BaseException]:
    """One caller starts a batch and is held in it; `count - 1` more queue; then the gate
    opens. Returns each payload's endorsement or error."""
    results: dict[bytes, envelope_pb2.Endorsement | BaseException] = {}

    def call(payload: bytes) -> None:
        try:
            results[payload] = signer.endorse(payload)
        except BaseException as exc:
            results[payload] = exc

    first = threading.Thread(target=call, args=(b"p0",))
    first.start()
    assert gated.entered.wait(10)
    others = [threading.Thread(target=call, args=(f"p{i}".encode(),)) for i in range(1, count)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while len(signer._queue) < count - 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    gated.gate.set()
    for thread in [first, *others]:
        thread.join(10)
    return results


def test_a_lone_request_is_a_batch_of_one(genesis: Genesis,
                                          endorser_id: SigningIdentity) -> None:
    gated = GatedIdentity(endorser_id)
    gated.gate.set()
    signer = BatchSigner(gated)  # type: ignore[arg-type]
    for payload in (b"a", b"b"):
        endorsement = signer.endorse(payload)
        assert (endorsement.leaf_index, endorsement.leaf_count) == (0, 1)
        check_endorsements(payload, [endorsement], Signers(genesis.membership, None, None))
    assert gated.sizes == [1, 1]


def test_what_queued_during_a_batch_is_the_next_batch(genesis: Genesis,
                                                      endorser_id: SigningIdentity) -> None:
    gated = GatedIdentity(endorser_id)
    signer = BatchSigner(gated)  # type: ignore[arg-type]
    results = run_concurrently(signer, gated, 20)
    assert gated.sizes == [1, 19]
    assert len(results) == 20
    for payload, endorsement in results.items():
        assert isinstance(endorsement, envelope_pb2.Endorsement)
        check_endorsements(payload, [endorsement], Signers(genesis.membership, None, None))
    assert len({e.signature for e in results.values()}) == 2  # type: ignore[union-attr]
    assert not signer._busy and not signer._queue


def test_batches_never_exceed_the_maximum(genesis: Genesis,
                                          endorser_id: SigningIdentity) -> None:
    gated = GatedIdentity(endorser_id)
    signer = BatchSigner(gated, max_batch=4)  # type: ignore[arg-type]
    results = run_concurrently(signer, gated, 11)
    assert gated.sizes == [1, 4, 4, 2]
    for payload, endorsement in results.items():
        assert isinstance(endorsement, envelope_pb2.Endorsement)
        check_endorsements(payload, [endorsement], Signers(genesis.membership, None, None))


def test_a_signing_error_reaches_every_caller_and_the_signer_recovers(
        endorser_id: SigningIdentity) -> None:
    gated = GatedIdentity(endorser_id, fail=True)
    signer = BatchSigner(gated)  # type: ignore[arg-type]
    results = run_concurrently(signer, gated, 5)
    assert all(isinstance(r, RuntimeError) for r in results.values())
    gated.fail = False
    assert signer.endorse(b"again").leaf_count == 1


def test_its_own_batch_signatures_are_remembered(endorser_id: SigningIdentity) -> None:
    remembered: list[tuple[bytes, bytes, bytes]] = []
    signer = BatchSigner(endorser_id, remember=lambda *args: remembered.append(args))
    endorsement = signer.endorse(b"payload")
    [(key, signature, message)] = remembered
    assert key == endorser_id.signer.public_key_bytes
    assert signature == endorsement.signature
    assert message.startswith(b"gridledger/endorsement-batch/v1\x00")


class Recording:
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
