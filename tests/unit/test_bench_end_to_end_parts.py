"""The end-to-end benchmark's pure parts: the workload it signs, the quantiles it reads
from Prometheus histograms, and the figures it derives from raw observations."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from bench import chart, e2e_report, observe, profiling, workload
from bench.observe import BlockSeen, CommitLog
from bench.submitter import SHED, Record
from gridledger.common.v1 import envelope_pb2, market_pb2, transaction_pb2, validation_pb2
from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.rules.market import forecast_params
from gridledger_core.market.forecast import forecast
from gridledger_core.signing_identity import SigningIdentity

V = observe.VALID
INVALID = validation_pb2.TX_VALIDATION_CODE_STATE_CONFLICT


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("consortium")
    create_consortium(directory, default_topology(4, meters=4, plants=1))
    return directory


def test_history_gives_producers_a_surplus_and_consumers_a_deficit_in_every_slot(
        consortium: Path) -> None:
    genesis = Genesis.load(consortium / "genesis.json")
    now = 1_790_000_000
    meters = workload.meter_names(4)
    readings: dict[str, list[transaction_pb2.MeterReading]] = {m: [] for m in meters}
    for envelope in workload.history(consortium, meters, genesis.reading_interval_seconds, now):
        reading = transaction_pb2.Transaction.FromString(envelope.payload).meter_reading
        assert reading.interval_start + reading.interval_seconds <= now
        readings[reading.meter].append(reading)
    params = forecast_params(genesis.market)
    slots = workload.open_slots(genesis, now)
    assert len(slots) >= 18
    for slot in slots:
        # Open for the whole run: gate closure is more than an hour away.
        assert slot - genesis.market.gate_closure_seconds > now + 3600
        for meter, history in readings.items():
            net = forecast(history, slot, genesis.market.slot_seconds, params, as_of=now).net_wh
            assert (net > 0) if workload.is_producer(meter) else (net < 0), (meter, slot)


def test_jobs_mix_readings_orders_and_one_contract_per_meter(consortium: Path) -> None:
    genesis = Genesis.load(consortium / "genesis.json")
    maker = workload.JobMaker(consortium, genesis, workload.meter_names(4), "plant-1",
                              1_790_000_000)
    jobs = maker.jobs(200) + maker.jobs(200)
    kinds = [j.kind for j in jobs]
    assert kinds.count("contract") == 4
    assert kinds.count("reading") > kinds.count("order") > 100
    tx_ids = [j.tx_id for j in jobs if j.kind != "order"]
    assert len(set(tx_ids)) == len(tx_ids) and all(tx_ids)
    intervals = set()
    for job in jobs:
        if job.kind == "reading":
            envelope = envelope_pb2.SignedEnvelope.FromString(job.payload)
            reading = transaction_pb2.Transaction.FromString(envelope.payload).meter_reading
            intervals.add((reading.meter, reading.interval_start))
        elif job.kind == "order":
            terms = market_pb2.TradeRequest.FromString(job.payload).terms
            sell = terms.side == market_pb2.ORDER_SIDE_SELL
            assert sell == workload.is_producer(terms.meter)
            assert terms.quantity_wh % genesis.market.lot_wh == 0
    assert len(intervals) == kinds.count("reading")  # never the same interval twice
    parts = list(workload.chunks(jobs, 3))
    assert sorted(id(j) for part in parts for j in part) == sorted(map(id, jobs))


def test_trade_requests_are_stamped_and_signed_when_sent_not_when_made(
        consortium: Path) -> None:
    """Endorsers refuse a request more than --request-window (30 s) off their clock, and a
    phase's jobs are made long before its last ones go out: the submitter stamps and signs
    each request right before sending it."""
    genesis = Genesis.load(consortium / "genesis.json")
    made_at = 1_790_000_000
    maker = workload.JobMaker(consortium, genesis, workload.meter_names(4), "plant-1", made_at)
    orders = [j for j in maker.jobs(40) if j.kind == "order"]
    assert orders
    nonces = set()
    for job in orders:
        sent_at = made_at + 3600  # an hour after the jobs were made
        identity = SigningIdentity.load(consortium, job.meter)
        envelope = workload.sign_request(identity, job.payload, now=sent_at)
        request = market_pb2.TradeRequest.FromString(envelope.payload)
        assert (request.requested_at, request.terms.meter) == (sent_at, job.meter)
        nonces.add(request.nonce)
        certificate = x509.load_der_x509_certificate(envelope.signer_certificate)
        assert envelope.signer_certificate == identity.certificate
        certificate.public_key().verify(envelope.signature, envelope.payload)  # type: ignore[call-arg, union-attr]
    assert len(nonces) == len(orders)
    now = int(time.time())
    stamped = workload.sign_request(SigningIdentity.load(consortium, orders[0].meter),
                                    orders[0].payload)
    assert market_pb2.TradeRequest.FromString(stamped.payload).requested_at >= now


def test_each_thread_of_a_process_is_read_by_its_id() -> None:
    threads = observe.thread_cpu_seconds(os.getpid())
    assert threading.get_native_id() in threads
    assert all(cpu >= 0 for cpu in threads.values())
    assert observe.thread_cpu_seconds(2**22 + 1) == {}  # beyond pid_max: no such process


def test_a_process_cpu_counts_its_running_children_and_its_own_does_not() -> None:
    """An endorser's fronts are its child processes: its CPU is theirs too."""
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while observe.cpu_seconds(child.pid) < 0.3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert child.pid in observe.child_pids(os.getpid())
        assert observe.cpu_seconds(os.getpid()) >= observe.own_cpu_seconds(os.getpid()) + 0.3
        assert observe.child_pids(2**22 + 1) == []
    finally:
        child.kill()
        child.wait()


