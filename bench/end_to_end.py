"""End to end: the default devnet (4 orderers, 1 endorser, 2 committers) under meter load.

Starts its own network in a temporary directory with the devnet launcher, gives every meter
a day of readings and has a plant announce (set-up, untimed), then runs two phases through
the public APIs, each with fresh jobs from `bench.workload`:

- **max rate**: each submitter keeps `window` jobs in flight, as fast as the network takes
  them, for the sustained committed throughput;
- **fixed rate**: the profile's offered rate (the target's 1,000 tx/s), open loop, from
  `submitters` processes;
- **max rate, batch API**: as max rate, as a head-end system calls: the trade requests in
  RequestOptionsBatch calls and the transactions in SubmitBatch calls (`batch` each);
- **70 % of max**: open loop at 70 % of the throughput the max-rate phases measured, to see
  latency below saturation (the chart shows whether it stays flat there);
- **2x max (overload)**: open loop at twice that capacity: admission control should refuse
  the excess at the edge (the submitters retry a refused call after the endorser's hint plus
  jitter, at most `submitter.MAX_ATTEMPTS` calls) and keep the accepted ones' latency bounded.
  Each 2x window comes right after a max-rate window of its own (`max_rate_before_2x`), the
  profile's `overload_pairs` times: what overload keeps is judged against the capacity of
  the same ledger in the same minute of the host (`e2e_report.overload_share`).

Transactions count as committed when every committer has committed them; latencies run from
the submit (its scheduled time, at a fixed rate) to that moment. Only the window after
`warmup` counts for rates and CPU. Figures are analysed by `bench.e2e_report` and charted by
`bench.chart`. Run alone: ``python -m bench --only end_to_end [--profile quick]``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import commit_replay, e2e_report, limits, observe, profiling, submitter, workload
from bench.workdir import removed_unless_failed
from gridctl import devnet
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.gc_pauses import METRIC as GC_PAUSES
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.backoff import Backoff, retry_after_ms
from gridledger_core.rpc.tls import secure_channel

ROLES = ("orderer", "committer", "endorser")
# Ed25519 verifications timed before each phase (about 0.2 s): the machine's speed then.
SPEED_PROBE_VERIFICATIONS = 4_000
FINALITY = "gridledger_orderer_block_finality_seconds"
RESENT = "gridledger_endorser_acknowledged_resent"  # ack_watch.py, via the broadcaster


@dataclass(frozen=True)
class Profile:
    meters: int
    rate: float  # offered tx/s in the fixed-rate phase
    rate_seconds: float
    max_seconds: float
    warmup: float
    submitters: int
    window: int  # jobs in flight per submitter in the max-rate phase
    max_jobs_per_s: int  # jobs signed for the max-rate phase, per second of it
    batch: int  # transactions per SubmitBatch call in the batch-API phase
    # (max-rate window, 2x window) pairs: the same phase repeated on one network moved by 2-13 %
    # on this shared host (docs/performance.md, twenty-fourth round), more than the 90 %
    # target leaves, so the share overload keeps is measured on more than one pair.
    overload_pairs: int


PROFILES = {
    "quick": Profile(meters=4, rate=120, rate_seconds=4, max_seconds=4, warmup=1,
                     submitters=2, window=32, max_jobs_per_s=600, batch=32, overload_pairs=1),
    "standard": Profile(meters=24, rate=1_000, rate_seconds=30, max_seconds=30, warmup=5,
                        submitters=2, window=150, max_jobs_per_s=2_500, batch=100,
                        overload_pairs=2),
}


PHASES = ("max_rate", "max_rate_batch_api", "fixed_rate", "rate_70pct_of_max",
          e2e_report.OVERLOAD)


def run(profile: str = "standard", directory: Path | None = None,
        chart_path: Path | None = None, profile_dir: Path | None = None,
        node_args: dict[str, list[str]] | None = None,
        phases: Sequence[str] = PHASES, window: int | None = None,
        profiled_phase: str = "max_rate", capacity: float | None = None) -> dict:
    """`profile_dir`: also sample every node with py-spy during `profiled_phase`'s window.
    `node_args`: role -> extra command-line flags for its nodes (A/B runs of a setting).
    `phases`: a subset of PHASES, for quick A/B runs (the 70 % and 2x phases need max_rate,
    which is then run too, unless `capacity` is given). `window`: overrides the profile's jobs
    in flight per submitter. `capacity`: the tx/s the 70 % and 2x phases are relative to,
    instead of this run's max rate (A/B runs at the same offered rate)."""
    spec = PROFILES[profile]
    if window is not None:
        spec = dataclasses.replace(spec, window=window)
    unknown = set(phases) - set(PHASES)
    if unknown or profiled_phase not in PHASES:
        raise ValueError(f"unknown phases {sorted(unknown | {profiled_phase} - set(PHASES))}; "
                         f"choose from {PHASES}")
    own_directory = directory is None
    directory = directory or Path(tempfile.mkdtemp(prefix="gridledger-e2e-"))
    devnet.ensure_consortium(directory / "consortium", meters=spec.meters, plants=1,
                             profile="load")
    network = devnet.plan(directory, directory / "consortium", demo=False)
    for role, flags in (node_args or {}).items():
        for node in network.by_role(role):
            node.args += flags
    with removed_unless_failed(directory, owned=own_directory):
        devnet.start(network, roles=ROLES)
        try:
            report = _run(network, spec, profile, chart_path, (profiled_phase, profile_dir),
                          set(phases), capacity)
        finally:
            devnet.stop(network)
        committer = network.by_role("committer")[0]
        replayed = commit_replay.replay(network.consortium_dir, Path(committer.data_dir) / "ledger")
        print(f"  commit replay ({committer.name}'s {replayed['blocks']} blocks, "
              f"{replayed['transactions']} transactions, into a fresh ledger in one process): "
              f"{replayed['cpu_us_per_tx']} us CPU per transaction; state roots and codes "
              "identical to the live committer's", flush=True)
        report["commit_replay"] = replayed
    return report


