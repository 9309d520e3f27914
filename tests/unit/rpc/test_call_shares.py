"""Each member's share of a server's calls in progress (rpc/call_shares.py), enforced by
NodeServer's and AioNodeServer's authorisation interceptor over real mTLS on loopback.

Tried as a hostile member would: its clients open calls and never send their requests (or
hold streams open). Before, those calls took every handler thread of the threaded server (a
unary handler waits for its request on a thread) or every place of the asyncio server's
bound, so no other member's call was served: one member halted any node it could reach."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from authz_support import SilentCalls, answering_server, issue_tls
from grpc_health.v1 import health_pb2

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.aio_server import AioNodeServer
from gridledger_core.rpc.call_shares import CallShares, per_member
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles

CHAIN_INFO = "/gridledger.committer.v1.CommitterService/GetChainInfo"
WATCH = "/grpc.health.v1.Health/Watch"
SUBSCRIBE = "/gridledger.committer.v1.CommitterService/SubscribeCommits"
PLACES = 8  # the server's places: max_workers (threads) or gRPC's bound (asyncio)
SLOW_STREAM_CHECK_S = 5.0


def test_a_member_holds_at_most_its_share() -> None:
    shares = CallShares(2)
    assert shares.enter("community") and shares.enter("community")
    assert not shares.enter("community")  # its share is held
    assert shares.enter("gridops")  # another member's share is its own
    shares.leave("community")
    assert shares.held("community") == 1
    assert shares.enter("community")
    assert "holds its share of this server's calls in progress (2 calls" in \
        shares.try_enter("community")
    with pytest.raises(ValueError):
        CallShares(0)


def test_an_equal_share_of_the_places_is_at_least_one() -> None:
    assert per_member(64, 4) == 16
    assert per_member(8, 3) == 2
    assert per_member(3, 5) == 1
    assert per_member(10, 0) == 10


# The asyncio server as the endorser runs it: the members' shares alone bound its calls
# (gRPC's own bound, at which the asyncio server would stop taking calls instead of refusing
# them, is not set).
BOUNDS = {"threads": {"max_workers": PLACES},
          "asyncio": {"maximum_concurrent_rpcs": PLACES},
          "asyncio, shares only": {"calls_per_member": PLACES // 4}}


@pytest.fixture(params=list(BOUNDS))
def server(consortium_dir: Path, genesis: Genesis,
           request: pytest.FixtureRequest) -> Iterator[NodeServer | AioNodeServer]:
    assert len(genesis.organizations) == 4  # so each member's share is PLACES // 4 = 2
    node = answering_server(genesis, TlsFiles.for_node(consortium_dir, "committer-1"),
                            kind="threads" if request.param == "threads" else "asyncio",
                            **BOUNDS[request.param])
    yield node
    node.stop()


def _released(server: NodeServer | AioNodeServer, member: str, seconds: float) -> bool:
    """Does `member` hold no place on `server` within `seconds` (its calls' handlers end a
    moment after their calls)?"""
    deadline = time.monotonic() + seconds
    while server.shares.held(member) and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.shares.held(member) == 0


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
    assert _released(server, "community", 5.0)
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
    assert _released(server, "community", 5.0)


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


def test_a_unary_calls_handling_time_starts_when_its_request_arrives(
        server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    """Its handler now starts with the call (served as a stream, so the caller is judged
    first): the time the client takes to send its request is not the server's handling."""
    from prometheus_client import REGISTRY
    labels = {"grpc_type": "unary", "grpc_service": "gridledger.committer.v1.CommitterService",
              "grpc_method": "GetChainInfo"}
    before = REGISTRY.get_sample_value("grpc_server_handling_seconds_sum", labels) or 0.0
    delay = 1.0

    def late() -> Iterator[committer_pb2.GetChainInfoRequest]:
        time.sleep(delay)  # the call is open; its request comes a second later
        yield committer_pb2.GetChainInfoRequest()

    admin = TlsFiles.for_node(consortium_dir, "admin")
    with grpc.secure_channel(f"localhost:{server.port}", admin.channel_credentials()) as channel:
        channel.stream_unary(CHAIN_INFO, request_serializer=lambda m: m.SerializeToString(),
                             response_deserializer=committer_pb2.GetChainInfoResponse
                             .FromString)(late(), timeout=10)
    handled = REGISTRY.get_sample_value("grpc_server_handling_seconds_sum", labels) - before
    assert 0 < handled < delay / 2  # a trivial handler; before, more than the delay