def test_the_busiest_thread_share_is_of_the_thread_that_ran_most_in_between() -> None:
    before = {1: 10.0, 2: 3.0}
    after = {1: 10.5, 2: 4.6, 3: 0.2}  # thread 3 started in between
    assert observe.busiest_thread_share(before, after, 2.0) == 0.8
    assert observe.busiest_thread_share(before, before, 2.0) == 0.0
    assert observe.busiest_thread_share(before, after, 0.0) == 0.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 10.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert observe.histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 40 / 80)
    assert observe.histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9 / 10)
    assert observe.histogram_quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    assert observe.histogram_quantile(0.99, {0.1: 1.0, float("inf"): 5.0}) == 0.1
    assert observe.bucket_delta({0.1: 5.0, 1.0: 9.0}, {0.1: 2.0}) == {0.1: 3.0, 1.0: 9.0}


def test_the_longest_observation_is_bounded_by_the_first_bucket_that_counted_everything() -> None:
    assert observe.longest({0.001: 4.0, 0.01: 7.0, 0.1: 7.0, float("inf"): 7.0}) == 0.01
    assert observe.longest({0.001: 4.0, 1.0: 4.0, float("inf"): 5.0}) == float("inf")
    assert observe.longest({0.001: 0.0, float("inf"): 0.0}) is None
    assert observe.longest({}) is None


def _registry_with_neighbours() -> CollectorRegistry:
    """A node's registry in small: the families a phase reads, beside others whose names
    start alike (a filter by prefix lets those through, the parse must drop them)."""
    registry = CollectorRegistry()
    started = Counter("grpc_server_started", "calls", ["grpc_method"], registry=registry)
    started.labels("Broadcast").inc(3)
    started.labels("Deliver").inc()
    Counter("grpc_server_started_late", "a neighbour by prefix", registry=registry).inc(7)
    pauses = Histogram("gridledger_gc_pause_seconds", "pauses", buckets=(0.01, 0.1),
                       registry=registry)
    pauses.observe(0.005)
    pauses.observe(0.05)
    Gauge("gridledger_orderer_height", "unrelated", registry=registry).set(9)
    return registry


def test_a_page_is_read_for_the_wanted_families_only_and_reads_as_the_whole_page() -> None:
    registry = _registry_with_neighbours()
    page = generate_latest(registry).decode()
    wanted = {"grpc_server_started", "gridledger_gc_pause_seconds"}
    whole = [s for f in text_string_to_metric_families(page) if f.name in wanted
             for s in f.samples]
    assert observe.samples_of(page, wanted) == whole
    assert observe.counter_sum(whole, "grpc_server_started") == 4.0
    assert observe.buckets_of(whole, "gridledger_gc_pause_seconds")[0.01] == 1.0