def _run(network: devnet.Network, spec: Profile, profile: str, chart_path: Path | None,
         profiled: tuple[str, Path | None], wanted: set[str],
         reference: float | None = None) -> dict:
    genesis = Genesis.load(network.consortium_dir / "genesis.json")
    meters = workload.meter_names(spec.meters)
    now = int(time.time())
    set_up = _set_up(network, genesis, meters, now)
    profiled_phase, profile_dir = profiled

    def sampled(phase: str) -> Path | None:  # py-spy's output directory in that phase
        return profile_dir if phase == profiled_phase else None

    maker = workload.JobMaker(network.consortium_dir, genesis, meters, "plant-1", now)
    signing = time.monotonic()
    fixed_jobs = maker.jobs(int(spec.rate * spec.rate_seconds)) \
        if "fixed_rate" in wanted else []
    # max_rate measures the capacity the later phases are relative to, unless one is given.
    runs_max_rate = reference is None or "max_rate" in wanted
    max_jobs = maker.jobs(int(spec.max_jobs_per_s * spec.max_seconds)) if runs_max_rate else []
    set_up["signing_seconds"] = round(time.monotonic() - signing, 1)
    print(f"end to end [{profile}]: {spec.meters} meters, set-up {set_up}", flush=True)
    # Capacity first (single and batch API), then the target rate, then 70 % of the capacity
    # measured, for latency below saturation, then twice it, for overload. Each phase ends
    # only when every acknowledged transaction is committed, so none leaks into the next.
    phases = {}
    if runs_max_rate:
        phases["max_rate"] = _phase(network, max_jobs, spec, rate=0.0,
                                    duration=spec.max_seconds, profile_dir=sampled("max_rate"))
    if "max_rate_batch_api" in wanted:
        phases["max_rate_batch_api"] = _phase(
            network, maker.jobs(int(spec.max_jobs_per_s * spec.max_seconds)), spec,
            rate=0.0, duration=spec.max_seconds, batch=spec.batch,
            profile_dir=sampled("max_rate_batch_api"))
    if "fixed_rate" in wanted:
        phases["fixed_rate"] = _phase(network, fixed_jobs, spec, rate=spec.rate,
                                      duration=spec.rate_seconds,
                                      profile_dir=sampled("fixed_rate"))
    # The open-loop phases below send single SubmitTransaction calls (one per meter), so
    # their reference is the capacity of that API, not the batch API's larger one: 70 % of
    # the batch capacity is more than single calls can carry, and would measure overload.
    capacity = (reference if reference is not None
                else phases["max_rate"][0]["committed_valid_tx_per_s"])
    if "rate_70pct_of_max" in wanted:
        below = max(10.0, round(0.7 * capacity, -1))
        phases["rate_70pct_of_max"] = _phase(
            network, maker.jobs(int(below * spec.rate_seconds)), spec, rate=below,
            duration=spec.rate_seconds, profile_dir=sampled("rate_70pct_of_max"))
    if e2e_report.OVERLOAD in wanted:
        # Offered at twice the first capacity measured; what is committed there is compared
        # with a max-rate window just before it (the ledger grows over a run, and the host's
        # speed moves from minute to minute).
        over = max(20.0, round(2 * capacity, -1))
        for pair in range(1, spec.overload_pairs + 1):
            suffix = "" if pair == 1 else f"_{pair}"
            phases[e2e_report.OVERLOAD_REFERENCE + suffix] = _phase(
                network, maker.jobs(int(spec.max_jobs_per_s * spec.max_seconds)), spec,
                rate=0.0, duration=spec.max_seconds)
            phases[e2e_report.OVERLOAD + suffix] = _phase(
                network, maker.jobs(int(over * spec.rate_seconds)), spec, rate=over,
                duration=spec.rate_seconds,
                profile_dir=sampled(e2e_report.OVERLOAD) if pair == 1 else None)
    summaries = {name: summary for name, (summary, _) in phases.items()}
    report = {
        "profile": profile,
        "network": {role: len(network.by_role(role)) for role in ROLES},
        "meters": spec.meters, "submitters": spec.submitters, "set_up": set_up,
        "phases": summaries,
        "overload_share": e2e_report.overload_share(summaries),
        "peak_rss_mib": {n.name: round(observe.peak_rss_mib(n.pid), 1) for n in network.nodes
                         if n.role in ROLES},
    }
    if profile_dir is not None:
        report["profile_by_role"] = profiling.by_role(
            [n for n in network.nodes if n.role in ROLES], profile_dir)
        report["profile_dir"] = str(profile_dir)
        report["profiled_phase"] = profiled_phase
    print(e2e_report.table(report), flush=True)
    if report["overload_share"] is not None:
        print(e2e_report.overload_line(report["overload_share"]), flush=True)
    for line in profiling.lines(report.get("profile_by_role", {})):
        print(line, flush=True)
    if chart_path is not None:
        from bench import chart
        chart.render({name: series for name, (_, series) in phases.items()}, chart_path,
                     title=f"GridLedger end to end ({profile} profile)")
        report["chart"] = str(chart_path)
        print(f"chart: {chart_path}", flush=True)
    return report


