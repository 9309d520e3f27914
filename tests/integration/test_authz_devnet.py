"""The authorisation table on a real devnet (real processes, the launcher `gridctl devnet up`
uses): a meter cannot reach the orderers' client API, a certificate forged with another
organisation's TLS CA cannot join consensus, a meter cannot make a plant sign terms for
another meter; and the network itself (orderers' Exchange, Deliver, Broadcast, every agent)
keeps working under it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from devnet_support import committer_stub, height, ledger_network, wait_for

from gridctl import devnet
from gridledger.meteragent.v1 import meteragent_pb2, meteragent_pb2_grpc
from gridledger.orderer.v1 import consensus_pb2, consensus_pb2_grpc, orderer_pb2, orderer_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel

# The certificate forger of the unit tests (tests/unit/rpc), with the consortium's CA keys.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "rpc"))
from authz_support import issue_tls

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
    # The genuine orderers still exchange: blocks keep coming on both committers.
    c1, c2 = committer_stub(net, "committer-1"), committer_stub(net, "committer-2")
    wait_for(lambda: height(c1) >= 1 and height(c2) >= 1, 90, "blocks on both committers")
    start = height(c1)
    wait_for(lambda: height(c1) > start and height(c2) > start, 90, "more blocks")


def test_a_meter_asks_a_plant_only_for_its_own_terms(net: devnet.Network) -> None:
    plant = meteragent_pb2_grpc.MeterAgentServiceStub(
        secure_channel(net.node("plant-1").grpc, _as(net, "meter-2")))
    with pytest.raises(grpc.RpcError) as err:
        plant.ProposeContract(meteragent_pb2.ProposeContractRequest(meter="meter-1",
                                                                    energy_wh=100), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "meter-2 may ask only for its own account" in err.value.details()
