"""The endorser's Broadcaster over fake orderer stubs: concurrent broadcasts coalesce into
BroadcastBatch calls, each caller gets its own transaction's result or error, and retryable
statuses (for the call or for one transaction) fail over to the next orderer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from gridledger.orderer.v1 import orderer_pb2
from gridledger_endorser.broadcaster import Broadcaster, BroadcastRefused, OrdererUnavailable

Code = grpc.StatusCode


def ok(tx: bytes) -> orderer_pb2.BroadcastResult:
    return orderer_pb2.BroadcastResult(tx_id=tx.decode())


def refused(tx: bytes, code: grpc.StatusCode, message: str) -> orderer_pb2.BroadcastResult:
    return orderer_pb2.BroadcastResult(tx_id=tx.decode(), code=code.value[0], message=message)


class FakeOrderer:
    """A stub whose BroadcastBatch answers with `per_tx` for each transaction, or raises
    `fails` for the whole call."""

    def __init__(self, per_tx: Callable[[bytes], orderer_pb2.BroadcastResult] = ok,
                 fails: grpc.StatusCode | None = None, unary: bool = False) -> None:
        self.per_tx = per_tx
        self.fails = fails
        self.unary = unary  # an orderer from before BroadcastBatch
        self.batches: list[list[bytes]] = []
        self.unary_calls: list[bytes] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        txs = list(request.endorsed_transactions)
        self.batches.append(txs)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
            self.gate = None
        if self.unary:
            raise BroadcastRefused(Code.UNIMPLEMENTED, "Method not found!")
        if self.fails is not None:
            raise BroadcastRefused(self.fails, f"call failed with {self.fails.name}")
        return orderer_pb2.BroadcastBatchResponse(results=[self.per_tx(tx) for tx in txs])

    def Broadcast(self, request: orderer_pb2.BroadcastRequest,
                  timeout: float) -> orderer_pb2.BroadcastResponse:
        tx = request.endorsed_transaction
        self.unary_calls.append(tx)
        result = self.per_tx(tx)
        if result.code:
            raise BroadcastRefused(next(c for c in Code if c.value[0] == result.code),
                                   result.message)
        return orderer_pb2.BroadcastResponse(tx_id=result.tx_id, duplicate=result.duplicate)


def broadcaster(*orderers: FakeOrderer, senders: int = 1) -> Broadcaster:
    return Broadcaster.over([(f"orderer-{i + 1}", o) for i, o in enumerate(orderers)],  # type: ignore[misc]
                            timeout=1.0, senders=senders)


def outcome(b: Broadcaster, tx: bytes) -> str:
    try:
        response = b.broadcast(tx)
    except OrdererUnavailable as exc:
        return f"unavailable: {exc}"
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    return f"ok {response.tx_id}" + (" duplicate" if response.duplicate else "")


def test_concurrent_broadcasts_travel_in_one_batch_call() -> None:
    orderer = FakeOrderer()
    orderer.gate = threading.Event()
    b = broadcaster(orderer)
    with ThreadPoolExecutor(40) as pool:
        first = pool.submit(outcome, b, b"tx-0")
        assert orderer.entered.wait(5)  # the first call is in flight, held at the gate
        rest = [pool.submit(outcome, b, f"tx-{i}".encode()) for i in range(1, 31)]
        deadline = time.monotonic() + 5
        while len(b._queue) < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        orderer.gate.set()
        assert first.result(5) == "ok tx-0"
        assert [f.result(5) for f in rest] == [f"ok tx-{i}" for i in range(1, 31)]
    assert [len(batch) for batch in orderer.batches] == [1, 30]
    b.close()


def test_each_caller_gets_its_own_refusal() -> None:
    def per_tx(tx: bytes) -> orderer_pb2.BroadcastResult:
        if tx == b"bad":
            return refused(tx, Code.PERMISSION_DENIED, "ENDORSEMENT_FAILURE: not endorsed")
        if tx == b"old":
            return orderer_pb2.BroadcastResult(tx_id="old", duplicate=True)
        return ok(tx)
    orderer, spare = FakeOrderer(per_tx), FakeOrderer()
    b = broadcaster(orderer, spare, senders=1)
    orderer.gate = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        warmup = pool.submit(outcome, b, b"a")
        assert orderer.entered.wait(5)
        futures = [pool.submit(outcome, b, tx) for tx in (b"b", b"bad", b"old")]
        while len(b._queue) < 3:
            time.sleep(0.005)
        orderer.gate.set()
        assert warmup.result(5) == "ok a"
        assert [f.result(5) for f in futures] == [
            "ok b", "PERMISSION_DENIED: ENDORSEMENT_FAILURE: not endorsed", "ok old duplicate"]
    assert orderer.batches == [[b"a"], [b"b", b"bad", b"old"]]
    assert spare.batches == []  # a refusal is not retried elsewhere
    b.close()


def test_a_full_queue_fails_over_for_that_transaction_only() -> None:
    def per_tx(tx: bytes) -> orderer_pb2.BroadcastResult:
        if tx == b"late":
            return refused(tx, Code.RESOURCE_EXHAUSTED, "ordering queue is full")
        return ok(tx)
    first, second = FakeOrderer(per_tx), FakeOrderer()
    b = broadcaster(first, second)
    first.gate = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        warmup = pool.submit(outcome, b, b"a")
        assert first.entered.wait(5)
        futures = [pool.submit(outcome, b, tx) for tx in (b"b", b"late")]
        while len(b._queue) < 2:
            time.sleep(0.005)
        first.gate.set()
        assert [warmup.result(5)] + [f.result(5) for f in futures] == ["ok a", "ok b", "ok late"]
    assert second.batches == [[b"late"]]
    b.close()


@pytest.mark.parametrize("code", [Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED,
                                  Code.RESOURCE_EXHAUSTED])
def test_a_retryable_call_failure_fails_over_and_sticks(code: grpc.StatusCode) -> None:
    down, up = FakeOrderer(fails=code), FakeOrderer()
    b = broadcaster(down, up)
    assert outcome(b, b"x") == "ok x"
    assert outcome(b, b"y") == "ok y"  # starts at the orderer that took the last one
    assert down.batches == [[b"x"]]
    assert up.batches == [[b"x"], [b"y"]]
    b.close()


def test_no_orderer_takes_it() -> None:
    b = broadcaster(FakeOrderer(fails=Code.UNAVAILABLE),
                    FakeOrderer(lambda tx: refused(tx, Code.RESOURCE_EXHAUSTED, "full")))
    assert outcome(b, b"x") == ("unavailable: no orderer accepted the transaction "
                                "(orderer-1: UNAVAILABLE; orderer-2: RESOURCE_EXHAUSTED)")
    b.close()


def test_a_refused_call_is_raised_to_every_caller_without_failover() -> None:
    bad, spare = FakeOrderer(fails=Code.INVALID_ARGUMENT), FakeOrderer()
    b = broadcaster(bad, spare)
    assert outcome(b, b"x") == "INVALID_ARGUMENT: call failed with INVALID_ARGUMENT"
    assert spare.batches == []
    b.close()


def test_an_orderer_without_batch_rpc_gets_unary_calls() -> None:
    old = FakeOrderer(lambda tx: refused(tx, Code.PERMISSION_DENIED, "no") if tx == b"n"
                      else ok(tx), unary=True)
    b = broadcaster(old)
    assert outcome(b, b"x") == "ok x"
    assert outcome(b, b"n") == "PERMISSION_DENIED: no"
    assert old.unary_calls == [b"x", b"n"]
    b.close()


def test_closed_broadcaster_refuses() -> None:
    b = broadcaster(FakeOrderer())
    assert outcome(b, b"x") == "ok x"
    b.close()
    assert outcome(b, b"y") == "unavailable: the broadcaster is closed"