class _SlowStreams(committer_pb2_grpc.CommitterServiceServicer):
    """A committer servicer whose SubscribeCommits answers once, then looks whether its
    client is still there only every few seconds (as the real one waits for the next block,
    up to a second)."""

    def SubscribeCommits(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield committer_pb2.SubscribeCommitsResponse()
        while context.is_active():
            time.sleep(SLOW_STREAM_CHECK_S)


def test_a_stream_its_client_left_holds_its_place_while_its_thread_is_busy(
        consortium_dir: Path, genesis: Genesis) -> None:
    """Tried as a hostile member would: open streams with a very short deadline, again and
    again. Each handler thread stays in the servicer until it notices the client left; if
    the place came back when the call ended, the member would take every thread."""
    server = answering_server(
        genesis, TlsFiles.for_node(consortium_dir, "committer-1"), max_workers=PLACES,
        replace={"gridledger.committer.v1.CommitterService": (
            committer_pb2_grpc.add_CommitterServiceServicer_to_server, _SlowStreams())})
    try:
        meter = TlsFiles.for_node(consortium_dir, "meter-1")
        with grpc.secure_channel(f"localhost:{server.port}",
                                 meter.channel_credentials()) as channel:
            subscribe = channel.unary_stream(
                SUBSCRIBE, request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=committer_pb2.SubscribeCommitsResponse.FromString)
            grpc.channel_ready_future(channel).result(timeout=10)  # no handshake in the way
            # Kept referenced: a call object collected is cancelled at once, while its thread
            # may still be sending, and then that thread really is free.
            streams = [subscribe(committer_pb2.SubscribeCommitsRequest(), timeout=1.0)
                       for _ in range(2)]
            for stream in streams:
                next(stream)
            time.sleep(1.5)  # both calls are over; their threads are still in the servicer
            with pytest.raises(grpc.RpcError) as third:
                next(subscribe(committer_pb2.SubscribeCommitsRequest(), timeout=5))
            assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # given back once the threads are done
        assert _released(server, "community", 3 * SLOW_STREAM_CHECK_S)
    finally:
        server.stop()


def test_a_caller_is_counted_before_its_account_is_looked_up(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    """A meter agent looks ledger-registered devices up at its committer: certificates with
    ever new names, issued by a hostile member's own CA, must not hold threads (or those
    lookups) beyond that member's share while the lookups are out."""
    release = threading.Event()

    def slow_lookup(name: str) -> Any:
        release.wait(10)
        return None

    server = answering_server(genesis, TlsFiles.for_node(consortium_dir, "committer-1"),
                              account_lookup=slow_lookup, max_workers=PLACES)
    try:
        unknown = [issue_tls(consortium_dir, "community", f"meter-{90 + i}", "community",
                             "meter", tmp_path / str(i)) for i in range(PLACES)]
        outcomes: list[grpc.StatusCode] = []
        callers = [threading.Thread(target=lambda tls=tls: outcomes.append(
            _chain_info(server.port, tls))) for tls in unknown]
        for caller in callers:
            caller.start()
        time.sleep(1.0)
        # community's two places are taken by lookups; its other calls were refused at once
        assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == PLACES - 2
        assert _chain_info(server.port, TlsFiles.for_node(consortium_dir, "admin")) \
            == grpc.StatusCode.OK
        release.set()
        for caller in callers:
            caller.join(timeout=10)
        assert outcomes.count(grpc.StatusCode.PERMISSION_DENIED) == 2
    finally:
        release.set()
        server.stop()


SUBMIT_BATCH = "/gridledger.endorser.v1.EndorserService/SubmitBatch"


def test_a_member_holds_at_most_its_share_of_large_calls() -> None:
    shares = CallShares(4, large_share=2)
    assert shares.enter("community", large=True) and shares.enter("community", large=True)
    assert "share of this server's batch calls in progress (2" in \
        shares.try_enter("community", large=True)  # its share of large calls is held
    assert shares.enter("community")  # small calls still fit in its share
    assert shares.enter("gridops", large=True)  # another member's share is its own
    shares.leave("community", large=True)
    assert shares.held("community", large=True) == 1 and shares.held("community") == 2
    assert shares.enter("community", large=True) and shares.enter("community")
    assert not shares.enter("community")  # 4 of 4: its whole share
    assert CallShares(1).large_share == 1  # never more than the share itself


def test_a_refusal_names_the_bound_that_refused_it_whatever_ends_after() -> None:
    """The reason is decided with the refusal, under its lock: a call that ends between the
    refusal and its message (another handler thread) does not change what the refused
    caller is told (it was once told "calls in progress" for a batch-share refusal)."""
    shares = CallShares(4, large_share=2)
    assert shares.enter("community", large=True) and shares.enter("community", large=True)
    refusal = shares.try_enter("community", large=True)
    shares.leave("community", large=True)  # ends before the refused call is answered
    assert refusal is not None and "batch calls in progress (2" in refusal
    assert shares.held("community", large=True) == 1  # the refused call took nothing
    assert all(shares.enter("community") for _ in range(3))
    refusal = shares.try_enter("community", large=True)  # 4 of 4 held: the whole share
    shares.leave("community")
    assert refusal is not None and "calls in progress (4 calls" in refusal
    assert shares.try_enter("community", large=True) is None


@pytest.fixture(params=["threads", "asyncio"])
def roomy_server(consortium_dir: Path, genesis: Genesis,
                 request: pytest.FixtureRequest) -> Iterator[NodeServer | AioNodeServer]:
    """A server with 32 places per member (threads: a handler thread for each)."""
    bound = ({"max_workers": 4 * 32 + 4} if request.param == "threads" else {})
    node = answering_server(genesis, TlsFiles.for_node(consortium_dir, "endorser-1"),
                            kind=request.param, calls_per_member=32, **bound)
    yield node
    node.stop()


def test_batch_calls_that_never_finish_their_request_hold_at_most_16_places(
        roomy_server: NodeServer | AioNodeServer, consortium_dir: Path) -> None:
    """Tried as a hostile member would: its clients start batch calls (each may carry a
    request of 4 MiB, which gRPC assembles whole before the handler runs) and never finish
    sending them. Before, every place of its share could pin such a request (128 x 4 MiB on
    an endorser); now at most 16 of its calls are batches, the rest are refused at once with
    a hint, and its other calls, and every other member's, are still served."""
    server = roomy_server
    hostile = TlsFiles.for_node(consortium_dir, "meter-1")  # community
    silent = SilentCalls(f"localhost:{server.port}", hostile, SUBMIT_BATCH, 20)
    try:
        refused = silent.refused()
        assert len(refused) == 4
        for code, details, hint in refused:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "community holds its share of this server's batch calls" in details
            assert hint > 0
        assert server.shares.held("community", large=True) == 16
        assert _chain_info(server.port, hostile) == grpc.StatusCode.OK  # a small call fits
        other = SilentCalls(f"localhost:{server.port}",
                            TlsFiles.for_node(consortium_dir, "admin"), SUBMIT_BATCH, 2)
        try:
            assert other.refused() == [] and server.shares.held("gridops", large=True) == 2
        finally:
            other.close()
    finally:
        silent.close()
    assert _released(server, "community", 5.0)
    assert server.shares.held("community", large=True) == 0
