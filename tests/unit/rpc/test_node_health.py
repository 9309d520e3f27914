"""A node's two health answers (NodeServer.set_health, both server kinds), as the kubelet
asks them: the overall service "" is the liveness probe's, the role's service name the
readiness probe's (k8s manifests). Not ready must leave the node live, so an outage of what
it depends on takes it out of service without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from authz_support import answering_server, channel_to
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gridledger_core.genesis import Genesis
from gridledger_core.rpc.aio_server import AioNodeServer
from gridledger_core.rpc.health_board import HealthBoard
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles

SERVICE = "gridledger.meteragent.v1.MeterAgentService"
Status = health_pb2.HealthCheckResponse.ServingStatus


@pytest.fixture(params=["threads", "asyncio"])
def served(consortium_dir: Path, genesis: Genesis, request: pytest.FixtureRequest
           ) -> Iterator[tuple[NodeServer | AioNodeServer, TlsFiles]]:
    tls = TlsFiles.for_node(consortium_dir, "committer-1")
    node = answering_server(genesis, tls, kind=request.param)
    yield node, tls
    node.stop()


def _statuses(port: int, tls: TlsFiles) -> tuple[str, str]:
    with channel_to(port, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return tuple(Status.Name(stub.Check(health_pb2.HealthCheckRequest(service=s),
                                            timeout=5).status)
                     for s in ("", SERVICE))  # type: ignore[return-value]


def _eventually(port: int, tls: TlsFiles, expected: tuple[str, str]) -> tuple[str, str]:
    """The asyncio server sets its statuses on its loop, a moment after the call."""
    deadline = time.monotonic() + 5
    while (seen := _statuses(port, tls)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_liveness_and_readiness_are_answered_apart(
        served: tuple[NodeServer | AioNodeServer, TlsFiles]) -> None:
    server, tls = served
    assert _statuses(server.port, tls) == ("SERVING", "SERVING")
    board = HealthBoard()
    board.attach(server.set_health)
    ledger = board.readiness("settlement.ledger")
    ledger(False)  # its committer away: out of service, not restarted
    assert _eventually(server.port, tls, ("SERVING", "NOT_SERVING")) == (
        "SERVING", "NOT_SERVING")
    board.reporter("settlement")(False)  # its own failure: a restart may mend it
    assert _eventually(server.port, tls, ("NOT_SERVING", "NOT_SERVING")) == (
        "NOT_SERVING", "NOT_SERVING")
    board.reporter("settlement")(True)
    ledger(True)
    assert _eventually(server.port, tls, ("SERVING", "SERVING")) == ("SERVING", "SERVING")

