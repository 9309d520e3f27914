"""Orderer-only and committer-only throughput on this machine.

Orderer-only: the 4 orderers of a fresh consortium run as real processes (the devnet
launcher, nothing else started); pre-endorsed meter readings are broadcast to them
round-robin and the benchmark follows Deliver. It reports saturation throughput (all
transactions offered at once) and broadcast-to-final latency at a fixed offered rate.

Durable acknowledgement (`durable_ack_cost`): one orderer in process, its real Broadcast API
and consensus loop on LMDB, acknowledging with and without writing the pool first (the
switch exists only for this comparison).

Committer-only: the final blocks of that run are committed, in process, into a fresh LMDB
ledger with the committer's code (verify certificates, re-execute, one write transaction
per block); it reports transactions per second and where the time goes (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import math
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from bench.stats import summary_ms
from gridctl import devnet
from gridctl.loadgen import prepare_readings
from gridledger.common.v1 import block_pb2, envelope_pb2
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_core.rpc.tls import secure_channel
from gridledger_core.sigcache import VERIFIED
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import LmdbStore
from gridledger_endorser.broadcaster import Broadcaster, OrdererUnavailable
from gridledger_orderer.limits import OrdererLimits
from gridledger_orderer.node import ACK_GROUP, OrdererNode, OrderingParams
from gridledger_orderer.service import OrdererServicer
from gridledger_orderer.store import OrdererStore, tx_id_of
from gridledger_orderer.transport import Transport

# (transactions at saturation, offered rate, seconds at that rate)
PROFILES = {"quick": (1_500, 300, 3.0), "standard": (20_000, 1_000, 15.0)}


# Transactions per endorsement batch: what the endorser's batch signer forms under moderate
# concurrent load (it signs whatever queued while the previous batch was being signed).
ENDORSEMENT_BATCH = 32


def endorsed_readings(consortium: Path, count: int, start: int) -> list[bytes]:
    endorser = SigningIdentity.load(consortium, "endorser-1")
    envelopes = prepare_readings(consortium, ["meter-1", "meter-2", "meter-3"], count,
                                 start=start)
    endorsed = []
    for first in range(0, len(envelopes), ENDORSEMENT_BATCH):
        batch = envelopes[first:first + ENDORSEMENT_BATCH]
        _, endorsements = endorser.endorse_batch([e.payload for e in batch])
        endorsed += [envelope_pb2.EndorsedTransaction(envelope=e, endorsements=[x])
                     .SerializeToString() for e, x in zip(batch, endorsements, strict=True)]
    return endorsed


class Follower:
    """Records when each tx id becomes final, from one orderer's Deliver stream."""

    def __init__(self, address: str, network: devnet.Network) -> None:
        self.final_at: dict[str, float] = {}
        self.blocks: list[block_pb2.Block] = []
        self._channel = secure_channel(address, network.tls())
        stub = orderer_pb2_grpc.OrdererServiceStub(self._channel)
        self._call = stub.Deliver(orderer_pb2.DeliverRequest(start_number=0, follow=True))
        self._done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for response in self._call:
                now = time.perf_counter()
                self.blocks.append(response.block)
                for tx in response.block.transactions:
                    self.final_at[tx_id_of(tx)] = now
        except grpc.RpcError:
            pass
        self._done.set()

    def wait_for(self, tx_ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t in self.final_at for t in tx_ids[-50:]) and \
                    all(t in self.final_at for t in tx_ids):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._call.cancel()
        self._done.wait(5)
        self._channel.close()


def paced(txs: list[bytes], rate: float | None) -> Iterator[bytes]:
    """Each transaction at its time on a fixed schedule of `rate` per second (or at once)."""
    next_at = time.perf_counter()
    for tx in txs:
        if rate is not None:
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_at += 1.0 / rate
        yield tx


# Unary calls in flight per orderer: the orderer's Broadcast call limit (32 handler slots)
# and below its HTTP/2 stream limit (64 per connection, shared with the Deliver follower);
# beyond those an orderer refuses (RESOURCE_EXHAUSTED, or REFUSED_STREAM before the client
# has read its SETTINGS), which a well-behaved client does not provoke.
UNARY_IN_FLIGHT_PER_ORDERER = 32