# -- set-up ------------------------------------------------------------------------------------

def _set_up(network: devnet.Network, genesis: Genesis, meters: list[str], now: int) -> dict:
    started = time.monotonic()
    envelopes = workload.history(network.consortium_dir, meters,
                                 genesis.reading_interval_seconds, now)
    envelopes.append(workload.plant_announcement(network.consortium_dir, "plant-1"))
    committers = network.by_role("committer")
    followers = [observe.CommitFollower(network, c, _height(network)) for c in committers]
    try:
        tx_ids = _submit_all(network, envelopes)
        if not observe.wait_committed([f.log for f in followers], tx_ids, timeout=120):
            raise RuntimeError("set-up transactions were not committed within 120 s")
        invalid = sum(1 for t in tx_ids if followers[0].log.commits[t][1] != observe.VALID)
        if invalid:
            raise RuntimeError(f"{invalid} set-up transactions were committed invalid")
    finally:
        for follower in followers:
            follower.stop()
    time.sleep(1.0)  # the endorser's replica follows the committers' last block
    return {"history_transactions": len(envelopes),
            "history_seconds": round(time.monotonic() - started, 1)}


def _height(network: devnet.Network) -> int:
    committer = network.by_role("committer")[0]
    with secure_channel(committer.grpc, network.tls()) as channel:
        stub = committer_pb2_grpc.CommitterServiceStub(channel)
        return stub.GetChainInfo(committer_pb2.GetChainInfoRequest(), timeout=10).height


