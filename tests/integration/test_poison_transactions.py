"""Issue 13, item 3: the reported poison on a real devnet.

A member holding its organisation's signing CA and its endorser's key makes a certificate
whose CN (or O) is not UTF-8, signs a reading with it, endorses it and broadcasts it straight
to an orderer. Before the fix the orderers ordered it, and on both committers and the
endorser's replica the block follower died on `cert.subject` while health still said SERVING.
Now the orderer refuses it (or, if it reached a block, it would be committed with a code),
and a contract whose amount overflows uint64 (which orderers cannot judge: it needs state)
is committed with INVALID_BODY. Either way both committers keep committing later readings,
with identical chains, and every node stays SERVING."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from devnet_support import committer_stub, height, ledger_network, same_chain, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gridctl import devnet
from gridctl.loadgen import LoadGenerator, prepare_readings
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import energy_pb2, envelope_pb2
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.energy.terms import new_terms
from gridledger_core.ledger.errors import Code
from gridledger_core.rpc.tls import secure_channel
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from tests.unit.core.hostile_certs import NON_UTF8, hostile_certificate, hostile_envelope
from tests.unit.core.ledger_helpers import past_interval, reading

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    """A devnet without the trading demo: meters post readings, which is all this needs."""
    with ledger_network(tmp_path_factory.mktemp("devnet-poison"), devnet.ROLE_ORDER) as network:
        yield network


def endorsed(envelope: envelope_pb2.SignedEnvelope, endorser: SigningIdentity) -> bytes:
    tx = envelope_pb2.EndorsedTransaction(envelope=envelope)
    tx.endorsements.append(endorser.endorse(envelope))
    return tx.SerializeToString()


def broadcast(net: devnet.Network, raw: bytes) -> grpc.StatusCode:
    """Send straight to an orderer, as a byzantine endorser would; the status it answers."""
    orderer = orderer_pb2_grpc.OrdererServiceStub(
        secure_channel(net.by_role("orderer")[0].grpc, net.tls()))
    try:
        orderer.Broadcast(orderer_pb2.BroadcastRequest(endorsed_transaction=raw), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def serving(net: devnet.Network, name: str) -> bool:
    stub = health_pb2_grpc.HealthStub(secure_channel(net.node(name).grpc, net.tls()))
    answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_poison_transactions_do_not_stop_the_committers(network: devnet.Network) -> None:
    consortium = network.consortium_dir
    endorser = SigningIdentity.load(consortium, "endorser-1")
    c1, c2 = committer_stub(network, "committer-1"), committer_stub(network, "committer-2")
    # Its first block (the plants' announcements): the next would be their announcement a
    # minute later, as nothing else posts on this network until the readings sent below.
    wait_for(lambda: height(c1) >= 1 and height(c2) >= 1, 90, "the devnet to commit a block")

    # The reported poison: CA-signed certificates (gridops, the endorser's organisation)
    # whose CN, or O, is not UTF-8; readings signed with them, endorsed by endorser-1.
    poisons = []
    for subject in ({"cn": NON_UTF8}, {"o": NON_UTF8}):
        der, key = hostile_certificate(consortium, "gridops", "meter", **subject)
        poisons.append(endorsed(hostile_envelope(der, key, "meter_reading",
                                                 reading("mallory", past_interval())), endorser))
    # A contract whose amount (price x energy) overflows the record's uint64: well-formed,
    # validly signed by plant and meter, so only the rules can refuse it.
    terms = new_terms(meter="meter-2", plant="plant-1", price_micro_per_kwh=1_000_000,
                      energy_wh=2**64 - 1, pv_panel_id="plant-1-pv-1",
                      plant_remaining_wh=2**64 - 1, coins_paid=0, coin_value_micro=1,
                      expires_at=int(time.time()) + 600, deliver_by=int(time.time()) + 3600)
    plant_terms = SigningIdentity.load(consortium, "plant-1").sign_envelope(
        terms.SerializeToString())
    contract = SigningIdentity.load(consortium, "meter-2").new_transaction(
        "supply_contract", energy_pb2.SupplyContract(plant_terms=plant_terms))
    overflow = endorsed(contract, endorser)

    before = max(height(c1), height(c2))
    answers = [broadcast(network, raw) for raw in [*poisons, overflow]]
    for answer in answers[:2]:  # refused at the door, or ordered (then judged below)
        assert answer in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                          grpc.StatusCode.UNAUTHENTICATED), answer
    assert answers[2] == grpc.StatusCode.OK

    # Later readings commit on both committers. They are sent here, not left to the
    # meter-agents: with 15-minute intervals an agent may have nothing to post for minutes.
    later = LoadGenerator(network.by_role("endorser")[0].grpc, network.tls(),
                          prepare_readings(consortium, ["meter-1", "meter-3"], 600), 10.0)
    later.start()
    try:
        wait_for(lambda: height(c1) >= before + 3 and height(c2) >= before + 3, 120,
                 "both committers to commit three more blocks")
    finally:
        later.stop()
    overflow_id = envelope_tx_id(contract)
    wait_for(lambda: c1.GetTransaction(committer_pb2.GetTransactionRequest(
        tx_id=overflow_id), timeout=5).block_number >= 0, 60, "the overflowing contract")
    for stub in (c1, c2):
        found = stub.GetTransaction(committer_pb2.GetTransactionRequest(tx_id=overflow_id))
        assert found.validation_code == Code.TX_VALIDATION_CODE_INVALID_BODY, found.message
        assert "amount" in found.message and "uint64" in found.message
    assert same_chain(network) >= before + 3
    for name in ("committer-1", "committer-2", "endorser-1"):
        assert serving(network, name), f"{name} is not SERVING"
