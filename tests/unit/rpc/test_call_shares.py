"""Each member's share of a server's calls in progress (rpc/call_shares.py), enforced by
NodeServer's and AioNodeServer's authorisation interceptor over real mTLS on loopback.

Tried as a hostile member would: its clients open calls and never send their requests (or
hold streams open). Before, those calls took every handler thread of the threaded server (a
unary handler waits for its request on a thread) or every place of the asyncio server's
bound, so no other member's call was served: one member halted any node it could reach."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from authz_support import SilentCalls, answering_server
from grpc_health.v1 import health_pb2

from gridledger.committer.v1 import committer_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.aio_server import AioNodeServer
from gridledger_core.rpc.call_shares import CallShares, per_member
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles

CHAIN_INFO = "/gridledger.committer.v1.CommitterService/GetChainInfo"
WATCH = "/grpc.health.v1.Health/Watch"
PLACES = 8  # the server's places: max_workers (threads) or gRPC's bound (asyncio)


def test_a_member_holds_at_most_its_share() -> None:
    shares = CallShares(2)
    assert shares.enter("community") and shares.enter("community")
    assert not shares.enter("community")  # its share is held
    assert shares.enter("gridops")  # another member's share is its own
    shares.leave("community")
    assert shares.held("community") == 1
    assert shares.enter("community")
    assert "holds its share of this server's calls in progress (2 calls" in \
        shares.refusal("community")
    with pytest.raises(ValueError):
        CallShares(0)


def test_an_equal_share_of_the_places_is_at_least_one() -> None:
    assert per_member(64, 4) == 16
    assert per_member(8, 3) == 2
    assert per_member(3, 5) == 1
    assert per_member(10, 0) == 10


@pytest.fixture(params=["threads", "asyncio"])
def server(consortium_dir: Path, genesis: Genesis,
           request: pytest.FixtureRequest) -> Iterator[NodeServer | AioNodeServer]:
    assert len(genesis.organizations) == 4  # so each member's share is PLACES // 4 = 2
    bound = ({"max_workers": PLACES} if request.param == "threads"
             else {"maximum_concurrent_rpcs": PLACES})
    node = answering_server(genesis, TlsFiles.for_node(consortium_dir, "committer-1"),
                            kind=request.param, **bound)
    yield node
    node.stop()


def _chain_info(port: int, tls: TlsFiles) -> grpc.StatusCode:
    with grpc.secure_channel(f"localhost:{port}", tls.channel_credentials()) as channel:
        try:
            channel.unary_unary(CHAIN_INFO, request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=committer_pb2.GetChainInfoResponse
                                .FromString)(committer_pb2.GetChainInfoRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def test_calls_that_never_send_their_request_hold_only_their_members_share(
        server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    hostile = TlsFiles.for_node(consortium_dir, "meter-1")  # community
    silent = SilentCalls(f"localhost:{server.port}", hostile, CHAIN_INFO, PLACES)
    try:
        refused = silent.refused()
        # Its share (2 of the 8 places) is held; every call beyond it was refused at once,
        # with a hint to come back, and holds nothing.
        assert len(refused) == PLACES - 2
        for code, details, hint in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "community holds its share of this server's calls in progress" in details
            assert hint > 0
        assert server.shares.held("community") == 2
        # Every other member is served at once, even the hostile member's own organisation
        # is not (its share is held).
        for caller in ("admin", "committer-2", "plant-1"):
            assert _chain_info(server.port, TlsFiles.for_node(consortium_dir, caller)) \
                == grpc.StatusCode.OK, caller
        assert _chain_info(server.port, hostile) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        silent.close()
    # Its places come back when its calls end.
    for _ in range(50):
        if server.shares.held("community") == 0:
            break
        threading.Event().wait(0.1)
    assert server.shares.held("community") == 0
    assert _chain_info(server.port, hostile) == grpc.StatusCode.OK


def test_streams_held_open_count_against_their_member(
        server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    meter = TlsFiles.for_node(consortium_dir, "meter-1")
    with grpc.secure_channel(f"localhost:{server.port}", meter.channel_credentials()) as channel:
        watch = channel.unary_stream(
            WATCH, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        held = [watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        for stream in held:
            next(stream)  # open, answered, and kept open for the next change
        with pytest.raises(grpc.RpcError) as third:
            next(watch(health_pb2.HealthCheckRequest(), timeout=5))
        assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in held:
            stream.cancel()
    for _ in range(50):
        if server.shares.held("community") == 0:
            break
        threading.Event().wait(0.1)
    assert server.shares.held("community") == 0


def test_a_unary_call_without_its_request_is_refused(
        server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    admin = TlsFiles.for_node(consortium_dir, "admin")
    with (grpc.secure_channel(f"localhost:{server.port}", admin.channel_credentials())
          as channel, pytest.raises(grpc.RpcError) as err):
        channel.stream_unary(CHAIN_INFO)(iter(()), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CommitterService/GetChainInfo requires exactly one request message" in \
        err.value.details()
    assert server.shares.held("gridops") == 0


def test_unary_calls_are_still_measured_as_unary(
        server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    from prometheus_client import REGISTRY
    labels = {"grpc_type": "unary", "grpc_service": "gridledger.committer.v1.CommitterService",
              "grpc_method": "GetChainInfo", "grpc_code": "OK"}
    before = REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0
    assert _chain_info(server.port, TlsFiles.for_node(consortium_dir, "admin")) \
        == grpc.StatusCode.OK
    assert REGISTRY.get_sample_value("grpc_server_handled_total", labels) == before + 1