def _submit_all(network: devnet.Network, envelopes: list[envelope_pb2.SignedEnvelope],
                window: int = 200) -> list[str]:
    """Submit with `window` calls in flight, retrying backpressure; the accepted tx ids."""
    endorser = network.by_role("endorser")[0]
    tx_ids: list[str] = []
    slots = threading.Semaphore(window)
    failures: list[str] = []
    backoff = Backoff()
    with secure_channel(endorser.grpc, network.tls()) as channel:
        stub = endorser_pb2_grpc.EndorserServiceStub(channel)

        def send(envelope: envelope_pb2.SignedEnvelope, attempt: int = 0) -> None:
            future = stub.SubmitTransaction.future(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=30)
            future.add_done_callback(lambda f: done(f, envelope, attempt))

        def done(future: grpc.Future, envelope: envelope_pb2.SignedEnvelope,
                 attempt: int) -> None:
            try:
                tx_ids.append(future.result().tx_id)
            except grpc.RpcError as exc:
                if exc.code() in submitter.RETRYABLE and attempt < 100:  # type: ignore[attr-defined]
                    # Later (the endorser's hint plus jitter), from a timer: a callback must
                    # not hold up the channel's others.
                    delay = backoff.delay(min(attempt, 4), retry_after_ms(exc))
                    threading.Timer(delay, send, (envelope, attempt + 1)).start()
                    return
                failures.append(submitter.reason(exc))
            slots.release()

        for envelope in envelopes:
            slots.acquire()
            send(envelope)
        for _ in range(window):
            slots.acquire()
    if failures:
        raise RuntimeError(f"{len(failures)} set-up transactions refused, e.g. {failures[0]}")
    return tx_ids


# -- one timed phase ---------------------------------------------------------------------------

