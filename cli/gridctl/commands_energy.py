"""gridctl commands of new-energy trading (seed 002): plant ranking, contracts, carbon coins
and certificates.

    gridctl plants rank --meter M         what meter M's agent would choose, and why
    gridctl plants directory --meter M    the plants M knows and where it learned of them
    gridctl contract list / show ID       supply contracts on the ledger
    gridctl coins balance ACCOUNT         carbon coin balance
    gridctl certificate get CONTRACT_ID   save a contract's certificate to a file
    gridctl certificate verify FILE       check a certificate offline against the roots
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from gridctl import connect
from gridctl.output import emit, fail
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import energy_pb2, envelope_pb2
from gridledger.meteragent.v1 import meteragent_pb2
from gridledger_core.energy import certificate
from gridledger_core.genesis import Genesis
from gridledger_core.plants.scoring import format_price

DEFAULT_DIR = Path(".devnet")
STATUSES = {"open": energy_pb2.CONTRACT_STATUS_OPEN, "ended": energy_pb2.CONTRACT_STATUS_ENDED,
            "issued": energy_pb2.CONTRACT_STATUS_ISSUED}


# -- plants -----------------------------------------------------------------------------------

def cmd_plants_rank(args: argparse.Namespace) -> None:
    channel, stub = connect.agent(args.dir, args.meter)
    with channel:
        r = connect.call(stub.RankPlants,
                         meteragent_pb2.RankPlantsRequest(energy_wh=args.energy_wh))
    rows = [{"rank": p.rank, "plant": p.plant, "price": format_price(p.price_micro_per_kwh),
             "price_score": p.price_bp, "reliability": p.reliability_bp, "score": p.score_bp,
             "remaining_wh": p.remaining_wh, "learned_from": p.source,
             "winner": "*" if p.plant == r.winner else ""} for p in r.ranked]
    excluded = [{"plant": e.plant, "reason": e.reason} for e in r.excluded]
    if args.json:
        emit({"meter": args.meter, "energy_wh": r.energy_wh, "winner": r.winner,
              "weights": {"price": r.price_weight, "reliability": r.reliability_weight},
              "ranked": rows, "excluded": excluded, "explanation": r.explanation.splitlines(),
              "scored_at": r.scored_at}, True)
        return
    emit(rows, False, ["rank", "plant", "price", "price_score", "reliability", "score",
                       "remaining_wh", "learned_from", "winner"])
    print()
    print(r.explanation)


def cmd_plants_directory(args: argparse.Namespace) -> None:
    channel, stub = connect.agent(args.dir, args.meter)
    with channel:
        r = connect.call(stub.GetPlantDirectory, meteragent_pb2.GetPlantDirectoryRequest())
    emit([{"plant": e.plant, "price": format_price(e.price_micro_per_kwh),
           "reliability": e.reliability_bp, "remaining_wh": e.remaining_wh, "source": e.source,
           "announcement": e.announcement_tx_id[:16]} for e in r.entries], args.json,
         ["plant", "price", "reliability", "remaining_wh", "source", "announcement"])


# -- contracts and coins ----------------------------------------------------------------------

def contract_row(c: energy_pb2.SupplyContractRecord) -> dict[str, Any]:
    return {"contract_id": c.contract_id, "meter": c.meter, "plant": c.plant,
            "status": energy_pb2.ContractStatus.Name(c.status).removeprefix("CONTRACT_STATUS_")
            .lower(), "energy_wh": c.energy_wh, "price": format_price(c.price_micro_per_kwh),
            "pv_panel": c.pv_panel_id, "plant_remaining_wh": c.plant_remaining_wh,
            "coins_paid": c.coins_paid, "money_due_micro": c.money_due_micro,
            "delivered_wh": c.delivered_wh, "coins_issued": c.coins_issued}


def cmd_contract_list(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    rows = []
    token = ""
    with channel:
        while True:
            page = connect.call(stub.ListContracts, committer_pb2.ListContractsRequest(
                meter=args.meter or "", plant=args.plant or "",
                status=STATUSES.get(args.status or "", 0), page_size=1000, page_token=token))
            rows += [contract_row(c) for c in page.contracts]
            token = page.next_page_token
            if not token:
                break
    for row in rows if not args.json else []:
        row["contract_id"] = row["contract_id"][:16]
    emit(rows, args.json, ["contract_id", "meter", "plant", "status", "energy_wh", "price",
                           "pv_panel", "coins_paid", "coins_issued"])


def cmd_contract_show(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        r = connect.call(stub.GetContract,
                         committer_pb2.GetContractRequest(contract_id=args.contract_id))
    c = r.contract
    emit(contract_row(c) | {"attributed_wh": r.attributed_wh,
                            "delivery_start": c.delivery_start, "contract_tx": c.contract_tx_id,
                            "trade_end_tx": c.trade_end_tx_id, "issue_tx": c.issue_tx_id,
                            "certificate": bool(r.certificate.payload)}, args.json)


def cmd_coins_balance(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        a = connect.call(stub.GetCarbonAccount,
                  committer_pb2.GetCarbonAccountRequest(account=args.account)).account
    emit({"account": args.account, "coins": a.coins, "received": a.received, "spent": a.spent},
         args.json)


# -- certificates -----------------------------------------------------------------------------

def cmd_certificate_get(args: argparse.Namespace) -> None:
    channel, stub = connect.committer(args.dir, args.node)
    with channel:
        r = connect.call(stub.GetContract,
                         committer_pb2.GetContractRequest(contract_id=args.contract_id))
    if not r.certificate.payload:
        fail(f"contract {args.contract_id} has no certificate yet", 3)
    out = args.out or Path(f"{args.contract_id[:16]}.cert")
    out.write_bytes(r.certificate.SerializeToString())
    emit({"written": str(out), "contract_id": args.contract_id}, args.json)


def cmd_certificate_verify(args: argparse.Namespace) -> None:
    """Offline: needs only the file and the consortium's genesis (its organisation roots)."""
    genesis_path = args.consortium_dir / "genesis.json"
    if not genesis_path.exists():
        fail(f"no genesis.json in {args.consortium_dir}")
    envelope = envelope_pb2.SignedEnvelope()
    try:
        envelope.ParseFromString(args.file.read_bytes())
        cert, signer = certificate.verify(envelope, Genesis.load(genesis_path))
    except (OSError, DecodeError, ValueError, certificate.CertificateInvalid) as exc:
        if args.json:
            emit({"valid": False, "reason": str(exc)}, True)
            raise SystemExit(1) from exc
        fail(f"certificate NOT valid: {exc}", 1)
    issued = datetime.datetime.fromtimestamp(cert.issued_at.seconds, datetime.UTC)
    emit({"valid": True, "signer": f"{signer.name} ({signer.org}, {signer.role})",
          "consortium": cert.consortium, "contract_id": cert.contract_id, "meter": cert.meter,
          "plant": cert.plant, "pv_panel": cert.pv_panel_id, "delivered_wh": cert.delivered_wh,
          "grams_per_kwh": cert.grams_per_kwh, "avoided_grams": cert.avoided_grams,
          "trade_end_tx": cert.trade_end_tx_id, "issued_at": issued.isoformat()}, args.json)


