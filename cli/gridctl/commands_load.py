"""gridctl loadgen (signed past readings at a rate, single or batch API) and gridctl
submit-batch (a file of signed envelopes in SubmitBatch calls, one result line each)."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from gridctl import connect
from gridctl.loadgen import LoadGenerator, prepare_readings
from gridctl.output import emit, fail
from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_ENVELOPES, submit_batches

BATCH_LIMIT = SUBMIT_BATCH_ENVELOPES  # the endorser's SubmitBatch limit (and 4 MiB a call)


def cmd_loadgen(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    meters = [m for m in args.meters.split(",") if m]
    envelopes = prepare_readings(network.consortium_dir, meters, args.count)
    if args.write is not None:
        write_envelopes(args.write, envelopes)
        emit({"written": len(envelopes), "file": str(args.write)}, args.json)
        return
    endorser = connect.node_of(network, args.node, "endorser")
    started = time.monotonic()
    stats = LoadGenerator(endorser.grpc, network.tls(), envelopes, args.rate,
                          batch=args.batch).start().join()
    seconds = time.monotonic() - started
    latencies = sorted(stats.latencies)
    emit({"api": f"SubmitBatch x{args.batch}" if args.batch else "SubmitTransaction",
          "sent": len(envelopes), "accepted": stats.accepted,
          "accepted_per_s": round(stats.accepted / seconds, 1) if seconds else None,
          "failed_calls": stats.failed,
          "ack_ms_p50": round(statistics.median(latencies) * 1000, 1) if latencies else None,
          "ack_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1)
          if latencies else None}, args.json)


def write_envelopes(path: Path, envelopes: list[envelope_pb2.SignedEnvelope]) -> None:
    """One SignedEnvelope per line, in protobuf JSON (what grpcurl and submit-batch read)."""
    path.write_text("".join(json_line(e) for e in envelopes))


def json_line(message: Any) -> str:
    """A message as one line of protobuf JSON (the files of submit-batch and its kin)."""
    return json_format.MessageToJson(message, indent=None) + "\n"


def read_envelopes(path: Path) -> list[envelope_pb2.SignedEnvelope]:
    envelopes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            envelopes.append(json_format.Parse(line, envelope_pb2.SignedEnvelope()))
        except json_format.ParseError as exc:
            fail(f"{path}:{number}: not a SignedEnvelope in protobuf JSON ({exc})")
    return envelopes


def cmd_submit_batch(args: argparse.Namespace) -> None:
    envelopes = read_envelopes(args.file)
    _, channel, stub = connect.endorser(args.dir, args.node)
    rows: list[dict[str, Any]] = []
    with channel:
        for chunk in submit_batches(envelopes, lambda e: e.ByteSize(), max_count=args.batch):
            response = connect.call(stub.SubmitBatch,
                                    endorser_pb2.SubmitBatchRequest(envelopes=chunk), 60.0)
            rows += [{"tx_id": r.tx_id, "status": status_name(r.code), "message": r.message,
                      "retry_after_ms": r.retry_after_ms} for r in response.results]
    emit(rows, args.json, ["tx_id", "status", "retry_after_ms", "message"])
    if any(r["status"] not in ("OK", "ALREADY_EXISTS") for r in rows):
        raise SystemExit(2)


def status_name(code: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def register(sub: Any) -> None:
    common = connect.common_flags("endorser to submit to (default: the first)")
    load = sub.add_parser("loadgen", parents=[common],
                          help="submit signed past readings at a rate (single or batch API)")
    load.add_argument("--count", type=int, default=1000, help="readings to send")
    load.add_argument("--rate", type=float, default=100.0, help="readings per second")
    load.add_argument("--batch", type=int, default=0, metavar="N",
                      help="send in SubmitBatch calls of up to N (default: SubmitTransaction)")
    load.add_argument("--meters", default="meter-1,meter-2",
                      help="comma-separated meters whose readings to sign")
    load.add_argument("--write", type=Path, metavar="FILE",
                      help="only write the signed envelopes to FILE (for submit-batch)")
    load.set_defaults(func=cmd_loadgen)
    batch = sub.add_parser("submit-batch", parents=[common],
                           help="submit a file of signed envelopes (protobuf JSON, one a line) "
                                "with SubmitBatch; one result each (exit 2 if any refused)")
    add_batch_file_flags(batch, "envelopes")
    batch.set_defaults(func=cmd_submit_batch)


def add_batch_file_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """A file of signed messages sent in batch calls of up to --batch."""
    parser.add_argument("file", type=Path)
    parser.add_argument("--batch", type=int, default=BATCH_LIMIT, metavar="N",
                        help=f"{what} per call (at most {BATCH_LIMIT}; calls are split at "
                             "4 MiB too)")
