"""A device added the documented way (`gridctl identity issue` + `gridctl identity register`)
calls the network with its own TLS certificate, on a real devnet: refused by the endorser
while it is unknown, let in once its registration has committed (the endorser and the
committers look ledger registrations up), and its reading commits VALID."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from devnet_support import committer_stub, ledger_network, wait_for

from gridctl import devnet, loadgen
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import validation_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import SigningIdentity

pytestmark = pytest.mark.integration
DEVICE = "meter-70"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    with ledger_network(tmp_path_factory.mktemp("registered-device")) as network:
        yield network


def gridctl(net: devnet.Network, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gridctl.main", *args, "--dir",
                           str(net.directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def submit_reading(net: devnet.Network, tls: TlsFiles) -> str:
    """A fresh reading of DEVICE, signed by it and sent over its own TLS; its tx id."""
    identity = SigningIdentity.load(net.consortium_dir, DEVICE)
    interval = Genesis.load(net.consortium_dir / "genesis.json").reading_interval_seconds
    # The interval that just ended: readings are accepted only within the submission window.
    envelope = loadgen.past_reading(identity, int(time.time()) // interval * interval, 1,
                                    interval, 500, 300)
    with secure_channel(net.by_role("endorser")[0].grpc, tls) as channel:
        answer = endorser_pb2_grpc.EndorserServiceStub(channel).SubmitTransaction(
            endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=10)
    return answer.tx_id


def test_an_issued_and_registered_meter_gets_in_with_its_own_tls(net: devnet.Network) -> None:
    gridctl(net, "identity", "issue", DEVICE, "--org", "community", "--role", "meter")
    own_tls = TlsFiles.for_node(net.consortium_dir, DEVICE)
    with pytest.raises(grpc.RpcError) as before:
        submit_reading(net, own_tls)
    assert before.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "nor registered on the ledger" in before.value.details()

    gridctl(net, "identity", "register", DEVICE, "--org", "community", "--role", "meter")
    tx_ids: list[str] = []
    # The endorser's replica may commit the registration a moment after the committer did.
    wait_for(lambda: bool(tx_ids.append(submit_reading(net, own_tls)) or tx_ids), 60,
             f"the endorser to admit {DEVICE}")
    c1 = committer_stub(net, "committer-1")
    wait_for(lambda: c1.GetTransaction(committer_pb2.GetTransactionRequest(tx_id=tx_ids[0]),
                                       timeout=5).block_number >= 0, 60, "the reading committed")
    found = c1.GetTransaction(committer_pb2.GetTransactionRequest(tx_id=tx_ids[0]), timeout=5)
    assert found.validation_code == validation_pb2.TX_VALIDATION_CODE_VALID, found.message
    # The committers admit it too (its own reads).
    with secure_channel(net.node("committer-2").grpc, own_tls) as channel:
        wait_for(lambda: committer_pb2_grpc.CommitterServiceStub(channel).GetChainInfo(
            committer_pb2.GetChainInfoRequest(), timeout=5).height > 0, 60,
            "committer-2 to admit the device")
