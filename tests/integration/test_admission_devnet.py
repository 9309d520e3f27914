"""Admission control on a real devnet (4 orderers, 2 committers, the endorser, with and
without fronts) whose endorser may hold at most 8 transactions in flight: a burst is refused
at once with RESOURCE_EXHAUSTED and a retry hint (SubmitBatch's field, SubmitTransaction's
`retry-after-ms` trailer), every transaction it acknowledged commits VALID, and a client that
backs off as told (the load generator, batch API) gets everything in; the endorser's metrics
count both sides."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from devnet_support import committer_stub, ledger_network, wait_for

from gridctl import devnet
from gridctl.loadgen import LoadGenerator, distant_past, prepare_readings
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.ledger.errors import Code
from gridledger_core.rpc.backoff import retry_after_ms
from gridledger_core.rpc.tls import TlsFiles, secure_channel

CEILING = 8
FULL = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def _tight_admission(network: devnet.Network) -> None:
    endorser = network.by_role("endorser")[0]
    # This suite runs the endorser with its own replica following the orderers (the
    # manifests' setting); the others read committer-1's ledger (the devnet's).
    endorser.args = [*devnet.with_own_replica(endorser.args),
                     "--admission-latency-budget-ms", "100", "--admission-floor", "4",
                     "--admission-ceiling", str(CEILING)]


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "two-fronts"])
def net(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    """Every test twice: the endorser taking its calls itself, and through two fronts
    (`--fronts 2`, test_endorser_fronts.py): refusals, hints and shares are the same."""
    def adjust(network: devnet.Network) -> None:
        _tight_admission(network)
        if request.param:
            network.by_role("endorser")[0].args += ["--fronts", str(request.param)]

    with ledger_network(tmp_path_factory.mktemp("admission"), adjust=adjust) as network:
        yield network


def committed_codes(net: devnet.Network, tx_ids: list[str]) -> dict[str, int]:
    stub = committer_stub(net, "committer-1")
    found: dict[str, int] = {}
    for tx_id in tx_ids:
        try:
            found[tx_id] = stub.GetTransaction(
                committer_pb2.GetTransactionRequest(tx_id=tx_id), timeout=5).validation_code
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
    return found


def test_a_burst_is_refused_with_a_hint_and_what_was_acknowledged_commits(
        net: devnet.Network) -> None:
    envelopes = prepare_readings(net.consortium_dir, ["meter-1", "meter-2"], 400)
    endorser = net.by_role("endorser")[0]
    channel = secure_channel(endorser.grpc, net.tls())
    stub = endorser_pb2_grpc.EndorserServiceStub(channel)
    burst = stub.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=envelopes[:200]),
                             timeout=60)
    acknowledged = [r.tx_id for r in burst.results if r.code == 0]
    refused = [r for r in burst.results if r.code == FULL]
    assert 1 <= len(acknowledged) <= CEILING
    assert len(acknowledged) + len(refused) == 200
    assert all(r.retry_after_ms > 0 and "admission bound" in r.message for r in refused)

    # A single call while full: the hint is in the trailers. (Slots free as blocks commit,
    # so keep the endorser full with batches until a single call meets the bound.)
    single_refusal = None
    rest = envelopes[200:]
    for first in range(0, len(rest), CEILING + 1):
        envelope, fill = rest[first], rest[first + 1:first + 1 + CEILING]
        extra = stub.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=fill), timeout=60)
        acknowledged += [r.tx_id for r in extra.results if r.code == 0]
        try:
            acknowledged.append(stub.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=30).tx_id)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            single_refusal = exc
            break
    assert single_refusal is not None and retry_after_ms(single_refusal) > 0
    channel.close()

    # Everything acknowledged commits, and VALID.
    wait_for(lambda: len(committed_codes(net, acknowledged)) == len(acknowledged), 60,
             "every acknowledged transaction committed")
    assert set(committed_codes(net, acknowledged).values()) == {Code.TX_VALIDATION_CODE_VALID}

    # A client that backs off as told gets everything in (the batch API, refused ones again).
    stats = LoadGenerator(endorser.grpc, net.tls(), envelopes[:200], rate=2000,
                          batch=50).start().join(timeout=180)
    assert stats.failed.get("RESOURCE_EXHAUSTED", 0) > 0  # it was refused on the way ...
    assert not set(stats.failed) - {"RESOURCE_EXHAUSTED"}
    wanted = [r.tx_id for r in burst.results]
    wait_for(lambda: len(committed_codes(net, wanted)) == len(wanted), 60,
             "the whole burst committed")  # ... and all of it is in
    assert set(committed_codes(net, wanted).values()) == {Code.TX_VALIDATION_CODE_VALID}

    metrics = urllib.request.urlopen(f"http://{endorser.metrics}/metrics", timeout=5).read()
    text = metrics.decode()
    assert 'gridledger_endorser_admission_refused_total{kind="submit"}' in text
    assert "gridledger_endorser_admission_capacity " in text


def test_the_cli_loadgen_and_submit_batch(net: devnet.Network, tmp_path: Path) -> None:
    gridctl = str(Path(sys.executable).parent / "gridctl")
    file = tmp_path / "envelopes.jsonl"
    written = subprocess.run([gridctl, "loadgen", "--dir", str(net.directory), "--count", "20",
                              "--meters", "meter-3", "--write", str(file), "--json"],
                             capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stderr
    assert len(file.read_text().splitlines()) == 20
    sent = subprocess.run([gridctl, "submit-batch", str(file), "--dir", str(net.directory),
                           "--json"], capture_output=True, text=True, timeout=120)
    # Each line has a result; with the tiny bound some may be refused (exit 2), never lost.
    assert sent.returncode in (0, 2), sent.stderr
    assert '"status": "OK"' in sent.stdout


def test_a_message_larger_than_a_role_receives_is_refused_before_it_is_read(
        net: devnet.Network) -> None:
    """Tried as a hostile member would: an 8 MiB SubmitBatch (twice the batch limit) and a
    2 MiB committer query. gRPC refuses each with RESOURCE_EXHAUSTED before the message is
    read into memory or parsed (the endorser's event loop never sees it), and both nodes go on
    serving. Before, every server accepted 64 MiB: 128 such calls pinned 8 GiB."""
    # a reading a year behind the other tests' (which walk back from 60 days ago)
    year_ago = distant_past(900) - 305 * 86400
    envelope = prepare_readings(net.consortium_dir, ["meter-1"], 1, start=year_ago)[0]
    huge = envelope_pb2.SignedEnvelope()
    huge.CopyFrom(envelope)
    huge.payload += b"\0" * (8 << 20)
    endorser = endorser_pb2_grpc.EndorserServiceStub(
        secure_channel(net.by_role("endorser")[0].grpc, net.tls()))
    with pytest.raises(grpc.RpcError) as refused:
        endorser.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=[huge]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "larger than max" in refused.value.details()  # type: ignore[attr-defined]

    committer = committer_stub(net, "committer-1")
    with pytest.raises(grpc.RpcError) as query_refused:
        committer.GetTransaction(committer_pb2.GetTransactionRequest(tx_id="x" * (2 << 20)),
                                 timeout=30)
    assert query_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]

    # Both keep serving: the same transaction at its real size is endorsed and committed.
    for _ in range(20):  # the module's tiny admission bound may still be full a moment
        answer = endorser.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=[envelope]),
                                      timeout=60)
        if answer.results[0].code != FULL:
            break
        time.sleep(answer.results[0].retry_after_ms / 1000)
    assert answer.results[0].code == 0, answer.results[0].message
    wait_for(lambda: committed_codes(net, [answer.results[0].tx_id]) ==
             {answer.results[0].tx_id: Code.TX_VALIDATION_CODE_VALID}, 60, "it committed")


def test_a_member_flooding_the_endorser_does_not_shut_out_another_member(
        net: devnet.Network) -> None:
    """Tried as a hostile member would: utility's head-end system relays readings as fast as
    it can and resends every refused one at once, ignoring the hints, so it holds the
    endorser's whole in-flight bound. The community's, sending one reading at a time, is
    never refused: two members with transactions in flight share the bound (at least the
    floor of 4), so each may hold 2 whatever the other does. Before, its calls were refused
    whenever the flood had refilled the bound first."""
    earlier = distant_past(900) - 100 * 86400  # clear of the other tests' intervals
    flood = prepare_readings(net.consortium_dir, ["meter-1", "meter-2"], 3000,
                             start=earlier)
    own = prepare_readings(net.consortium_dir, ["meter-3"], 12, start=earlier)
    endorser = net.by_role("endorser")[0]
    stop = threading.Event()
    flood_refused = 0

    def relay_flood() -> None:
        nonlocal flood_refused
        stub = endorser_pb2_grpc.EndorserServiceStub(secure_channel(
            endorser.grpc, TlsFiles.for_node(net.consortium_dir, "utility-admin")))
        pending = list(flood)
        while pending and not stop.is_set():
            answer = stub.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=pending[:16]),
                                      timeout=60)
            refused = [e for e, r in zip(pending[:16], answer.results, strict=True)
                       if r.code == FULL]
            flood_refused += len(refused)
            pending = refused + pending[16:]

    flooder = threading.Thread(target=relay_flood, daemon=True)
    flooder.start()
    stub = endorser_pb2_grpc.EndorserServiceStub(secure_channel(
        endorser.grpc, TlsFiles.for_node(net.consortium_dir, "community-admin")))
    try:
        wait_for(lambda: flood_refused > 0, 60, "the flood holds the whole bound")
        answers = []
        for envelope in own:
            result = stub.SubmitBatch(endorser_pb2.SubmitBatchRequest(envelopes=[envelope]),
                                      timeout=60).results[0]
            answers.append((result.code, result.message))
            if result.code == 0:
                wait_for(lambda r=result: committed_codes(net, [r.tx_id]) ==
                         {r.tx_id: Code.TX_VALIDATION_CODE_VALID}, 60, "it committed")
    finally:
        stop.set()
        flooder.join(timeout=120)
    assert answers == [(0, "")] * len(own)
    assert flood_refused > 0
    text = urllib.request.urlopen(f"http://{endorser.metrics}/metrics", timeout=5).read().decode()
    assert 'gridledger_endorser_admission_refused_by_member_total{member="utility"}' in text
    assert 'gridledger_endorser_admission_refused_by_member_total{member="community"}' not in text
