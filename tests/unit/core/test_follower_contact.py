"""Whether a committer reaches any orderer, shown while the cluster is idle too
(`gridledger_ledger_follower_orderer_contact_timestamp_seconds`, alert
GridLedgerNodeCutOffFromOrderers). A node cut off from every orderer keeps its height and
stays SERVING (a restart would not mend it); with no blocks being made, the alert on its
height falling behind cannot fire, so the cut-off went unseen. An idle stream delivers
nothing, so a connection that came up counts as contact; one that never does does not.

In-process orderers (`DeliverServer`) over mTLS."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from prometheus_client import REGISTRY
from signed_blocks import DeliverServer, wait_for

from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.follower import BlockFollower
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.tls import SERVER_OPTIONS, TlsFiles
from gridledger_core.storage import MemoryStore

CONTACT = "gridledger_ledger_follower_orderer_contact_timestamp_seconds"
IDLE_TIMEOUT = 1.0  # the follower ends a quiet stream after this and opens another


def contact() -> float:
    return REGISTRY.get_sample_value(CONTACT) or 0.0


def _follower(consortium_dir: Path, genesis: Genesis, address: str) -> BlockFollower:
    return BlockFollower(Ledger(MemoryStore(), genesis, block_verifier(genesis)),
                         [("orderer-1", address)],
                         TlsFiles.for_node(consortium_dir, "committer-1"),
                         idle_timeout=IDLE_TIMEOUT)


def test_an_idle_orderer_reached_counts_as_contact(consortium_dir: Path,
                                                   genesis: Genesis) -> None:
    orderer = DeliverServer(consortium_dir)  # no block at all: an idle cluster
    follower = _follower(consortium_dir, genesis, orderer.address)
    started = contact()
    follower.start()
    try:
        wait_for(lambda: contact() > started, "contact with the idle orderer", timeout=15)
        later = contact()
        wait_for(lambda: contact() > later, "contact again, with the next stream", timeout=15)
    finally:
        follower.stop()
        orderer.stop()


class _Refusing(orderer_pb2_grpc.OrdererServiceServicer):
    """An orderer that refuses this node's Deliver after the handshake (its role, its
    member's share), as a hostile or misconfigured one may."""

    def Deliver(self, request: orderer_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[orderer_pb2.DeliverResponse]:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        yield orderer_pb2.DeliverResponse()  # never reached


def test_an_orderer_that_refuses_the_stream_is_no_contact(consortium_dir: Path,
                                                         genesis: Genesis) -> None:
    """Its connection comes up (TLS and all), yet the node gets no block from it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=SERVER_OPTIONS)
    orderer_pb2_grpc.add_OrdererServiceServicer_to_server(_Refusing(), server)
    port = server.add_secure_port(
        "localhost:0", TlsFiles.for_node(consortium_dir, "orderer-1").server_credentials())
    server.start()
    follower = _follower(consortium_dir, genesis, f"localhost:{port}")
    started = contact()
    follower.start()
    try:
        time.sleep(4 * IDLE_TIMEOUT)  # several streams opened and refused
    finally:
        follower.stop()
        server.stop(0).wait()
    assert contact() == started


def test_no_orderer_reached_leaves_the_last_contact_as_it_was(consortium_dir: Path,
                                                              genesis: Genesis) -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    follower = _follower(consortium_dir, genesis, address)
    started = contact()  # the follower's start: the alert's grace
    follower.start()
    try:
        time.sleep(4 * IDLE_TIMEOUT)  # several streams tried and failed
    finally:
        follower.stop()
    assert contact() == started
    assert follower.healthy  # not this node's fault: SERVING, and the alert says it
