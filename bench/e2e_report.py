"""Turning one end-to-end phase's raw observations into figures, a table and chart series."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.observe import VALID, Buckets, CommitLog, histogram_quantile, longest, share_of_machine
from bench.stats import percentile
from bench.submitter import SHED, Record
from gridledger.common.v1 import validation_pb2

TARGET_TX_PER_S = 1_000  # issue 15
TARGET_P99_MS = 500.0  # at 70 % of the max rate
TARGET_ACCEPTED_P99_MS = 2_000.0  # accepted transactions at twice the capacity
TARGET_OVERLOAD_SHARE = 0.9  # committed at 2x the capacity offered, of the capacity


@dataclass
class Measured:
    records: list[Record]
    logs: list[CommitLog]  # one per committer
    t0: float
    window: tuple[float, float]  # after warm-up .. end of sending
    cpu: dict[str, float]  # node -> CPU seconds inside the window
    roles: dict[str, str]  # node -> role
    machine_busy: float  # busy CPU seconds of the whole machine inside the window
    machine_steal: float  # of which the hypervisor gave to other guests (steal)
    finality: Buckets  # the orderers' block finality histogram, this phase only
    drained: bool  # every acknowledged transaction committed on every committer
    offered_rate: float  # 0 for the max-rate phase
    submitter_cpu: float
    # Orderer-side message counts in the window: "broadcast_calls" (Broadcast and
    # BroadcastBatch calls started), "consensus_messages" (received from peers), and
    # "tx_forwards" (of those, TxForward messages).
    orderer_counts: dict[str, float] = field(default_factory=dict)
    # Rounds the orderers entered above 0 in the window (all orderers together).
    orderer_round_changes: float | None = None
    # The measured nodes' garbage-collector pauses in the window: their histogram (all
    # generations) and their total in seconds.
    gc_pauses: Buckets = field(default_factory=dict)
    gc_seconds: float = 0.0
    # Ed25519 verifications per second on one core, timed just before the phase.
    machine_ed25519_verify_per_s: float | None = None
    # Acknowledged transactions the endorser sent again because its ledger had not shown
    # them committed in time (ack_watch.py), from the phase's start to its drain: 0 unless
    # an orderer lost some or the network fell that far behind.
    acknowledged_resent: float | None = None


def _order_share(by_kind: dict[str, int] | None) -> str | None:
    if not by_kind:
        return None
    return f"{100 * by_kind.get('order', 0) / sum(by_kind.values()):.1f} %"


def _ms(values: Sequence[float], p: float) -> float | None:
    return round(percentile(values, p) * 1000, 1) if values else None


def analyse(m: Measured) -> tuple[dict, dict]:
    """(summary figures, per-second series for the chart)."""
    start, end = m.window
    seconds = end - start
    committed: dict[str, tuple[float, int]] = {}  # tx id -> (committed everywhere, code)
    for tx_id, (_, code) in m.logs[0].commits.items():
        times = [log.commits[tx_id][0] for log in m.logs if tx_id in log.commits]
        if len(times) == len(m.logs):
            committed[tx_id] = (max(times), code)
    acked = [r for r in m.records if r.acked]
    ours = {r.tx_id: r.kind for r in acked}  # tx id -> its job's kind
    # The mix matters: an order costs every role several times what a reading does, so
    # phases are compared at their committed mix, not only their count.
    valid_by_kind = Counter(ours[t] for t, (at, code) in committed.items()
                            if t in ours and code == VALID and start <= at <= end)
    valid_in_window = sum(valid_by_kind.values())
    latency_of = {r.tx_id: committed[r.tx_id][0] - r.submitted for r in acked
                  if r.tx_id in committed and r.scheduled >= start}
    latencies = list(latency_of.values())
    # Which kind makes the tail (an order's submit comes after its matching call).
    latencies_by_kind: dict[str, list[float]] = {}
    for tx_id, latency in latency_of.items():
        latencies_by_kind.setdefault(ours[tx_id], []).append(latency)
    # Where it went: the accepted call itself (sent -> acknowledged: the endorser's queues and
    # the orderers' durable ack), and acknowledged -> committed everywhere (the ledger).
    accepted_call = [r.acked - (r.last_sent or r.submitted) for r in acked
                     if r.scheduled >= start]
    ack_to_commit = [committed[r.tx_id][0] - r.acked for r in acked
                     if r.tx_id in committed and r.scheduled >= start]
    # An accepted transaction's own latency, the overload target's measure: from the call
    # that was accepted to the commit (the waits before it, in the generator's queue and
    # after refusals, are in submit->commit). The p99 of this sum is not the sum of the two
    # legs' p99s: a transaction slow in one is rarely slow in the other.
    accepted_to_commit = [committed[r.tx_id][0] - (r.last_sent or r.submitted) for r in acked
                          if r.tx_id in committed and r.scheduled >= start]
    # How far behind its schedule the load generator made a job's first call (the machine
    # is shared: a generator short of CPU is a queue of its own, shown apart).
    lag = [r.started - r.scheduled for r in m.records if r.started and r.scheduled >= start]
    matching = [r.matching for r in m.records if r.kind == "order" and r.matching
                and r.scheduled >= start]
    blocks = [b for b in m.logs[0].blocks if start <= b.at <= end]
    invalid = Counter(validation_pb2.TxValidationCode.Name(code).removeprefix(
        "TX_VALIDATION_CODE_") for t, (_, code) in committed.items() if t in ours and code != VALID)
    cpu_by_role: dict[str, float] = {}
    for node, used in m.cpu.items():
        cpu_by_role[m.roles[node]] = cpu_by_role.get(m.roles[node], 0.0) + used
    per_tx = {role: round(used / valid_in_window * 1000, 3) if valid_in_window else None
              for role, used in sorted(cpu_by_role.items())}
    finality = histogram_quantile(0.99, m.finality)
    summary = {
        "offered_tx_per_s": m.offered_rate or None,
        "sent_jobs": len(m.records),
        "sent_by_kind": dict(Counter(r.kind for r in m.records)),
        "acknowledged": len(acked),
        "committed_valid_tx_per_s": round(valid_in_window / seconds, 1),
        "committed_valid_by_kind": dict(sorted(valid_by_kind.items())),
        "submit_to_commit_ms": {"p50": _ms(latencies, 50), "p95": _ms(latencies, 95),
                                "p99": _ms(latencies, 99), "max": _ms(latencies, 100),
                                "samples": len(latencies)},
        "submit_to_commit_p99_ms_by_kind": {kind: _ms(values, 99) for kind, values
                                            in sorted(latencies_by_kind.items())},
        "accepted_call_ms": {"p50": _ms(accepted_call, 50), "p99": _ms(accepted_call, 99)},
        "ack_to_commit_ms": {"p50": _ms(ack_to_commit, 50), "p99": _ms(ack_to_commit, 99)},
        "accepted_to_commit_ms": {"p50": _ms(accepted_to_commit, 50),
                                  "p99": _ms(accepted_to_commit, 99)},
        "matching_ms": {"p50": _ms(matching, 50), "p99": _ms(matching, 99),
                        "samples": len(matching)},
        "block_finality_p99_ms": round(finality * 1000, 1) if finality is not None else None,
        "blocks_per_s": round(len(blocks) / seconds, 2),
        "avg_block_transactions": round(sum(b.transactions for b in blocks) / len(blocks), 1)
        if blocks else None,
        "rejected": dict(Counter(r.error for r in m.records if r.error).most_common()),
        # Refused at the edge (admission control or full orderers) after every retry.
        "refused_share": round(sum(1 for r in m.records if _refused(r)) / len(m.records), 3)
        if m.records else None,
        "shed_by_generator_share": round(sum(1 for r in m.records if r.error == SHED)
                                         / len(m.records), 3) if m.records else None,
        "generator_lag_ms": {"p50": _ms(lag, 50), "p99": _ms(lag, 99)},
        "retried_calls": sum(r.attempts - 1 for r in m.records if r.attempts),  # shed: 0
        "invalid": dict(invalid.most_common()),
        "unaccounted": sum(1 for r in acked if r.tx_id not in committed),
        "all_acknowledged_committed": m.drained,
        "cpu_ms_per_committed_tx": per_tx,
        "cpu_ms_per_committed_tx_total": round(sum(m.cpu.values()) / valid_in_window * 1000, 3)
        if valid_in_window else None,
        "gc_pause_ms_per_committed_tx": round(m.gc_seconds / valid_in_window * 1000, 4)
        if valid_in_window else None,
        "gc_pause_longest": _bucket_text(longest(m.gc_pauses)),
        "machine_ed25519_verify_per_s_before": round(m.machine_ed25519_verify_per_s)
        if m.machine_ed25519_verify_per_s is not None else None,
        "machine_busy_fraction": share_of_machine(m.machine_busy, seconds),
        "machine_steal_fraction": share_of_machine(m.machine_steal, seconds),
        "submitter_cpu_seconds": round(m.submitter_cpu, 1),
        "submitter_cpu_ms_per_job": round(m.submitter_cpu / len(m.records) * 1000, 3)
        if m.records else None,
        "window_seconds": round(seconds, 1),
        # How much the orderers' per-call and per-message work is shared out (per committed
        # transaction: fewer is more transactions per gRPC message).
        "orderer_messages_per_committed_tx": {
            name: round(count / valid_in_window, 3) if valid_in_window else None
            for name, count in sorted(m.orderer_counts.items())},
        "orderer_round_changes": m.orderer_round_changes,
        "acknowledged_resent": m.acknowledged_resent,
    }
    return summary, _series(m, committed, ours)


def _refused(record: Record) -> bool:
    return record.error.removeprefix("options ").startswith("RESOURCE_EXHAUSTED")


def _series(m: Measured, committed: dict[str, tuple[float, int]], ours: set[str]) -> dict:
    """Per second since t0: jobs sent, valid commits, and the p50/p99 latency of the
    transactions committed in that second; plus every latency for the distribution."""
    submitted_at = {r.tx_id: r.submitted for r in m.records if r.acked}
    sent: Counter[int] = Counter(int(r.scheduled - m.t0) for r in m.records)
    done: Counter[int] = Counter()
    by_second: dict[int, list[float]] = {}
    for tx_id, (at, code) in committed.items():
        if tx_id not in ours:
            continue
        second = int(at - m.t0)
        if code == VALID:
            done[second] += 1
        by_second.setdefault(second, []).append(at - submitted_at[tx_id])
    last = max([*sent, *done, 0]) + 1
    return {
        "second": list(range(last)),
        "sent_per_s": [sent.get(s, 0) for s in range(last)],
        "committed_per_s": [done.get(s, 0) for s in range(last)],
        "p50_ms": [_ms(by_second[s], 50) if s in by_second else None for s in range(last)],
        "p99_ms": [_ms(by_second[s], 99) if s in by_second else None for s in range(last)],
        "latencies_ms": [round(v * 1000, 2) for vs in by_second.values() for v in vs],
        "window": [m.window[0] - m.t0, m.window[1] - m.t0],
    }


OVERLOAD = "overload_2x_max"  # a 2x window: "overload_2x_max", "overload_2x_max_2", ...
OVERLOAD_REFERENCE = "max_rate_before_2x"  # the max-rate window just before it, same suffix


def overload_share(phases: dict[str, dict]) -> dict | None:
    """What overload keeps: each 2x window's committed tx/s over that of the max-rate window
    run just before it, and all the 2x windows' over all their references' (the target's
    figure); also over the run's first max-rate window, as earlier rounds measured it. None
    when no 2x window ran with its reference."""
    pairs = []
    for name, overload in phases.items():
        if not name.startswith(OVERLOAD):
            continue
        reference = phases.get(OVERLOAD_REFERENCE + name[len(OVERLOAD):])
        if reference is None:
            continue
        before = reference["committed_valid_tx_per_s"]
        during = overload["committed_valid_tx_per_s"]
        pairs.append({"max_rate_tx_per_s": before, "overload_tx_per_s": during,
                      "share": round(during / before, 3) if before else None})
    if not pairs:
        return None
    before = sum(p["max_rate_tx_per_s"] for p in pairs)
    during = sum(p["overload_tx_per_s"] for p in pairs)
    first = phases.get("max_rate", {}).get("committed_valid_tx_per_s")
    return {"pairs": pairs, "share": round(during / before, 3) if before else None,
            "share_of_first_max_rate":
                round(during / len(pairs) / first, 3) if first else None}


def overload_line(share: dict) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"
    pairs = "; ".join(f"{p['overload_tx_per_s']:,} of {p['max_rate_tx_per_s']:,} tx/s "
                      f"({pct(p['share'])})" for p in share["pairs"])
    return (f"overload (2x) kept, of the max rate measured just before it: {pairs}; "
            f"together {pct(share['share'])} (target >= {pct(TARGET_OVERLOAD_SHARE)}); of the "
            f"first max-rate window: {pct(share['share_of_first_max_rate'])}")


def phase_line(name: str, s: dict) -> str:
    lat = s["submit_to_commit_ms"]
    return (f"  {name}: {s['committed_valid_tx_per_s']:,} committed tx/s; submit->commit p50 "
            f"{lat['p50']} ms, p99 {lat['p99']} ms; refused {s['refused_share']}, "
            f"{len(s['rejected'])} rejection reasons, "
            f"invalid {s['invalid'] or 'none'}")


def table(report: dict) -> str:
    phases = report["phases"]
    names = list(phases)
    rows: list[tuple[str, ...]] = [("figure", *[n.replace("_", " ") for n in names], "target")]

    def row(label: str, get, target: str = "") -> None:  # type: ignore[no-untyped-def]
        rows.append((label, *[_fmt(get(phases[n])) for n in names], target))

    row("API", lambda s: s.get("api", "SubmitTransaction"))
    row("offered tx/s", lambda s: s["offered_tx_per_s"] or "max")
    row("committed (valid) tx/s, sustained", lambda s: s["committed_valid_tx_per_s"],
        f">= {TARGET_TX_PER_S:,}")
    row("of which orders (each also a matching call)",
        lambda s: _order_share(s.get("committed_valid_by_kind")))
    for p in ("p50", "p95", "p99", "max"):
        row(f"submit->commit {p} ms", lambda s, p=p: s["submit_to_commit_ms"][p],
            f"p99 <= {TARGET_P99_MS:.0f} at 70 %" if p == "p99" else "")
    row("submit->commit p99 ms by kind", lambda s: "; ".join(
        f"{kind} {_fmt(p99)}"
        for kind, p99 in s.get("submit_to_commit_p99_ms_by_kind", {}).items()) or None)
    row("accepted call (send->ack) p50 / p99 ms",
        lambda s: f"{_fmt(s['accepted_call_ms']['p50'])} / {_fmt(s['accepted_call_ms']['p99'])}")
    row("ack->commit p50 / p99 ms",
        lambda s: f"{_fmt(s['ack_to_commit_ms']['p50'])} / {_fmt(s['ack_to_commit_ms']['p99'])}")
    row("accepted call's send->commit p50 / p99 ms",
        lambda s: f"{_fmt(s['accepted_to_commit_ms']['p50'])} / "
                  f"{_fmt(s['accepted_to_commit_ms']['p99'])}",
        f"p99 <= {TARGET_ACCEPTED_P99_MS:,.0f} at 2x")
    row("matching p50 / p99 ms",
        lambda s: f"{_fmt(s['matching_ms']['p50'])} / {_fmt(s['matching_ms']['p99'])}")
    row("block finality p99 ms", lambda s: s["block_finality_p99_ms"])
    row("blocks/s; avg txs per block",
        lambda s: f"{_fmt(s['blocks_per_s'])}; {_fmt(s['avg_block_transactions'])}")
    row("rejected (not acknowledged)", lambda s: sum(s["rejected"].values()))
    row("refused at the edge, % of jobs", lambda s: None if s["refused_share"] is None
        else f"{100 * s['refused_share']:.1f} %")
    row("shed by the load generator, % of jobs", lambda s: None
        if s.get("shed_by_generator_share") is None
        else f"{100 * s['shed_by_generator_share']:.1f} %")
    row("load generator lag (due->first call) p50 / p99 ms",
        lambda s: f"{_fmt(s['generator_lag_ms']['p50'])} / {_fmt(s['generator_lag_ms']['p99'])}")
    row("calls retried after RESOURCE_EXHAUSTED", lambda s: s["retried_calls"])
    row("invalid at commit", lambda s: sum(s["invalid"].values()))
    row("acknowledged but not committed", lambda s: s["unaccounted"])
    row("acknowledged, sent again when overdue (endorser)",
        lambda s: s.get("acknowledged_resent"))
    roles = sorted({r for s in phases.values() for r in s["cpu_ms_per_committed_tx"]})
    for role in roles:
        row(f"CPU ms per tx: {role}s", lambda s, r=role: s["cpu_ms_per_committed_tx"].get(r))
    for name in ("broadcast_calls", "consensus_messages", "tx_forwards"):
        row(f"orderers: {name.replace('_', ' ')} per tx",
            lambda s, n=name: s.get("orderer_messages_per_committed_tx", {}).get(n))
    row("orderers: round changes in the window (all orderers)",
        lambda s: s.get("orderer_round_changes"))
    row("CPU ms per tx: all roles", lambda s: s["cpu_ms_per_committed_tx_total"])
    row("GC pauses (orderers, committers, endorser): ms per tx; longest",
        lambda s: f"{_fmt(s.get('gc_pause_ms_per_committed_tx'))}; "
                  f"{_fmt(s.get('gc_pause_longest'))}")
    row("machine speed before the phase: Ed25519 verifications/s (one core)",
        lambda s: s.get("machine_ed25519_verify_per_s_before"))
    row("machine busy (2 cores = 1.0)", lambda s: s["machine_busy_fraction"])
    row("of which steal (the host ran other guests)",
        lambda s: s.get("machine_steal_fraction"))
    row("load generator CPU ms per job", lambda s: s["submitter_cpu_ms_per_job"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    reasons = Counter[str]()
    for s in phases.values():
        reasons.update(s["rejected"])
        reasons.update({f"invalid {k}": v for k, v in s["invalid"].items()})
    if reasons:
        lines.append("reasons: " + "; ".join(f"{k} x{v}" for k, v in reasons.most_common(6)))
    peak = report["peak_rss_mib"]
    lines.append("peak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peak.items())))
    return "\n".join(lines)


def _bucket_text(bound: float | None) -> str | None:
    """A histogram bucket's bound as the table and the report show it ("<= 25 ms")."""
    if bound is None:
        return None
    return "> 1 s" if bound == float("inf") else f"<= {bound * 1000:g} ms"


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