def _phase(network: devnet.Network, jobs: list[workload.Job], spec: Profile, *, rate: float,
           duration: float, profile_dir: Path | None = None,
           batch: int = 0) -> tuple[dict, dict]:
    nodes = [n for n in network.nodes if n.role in ROLES]
    orderers = network.by_role("orderer")
    # The same phase moves by more between runs than most changes do, so each phase says
    # whether the host's compute speed moved: timed here, with the network idle after the
    # previous phase drained.
    speed = limits.ed25519_verifications_per_second(SPEED_PROBE_VERIFICATIONS)
    followers = [observe.CommitFollower(network, c, _height(network))
                 for c in network.by_role("committer")]
    endorser = network.by_role("endorser")[0]
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go, start = context.Event(), context.Value("d", 0.0)
    parts = list(workload.chunks(jobs, spec.submitters))
    processes = [context.Process(target=submitter.main, daemon=True, args=(
        submitter.Spec(endorser.grpc, network.tls(), network.consortium_dir, part,
                       rate / spec.submitters, spec.window, duration, batch=batch),
        ready, go, start, results)) for part in parts]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        t0 = time.monotonic() + 0.2
        start.value = t0
        finality_before = observe.scrape_histogram(orderers, FINALITY)
        resent_before = _resent(endorser)
        go.set()
        _sleep_until(t0 + spec.warmup)
        window_start = time.monotonic()
        cpu_before, machine_before = observe.cpu_by_node(nodes), observe.machine_cpu_seconds()
        gc_before = observe.scrape(nodes, [GC_PAUSES])
        counts_before = _orderer_counts(orderers)
        samplers = profiling.start(nodes, duration - spec.warmup, profile_dir) \
            if profile_dir is not None else []
        _sleep_until(t0 + duration)
        window_end = time.monotonic()
        cpu_after, machine_after = observe.cpu_by_node(nodes), observe.machine_cpu_seconds()
        counts = {k: v - counts_before[k] for k, v in _orderer_counts(orderers).items()}
        round_changes = counts.pop("round_changes")
        finality = observe.bucket_delta(observe.scrape_histogram(orderers, FINALITY),
                                        finality_before)
        gc_after = observe.scrape(nodes, [GC_PAUSES])
        gc_pauses = observe.bucket_delta(observe.buckets_of(gc_after, GC_PAUSES),
                                         observe.buckets_of(gc_before, GC_PAUSES))
        gc_seconds = observe.sum_of(gc_after, GC_PAUSES) - observe.sum_of(gc_before, GC_PAUSES)
        profiling.finish(samplers)
        outcomes = [results.get(timeout=180) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        records = [r for outcome in outcomes for r in outcome.records]
        acked = [r.tx_id for r in records if r.acked]
        drained = observe.wait_committed([f.log for f in followers], acked, timeout=60)
        resent = _resent(endorser) - resent_before
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for follower in followers:
            follower.stop()
    measured = e2e_report.Measured(
        records=records, logs=[f.log for f in followers], t0=t0, window=(window_start,
                                                                           window_end),
        cpu={n.name: cpu_after[n.name] - cpu_before[n.name] for n in nodes},
        roles={n.name: n.role for n in nodes},
        machine_busy=machine_after.busy - machine_before.busy,
        machine_steal=machine_after.steal - machine_before.steal, finality=finality,
        drained=drained,
        offered_rate=rate, submitter_cpu=sum(o.cpu_seconds for o in outcomes),
        orderer_counts=counts, orderer_round_changes=round_changes, gc_pauses=gc_pauses,
        gc_seconds=gc_seconds,
        machine_ed25519_verify_per_s=speed, acknowledged_resent=resent)
    summary, series = e2e_report.analyse(measured)
    summary["api"] = (f"SubmitBatch, RequestOptionsBatch x{batch}" if batch
                      else "SubmitTransaction")
    name = f"{rate:,.0f} tx/s offered" if rate else "max rate"
    print(e2e_report.phase_line(f"{name} ({summary['api']})", summary), flush=True)
    return summary, series


def _resent(endorser: devnet.Node) -> float:
    return observe.counter_sum(observe.scrape([endorser], [RESENT]), RESENT)


def _orderer_counts(orderers: Sequence[devnet.Node]) -> dict[str, float]:
    received = "gridledger_orderer_messages_received"
    rounds = "gridledger_orderer_round_changes"
    samples = observe.scrape(orderers, ["grpc_server_started", received, rounds])
    return {
        # Each orderer counts the rounds it entered above 0 (a primary that did not get its
        # block through within the round timeout): a stall of the whole network.
        "round_changes": observe.counter_sum(samples, rounds),
        "broadcast_calls": observe.counter_sum(
            samples, "grpc_server_started",
            lambda labels: labels.get("grpc_method") in ("Broadcast", "BroadcastBatch")),
        "consensus_messages": observe.counter_sum(samples, received),
        "tx_forwards": observe.counter_sum(samples, received,
                                           lambda labels: labels.get("kind") == "tx_forward"),
    }


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)
