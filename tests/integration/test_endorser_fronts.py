"""An endorser with fronts (`--fronts 2`) on a real devnet, started through the launcher users
run: the fronts take the calls on its public port and relay them to the endorser's process
(gridledger_endorser/front.py, core rpc/relay.py). What a client sees is what one process
gives (the admission suite runs both ways, test_admission_devnet.py); here, what is new: the
caller is judged as itself through a front, a front that dies is started again while the
port keeps answering, and the relay's socket is the endorser's own."""

from __future__ import annotations

import os
import signal
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from devnet_support import committer_stub, ledger_network, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.observe import child_pids
from gridctl import devnet
from gridctl.loadgen import prepare_readings
from gridledger.committer.v1 import committer_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.ledger.errors import Code
from gridledger_core.rpc.tls import TlsFiles, secure_channel

pytestmark = pytest.mark.integration

FRONTS = 2


def _with_fronts(network: devnet.Network) -> None:
    network.by_role("endorser")[0].args += ["--fronts", str(FRONTS)]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    with ledger_network(tmp_path_factory.mktemp("fronts"), adjust=_with_fronts) as network:
        yield network


def _front_pids(endorser_pid: int) -> list[int]:
    return [pid for pid in child_pids(endorser_pid)
            if b"gridledger_endorser.front" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _stub(net: devnet.Network, name: str | None = None) -> endorser_pb2_grpc.EndorserServiceStub:
    tls = TlsFiles.for_node(net.consortium_dir, name) if name else net.tls()
    return endorser_pb2_grpc.EndorserServiceStub(
        secure_channel(net.by_role("endorser")[0].grpc, tls))


def _book(net: devnet.Network) -> endorser_pb2.GetBookResponse:
    # Waiting for a connection: gRPC shares a connection among a process's channels to one
    # address, and one to a front just killed fails fast until it has reconnected.
    return _stub(net).GetBook(endorser_pb2.GetBookRequest(slot_start=0), timeout=10,
                              wait_for_ready=True)


def _metric(net: devnet.Network, name: str) -> float | None:
    endorser = net.by_role("endorser")[0]
    text = urllib.request.urlopen(f"http://{endorser.metrics}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _committed_valid(net: devnet.Network, tx_ids: list[str]) -> bool:
    stub = committer_stub(net, "committer-1")
    try:
        return all(stub.GetTransaction(committer_pb2.GetTransactionRequest(tx_id=t), timeout=5)
                   .validation_code == Code.TX_VALIDATION_CODE_VALID for t in tx_ids)
    except grpc.RpcError:
        return False


def test_transactions_sent_through_the_fronts_commit(net: devnet.Network) -> None:
    envelopes = prepare_readings(net.consortium_dir, ["meter-1", "meter-2"], 20)
    stub = _stub(net)
    batch = stub.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=envelopes[:19]),
                             timeout=30)
    single = stub.SubmitTransaction(
        endorser_pb2.SubmitTransactionRequest(envelope=envelopes[19]), timeout=30)
    assert [r.code for r in batch.results] == [0] * 19
    tx_ids = [r.tx_id for r in batch.results] + [single.tx_id]
    wait_for(lambda: _committed_valid(net, tx_ids), 60, "every transaction committed VALID")
    # The same envelope again, now committed: the endorser's status, through the front.
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitTransaction(endorser_pb2.SubmitTransactionRequest(envelope=envelopes[19]),
                               timeout=30)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert single.tx_id in err.value.details()


def test_a_caller_counts_as_itself_through_a_front(net: devnet.Network) -> None:
    """Tried as a hostile member would: its committer's TLS identity asks for trade options,
    which only meters and admins may. The front forwards the certificate its handshake
    verified; the endorser's authorisation refuses it by name, as without fronts."""
    with pytest.raises(grpc.RpcError) as err:
        _stub(net, "committer-1").RequestOptions(endorser_pb2.RequestOptionsRequest(),
                                                 timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "committer-1" in err.value.details()
    # Bytes that are no request: judged first (its caller's verdict, as with one process),
    # then refused by name; the relay and the endorser go on.
    for name, code in (("committer-1", grpc.StatusCode.PERMISSION_DENIED),
                       (None, grpc.StatusCode.INVALID_ARGUMENT)):
        tls = TlsFiles.for_node(net.consortium_dir, name) if name else net.tls()
        raw = secure_channel(net.by_role("endorser")[0].grpc, tls).unary_unary(
            "/gridledger.endorser.v1.EndorserService/SubmitBatch")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == code
    assert err.value.details() == "the request is not a SubmitBatch request"
    assert _book(net).slot_start == 0


def test_health_is_served_on_the_port_and_the_relay_socket_is_private(
        net: devnet.Network) -> None:
    endorser = net.by_role("endorser")[0]
    health = health_pb2_grpc.HealthStub(secure_channel(endorser.grpc, net.tls()))
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    socket = Path(endorser.data_dir) / "relay" / "calls.sock"
    assert stat.S_ISSOCK(socket.stat().st_mode)
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    assert len(_front_pids(endorser.pid)) == FRONTS
    assert _metric(net, "gridledger_endorser_fronts_running") == FRONTS


def test_a_killed_front_is_started_again_and_the_port_keeps_answering(
        net: devnet.Network) -> None:
    endorser = net.by_role("endorser")[0]
    before = _front_pids(endorser.pid)
    os.kill(before[0], signal.SIGKILL)
    # Once it is gone, the other front takes every new connection (those the kernel had
    # queued on its socket were reset: clients retry UNAVAILABLE).
    wait_for(lambda: not devnet.pid_alive(before[0]), 10, "the front is gone")
    for _ in range(5):
        assert _book(net).slot_start == 0  # answered, on a new connection each time
        time.sleep(0.2)
    wait_for(lambda: _metric(net, "gridledger_endorser_front_restarts_total") == 1.0, 30,
             "the front was started again")
    wait_for(lambda: len(_front_pids(endorser.pid)) == FRONTS, 30, "two fronts again")
    assert before[0] not in _front_pids(endorser.pid)
    assert _book(net).slot_start == 0


def test_fronts_of_a_killed_endorser_stop(net: devnet.Network) -> None:
    """The endorser killed (no stop sequence): its fronts must not stay on the port, taking a
    share of its connections for an endorser that did not start them. (Last in this module:
    it leaves the endorser down.)"""
    endorser = net.by_role("endorser")[0]
    fronts = _front_pids(endorser.pid)
    os.kill(endorser.pid, signal.SIGKILL)
    wait_for(lambda: not any(devnet.pid_alive(pid) for pid in fronts), 15,
             "the fronts stopped")