def broadcast_all(stubs: list, txs: list[bytes], rate: float | None) -> dict[str, float]:
    """Broadcast with futures (round-robin over orderers), paced at `rate` per second or as
    fast as possible, at most `UNARY_IN_FLIGHT_PER_ORDERER` calls in flight per orderer;
    returns tx id -> send time. Refusals (a full queue, a refused stream) are retried."""
    sent: dict[str, float] = {}
    pending: list[tuple[grpc.Future, bytes, int]] = []
    cycle = itertools.cycle(range(len(stubs)))
    for tx in paced(txs, rate):
        index = next(cycle)
        sent[tx_id_of(tx)] = time.perf_counter()
        pending.append((stubs[index].Broadcast.future(
            orderer_pb2.BroadcastRequest(endorsed_transaction=tx), timeout=30), tx, index))
        if len(pending) >= UNARY_IN_FLIGHT_PER_ORDERER * len(stubs):
            pending = _settle(pending, stubs)
    while pending:
        pending = _settle(pending, stubs)
    return sent


def _settle(pending: list, stubs: list) -> list:
    """Wait for every pending call; those refused with RESOURCE_EXHAUSTED (a full queue, or
    more concurrent calls than the orderer takes) or with a refused HTTP/2 stream are sent
    again after one 50 ms pause."""
    refused = []
    for future, tx, index in pending:
        try:
            future.result()
        except grpc.RpcError as exc:
            if not _refused(exc):
                raise
            refused.append((tx, index))
    if refused:
        time.sleep(0.05)
    return [(stubs[index].Broadcast.future(
        orderer_pb2.BroadcastRequest(endorsed_transaction=tx), timeout=30), tx, index)
        for tx, index in refused]


def _refused(exc: grpc.RpcError) -> bool:
    """A refusal to retry: RESOURCE_EXHAUSTED, or UNAVAILABLE for a stream the server refused
    (RST_STREAM REFUSED_STREAM, code 7: the request was not processed)."""
    code = exc.code()  # type: ignore[attr-defined]
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED or (
        code == grpc.StatusCode.UNAVAILABLE and "error code 7" in (exc.details() or ""))  # type: ignore[attr-defined]


def broadcast_batched(stubs: list, txs: list[bytes], rate: float | None) -> dict[str, float]:
    """As the endorser does: callers on many threads, each blocked in its own
    `Broadcaster.broadcast`, coalesced into BroadcastBatch calls; one broadcaster per
    orderer (each fails over to the others), transactions round-robin over them. Paced at
    `rate` per second or as fast as possible; returns tx id -> send time. A transaction no
    orderer takes (queues full) is retried after 50 ms."""
    names = [f"orderer-{i + 1}" for i in range(len(stubs))]
    # No answer counts as late (a full pool is no strike either): each broadcaster stays on
    # its own orderer under saturation.
    broadcasters = [Broadcaster.over([(names[(i + k) % len(stubs)], stubs[(i + k) % len(stubs)])
                                      for k in range(len(stubs))], timeout=30,
                                     late_after=math.inf)
                    for i in range(len(stubs))]

    def send(broadcaster: Broadcaster, tx: bytes) -> None:
        while True:
            try:
                broadcaster.broadcast(tx)
                return
            except OrdererUnavailable:
                time.sleep(0.05)

    sent: dict[str, float] = {}
    cycle = itertools.cycle(broadcasters)
    with ThreadPoolExecutor(256) as pool:
        futures = []
        for tx in paced(txs, rate):
            sent[tx_id_of(tx)] = time.perf_counter()
            futures.append(pool.submit(send, next(cycle), tx))
        for future in futures:
            future.result()
    for broadcaster in broadcasters:
        broadcaster.close()
    return sent