class _CountedCollector:
    """A family the benchmark does not read, which counts how often the node collects it."""

    def __init__(self) -> None:
        self.collected = 0

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("gridledger_unread", "not read by a phase")]

    def collect(self) -> list[GaugeMetricFamily]:
        self.collected += 1
        return [GaugeMetricFamily("gridledger_unread", "not read by a phase", value=1.0)]


def test_a_scrape_asks_the_node_for_its_families_by_name() -> None:
    # The node then collects only what holds those families: less of its CPU taken at a
    # window's ends, while it is measured.
    registry = _registry_with_neighbours()
    unread = _CountedCollector()
    registry.register(unread)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        node = SimpleNamespace(metrics=f"127.0.0.1:{server.server_port}")
        samples = observe.scrape([node], ["grpc_server_started", "gridledger_gc_pause_seconds"])  # type: ignore[list-item]
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert unread.collected == 0
    assert {s.name for s in samples} >= {"grpc_server_started_total",
                                         "gridledger_gc_pause_seconds_bucket",
                                         "gridledger_gc_pause_seconds_sum"}
    assert "grpc_server_started_late_total" not in {s.name for s in samples}
    assert observe.counter_sum(samples, "grpc_server_started",
                               lambda labels: labels["grpc_method"] == "Broadcast") == 3.0


def _measured(records: list[Record], logs: list[CommitLog]) -> e2e_report.Measured:
    return e2e_report.Measured(
        records=records, logs=logs, t0=100.0, window=(101.0, 103.0),
        cpu={"orderer-1": 1.0, "orderer-2": 1.0, "committer-1": 0.5, "endorser-1": 0.5},
        roles={"orderer-1": "orderer", "orderer-2": "orderer", "committer-1": "committer",
               "endorser-1": "endorser"},
        machine_busy=3.0, machine_steal=0.4,
        finality={0.1: 1.0, 0.2: 2.0, float("inf"): 2.0}, drained=True,
        offered_rate=10.0, submitter_cpu=0.2)


