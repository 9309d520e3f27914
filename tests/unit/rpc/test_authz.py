"""The authorisation table, enforced by NodeServer's interceptor over real mTLS on loopback
(and by AioNodeServer's, the endorser's asyncio server): every RPC with every role's real
certificate of the devnet consortium, certificates forged with another organisation's TLS CA,
and consensus peers pinned to genesis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from authz_support import (
    all_methods,
    answering_server,
    channel_to,
    full_name,
    invoke,
    issue_tls,
)

from gridledger.meteragent.v1 import meteragent_pb2
from gridledger.orderer.v1 import consensus_pb2, consensus_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.aio_server import AioNodeServer
from gridledger_core.rpc.authz import TABLE, markdown_table
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore
from gridledger_orderer.node import OrdererNode, OrderingParams
from gridledger_orderer.service import ConsensusServicer
from gridledger_orderer.store import OrdererStore
from gridledger_orderer.transport import Transport

# One real identity per role in the devnet topology.
CALLERS = ["orderer-1", "endorser-1", "committer-1", "meter-1", "plant-1", "admin", "issuer"]
EVERYONE = set(CALLERS)
# What each RPC allows, written out independently of the code's table.
EXPECTED: dict[str, set[str]] = {
    "OrdererService/Broadcast": {"endorser-1", "admin"},
    "OrdererService/BroadcastBatch": {"endorser-1", "admin"},
    "OrdererService/Deliver": {"orderer-1", "committer-1", "endorser-1", "admin"},
    "OrdererService/ListEvidence": {"orderer-1", "committer-1", "endorser-1", "admin"},
    "ConsensusService/Exchange": {"orderer-1"},
    "EndorserService/SubmitTransaction": {"meter-1", "plant-1", "issuer", "admin"},
    "EndorserService/SubmitBatch": {"meter-1", "plant-1", "issuer", "admin"},
    "EndorserService/RequestOptions": {"meter-1", "admin"},
    "EndorserService/RequestOptionsBatch": {"meter-1", "admin"},
    "EndorserService/GetBook": EVERYONE,
    "MeterAgentService/GetStatus": {"admin"},
    "MeterAgentService/GetPlantDirectory": {"meter-1", "plant-1", "admin"},
    "MeterAgentService/RankPlants": {"meter-1", "admin"},
    "MeterAgentService/ProposeContract": {"meter-1"},
    # Money and settlement: holders and operators (the account itself is checked by the
    # committer, settlement_queries.may_read); no node role.
    **{f"CommitterService/{m}": {"meter-1", "plant-1", "admin", "issuer"}
       for m in ("GetAccount", "ListAccountEntries", "GetSlotSettlement",
                 "ListMeterStatements")},
}
ROOT = Path(__file__).resolve().parents[3]


def expected_callers(method: str) -> set[str]:
    short = method.lstrip("/").rpartition(".")[2]
    if short in EXPECTED:
        return EXPECTED[short]
    if short.startswith(("CommitterService/", "Health/", "ServerReflection/")):
        return EVERYONE
    return EXPECTED[short]


@pytest.fixture(scope="module", params=["threads", "asyncio"])
def server(consortium_dir: Path, genesis: Genesis,
           request: pytest.FixtureRequest) -> Iterator[NodeServer | AioNodeServer]:
    node = answering_server(genesis, TlsFiles.for_node(consortium_dir, "committer-1"),
                            kind=request.param)
    yield node
    node.stop()


def test_every_served_method_has_exactly_one_rule() -> None:
    assert set(TABLE) == set(all_methods())


def test_operations_doc_shows_the_code_table() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    shown = re.search(r"<!-- authz-table -->\n(.*?)\n<!-- /authz-table -->", doc, re.S)
    assert shown is not None, "docs/operations.md lacks the authz-table markers"
    assert shown.group(1).strip() == markdown_table()


def test_each_role_may_call_exactly_what_the_table_allows(
        server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    wrong = []
    for caller in CALLERS:
        with channel_to(server.port, TlsFiles.for_node(consortium_dir, caller)) as channel:
            for name, method in all_methods().items():
                request = (meteragent_pb2.ProposeContractRequest(meter=caller)
                           if method.name == "ProposeContract" else None)
                code = invoke(channel, method, request)
                # Allowed calls reach the servicer (which answers OK, or UNKNOWN for the
                # health servicer's unimplemented List); refused ones never do.
                if (code != grpc.StatusCode.PERMISSION_DENIED) != (
                        caller in expected_callers(name)):
                    wrong.append((caller, name, code))
    assert wrong == []


def test_refusal_names_the_rule(server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    meter = TlsFiles.for_node(consortium_dir, "meter-1")
    with channel_to(server.port, meter) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/gridledger.orderer.v1.OrdererService/Broadcast")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == ("OrdererService/Broadcast: role meter of community "
                                   "(meter-1) may not call; allowed: endorser, admin")


def test_a_meter_asks_a_plant_for_terms_only_for_itself(
        server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    method = all_methods()["/gridledger.meteragent.v1.MeterAgentService/ProposeContract"]
    with channel_to(server.port, TlsFiles.for_node(consortium_dir, "meter-2")) as channel:
        own = invoke(channel, method, meteragent_pb2.ProposeContractRequest(meter="meter-2"))
        other = invoke(channel, method, meteragent_pb2.ProposeContractRequest(meter="meter-1"))
    assert (own, other) == (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize(("ca_org", "cn", "org", "ou", "reason"), [
    # community's TLS CA claims gridops' admin: chains to a bundle root, wrong issuer.
    ("community", "admin", "gridops", "admin", "was not issued by gridops's TLS CA"),
    # community's own CA, but no such account / not that account's role.
    ("community", "meter-9", "community", "meter", "is not a genesis account"),
    ("community", "meter-1", "community", "admin", "is not a genesis account"),
    ("community", "meter-1", "community", "wizard", "unknown role"),
])
def test_forged_client_certificates_are_refused(
        server: NodeServer | AioNodeServer, consortium_dir: Path, tmp_path: Path,
        ca_org: str, cn: str, org: str, ou: str, reason: str) -> None:
    forged = issue_tls(consortium_dir, ca_org, cn, org, ou, tmp_path)
    method = all_methods()["/gridledger.committer.v1.CommitterService/GetChainInfo"]
    with channel_to(server.port, forged) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(full_name(method))(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason in err.value.details()


# -- consensus peers: the real ConsensusServicer over a real (unstarted) OrdererNode ---------

@pytest.fixture()
def consensus(consortium_dir: Path, genesis: Genesis,
              tmp_path: Path) -> Iterator[tuple[NodeServer, OrdererNode]]:
    store = OrdererStore(LmdbStore(tmp_path / "orderer"))
    node = OrdererNode(genesis, SigningIdentity.load(consortium_dir, "orderer-1"), store,
                       Transport([], None), OrderingParams(), lambda block: None)  # type: ignore[arg-type]
    register = consensus_pb2_grpc.add_ConsensusServiceServicer_to_server
    server = answering_server(genesis, TlsFiles.for_node(consortium_dir, "orderer-1"), {
        "gridledger.orderer.v1.ConsensusService": (register, ConsensusServicer(node, genesis))})
    yield server, node
    server.stop()
    store.close()


def _exchange(port: int, tls: TlsFiles) -> grpc.StatusCode:
    message = consensus_pb2.ExchangeRequest(message=consensus_pb2.ConsensusMessage())
    with channel_to(port, tls) as channel:
        try:
            consensus_pb2_grpc.ConsensusServiceStub(channel).Exchange(iter([message]),
                                                                     timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def _received(node: OrdererNode) -> list[str]:
    senders = []
    while True:  # the consensus thread is not running: read its inbox directly
        item = node._inbox.get(0.0)
        if not isinstance(item, tuple):
            return senders
        senders.append(item[0])


def test_exchange_accepts_a_genesis_orderer_by_its_pinned_certificate(
        consensus: tuple[NodeServer, OrdererNode], consortium_dir: Path) -> None:
    server, node = consensus
    code = _exchange(server.port, TlsFiles.for_node(consortium_dir, "orderer-2"))
    assert (code, _received(node)) == (grpc.StatusCode.OK, ["orderer-2"])


@pytest.mark.parametrize("ca_org", [
    "community",  # another organisation's TLS CA (community runs no orderer)
    "utility",  # orderer-2's own organisation, but not the certificate genesis pins
])
def test_exchange_refuses_an_orderer_subject_without_the_pinned_certificate(
        consensus: tuple[NodeServer, OrdererNode], consortium_dir: Path, genesis: Genesis,
        tmp_path: Path, ca_org: str) -> None:
    server, node = consensus
    org = next(o.org for o in genesis.orderers if o.id == "orderer-2")
    assert org == "utility"
    forged = issue_tls(consortium_dir, ca_org, "orderer-2", org, "orderer", tmp_path)
    assert _exchange(server.port, forged) == grpc.StatusCode.PERMISSION_DENIED
    assert _received(node) == []
