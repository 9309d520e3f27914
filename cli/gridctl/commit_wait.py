"""Submitting a transaction and waiting for its commit: every gridctl command that calls
SubmitTransaction goes through here.

The endorser's OK means an orderer acknowledged the transaction, not that a block holds it,
so a command waits (by default) until a committer shows it, prints the block number and
validation code, and exits non-zero unless it is VALID. Exit codes: 2 the endorser refused
it (a gRPC error), 3 submitted but not committed within `--wait-timeout`, 4 committed with a
code other than VALID. `--no-wait` returns after the endorser's OK (for scripts).

While the network is unavailable (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED: the
endorser's admission control), the same envelope is sent again until the timeout, after the
endorser's retry hint plus jitter: its tx id makes that safe.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import grpc

from gridctl.output import fail
from gridledger.committer.v1 import committer_pb2
from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.ledger.errors import code_name
from gridledger_core.rpc.backoff import Backoff, retry_after_ms
from gridledger_core.signing_identity import envelope_tx_id

RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
         grpc.StatusCode.RESOURCE_EXHAUSTED}
DEFAULT_TIMEOUT = 60.0
POLL_SECONDS = 0.25

EXIT_REFUSED = 2
EXIT_NOT_COMMITTED = 3
EXIT_NOT_VALID = 4


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help="return after the endorser's OK, without waiting for the commit")
    parser.add_argument("--wait-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help="seconds to wait for the commit (and to retry an unavailable "
                             f"network with the same envelope); default {DEFAULT_TIMEOUT:.0f}")


def submit(stub: Any, envelope: envelope_pb2.SignedEnvelope, timeout: float,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep,
           backoff: Backoff | None = None) -> str:
    """The tx id once the endorser says OK (or ALREADY_EXISTS: the ledger has it already).
    Exits 2 on a refusal, or when the network stays unavailable for `timeout` seconds.
    Between attempts: at least the endorser's `retry-after-ms`, doubling from 0.25 s without
    one, plus jitter (backoff.py)."""
    backoff = backoff or Backoff(base_s=0.25, cap_s=5.0)
    deadline = clock() + timeout
    attempt = 0
    while True:
        try:
            return stub.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=15).tx_id
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.ALREADY_EXISTS:
                return envelope_tx_id(envelope)
            delay = backoff.delay(attempt, retry_after_ms(exc))
            if code not in RETRY or clock() + delay > deadline:
                fail(f"{code.name}: {exc.details()}", EXIT_REFUSED)  # type: ignore[attr-defined]
            sleep(delay)
            attempt += 1


def wait_committed(stub: Any, tx_id: str, timeout: float,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Block number, validation code and message once a committer has the transaction.
    Exits 3 after `timeout` seconds without it (a committer that is down counts as not yet)."""
    deadline = clock() + timeout
    last = "not found yet"
    while True:
        try:
            found = stub.GetTransaction(committer_pb2.GetTransactionRequest(tx_id=tx_id),
                                        timeout=5)
            return {"block": found.block_number,
                    "validation_code": code_name(found.validation_code),
                    "message": found.message}
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code != grpc.StatusCode.NOT_FOUND and code not in RETRY:
                fail(f"{code.name}: {exc.details()}", EXIT_REFUSED)  # type: ignore[attr-defined]
            last = "not found yet" if code == grpc.StatusCode.NOT_FOUND else \
                f"committer {code.name}"
        if clock() >= deadline:
            fail(f"transaction {tx_id} submitted but not yet committed after {timeout:.0f} s "
                 f"({last}); see later: gridctl tx show {tx_id}", EXIT_NOT_COMMITTED)
        sleep(POLL_SECONDS)


def outcome_line(out: dict[str, Any]) -> str:
    if "validation_code" not in out:
        return (f"submitted (not waiting for the commit); see later: gridctl tx show "
                f"{out.get('tx_id') or out.get('order_id')}")
    line = f"committed in block {out['block']} as {out['validation_code']}"
    return line + (f": {out['message']}" if out.get("message") else "")


def finish(out: dict[str, Any]) -> None:
    """Exit 4 when the transaction was committed with a code other than VALID."""
    if out.get("validation_code", "VALID") != "VALID":
        raise SystemExit(EXIT_NOT_VALID)