def test_analyse_counts_only_transactions_committed_everywhere_in_the_window(
        tmp_path: Path) -> None:
    records = [Record("reading", "a", 101.0, 101.0, 101.01, "", 0.0),
               Record("order", "b", 101.5, 101.6, 101.61, "", 0.1),
               Record("reading", "c", 102.0, 102.0, 102.01, "", 0.0),  # on one committer only
               Record("order", "", 102.0, 0.0, 0.0, "FAILED_PRECONDITION: x", 0.05),
               Record("reading", "d", 102.5, 102.5, 102.51, "", 0.0)]  # invalid
    first = CommitLog("committer-1", {"a": (101.2, V), "b": (101.9, V), "c": (102.1, V),
                                      "d": (102.7, INVALID)},
                      [BlockSeen(1, 101.2, 1), BlockSeen(2, 101.9, 1), BlockSeen(3, 102.7, 2)])
    second = CommitLog("committer-2", {"a": (101.3, V), "b": (101.8, V), "d": (102.8, INVALID)})
    measured = _measured(records, [first, second])
    measured.machine_ed25519_verify_per_s = 18_123.4
    summary, series = e2e_report.analyse(measured)
    assert summary["machine_ed25519_verify_per_s_before"] == 18_123
    assert summary["committed_valid_tx_per_s"] == 1.0  # a and b, over 2 s
    assert summary["submit_to_commit_ms"]["samples"] == 3  # a, b, d (c is not everywhere)
    assert summary["submit_to_commit_ms"]["p50"] == 300.0  # b: 101.9 - 101.6
    assert summary["submit_to_commit_p99_ms_by_kind"] == {"order": pytest.approx(300.0),
                                                          "reading": pytest.approx(300.0)}
    assert summary["matching_ms"] == {"p50": 50.0, "p99": 100.0, "samples": 2}
    assert summary["rejected"] == {"FAILED_PRECONDITION: x": 1}
    assert summary["invalid"] == {"STATE_CONFLICT": 1}
    assert summary["unaccounted"] == 1  # c
    assert summary["cpu_ms_per_committed_tx"] == {"committer": 250.0, "endorser": 250.0,
                                                  "orderer": 1000.0}
    assert summary["blocks_per_s"] == 1.5 and summary["avg_block_transactions"] == 1.3
    assert summary["block_finality_p99_ms"] == pytest.approx(198.0)
    cores = os.cpu_count() or 1  # busy and steal: shares of every core's 2 s window
    assert summary["machine_busy_fraction"] == round(3.0 / (2 * cores), 3)
    assert summary["machine_steal_fraction"] == round(0.4 / (2 * cores), 3)
    assert series["committed_per_s"] == [0, 2, 0] and sum(series["sent_per_s"]) == 5
    report = {"phases": {"fixed_rate": summary, "max_rate": summary},
              "peak_rss_mib": {"orderer-1": 70.0}}
    assert "committed (valid) tx/s" in e2e_report.table(report)
    assert "18,123" in e2e_report.table(report)  # the machine's speed before the phase
    chart.render({"fixed_rate": series}, tmp_path / "c.png", title="test")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_refusals_after_every_retry_and_the_accepted_calls_own_latency() -> None:
    records = [
        # Accepted at the third call: latency from the first send, the call's from the last.
        Record("reading", "a", 101.0, 101.0, 101.6, "", 0.0, 3, 101.5),
        Record("reading", "b", 101.0, 101.0, 0.0, "RESOURCE_EXHAUSTED: full", 0.0, 4, 101.9),
        Record("order", "", 101.0, 0.0, 0.0, "options RESOURCE_EXHAUSTED: full", 0.0, 4),
        Record("order", "", 101.0, 0.0, 0.0, "options ABORTED: held", 0.0)]
    log = CommitLog("committer-1", {"a": (101.8, V)}, [BlockSeen(1, 101.8, 1)])
    summary, _ = e2e_report.analyse(_measured(records, [log]))
    assert summary["refused_share"] == 0.5  # b and the second order, not the ABORTED one
    assert summary["retried_calls"] == 2 + 3 + 3
    assert summary["submit_to_commit_ms"]["p50"] == pytest.approx(800.0)
    assert summary["accepted_call_ms"]["p50"] == pytest.approx(100.0)
    assert summary["ack_to_commit_ms"]["p50"] == pytest.approx(200.0)
    assert summary["accepted_to_commit_ms"]["p50"] == pytest.approx(300.0)  # 101.5 -> 101.8
    table = e2e_report.table({"phases": {"overload_2x_max": summary}, "peak_rss_mib": {}})
    assert "50.0 %" in table
    assert "accepted call's send->commit p50 / p99 ms" in table and "p99 <= 2,000 at 2x" in table


def test_an_accepted_transactions_latency_is_its_own_not_the_sum_of_two_tails() -> None:
    # One is slow to be acknowledged, the other slow to commit: each leg's p99 is 900 ms,
    # but no accepted transaction took more than 1,000 ms from its call to its commit.
    records = [Record("reading", "a", 101.0, 101.0, 101.9, "", 0.0, 1, 101.0),
               Record("reading", "b", 101.0, 101.0, 101.1, "", 0.0, 1, 101.0)]
    log = CommitLog("committer-1", {"a": (102.0, V), "b": (102.0, V)},
                    [BlockSeen(1, 102.0, 2)])
    summary, _ = e2e_report.analyse(_measured(records, [log]))
    assert summary["accepted_call_ms"]["p99"] == pytest.approx(900.0, abs=10)
    assert summary["ack_to_commit_ms"]["p99"] == pytest.approx(900.0, abs=10)
    assert summary["accepted_to_commit_ms"]["p99"] == pytest.approx(1000.0)


def test_orderer_messages_are_counted_per_committed_transaction() -> None:
    records = [Record("reading", "a", 101.0, 101.0, 101.6, "", 0.0),
               Record("reading", "b", 101.0, 101.0, 101.6, "", 0.0)]
    log = CommitLog("committer-1", {"a": (101.8, V), "b": (101.9, V)}, [BlockSeen(1, 101.9, 2)])
    measured = _measured(records, [log])
    measured.orderer_counts = {"broadcast_calls": 1.0, "consensus_messages": 9.0,
                               "tx_forwards": 3.0}
    measured.orderer_round_changes = 2.0
    summary, _ = e2e_report.analyse(measured)
    assert summary["orderer_messages_per_committed_tx"] == {
        "broadcast_calls": 0.5, "consensus_messages": 4.5, "tx_forwards": 1.5}
    assert summary["orderer_round_changes"] == 2.0  # a count, not per transaction
    table = e2e_report.table({"phases": {"max_rate": summary}, "peak_rss_mib": {}})
    assert "orderers: tx forwards per tx" in table
    assert "orderers: round changes in the window (all orderers)" in table


