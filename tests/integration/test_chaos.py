"""Process chaos under steady load, on the default devnet started by the launcher users run:
an acknowledgement is durable.

The test signs meter readings with the consortium's meter identities and submits each ONCE
to the endorser at a steady rate, recording every tx id the endorser answered OK for (errors
are fine: the client was told). Meanwhile it kills -9 and restarts a meter-agent (its demo
readings must all reach the ledger, without a gap), kills -9 and restarts an orderer, freezes one,
kills two others in turn (never more than f = 1 down at a time), kills -9 each committer
(committer-1's ledger is the one the endorser reads), kills -9 the endorser, and once
kills every orderer together (the primary frozen first, so acknowledged transactions sit
only in the pools). Afterwards every acknowledged
transaction must be committed VALID on both committers, both chains identical, and
`gridctl ledger verify` must pass on a hot backup of a committer.

Run alone, serialised with the other integration tests:
  flock /work/integration.lock .venv/bin/pytest tests/integration/test_chaos.py -x -q
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from devnet_support import committer_stub, current_primary, height, metric, same_chain, wait_for

from gridctl import devnet
from gridctl.loadgen import prepare_readings
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import Code, code_name
from gridledger_core.rpc.tls import TlsFiles, secure_channel

pytestmark = pytest.mark.integration

# Pre-signed past readings from the load generator: the genesis accepts them (consortium.LOAD).
GENESIS_PROFILE = "load"
RATE = 30.0  # submissions per second
IN_FLIGHT = 48  # concurrent calls at most: a stalled endorser must not pile up threads
MAX_SECONDS = 900  # envelopes prepared for this long; the chaos takes a few minutes
HOLD_ACKS = 120  # acknowledgements the client gets while a fault holds (about 4 s)


@dataclass
class Acks:
    """What the endorser told the client, per submission (each envelope sent once)."""

    acked: dict[str, float] = field(default_factory=dict)  # tx id -> when (monotonic)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class OnceSubmitter:
    """Submits prepared envelopes at RATE, each exactly once, from a pacing thread and a
    bounded set of worker threads."""

    def __init__(self, endorser: str, tls: TlsFiles,
                 envelopes: list[envelope_pb2.SignedEnvelope]) -> None:
        self._channel = secure_channel(endorser, tls)
        self._stub = endorser_pb2_grpc.EndorserServiceStub(self._channel)
        self._envelopes = envelopes
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._workers: list[threading.Thread] = []
        self._pacer = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self.acks = Acks()
        self.sent = 0

    def start(self) -> OnceSubmitter:
        self._pacer.start()
        return self

    def stop(self) -> Acks:
        self._stop.set()
        self._pacer.join(timeout=30)
        for worker in self._workers:
            worker.join(timeout=30)
        self._channel.close()
        return self.acks

    def _run(self) -> None:
        next_at = time.monotonic()
        for envelope in self._envelopes:
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            next_at += 1.0 / RATE
            if not self._slots.acquire(timeout=1.0):
                with self.acks.lock:
                    self.acks.errors["client_busy"] += 1  # not sent at all
                continue
            worker = threading.Thread(target=self._submit, args=(envelope,), daemon=True)
            self._workers = [w for w in self._workers if w.is_alive()] + [worker]
            self.sent += 1
            worker.start()

    def _submit(self, envelope: envelope_pb2.SignedEnvelope) -> None:
        try:
            response = self._stub.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=10)
            with self.acks.lock:
                self.acks.acked[response.tx_id] = time.monotonic()
        except grpc.RpcError as exc:
            with self.acks.lock:
                self.acks.errors[exc.code().name] += 1  # type: ignore[attr-defined]
        finally:
            self._slots.release()


class CommitIndex:
    """Every transaction a committer committed, with its code (the first block's, as the
    ledger indexes it), read incrementally from SubscribeCommits."""

    def __init__(self, stub: committer_pb2_grpc.CommitterServiceStub) -> None:
        self._stub = stub
        self.codes: dict[str, int] = {}
        self.next = 0

    def catch_up(self) -> int:
        target = height(self._stub)
        if self.next >= target:
            return target
        stream = self._stub.SubscribeCommits(
            committer_pb2.SubscribeCommitsRequest(start_number=self.next), timeout=120)
        try:
            for event in stream:
                for result in event.results:
                    self.codes.setdefault(result.tx_id, result.validation_code)
                self.next = event.number + 1
                if self.next >= target:
                    break
        finally:
            stream.cancel()
        return target


@dataclass
class Timeline:
    """When each chaos step started, to tell which step lost an acknowledged transaction."""

    start: float = field(default_factory=time.monotonic)
    steps: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, what: str) -> None:
        self.steps.append((time.monotonic(), what))
        print(f"[chaos +{time.monotonic() - self.start:6.1f} s] {what}", flush=True)

    def step_at(self, moment: float) -> str:
        """The last step begun by `moment` (the fault that follows it is the suspect)."""
        current = "before the chaos"
        for at, what in self.steps:
            if at <= moment:
                current = f"after '{what}' began"
        return current


def grows(net: devnet.Network, by: int, timeout: float,
          committer: str = "committer-1") -> None:
    stub = committer_stub(net, committer)
    start = height(stub)
    wait_for(lambda: height(stub) >= start + by, timeout,
             f"{committer} to grow by {by} blocks from {start}")


def caught_up(net: devnet.Network, orderers: list[devnet.Node], timeout: float) -> None:
    target = height(committer_stub(net, "committer-1"))
    for node in orderers:
        wait_for(lambda n=node: (metric(n, "gridledger_orderer_height") or 0) >= target,
                 timeout, f"{node.name} to catch up to height {target}")


def progress(net: devnet.Network, load: OnceSubmitter, acks: int = HOLD_ACKS,
             blocks: int = 3, timeout: float = 120) -> None:
    """Paced on progress, not time: the client got `acks` more acknowledgements and the
    chain grew by `blocks` (a fault is held, or the network runs, for that long)."""
    start = len(load.acks.acked)
    try:
        grows(net, blocks, timeout)
    except AssertionError as stalled:  # say where the transactions stopped
        raise AssertionError(f"{stalled}; {stall_report(net, load, start)}") from None
    wait_for(lambda: len(load.acks.acked) >= start + acks, timeout,
             f"{acks} more acknowledgements (had {start}; errors {dict(load.acks.errors)})")


def stall_report(net: devnet.Network, load: OnceSubmitter, acked_before: int) -> str:
    """The client's and the endorser's side of a stall: acknowledgements since the step
    began, the client's errors, and the endorser's admission bound."""
    endorser = net.by_role("endorser")[0]
    try:
        admission = {name: metric(endorser, f"gridledger_endorser_admission_{name}")
                     for name in ("in_flight", "capacity", "commit_rate")}
    except OSError as exc:
        admission = {"metrics": f"unreachable: {exc}"}  # type: ignore[dict-item]
    return (f"client: {len(load.acks.acked) - acked_before} acknowledged since, sent "
            f"{load.sent}, errors {dict(load.acks.errors)}; endorser admission {admission}")


def acked_not_committed(net: devnet.Network, load: OnceSubmitter, want: int = 3,
                        timeout: float = 60) -> list[str]:
    """Returns as soon as at least `want` acknowledged transactions are not yet committed on
    committer-1 (so the kill that follows catches them in the orderers), naming them; after
    `timeout`, whatever is in flight then."""
    stub = committer_stub(net, "committer-1")
    deadline = time.monotonic() + timeout
    while True:
        with load.acks.lock:
            recent = list(load.acks.acked)[-20:]
        waiting = []
        for tx_id in reversed(recent):  # newest first: the likeliest to be in flight
            try:
                stub.GetTransaction(committer_pb2.GetTransactionRequest(tx_id=tx_id), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    waiting.append(tx_id)
        if len(waiting) >= want or time.monotonic() > deadline:
            return waiting


def endorser_follows(net: devnet.Network, timeout: float = 60) -> None:
    """The endorser reads committer-1's ledger up to its height, healthy, and no block was
    lost to its book cache or admission control (a listener's failure is counted)."""
    endorser = net.by_role("endorser")[0]
    target = height(committer_stub(net, "committer-1"))
    wait_for(lambda: (metric(endorser, "gridledger_ledger_height") or 0) >= target, timeout,
             f"the endorser to read committer-1's ledger up to height {target}")
    assert metric(endorser, "gridledger_ledger_follower_healthy") == 1
    # The book cache was built once, at start: no block failed to apply (which rebuilds it).
    assert metric(endorser, "gridledger_endorser_book_rebuilds_total") == 1
    text = urllib.request.urlopen(f"http://{endorser.metrics}/metrics", timeout=5).read()
    assert b'gridledger_ledger_follower_failures_total{reason="on_commit"}' not in text


def kill9(node: devnet.Node) -> None:
    devnet.stop_node(node, sig=signal.SIGKILL)


@pytest.fixture(scope="module")
def load(network: devnet.Network) -> Iterator[OnceSubmitter]:
    envelopes = prepare_readings(network.consortium_dir, ["meter-1", "meter-2", "meter-3"],
                                 int(RATE * MAX_SECONDS))
    submitter = OnceSubmitter(network.by_role("endorser")[0].grpc, network.tls(),
                              envelopes).start()
    try:
        yield submitter
    finally:
        submitter.stop()


AGENT = "meter-2"
BACKFILL_HOURS = 26  # the devnet fixture's backfill (tests/integration/conftest.py)


def agent_readings_unbroken(net: devnet.Network, committer: str, interval: int) -> bool:
    """The agent's readings of the last BACKFILL_HOURS (the test's own, older readings of the
    same meter are left out) have no gap and reach the last interval that ended."""
    stub = committer_stub(net, committer)
    since = int(time.time()) - BACKFILL_HOURS * 3600 + interval
    starts: list[int] = []
    token = ""
    while True:
        page = stub.ListReadings(committer_pb2.ListReadingsRequest(
            meter=AGENT, page_size=1000, page_token=token), timeout=10)
        starts += [r.interval_start for r in page.readings if r.interval_start >= since]
        token = page.next_page_token
        if not token:
            break
    starts.sort()
    last_ended = int(time.time()) // interval * interval - interval
    return bool(starts) and starts[-1] >= last_ended and all(
        b - a == interval for a, b in itertools.pairwise(starts))


def _gridctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "gridctl"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(1500)
def test_every_acknowledged_transaction_survives_process_chaos(
        network: devnet.Network, load: OnceSubmitter, tmp_path: Path) -> None:
    net = network
    o1, o2, o3, o4 = (net.node(f"orderer-{i}") for i in range(1, 5))
    orderers = [o1, o2, o3, o4]
    timeline = Timeline()
    progress(net, load)

    # A meter-agent (demo traffic: it reads its simulated meter every interval and keeps each
    # reading in its outbox until a committer shows it committed).
    agent = net.node(AGENT)
    timeline.mark(f"kill -9 the {AGENT} agent, restart it")
    kill9(agent)
    devnet.restart_node(net, agent)

    timeline.mark("kill -9 orderer-2, restart it")
    kill9(o2)
    progress(net, load)
    devnet.restart_node(net, o2)
    caught_up(net, [o2], 90)
    progress(net, load)

    timeline.mark("SIGSTOP orderer-3, then SIGCONT")
    os.kill(o3.pid, signal.SIGSTOP)
    try:
        progress(net, load)
    finally:
        os.kill(o3.pid, signal.SIGCONT)
    caught_up(net, [o3], 90)
    progress(net, load)

    timeline.mark("kill -9 orderer-1, restart it")
    kill9(o1)
    progress(net, load)
    devnet.restart_node(net, o1)
    caught_up(net, [o1], 90)
    timeline.mark("kill -9 orderer-4, restart it")
    kill9(o4)
    progress(net, load)
    devnet.restart_node(net, o4)
    caught_up(net, [o4], 90)
    progress(net, load)

    timeline.mark("kill -9 committer-2, restart it")
    committer2 = net.node("committer-2")
    kill9(committer2)
    progress(net, load)
    devnet.restart_node(net, committer2)
    progress(net, load)

    # The endorser reads committer-1's ledger (same organisation, same host): the writer
    # dies with the reader's environment open, and comes back under it.
    timeline.mark("kill -9 committer-1 (whose ledger the endorser reads), restart it")
    committer1 = net.node("committer-1")
    kill9(committer1)
    devnet.restart_node(net, committer1)
    progress(net, load)
    endorser_follows(net)

    timeline.mark("kill -9 the endorser, start it again")
    endorser = net.by_role("endorser")[0]
    kill9(endorser)
    devnet.restart_node(net, endorser)
    progress(net, load)
    endorser_follows(net)

    # Freeze the primary first (still at most f down): until the round times out nobody
    # proposes, so what the other orderers acknowledge meanwhile is only in their pools.
    timeline.mark("SIGSTOP the primary, then kill -9 every orderer together, restart them all")
    primary = current_primary(net)
    os.kill(primary.pid, signal.SIGSTOP)
    try:
        in_flight = acked_not_committed(net, load, want=10)
    finally:
        devnet.stop_nodes(orderers, sig=signal.SIGKILL)  # SIGKILL ends the frozen one too
    print(f"[chaos] {len(in_flight)} acknowledged transactions were not yet committed when "
          f"every orderer was killed (primary {primary.name} frozen)", flush=True)
    for node in orderers:
        devnet.restart_node(net, node)
    progress(net, load, blocks=5)
    caught_up(net, orderers, 90)
    progress(net, load)

    timeline.mark("load stopped")
    acks = load.stop()
    assert len(acks.acked) > RATE * 30, (
        f"too few acknowledgements to mean anything: {len(acks.acked)} of {load.sent} "
        f"sent; errors {dict(acks.errors)}")

    # Every acknowledged transaction committed VALID on both committers (bounded wait).
    indexes = {name: CommitIndex(committer_stub(net, name))
               for name in ("committer-1", "committer-2")}

    def missing() -> dict[str, list[str]]:
        out = {}
        for name, index in indexes.items():
            index.catch_up()
            out[name] = [tx for tx in acks.acked
                         if index.codes.get(tx) != Code.TX_VALIDATION_CODE_VALID]
        return out

    deadline = time.monotonic() + 120
    lost = missing()
    while any(lost.values()) and time.monotonic() < deadline:
        time.sleep(2)
        lost = missing()
    for name, txs in lost.items():
        if txs:
            codes = collections.Counter(code_name(indexes[name].codes[tx])
                                        if tx in indexes[name].codes else "not committed"
                                        for tx in txs)
            steps = collections.Counter(timeline.step_at(acks.acked[tx]) for tx in txs)
            pytest.fail(f"{len(txs)} of {len(acks.acked)} acknowledged transactions are not "
                        f"committed VALID on {name}: {dict(codes)}; acknowledged: "
                        f"{dict(steps)}; e.g. {txs[:3]}")

    # The killed agent lost no reading: its readings since its backfill began form one
    # unbroken run of intervals up to the last one that ended, on both committers, and its
    # outbox drained (nothing waiting, nothing refused).
    interval = Genesis.load(net.consortium_dir / "genesis.json").reading_interval_seconds
    for name in ("committer-1", "committer-2"):
        wait_for(lambda name=name: agent_readings_unbroken(net, name, interval), 120,
                 f"{AGENT}'s readings unbroken up to the last ended interval on {name}")
    wait_for(lambda: metric(net.node(AGENT), "gridledger_meter_readings_buffered") == 0, 120,
             f"{AGENT}'s outbox to drain")

    # Both chains identical (blocks, state roots, codes), at the same height.
    c1, c2 = committer_stub(net, "committer-1"), committer_stub(net, "committer-2")
    wait_for(lambda: height(c1) == height(c2), 60, "both committers at the same height")
    assert same_chain(net) >= indexes["committer-1"].next

    # The whole ledger re-verifies offline (a hot backup: the committer keeps running).
    copy = tmp_path / "committer-1-copy"
    backup = _gridctl("ledger", "backup", net.node("committer-1").data_dir, str(copy), "--json")
    assert backup.returncode == 0, backup.stderr
    verified = _gridctl("ledger", "verify", str(copy), "--consortium-dir",
                        str(net.consortium_dir), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert '"ok": true' in verified.stdout
    print(f"chaos: {len(acks.acked)} acknowledged of {load.sent} sent, all committed VALID "
          f"on both committers; errors told to the client: {dict(acks.errors)}")
