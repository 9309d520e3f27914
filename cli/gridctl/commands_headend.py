"""A head-end system's pre-sale flow with files, as a data concentrator runs it in bulk:

1. ``gridctl trade-request --as METER ... --write REQUESTS``: a meter signs a trade request
   (fresh nonce, now) and appends it to REQUESTS; nothing is sent.
2. ``gridctl request-options-batch REQUESTS --options-out OPTIONS``: the head-end system
   asks an endorser for all of them with RequestOptionsBatch (one result line each) and
   writes each option it got, with its request, to OPTIONS.
3. ``gridctl accept-options OPTIONS --as METER --write PLACES``: each meter checks the
   options answering its own requests (option_check.py: an endorser's signature, this very
   request's digest, the exact terms) and signs the PlaceOrder accepting each.
4. ``gridctl submit-batch PLACES``: the head-end system submits them with SubmitBatch.

Files hold one protobuf-JSON message (or, for OPTIONS, one JSON object) a line."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from gridctl import connect
from gridctl.commands_load import read_envelopes, status_name
from gridctl.commands_market import SIDES, parse_slot, signer
from gridctl.output import emit, fail
from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.crypto import verify_signature
from gridledger_core.genesis import Genesis
from gridledger_core.market.option_check import OptionRefused, accept_option
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_ENVELOPES, submit_batches

RESULT_COLUMNS = ["line", "meter", "status", "option_id", "traded_wh", "rest_wh",
                  "retry_after_ms", "message"]


def _json_line(message: Any) -> str:
    return json_format.MessageToJson(message, indent=None) + "\n"


def cmd_trade_request(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    meter = signer(network, args.as_meter)
    terms = market_pb2.OrderTerms(meter=meter.name, side=SIDES[args.side], slot_start=args.slot,
                                  price=args.price, quantity_wh=args.quantity)
    request = market_pb2.TradeRequest(terms=terms, nonce=os.urandom(16),
                                      requested_at=int(time.time()))
    with args.write.open("a") as out:
        out.write(_json_line(meter.sign_envelope(request.SerializeToString())))
    emit({"meter": meter.name, "nonce": request.nonce.hex(), "file": str(args.write)},
         args.json)


def _terms(envelope: envelope_pb2.SignedEnvelope) -> market_pb2.OrderTerms:
    try:
        return market_pb2.TradeRequest.FromString(envelope.payload).terms
    except Exception:  # the endorser judges it; here it only names the meter
        return market_pb2.OrderTerms()


def cmd_request_options_batch(args: argparse.Namespace) -> None:
    requests = read_envelopes(args.file)
    if not requests:
        fail(f"{args.file}: no trade requests")
    _, channel, stub = connect.endorser(args.dir, args.node)
    rows: list[dict[str, Any]] = []
    answered: list[str] = []
    with channel:
        sent = 0
        for chunk in submit_batches(requests, lambda e: e.ByteSize(), max_count=args.batch):
            response = connect.call(stub.RequestOptionsBatch,
                                    endorser_pb2.RequestOptionsBatchRequest(requests=chunk),
                                    60.0)
            for request, result in zip(chunk, response.results, strict=True):
                sent += 1
                row: dict[str, Any] = {"line": sent, "meter": _terms(request).meter,
                                       "status": status_name(result.code),
                                       "retry_after_ms": result.retry_after_ms,
                                       "message": result.message}
                if result.code == 0:
                    option = market_pb2.TradeOption.FromString(result.options.option.payload)
                    row |= {"option_id": option.option_id,
                            "traded_wh": sum(t.quantity_wh for t in option.trades),
                            "rest_wh": option.rest_wh}
                    answered.append(json.dumps({
                        "request": json_format.MessageToDict(request),
                        "option": json_format.MessageToDict(result.options.option)}) + "\n")
                rows.append(row)
    if args.options_out is not None:
        args.options_out.write_text("".join(answered))
    emit(rows, args.json, RESULT_COLUMNS)
    if len(answered) < len(rows):
        raise SystemExit(2)


def cmd_accept_options(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    meter = signer(network, args.as_meter)
    genesis = Genesis.load(network.consortium_dir / "genesis.json")
    now = int(time.time())
    rows: list[dict[str, Any]] = []
    accepted: list[str] = []
    for number, line in enumerate(args.file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            pair = json.loads(line)
            request = json_format.ParseDict(pair["request"], envelope_pb2.SignedEnvelope())
            option_envelope = json_format.ParseDict(pair["option"],
                                                    envelope_pb2.SignedEnvelope())
        except (ValueError, KeyError, TypeError, json_format.ParseError) as exc:
            fail(f"{args.file}:{number}: not a request and its option ({exc})")
        if _terms(request).meter != meter.name:
            continue  # another meter's
        if not verify_signature(meter.signer.public_key_bytes, request.signature,
                                request.payload):
            # Altered on its way (or not this meter's): sign nothing for it.
            rows.append({"line": number, "status": "REFUSED",
                         "message": "the request does not carry this meter's signature"})
            continue
        try:
            option = accept_option(option_envelope, request.payload, genesis, now)
        except OptionRefused as exc:
            rows.append({"line": number, "status": "REFUSED", "message": str(exc)})
            continue
        place = meter.new_transaction("place_order", market_pb2.PlaceOrder(
            option=option_envelope), timestamp=now)
        accepted.append(_json_line(place))
        rows.append({"line": number, "status": "SIGNED", "option_id": option.option_id,
                     "message": ""})
    with args.write.open("a") as out:
        out.write("".join(accepted))
    emit(rows, args.json, ["line", "status", "option_id", "message"])
    if any(r["status"] == "REFUSED" for r in rows):
        raise SystemExit(5)


def register(sub: Any) -> None:
    common = connect.common_flags("endorser to ask (default: the first)")
    request = sub.add_parser("trade-request", parents=[common],
                             help="a meter signs a trade request into a file (sends nothing)")
    request.add_argument("--as", dest="as_meter", required=True, metavar="METER")
    request.add_argument("--side", choices=sorted(SIDES), required=True)
    request.add_argument("--slot", type=parse_slot, required=True,
                         help="delivery slot start: Unix seconds or ISO 8601")
    request.add_argument("--price", type=int, required=True, help="limit price, µ/kWh")
    request.add_argument("--quantity", type=int, required=True, help="energy, Wh")
    request.add_argument("--write", type=Path, required=True, metavar="FILE",
                         help="append the signed request to FILE (protobuf JSON, one a line)")
    request.set_defaults(func=cmd_trade_request)

    batch = sub.add_parser("request-options-batch", parents=[common],
                           help="ask for options on a file of signed trade requests with "
                                "RequestOptionsBatch; one result each (exit 2 if any refused)")
    batch.add_argument("file", type=Path)
    batch.add_argument("--batch", type=int, default=SUBMIT_BATCH_ENVELOPES, metavar="N",
                       help=f"requests per call (at most {SUBMIT_BATCH_ENVELOPES}; "
                            "calls are split at 4 MiB too)")
    batch.add_argument("--options-out", type=Path, metavar="FILE",
                       help="write each option with its request to FILE (for accept-options)")
    batch.set_defaults(func=cmd_request_options_batch)

    accept = sub.add_parser("accept-options", parents=[common],
                            help="a meter checks the options for its requests and signs the "
                                 "PlaceOrders accepting them into a file (for submit-batch)")
    accept.add_argument("file", type=Path, help="request-options-batch's --options-out")
    accept.add_argument("--as", dest="as_meter", required=True, metavar="METER")
    accept.add_argument("--write", type=Path, required=True, metavar="FILE",
                        help="append the signed PlaceOrders to FILE (protobuf JSON, one a line)")
    accept.set_defaults(func=cmd_accept_options)