def orderer_only(profile: str, workdir: Path, *, batched: bool = True,
                 ) -> tuple[dict, list[block_pb2.Block], Genesis]:
    """With `batched`, the clients broadcast as the endorser does (BroadcastBatch, see
    `broadcast_batched`); otherwise with one unary Broadcast per transaction."""
    saturation, rate, seconds = PROFILES[profile]
    send = broadcast_batched if batched else broadcast_all
    consortium = workdir / "consortium"
    devnet.ensure_consortium(consortium, profile="load")
    network = devnet.plan(workdir, consortium, demo=False)
    # One client stands for every member's endorser: its calls must fit in one member's
    # share (the total / the consortium's members), so the total grows with it.
    members = len(Genesis.load(consortium / "genesis.json").organizations)
    for orderer in network.by_role("orderer"):
        orderer.args += ["--broadcast-calls", str(UNARY_IN_FLIGHT_PER_ORDERER * members),
                         "--broadcast-calls-per-member", str(UNARY_IN_FLIGHT_PER_ORDERER)]
    devnet.start(network, roles=("orderer",))
    channels = [secure_channel(o.grpc, network.tls()) for o in network.by_role("orderer")]
    stubs = [orderer_pb2_grpc.OrdererServiceStub(c) for c in channels]
    follower = Follower(network.by_role("orderer")[0].grpc, network)
    try:
        paced_count = int(rate * seconds)
        now = int(time.time()) // 900 * 900
        all_txs = endorsed_readings(consortium, saturation + paced_count, now - 86400 * 30)
        burst, paced = all_txs[:saturation], all_txs[saturation:]

        sent = send(stubs, burst, None)
        ids = list(sent)
        if not follower.wait_for(ids, 600):
            raise RuntimeError("saturation run did not finish")
        first_sent = min(sent.values())
        last_final = max(follower.final_at[t] for t in ids)
        throughput = len(ids) / (last_final - first_sent)

        sent = send(stubs, paced, rate)
        ids = list(sent)
        if not follower.wait_for(ids, 120):
            raise RuntimeError("paced run did not finish")
        latencies = [follower.final_at[t] - sent[t] for t in ids]
        blocks = list(follower.blocks)
    finally:
        follower.close()
        for channel in channels:
            channel.close()
        devnet.stop(network)
    sizes = [len(b.transactions) for b in blocks]
    result = {"orderers": len(stubs), "broadcast": "batched" if batched else "unary",
              "saturation_tx": saturation,
              "throughput_tx_per_s": round(throughput),
              "offered_rate_tx_per_s": rate,
              "broadcast_to_final": summary_ms(latencies),
              "blocks": len(blocks), "avg_block_tx": round(sum(sizes) / len(sizes), 1)}
    print(f"orderer-only ({result['broadcast']} broadcast): "
          f"{result['throughput_tx_per_s']:,} tx/s at saturation "
          f"(n={len(stubs)}, {saturation} pre-endorsed tx); at {rate} tx/s offered, "
          f"broadcast->final p50 {result['broadcast_to_final']['p50_ms']} ms, "
          f"p99 {result['broadcast_to_final']['p99_ms']} ms")
    genesis = Genesis.load(consortium / "genesis.json")
    return result, blocks, genesis


def _commit_all(blocks: list[block_pb2.Block], genesis: Genesis, directory: Path) -> float:
    VERIFIED.clear()  # each run verifies everything once, as a fresh committer process would
    store = LmdbStore(directory)
    ledger = Ledger(store, genesis, block_verifier(genesis))
    start = time.perf_counter()
    for block in blocks:
        ledger.commit(block)
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed


def committer_only(blocks: list[block_pb2.Block], genesis: Genesis, workdir: Path) -> dict:
    txs = sum(len(b.transactions) for b in blocks)
    elapsed = _commit_all(blocks, genesis, workdir / "plain")
    profiler = cProfile.Profile()
    profiler.enable()
    _commit_all(blocks, genesis, workdir / "profiled")
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[3] for row in stats.stats.values() if row[3]) or 1.0  # type: ignore[attr-defined]
    by_name: dict[str, float] = {}
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        by_name[f"{Path(filename).name}:{name}"] = row[3]  # cumulative seconds
    profiled_total = by_name.get("ledger.py:commit", total)
    signatures = by_name.get("crypto.py:verify_signature", 0.0) + \
        by_name.get("identity.py:identify", 0.0) + by_name.get("certificate.py:verify_block", 0.0)
    lmdb = by_name.get("lmdb_store.py:commit", 0.0) + by_name.get("lmdb_store.py:get", 0.0)
    result = {"transactions": txs, "blocks": len(blocks),
              "throughput_tx_per_s": round(txs / elapsed),
              "time_share": {"signature_verification": round(signatures / profiled_total, 3),
                             "lmdb": round(lmdb / profiled_total, 3),
                             "rest": round(max(0.0, 1 - (signatures + lmdb) / profiled_total),
                                           3)}}
    print(f"committer-only: {result['throughput_tx_per_s']:,} tx/s ({txs} tx in "
          f"{len(blocks)} blocks); time share {result['time_share']}")
    return result