def test_jobs_shed_by_the_generator_and_its_lag_are_counted_apart_from_refusals() -> None:
    records = [
        Record("reading", "a", 101.0, 101.0, 101.6, "", 0.0, 1, 101.4, 101.4),  # 400 ms late
        Record("reading", "", 101.1, 0.0, 0.0, SHED, 0.0, 0),
        Record("reading", "", 101.2, 0.0, 0.0, SHED, 0.0, 0),
        Record("reading", "b", 101.3, 101.3, 0.0, "RESOURCE_EXHAUSTED: full", 0.0, 4, 101.9,
               101.3)]
    log = CommitLog("committer-1", {"a": (101.8, V)}, [BlockSeen(1, 101.8, 1)])
    summary, _ = e2e_report.analyse(_measured(records, [log]))
    assert summary["shed_by_generator_share"] == 0.5
    assert summary["refused_share"] == 0.25  # only b: shed jobs were never offered
    assert summary["generator_lag_ms"]["p99"] == pytest.approx(400.0)
    assert summary["accepted_call_ms"]["p50"] == pytest.approx(200.0)  # from the real send
    assert summary["retried_calls"] == 3  # b's; a shed job made no call, so no retry either
    table = e2e_report.table({"phases": {"overload_2x_max": summary}, "peak_rss_mib": {}})
    assert "shed by the load generator" in table and "50.0 %" in table


def test_steal_is_the_share_of_every_core_the_host_gave_to_other_guests() -> None:
    cores = os.cpu_count() or 1
    before, after = observe.MachineCpu(10.0, 1.0), observe.MachineCpu(20.0, 1.0 + cores)
    assert observe.steal_fraction(before, after, seconds=4.0) == 0.25
    assert observe.steal_fraction(before, after, seconds=0.0) == 0.0
    now = observe.machine_cpu_seconds()
    assert now.busy >= now.steal >= 0


def test_a_profile_with_a_garbled_frame_is_still_summarised(tmp_path: Path) -> None:
    # py-spy's nonblocking sampler once wrote a frame name of bytes that are not UTF-8; the
    # summary used to raise on it and the run lost its whole report.
    stacks = tmp_path / "committer-1.txt"
    stacks.write_bytes(b"main (node.py:1);commit (follower.py:2) 3\n"
                       b"\xfc\xb3\x87\xb0 (\xef\xbf\xbd:-1) 1\n")
    summary = profiling.summarise([stacks])
    assert summary["samples"] == 4
    assert ("commit (follower.py)", 0.75) in summary["self"]


def test_overload_is_judged_against_the_max_rate_window_just_before_each_2x_window() -> None:
    def rate(tx_per_s: float) -> dict:
        return {"committed_valid_tx_per_s": tx_per_s}

    phases = {"max_rate": rate(800.0), "rate_70pct_of_max": rate(560.0),
              "max_rate_before_2x": rate(700.0), "overload_2x_max": rate(665.0),
              "max_rate_before_2x_2": rate(750.0), "overload_2x_max_2": rate(660.0)}
    share = e2e_report.overload_share(phases)
    assert share == {
        "pairs": [{"max_rate_tx_per_s": 700.0, "overload_tx_per_s": 665.0, "share": 0.95},
                  {"max_rate_tx_per_s": 750.0, "overload_tx_per_s": 660.0, "share": 0.88}],
        "share": round(1325 / 1450, 3),  # together, not the mean of the two shares
        "share_of_first_max_rate": round(662.5 / 800, 3)}
    line = e2e_report.overload_line(share)
    assert "665.0 of 700.0 tx/s (95.0 %)" in line and "together 91.4 %" in line
    assert "of the first max-rate window: 82.8 %" in line
    # A 2x window without its own reference (an A/B run of one phase) is not judged.
    assert e2e_report.overload_share({"max_rate": rate(800.0),
                                      "overload_2x_max": rate(700.0)}) is None
