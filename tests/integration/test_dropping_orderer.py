"""An orderer that acknowledges and drops, on the network users run, tried as a hostile member
would: it holds orderer-1's keys (its organisation's TLS certificate, the address the endorser
lists first, so the one it tries first) and answers OK to every transaction at once, keeping
none. The other three orderers carry on (f = 1).

Before, the endorser told its client OK on that word, orderer-1 kept the lead by answering in
time, and the readings never reached a block. Now the endorser's watch of acknowledgements
(ack_watch.py) sends them again to the other orderers once overdue, orderer-1 is struck, and
they commit. The endorser runs with `--ack-lost-after-s 5` (30 s by default, above a replica's
lag bound: this network's replicas follow orderers that withhold nothing) so the test takes
seconds, not half a minute.

The watch outlives the endorser (ack_journal.py): killed with SIGKILL within those seconds of
its OK and started again, it still gets the dropped readings committed. Before, the watch
was in memory only and they were lost for good."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from devnet_support import committer_stub, ledger_network, metric, wait_for

from gridctl import devnet
from gridctl.loadgen import prepare_readings
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import envelope_tx_id

pytestmark = pytest.mark.integration


class DroppingOrderer(orderer_pb2_grpc.OrdererServiceServicer):
    """OK, at once, to every transaction; keeps nothing (Deliver and the rest: UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.acknowledged: list[str] = []

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       context: grpc.ServicerContext) -> orderer_pb2.BroadcastBatchResponse:
        results = []
        for raw in request.endorsed_transactions:
            tx_id = envelope_tx_id(envelope_pb2.EndorsedTransaction.FromString(raw).envelope)
            self.acknowledged.append(tx_id)
            results.append(orderer_pb2.BroadcastResult(tx_id=tx_id))
        return orderer_pb2.BroadcastBatchResponse(results=results)


def _quick_watch(network: devnet.Network) -> None:
    for endorser in network.by_role("endorser"):
        endorser.args += ["--ack-lost-after-s", "5"]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    """The ledger roles, the endorser judging acknowledgements overdue after 5 s."""
    with ledger_network(tmp_path_factory.mktemp("dropping"), adjust=_quick_watch) as network:
        yield network


@pytest.fixture(scope="module")
def dropper(net: devnet.Network) -> Iterator[DroppingOrderer]:
    """orderer-1 replaced, before any traffic, by one that acknowledges and drops."""
    orderer = net.node("orderer-1")
    devnet.stop_node(orderer)  # before any traffic: the endorser has not called it yet
    dropping = DroppingOrderer()
    server = grpc.server(ThreadPoolExecutor(4))
    orderer_pb2_grpc.add_OrdererServiceServicer_to_server(dropping, server)
    assert server.add_secure_port(orderer.grpc, TlsFiles.for_node(
        net.consortium_dir, "orderer-1").server_credentials())
    server.start()
    yield dropping
    server.stop(0)


def committed(net: devnet.Network, tx_id: str) -> bool:
    try:
        committer_stub(net, "committer-1").GetTransaction(
            committer_pb2.GetTransactionRequest(tx_id=tx_id), timeout=5)
    except grpc.RpcError:
        return False
    return True


def submit(net: devnet.Network, meters: list[str], count: int) -> list[str]:
    """`count` readings of `meters`, each told OK by the endorser; their tx ids."""
    channel = secure_channel(net.by_role("endorser")[0].grpc, net.tls())
    stub = endorser_pb2_grpc.EndorserServiceStub(channel)
    tx_ids = []
    try:
        for envelope in prepare_readings(net.consortium_dir, meters, count):
            answer = stub.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=30)
            tx_ids.append(answer.tx_id)
    finally:
        channel.close()
    return tx_ids


LOST = 'gridledger_endorser_lost_acknowledgements_total{orderer="orderer-1"}'
RESENT = "gridledger_endorser_acknowledged_resent_total"
RESTORED = "gridledger_endorser_acknowledged_restored_total"


def test_readings_an_orderer_acknowledged_and_dropped_still_commit(
        net: devnet.Network, dropper: DroppingOrderer) -> None:
    endorser = net.by_role("endorser")[0]
    tx_ids = submit(net, ["meter-1", "meter-2"], 4)
    assert set(tx_ids) <= set(dropper.acknowledged), "orderer-1 was not the one asked"
    wait_for(lambda: all(committed(net, t) for t in tx_ids), 60,
             "the readings orderer-1 acknowledged and dropped to commit")
    assert (metric(endorser, LOST) or 0) >= 1


def test_an_endorser_killed_right_after_a_dropped_acknowledgement_still_gets_it_committed(
        net: devnet.Network, dropper: DroppingOrderer) -> None:
    endorser = net.by_role("endorser")[0]
    flag = endorser.args.index("--ack-lost-after-s") + 1
    # A fresh endorser: orderer-1 leads again (the strike of the test above is forgotten).
    # It waits 60 s before sending anything again, so that nothing is before the kill below
    # however slow this machine is.
    devnet.stop_node(endorser)
    endorser.args[flag] = "60"
    devnet.restart_node(net, endorser)
    tx_ids = submit(net, ["meter-3"], 3)  # readings no test here sent before
    assert set(tx_ids) <= set(dropper.acknowledged), "orderer-1 was not the one asked"
    assert not metric(endorser, RESENT)
    devnet.stop_node(endorser, sig=signal.SIGKILL)
    assert not any(committed(net, t) for t in tx_ids)
    endorser.args[flag] = "5"  # the restarted one: due 5 s after their first OK, so at once
    devnet.restart_node(net, endorser)
    assert (metric(endorser, RESTORED) or 0) >= 3  # from the journal, not from its memory
    wait_for(lambda: all(committed(net, t) for t in tx_ids), 60,
             "the readings acknowledged and dropped before the endorser's crash to commit")
    assert (metric(endorser, LOST) or 0) >= 1  # the restarted endorser caught orderer-1