def run(profile: str = "standard") -> dict:
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        # Unary first: what grpcurl/CLI clients (and endorsers before BroadcastBatch) get.
        unary, _, _ = orderer_only(profile, workdir / "net-unary", batched=False)
        ordering, blocks, genesis = orderer_only(profile, workdir / "net")
        committing = committer_only(blocks, genesis, workdir / "ledger")
    # What durable acknowledgement costs, in memory vs synced, same run and transactions:
    # batched as the endorser sends, and unary as grpcurl/CLI clients do.
    count = 1_000 if profile == "quick" else 4_000
    return {"orderer_only": ordering, "orderer_only_unary": unary,
            "committer_only": committing,
            "durable_ack_batched": durable_ack_cost(count, batch=32),
            "durable_ack_unary": durable_ack_cost(count, batch=1)}


# -- what durable acknowledgement costs (python -m bench.ordering --durable-ack) -----------

class _Context:
    """The little of a gRPC context the Broadcast API uses."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"{code.name}: {details}")

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no TLS peer: one anonymous client


def _acknowledge_all(consortium: Path, directory: Path, txs: list[bytes], *, durable: bool,
                     callers: int, batch: int) -> dict:
    genesis = Genesis.load(consortium / "genesis.json")
    identity = SigningIdentity.load(consortium, "orderer-1")
    store = OrdererStore(LmdbStore(directory))
    # No peers: nothing becomes final, every transaction stays pending (the pool's capacity
    # is above the count), so the loop does only what acknowledging needs.
    # The callers stand for several members' endorsers: one member's share (the total / the
    # members) must take all their calls.
    calls = OrdererLimits().broadcast_calls
    limits = OrdererLimits(broadcast_calls=calls * len(genesis.organizations),
                           broadcast_calls_per_member=calls)
    node = OrdererNode(genesis, identity, store, Transport([], None),  # type: ignore[arg-type]
                       OrderingParams(), lambda block: None, limits, durable_acks=durable)
    api = OrdererServicer(node, store, HeightNotifier(lambda: 0))
    node.start()
    chunks = [txs[i:i + batch] for i in range(0, len(txs), batch)]
    latencies: list[float] = []

    def send(chunk: list[bytes]) -> None:
        started = time.perf_counter()
        if batch == 1:
            api.Broadcast(orderer_pb2.BroadcastRequest(endorsed_transaction=chunk[0]),
                          _Context())  # type: ignore[arg-type]
        else:
            response = api.BroadcastBatch(orderer_pb2.BroadcastBatchRequest(
                endorsed_transactions=chunk), _Context())  # type: ignore[arg-type]
            assert all(r.code == 0 for r in response.results)
        latencies.append(time.perf_counter() - started)

    for tx in txs:  # parse and verify beforehand: both runs measure the same remaining work
        node.admit(tx)
    writes_before = _samples(ACK_GROUP, "_count")
    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(send, chunks))
    elapsed = time.perf_counter() - started
    node.stop()
    writes = _samples(ACK_GROUP, "_count") - writes_before
    pooled = len(store.pooled())
    store.close()
    return {"acknowledged_tx_per_s": round(len(txs) / elapsed), "call": summary_ms(latencies),
            "pooled_in_lmdb": pooled, "synced_pool_writes": round(writes),
            "tx_per_write": round(len(txs) / writes, 1) if writes else None}


def _samples(histogram: object, suffix: str) -> float:
    return sum(s.value for metric in histogram.collect()  # type: ignore[attr-defined]
               for s in metric.samples if s.name.endswith(suffix))


def durable_ack_cost(count: int = 4_000, callers: int = 32, batch: int = 32) -> dict:
    """Acknowledgements per second and per-call latency with `callers` concurrent callers
    (the orderer's gRPC handler threads) of BroadcastBatch (`batch` per call, as the
    endorser coalesces; 1: unary Broadcast), in memory only and durable, same transactions,
    fresh LMDB each."""
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as directory:  # a real disk, not tmpfs
        workdir = Path(directory)
        consortium = workdir / "consortium"
        devnet.ensure_consortium(consortium, profile="load")
        now = int(time.time()) // 900 * 900
        txs = endorsed_readings(consortium, count, now - 86400 * 30)
        result = {}
        for durable in (False, True):
            label = "durable" if durable else "in_memory"
            result[label] = _acknowledge_all(consortium, workdir / label, txs, durable=durable,
                                             callers=callers, batch=batch)
    ratio = result["in_memory"]["acknowledged_tx_per_s"] / \
        result["durable"]["acknowledged_tx_per_s"]
    result |= {"transactions": count, "callers": callers, "per_call": batch,
               "throughput_ratio_in_memory_to_durable": round(ratio, 2)}
    print(json.dumps(result, indent=2))
    return result


# -- profiling the orderers (python -m bench.ordering --help) ------------------------------

def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_orderers(count: int, out: Path, *, py_spy: bool, rate: float | None,
                     batched: bool, orderer_args: Sequence[str] = ()) -> dict:
    """Start the 4 orderers (with `orderer_args` added to their command lines), broadcast
    `count` readings (at `rate`, or all at once) and report CPU seconds per transaction of
    each orderer and of this client; with `py_spy`, also record each orderer with
    `py-spy record --gil` (collapsed stacks in `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        consortium = workdir / "consortium"
        devnet.ensure_consortium(consortium, profile="load")
        network = devnet.plan(workdir, consortium, demo=False)
        orderers = network.by_role("orderer")
        for orderer in orderers:
            orderer.args.extend(orderer_args)
        devnet.start(network, roles=("orderer",))
        channels = [secure_channel(o.grpc, network.tls()) for o in orderers]
        stubs = [orderer_pb2_grpc.OrdererServiceStub(c) for c in channels]
        follower = Follower(orderers[0].grpc, network)
        spies: list[subprocess.Popen] = []
        try:
            now = int(time.time()) // 900 * 900
            txs = endorsed_readings(consortium, count, now - 86400 * 30)
            before = {o.name: _cpu_seconds(o.pid) for o in orderers}
            client_before = time.process_time()
            if py_spy:
                spy = Path(sys.executable).parent / "py-spy"
                spies = [subprocess.Popen(
                    [str(spy), "record", "--gil", "--nonblocking", "-r", "100", "-f", "raw",
                     "-o", str(out / f"{o.name}.txt"), "-p", str(o.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for o in orderers]
                time.sleep(1.0)
            started = time.perf_counter()
            send = broadcast_batched if batched else broadcast_all
            ids = list(send(stubs, txs, rate))
            if not follower.wait_for(ids, 600):
                raise RuntimeError("profiled run did not finish")
            elapsed = max(follower.final_at[t] for t in ids) - started
            cpu = {o.name: _cpu_seconds(o.pid) - before[o.name] for o in orderers}
            client_cpu = time.process_time() - client_before
            blocks = sum(1 for b in follower.blocks if b.transactions)
        finally:
            for proc in spies:
                proc.send_signal(signal.SIGINT)
            for proc in spies:
                proc.wait(30)
            follower.close()
            for channel in channels:
                channel.close()
            devnet.stop(network)
    result = {"broadcast": "batched" if batched else "unary",
              "transactions": count, "seconds": round(elapsed, 2),
              "tx_per_s": round(count / elapsed),
              "blocks_per_s": round(blocks / elapsed, 1),
              "avg_block_tx": round(count / max(blocks, 1), 1),
              "orderer_cpu_ms_per_tx": {k: round(v / count * 1000, 3) for k, v in cpu.items()},
              "orderers_cpu_ms_per_tx": round(sum(cpu.values()) / count * 1000, 3),
              "client_cpu_ms_per_tx": round(client_cpu / count * 1000, 3)}
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ordering",
                                     description="Profile the orderers under broadcast load.")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=None, help="tx/s (default: all at once)")
    parser.add_argument("--py-spy", action="store_true", help="record each orderer (--gil)")
    parser.add_argument("--unary", action="store_true", help="one Broadcast call per tx")
    parser.add_argument("--out", type=Path, default=Path("bench/reports/orderer-profile"))
    parser.add_argument("--durable-ack", action="store_true",
                        help="instead: what durable acknowledgement costs, in process")
    parser.add_argument("--per-call", type=int, default=32,
                        help="with --durable-ack: transactions per call (1: unary Broadcast)")
    parser.add_argument("--orderer-arg", action="append", default=[], metavar="FLAG",
                        help="added to every orderer's command line (repeatable)")
    args = parser.parse_args()
    if args.durable_ack:
        durable_ack_cost(args.count, batch=args.per_call)
        return
    profile_orderers(args.count, args.out, py_spy=args.py_spy, rate=args.rate,
                     batched=not args.unary, orderer_args=args.orderer_arg)


if __name__ == "__main__":
    main()
