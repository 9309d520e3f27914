"""An orderer's Deliver stream opens with a header (height_notifier.STREAM_OPEN), so the
block follower of a node knows it reached an orderer on an idle cluster, where the stream
delivers nothing (`gridledger_ledger_follower_orderer_contact_timestamp_seconds`, alert
GridLedgerNodeCutOffFromOrderers). The real OrdererServicer on a real gRPC server with
mutual TLS; the follower's side with other orderers: tests/unit/core/test_follower_contact.py."""

from __future__ import annotations

import time
from concurrent import futures
from pathlib import Path

import grpc
from orderer_helpers import Orderer
from prometheus_client import REGISTRY

from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.follower import BlockFollower
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.height_notifier import STREAM_OPEN
from gridledger_core.rpc.tls import SERVER_OPTIONS, TlsFiles
from gridledger_core.storage import MemoryStore

CONTACT = "gridledger_ledger_follower_orderer_contact_timestamp_seconds"


def test_an_idle_orderers_deliver_opens_with_its_header_and_counts_as_contact(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    orderer = Orderer(consortium_dir, genesis, tmp_path / "orderer")  # no block: idle
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=SERVER_OPTIONS)
    orderer_pb2_grpc.add_OrdererServiceServicer_to_server(orderer.api, server)
    port = server.add_secure_port(
        "localhost:0", TlsFiles.for_node(consortium_dir, "orderer-1").server_credentials())
    server.start()
    committer = TlsFiles.for_node(consortium_dir, "committer-1")
    try:
        with grpc.secure_channel(f"localhost:{port}", committer.channel_credentials()) as ch:
            call = orderer_pb2_grpc.OrdererServiceStub(ch).Deliver(
                orderer_pb2.DeliverRequest(start_number=0, follow=True), timeout=10)
            assert STREAM_OPEN in call.initial_metadata()  # before any block
            call.cancel()
        follower = BlockFollower(Ledger(MemoryStore(), genesis, block_verifier(genesis)),
                                 [("orderer-1", f"localhost:{port}")], committer,
                                 idle_timeout=1.0)
        started = REGISTRY.get_sample_value(CONTACT) or 0.0
        follower.start()
        try:
            deadline = time.monotonic() + 15
            while (REGISTRY.get_sample_value(CONTACT) or 0.0) <= started:
                assert time.monotonic() < deadline, "no contact with the orderer"
                time.sleep(0.1)
        finally:
            follower.stop()
    finally:
        server.stop(0).wait()
