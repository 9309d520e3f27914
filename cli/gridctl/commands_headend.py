"""A head-end system's pre-sale flow with files, as a data concentrator runs it in bulk:

1. ``gridctl trade-request --as METER ... --write REQUESTS``: a meter signs a trade request
   (fresh nonce, now) and appends it to REQUESTS; nothing is sent.
2. ``gridctl request-options-batch REQUESTS --options-out OPTIONS``: the head-end system
   asks an endorser for all of them with RequestOptionsBatch (one result line each) and
   writes each option it got, with its request, to OPTIONS.
3. ``gridctl accept-options OPTIONS --as METER --write PLACES``: each meter checks the
   options answering its own requests (option_check.py: an endorser's signature, this very
   request's digest, the exact terms, not expired) and signs the PlaceOrder accepting each,
   at most one per request (in this run).
4. ``gridctl submit-batch PLACES``: the head-end system submits them with SubmitBatch.

Files hold one protobuf-JSON message (or, for OPTIONS, one JSON object) a line."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from gridctl import connect
from gridctl.commands_load import add_batch_file_flags, json_line, read_envelopes, status_name
from gridctl.commands_market import add_terms_flags, signer, terms_from
from gridctl.output import emit, fail
from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.crypto import verify_signature
from gridledger_core.genesis import Genesis
from gridledger_core.market.option_check import OptionRefused, accept_option
from gridledger_core.rpc.submit_batches import submit_batches

RESULT_COLUMNS = ["line", "meter", "status", "option_id", "traded_wh", "rest_wh",
                  "retry_after_ms", "message"]


def cmd_trade_request(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    meter = signer(network, args.as_meter)
    request = market_pb2.TradeRequest(terms=terms_from(args, meter.name), nonce=os.urandom(16),
                                      requested_at=int(time.time()))
    with args.write.open("a") as out:
        out.write(json_line(meter.sign_envelope(request.SerializeToString())))
    emit({"meter": meter.name, "nonce": request.nonce.hex(), "file": str(args.write)},
         args.json)


def _terms(envelope: envelope_pb2.SignedEnvelope) -> market_pb2.OrderTerms:
    try:
        return market_pb2.TradeRequest.FromString(envelope.payload).terms
    except DecodeError:  # the endorser judges it; here it only names the meter
        return market_pb2.OrderTerms()


def cmd_request_options_batch(args: argparse.Namespace) -> None:
    requests = read_envelopes(args.file)
    if not requests:
        fail(f"{args.file}: no trade requests")
    _, channel, stub = connect.endorser(args.dir, args.node)
    rows: list[dict[str, Any]] = []
    # Written as each call answers: an option already given holds energy and used its
    # request's nonce, so a later call's failure must not lose it.
    out = args.options_out.open("w") if args.options_out is not None else None
    failed = ""
    try:
        with channel:
            for chunk in submit_batches(requests, lambda e: e.ByteSize(),
                                        max_count=args.batch):
                if failed:
                    rows += [_row(len(rows) + 1, r, "NOT_SENT", failed) for r in chunk]
                    continue
                try:
                    response = stub.RequestOptionsBatch(
                        endorser_pb2.RequestOptionsBatchRequest(requests=chunk), timeout=60.0)
                except grpc.RpcError as exc:
                    failed = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
                    rows += [_row(len(rows) + 1, r, "NOT_ANSWERED", failed) for r in chunk]
                    continue
                if len(response.results) != len(chunk):
                    failed = (f"the endorser answered {len(response.results)} results for "
                              f"{len(chunk)} requests")
                    rows += [_row(len(rows) + 1, r, "NOT_ANSWERED", failed) for r in chunk]
                    continue
                for request, result in zip(chunk, response.results, strict=True):
                    row = _row(len(rows) + 1, request, status_name(result.code),
                               result.message, result.retry_after_ms)
                    if result.code == 0:
                        row |= _option_summary(result.options.option)
                        if out is not None:
                            out.write(json.dumps({
                                "request": json_format.MessageToDict(request),
                                "option": json_format.MessageToDict(result.options.option)})
                                + "\n")
                            out.flush()
                    rows.append(row)
    finally:
        if out is not None:
            out.close()
    emit(rows, args.json, RESULT_COLUMNS)
    if any(r["status"] != "OK" for r in rows):
        raise SystemExit(2)


def _row(line: int, request: envelope_pb2.SignedEnvelope, status: str, message: str,
         retry_after_ms: int = 0) -> dict[str, Any]:
    return {"line": line, "meter": _terms(request).meter, "status": status,
            "retry_after_ms": retry_after_ms, "message": message}


def _option_summary(envelope: envelope_pb2.SignedEnvelope) -> dict[str, Any]:
    try:
        option = market_pb2.TradeOption.FromString(envelope.payload)
    except DecodeError:
        return {"option_id": "(undecodable)"}
    return {"option_id": option.option_id,
            "traded_wh": sum(t.quantity_wh for t in option.trades), "rest_wh": option.rest_wh}


def cmd_accept_options(args: argparse.Namespace) -> None:
    network = connect.load_network(args.dir)
    meter = signer(network, args.as_meter)
    genesis = Genesis.load(network.consortium_dir / "genesis.json")
    now = int(time.time())
    rows: list[dict[str, Any]] = []
    accepted: list[str] = []
    signed_for: set[bytes] = set()  # request nonces already answered by a signed order

    def refuse(number: int, message: str) -> None:
        rows.append({"line": number, "status": "REFUSED", "option_id": "", "message": message})

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
        if request.signer_certificate != meter.certificate:
            continue  # another meter's request
        if not verify_signature(meter.signer.public_key_bytes, request.signature,
                                request.payload):
            # Altered on its way: sign nothing for it.
            refuse(number, "the request does not carry this meter's signature")
            continue
        try:
            nonce = market_pb2.TradeRequest.FromString(request.payload).nonce
            option = accept_option(option_envelope, request.payload, genesis, now)
        except DecodeError:
            refuse(number, "the request is not a TradeRequest")
            continue
        except OptionRefused as exc:
            refuse(number, str(exc))
            continue
        if option.expires_at < now:
            refuse(number, f"the option expired at {option.expires_at} (now {now})")
            continue
        if nonce in signed_for:
            # A second option for one request (a duplicate line, another endorser's answer):
            # signing both would buy or sell twice what the meter asked for.
            refuse(number, "an option for this request is already signed above")
            continue
        signed_for.add(nonce)
        place = meter.new_transaction("place_order", market_pb2.PlaceOrder(
            option=option_envelope), timestamp=now)
        accepted.append(json_line(place))
        rows.append({"line": number, "status": "SIGNED", "option_id": option.option_id,
                     "message": ""})
    if accepted:
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
    add_terms_flags(request)
    request.add_argument("--write", type=Path, required=True, metavar="FILE",
                         help="append the signed request to FILE (protobuf JSON, one a line)")
    request.set_defaults(func=cmd_trade_request)

    batch = sub.add_parser("request-options-batch", parents=[common],
                           help="ask for options on a file of signed trade requests with "
                                "RequestOptionsBatch; one result each (exit 2 if any refused)")
    add_batch_file_flags(batch, "requests")
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
