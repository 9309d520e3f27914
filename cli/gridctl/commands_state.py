"""gridctl state get KEY: one state entry of the ledger, decoded by its key's type, and
gridctl bench: the benchmarks (`make bench`) from a source checkout."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from gridctl import connect
from gridctl.output import emit, fail
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import energy_pb2, envelope_pb2, market_pb2, transaction_pb2

# The value type of each state key prefix (docs/architecture.md, "Key layout").
VALUE_TYPES: dict[str, type[Message]] = {
    "reading/": transaction_pb2.MeterReading,
    "order/": market_pb2.OrderRecord,
    "trade/": market_pb2.TradeRecord,
    "plant/": energy_pb2.PlantRecord,
    "contract/": energy_pb2.SupplyContractRecord,
    "carbon/": energy_pb2.CarbonAccount,
    "certificate/": envelope_pb2.SignedEnvelope,
}


def decode(key: str, value: bytes) -> Any:
    for prefix, message_type in VALUE_TYPES.items():
        if key.startswith(prefix):
            return MessageToDict(message_type.FromString(value),
                                 preserving_proto_field_name=True)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.hex()


def cmd_state_get(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        found = connect.call(stub.GetState, committer_pb2.GetStateRequest(key=args.key))
    if not found.found:
        fail(f"no state under {args.key!r} (keys: docs/architecture.md, 'Key layout')", 3)
    emit({"key": args.key, "value": decode(args.key, found.value)}, args.json)


def cmd_bench(args: argparse.Namespace) -> None:
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "__main__.py").exists():
        fail("the benchmarks run from a source checkout (bench/ next to cli/)")
    command = [sys.executable, "-m", "bench", "--profile", args.profile]
    if args.only:
        command += ["--only", *args.only]
    if args.py_spy:
        command.append("--py-spy")
    raise SystemExit(subprocess.call(command, cwd=root))


def register(sub: Any) -> None:
    common = connect.common_flags()
    state = sub.add_parser("state", help="ledger state").add_subparsers(dest="action",
                                                                         required=True)
    get = state.add_parser("get", parents=[common], help="one state entry, decoded")
    get.add_argument("key", help='e.g. "reading/meter-1/001795270500" or "carbon/meter-1"')
    get.set_defaults(func=cmd_state_get)
    bench = sub.add_parser("bench", help="run the benchmarks (as make bench)")
    bench.add_argument("--profile", choices=["quick", "standard"], default="standard")
    bench.add_argument("--only", nargs="*", help="limits, matching, forecast_error, "
                                                 "matching_rpc, ordering, end_to_end")
    bench.add_argument("--py-spy", action="store_true",
                       help="end_to_end: profile every node in the max-rate window")
    bench.set_defaults(func=cmd_bench)
