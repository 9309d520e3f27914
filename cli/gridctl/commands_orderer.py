"""gridctl orderer evidence: the equivocation evidence an orderer detected (two conflicting
signed statements by one orderer), each re-checked here against the genesis keys."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict

from gridctl import connect
from gridctl.output import emit
from gridledger.orderer.v1 import consensus_pb2, orderer_pb2, orderer_pb2_grpc
from gridledger_core.consensus import evidence
from gridledger_core.consensus.certificate import ed25519_verifier
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.tls import secure_channel

COLUMNS = ["detected", "orderer", "height", "round", "kind", "reported_by", "proof"]


def _kind(kind: int) -> str:
    name = consensus_pb2.EquivocationKind.Name(kind) if kind in (
        consensus_pb2.EquivocationKind.values()) else str(kind)
    return name.removeprefix("EQUIVOCATION_KIND_").lower()


def cmd_orderer_evidence(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    node = connect.node_of(network, args.node, "orderer")
    genesis = Genesis.load(network.consortium_dir / "genesis.json")
    verify = ed25519_verifier(genesis.orderer_keys)
    with secure_channel(node.grpc, network.tls()) as channel:
        stub = orderer_pb2_grpc.OrdererServiceStub(channel)
        found = connect.call(stub.ListEvidence, orderer_pb2.ListEvidenceRequest(limit=args.limit))
    rows: list[dict[str, Any]] = []
    for ev in found.evidence:
        row: dict[str, Any] = {
            "detected": datetime.fromtimestamp(ev.detected_unix_ms / 1000, UTC).isoformat(
                timespec="seconds"),
            "orderer": ev.orderer,
            "height": ev.height,
            "round": ev.round,
            "kind": _kind(ev.kind),
            "reported_by": ev.reported_by,
            "proof": "valid" if evidence.verify(ev, verify) else "INVALID",
        }
        if args.json:
            row["statements"] = [MessageToDict(ev.first, preserving_proto_field_name=True),
                                 MessageToDict(ev.second, preserving_proto_field_name=True)]
        rows.append(row)
    if not rows and not args.json:
        print(f"{node.name}: no equivocation detected")
        return
    emit(rows, args.json, COLUMNS)


def register(sub: Any) -> None:
    common = connect.common_flags("orderer to ask (default: the first)")
    orderer = sub.add_parser("orderer", help="orderer cluster").add_subparsers(
        dest="action", required=True)
    ev = orderer.add_parser("evidence", parents=[common],
                            help="equivocation evidence detected by one orderer, newest first")
    ev.add_argument("--limit", type=int, default=100, help="at most this many (max 1000)")
    ev.set_defaults(func=cmd_orderer_evidence)
