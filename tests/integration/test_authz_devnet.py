"""The authorisation table on a real devnet (real processes, the launcher `gridctl devnet up`
uses): a meter cannot reach the orderers' client API, a certificate forged with another
organisation's TLS CA cannot join consensus, a meter cannot make a plant sign terms for
another meter, a member holding calls open takes only its share of any node; and the network
itself (orderers' Exchange, Deliver, Broadcast, every agent) keeps working under it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from devnet_support import committer_stub, height, ledger_network, wait_for

from gridctl import devnet
from gridctl.loadgen import LoadGenerator, prepare_readings
from gridledger.committer.v1 import committer_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger.orderer.v1 import consensus_pb2, consensus_pb2_grpc, orderer_pb2, orderer_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel

# The certificate forger of the unit tests (tests/unit/rpc), with the consortium's CA keys.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "rpc"))
from authz_support import SilentCalls, issue_tls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    with ledger_network(tmp_path_factory.mktemp("authz-devnet"), devnet.ROLE_ORDER) as network:
        yield network


def _as(net: devnet.Network, name: str) -> TlsFiles:
    return TlsFiles.for_node(net.consortium_dir, name)


def test_a_meter_cannot_broadcast_or_read_blocks_from_an_orderer(net: devnet.Network) -> None:
    orderer = orderer_pb2_grpc.OrdererServiceStub(
        secure_channel(net.node("orderer-1").grpc, _as(net, "meter-1")))
    with pytest.raises(grpc.RpcError) as broadcast:
        orderer.Broadcast(orderer_pb2.BroadcastRequest(endorsed_transaction=b"x"), timeout=10)
    assert broadcast.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "OrdererService/Broadcast: role meter of community" in broadcast.value.details()
    with pytest.raises(grpc.RpcError) as deliver:
        next(orderer.Deliver(orderer_pb2.DeliverRequest(start_number=0), timeout=10))
    assert deliver.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_forged_orderer_certificate_cannot_join_consensus(net: devnet.Network,
                                                           tmp_path: Path) -> None:
    forged = issue_tls(net.consortium_dir, "community", "orderer-2", "utility", "orderer",
                       tmp_path)
    stub = consensus_pb2_grpc.ConsensusServiceStub(
        secure_channel(net.node("orderer-1").grpc, forged))
    with pytest.raises(grpc.RpcError) as err:
        stub.Exchange(iter([consensus_pb2.ExchangeRequest(
            message=consensus_pb2.ConsensusMessage())]), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The genuine orderers still exchange: blocks keep coming on both committers. Readings
    # are sent for it: on this network without demo traffic the next block would otherwise
    # be the plants' announcement a minute later.
    c1, c2 = committer_stub(net, "committer-1"), committer_stub(net, "committer-2")
    wait_for(lambda: height(c1) >= 1 and height(c2) >= 1, 90, "blocks on both committers")
    start = height(c1)
    readings = LoadGenerator(net.by_role("endorser")[0].grpc, net.tls(),
                             prepare_readings(net.consortium_dir, ["meter-1"], 100), 10.0)
    readings.start()
    try:
        wait_for(lambda: height(c1) > start and height(c2) > start, 90, "more blocks")
    finally:
        readings.stop()


def test_a_meter_asks_a_plant_only_for_its_own_terms(net: devnet.Network) -> None:
    plant = meteragent_pb2_grpc.MeterAgentServiceStub(
        secure_channel(net.node("plant-1").grpc, _as(net, "meter-2")))
    with pytest.raises(grpc.RpcError) as err:
        plant.ProposeContract(meteragent_pb2.ProposeContractRequest(meter="meter-1",
                                                                    energy_wh=100), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "meter-2 may ask only for its own account" in err.value.details()


def test_a_member_holding_calls_open_on_every_node_does_not_stop_the_others(
        net: devnet.Network) -> None:
    """Tried as a hostile member would: solarco's plant opens calls on every kind of node and
    never sends their requests. Before, they took every handler thread of the orderer,
    committer and meter agent (a unary handler waits for its request on a thread) and every
    place of the endorser's call bound: no other member's call was served."""
    hostile = _as(net, "plant-1")  # solarco
    targets = [("orderer-1", "/grpc.health.v1.Health/Check", 90),
               ("committer-1", "/gridledger.committer.v1.CommitterService/GetChainInfo", 90),
               ("endorser-1", "/gridledger.endorser.v1.EndorserService/GetBook", 600),
               ("meter-2", "/gridledger.meteragent.v1.MeterAgentService/GetPlantDirectory", 60)]
    held = [SilentCalls(net.node(name).grpc, hostile, method, count)
            for name, method, count in targets]
    try:
        # The other members are served by every node, at once.
        admin = _as(net, "admin")  # gridops
        calls = [
            lambda: committer_stub(net, "committer-1").GetChainInfo(
                committer_pb2.GetChainInfoRequest(), timeout=5),
            lambda: orderer_pb2_grpc.OrdererServiceStub(
                secure_channel(net.node("orderer-1").grpc, admin)).ListEvidence(
                orderer_pb2.ListEvidenceRequest(), timeout=5),
            lambda: endorser_pb2_grpc.EndorserServiceStub(
                secure_channel(net.node("endorser-1").grpc, admin)).GetBook(
                endorser_pb2.GetBookRequest(), timeout=5),
            lambda: meteragent_pb2_grpc.MeterAgentServiceStub(
                secure_channel(net.node("meter-2").grpc, admin)).GetStatus(
                meteragent_pb2.GetStatusRequest(), timeout=5)]
        for call in calls:
            try:
                call()
            except grpc.RpcError as exc:  # answered, if not OK (GetBook of slot 0)
                assert exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED,  # type: ignore[attr-defined]
                                          grpc.StatusCode.DEADLINE_EXCEEDED), exc
        for (name, _, _), silent in zip(targets, held, strict=True):
            refused = silent.refused()  # beyond solarco's share, at once, with a hint
            assert refused, name
            assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint > 0
                       for code, _, hint in refused), (name, refused[:3])
        # And the network goes on: another member's transaction (gridops's admin registers a
        # device; gridctl waits for its commit) reaches both committers.
        c1, c2 = committer_stub(net, "committer-1"), committer_stub(net, "committer-2")
        start = height(c1)
        for step in ("issue", "register"):
            done = subprocess.run(
                [sys.executable, "-m", "gridctl.main", "identity", step, "meter-71", "--org",
                 "community", "--role", "meter", "--dir", str(net.directory)],
                capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: height(c1) > start and height(c2) > start, 60, "its block on both")
    finally:
        for silent in held:
            silent.close()