# -- parser -----------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    common = connect.common_flags(None)
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--node", help="committer to ask (default: the first)")

    plants = sub.add_parser("plants", help="plants and how a meter ranks them").add_subparsers(
        dest="action", required=True)
    rank = plants.add_parser("rank", parents=[common], help="a meter's ranking, with reasons")
    rank.add_argument("--meter", required=True, help="the meter-agent to ask")
    rank.add_argument("--energy-wh", type=int, default=0,
                      help="request size (default: the meter's contract size)")
    rank.set_defaults(func=cmd_plants_rank)
    directory = plants.add_parser("directory", parents=[common], help="plants a meter knows")
    directory.add_argument("--meter", required=True)
    directory.set_defaults(func=cmd_plants_directory)

    contract = sub.add_parser("contract", help="supply contracts").add_subparsers(
        dest="action", required=True)
    listing = contract.add_parser("list", parents=[common, node], help="contracts, filtered")
    listing.add_argument("--meter")
    listing.add_argument("--plant")
    listing.add_argument("--status", choices=sorted(STATUSES))
    listing.set_defaults(func=cmd_contract_list)
    show = contract.add_parser("show", parents=[common, node], help="one contract")
    show.add_argument("contract_id")
    show.set_defaults(func=cmd_contract_show)

    coins = sub.add_parser("coins", help="carbon coins").add_subparsers(dest="action",
                                                                        required=True)
    balance = coins.add_parser("balance", parents=[common, node], help="an account's coins")
    balance.add_argument("account")
    balance.set_defaults(func=cmd_coins_balance)

    cert = sub.add_parser("certificate", help="carbon certificates").add_subparsers(
        dest="action", required=True)
    get = cert.add_parser("get", parents=[common, node], help="save a contract's certificate")
    get.add_argument("contract_id")
    get.add_argument("--out", type=Path)
    get.set_defaults(func=cmd_certificate_get)
    verify = cert.add_parser("verify", help="verify a certificate offline")
    verify.add_argument("file", type=Path)
    verify.add_argument("--consortium-dir", type=Path, default=DEFAULT_DIR / "consortium",
                        help="consortium directory with genesis.json (default .devnet/consortium)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_certificate_verify)


def energy_summary(stub: committer_pb2_grpc.CommitterServiceStub) -> str:
    """One line for the devnet's live summary: contracts by status and coins issued."""
    counts = dict.fromkeys(STATUSES, 0)
    coins = 0
    token = ""
    while True:
        page = stub.ListContracts(committer_pb2.ListContractsRequest(page_size=1000,
                                                                     page_token=token), timeout=2)
        for c in page.contracts:
            counts[contract_row(c)["status"]] += 1
            coins += c.coins_issued
        token = page.next_page_token
        if not token:
            break
    return (f"contracts open={counts['open']} ended={counts['ended']} "
            f"issued={counts['issued']} coins={coins}")
