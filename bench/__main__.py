"""`make bench`: every benchmark in one run, printed as it goes and written as a JSON report
to bench/reports/ (figures measured together on the same machine, so ratios are fair)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from gridledger_core.rpc import grpc_env

# Before gRPC is first imported (below), so that this process and the load generator's
# processes it spawns run gRPC as the nodes do (gridledger_core/rpc/grpc_env.py).
os.environ.update(grpc_env.environment(os.environ))

from bench import (
    end_to_end,
    forecast_error,
    forecast_memo,
    grpc_server,
    limits,
    matching,
    matching_rpc,
    ordering,
)


def _matching_rpc(profile: str, node_args: dict[str, list[str]] | None = None) -> dict:
    # Always on a network of its own, never on a devnet someone left running.
    with tempfile.TemporaryDirectory(prefix="gridledger-") as empty:
        return matching_rpc.run(profile, directory=Path(empty), node_args=node_args)


SUITES = {
    "limits": limits.run,
    "matching": matching.run,
    "forecast_error": forecast_error.run,
    "forecast_memo": forecast_memo.run,
    "grpc_server": grpc_server.run,
    "matching_rpc": _matching_rpc,
    "ordering": ordering.run,
    "end_to_end": end_to_end.run,
}


def ratios(report: dict) -> dict[str, float]:
    """Figures read against the machine's limits measured in the same run."""
    out: dict[str, float] = {}
    limit = report.get("limits", {}).get("ed25519_verify_per_s")
    committer = report.get("ordering", {}).get("committer_only", {}).get("throughput_tx_per_s")
    orderer = report.get("ordering", {}).get("orderer_only", {}).get("throughput_tx_per_s")
    e2e = report.get("end_to_end", {}).get("phases", {}).get("max_rate", {})
    if limit and committer:
        # One committer's CPU per transaction, in Ed25519 verifications' worth of time (the
        # creator's signature is the one verification a transaction cannot share).
        out["committer_only_cpu_per_tx_in_verifications"] = round(limit / committer, 2)
    if limit and e2e.get("cpu_ms_per_committed_tx_total"):
        # The whole network's CPU per committed transaction, in Ed25519 verifications.
        out["e2e_cpu_per_tx_in_verifications"] = round(
            e2e["cpu_ms_per_committed_tx_total"] * limit / 1000, 1)
    if orderer and e2e.get("committed_valid_tx_per_s"):
        out["e2e_vs_orderer_only"] = round(e2e["committed_valid_tx_per_s"] / orderer, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", choices=["quick", "standard"], default="standard")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), help="run only these")
    parser.add_argument("--out", type=Path, default=Path("bench/reports"))
    parser.add_argument("--py-spy", action="store_true",
                        help="end_to_end: sample every node with py-spy (in --py-spy-phase)")
    parser.add_argument("--node-arg", action="append", default=[], metavar="ROLE=FLAG",
                        help="end_to_end, matching_rpc: an extra flag for every node of ROLE, e.g. "
                             "endorser=--cpu-slots=64 (repeatable; for A/B runs)")
    parser.add_argument("--phases", nargs="+", choices=end_to_end.PHASES,
                        default=list(end_to_end.PHASES),
                        help="end_to_end: run only these phases (for A/B runs; the 70 %% and "
                             "2x phases also run max_rate, which measures their capacity; each 2x "
                             "window follows a max-rate window of its own)")
    parser.add_argument("--py-spy-phase", choices=end_to_end.PHASES, default="max_rate",
                        help="end_to_end: the phase --py-spy samples")
    parser.add_argument("--window", type=int, default=None,
                        help="end_to_end: jobs in flight per submitter in the max-rate phases "
                             "(default: the profile's)")
    parser.add_argument("--capacity", type=float, default=None,
                        help="end_to_end: the tx/s the 70 %% and 2x phases are relative to, "
                             "instead of the run's max rate (A/B runs at one offered rate; "
                             "max_rate then runs only if named in --phases)")
    args = parser.parse_args()
    node_args: dict[str, list[str]] = {}
    for item in args.node_arg:
        role, _, flag = item.partition("=")
        node_args.setdefault(role, []).append(flag)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict = {"profile": args.profile, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "machine": {"python": platform.python_version(),
                                "cpus": __import__("os").cpu_count(),
                                "platform": platform.platform()}}
    for name, run in SUITES.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name} ==", flush=True)
        started = time.monotonic()
        if name == "end_to_end":
            report[name] = end_to_end.run(
                args.profile, chart_path=args.out / f"e2e-{args.profile}-{stamp}.png",
                profile_dir=args.out / f"e2e-py-spy-{stamp}" if args.py_spy else None,
                node_args=node_args, phases=args.phases, window=args.window,
                profiled_phase=args.py_spy_phase, capacity=args.capacity)
            report[name]["node_args"] = node_args
        elif name == "matching_rpc":
            report[name] = _matching_rpc(args.profile, node_args)
            report[name]["node_args"] = node_args
        else:
            report[name] = run(args.profile)
        report[name]["bench_seconds"] = round(time.monotonic() - started, 1)
    report["ratios"] = ratios(report)
    for name, value in report["ratios"].items():
        print(f"ratio {name}: {value}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{args.profile}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
