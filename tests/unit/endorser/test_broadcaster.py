"""The endorser's Broadcaster over fake orderer stubs: concurrent broadcasts coalesce into
BroadcastBatch calls, each caller gets its own transaction's result or error, and whatever is
not an orderer's OK for that exact transaction (a retryable status, a refusal, a malformed
answer) moves it to the next orderer. Then SubmitTransaction end to end (a real servicer over
a ledger, the real Broadcaster, fake orderers at the network boundary): OK only after an
orderer's OK for that tx id, every other outcome a status the client can act on, and the
genesis size limit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from gc_helpers import cyclic_garbage
from grpc_helpers import Aborted, FakeContext
from ledger_helpers import identity, past_interval, reading

from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.genesis import Genesis, Limits
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_core.storage import MemoryStore
from gridledger_endorser.broadcaster import MAX_RETRY_AFTER_MS, Broadcaster, OrdererUnavailable
from gridledger_endorser.sealing import Sealer
from gridledger_endorser.service import EndorserServicer

Code = grpc.StatusCode


class BroadcastRefused(grpc.RpcError):
    """What a gRPC stub raises for a failed call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def tx_id_of(tx: bytes) -> str:
    """The unit tests' transactions are their own ids; real ones carry a signed envelope."""
    try:
        return tx.decode()
    except UnicodeDecodeError:
        return envelope_tx_id(envelope_pb2.EndorsedTransaction.FromString(tx).envelope)


def ok(tx: bytes) -> orderer_pb2.BroadcastResult:
    return orderer_pb2.BroadcastResult(tx_id=tx_id_of(tx))


def refused(tx: bytes, code: grpc.StatusCode, message: str) -> orderer_pb2.BroadcastResult:
    return orderer_pb2.BroadcastResult(tx_id=tx_id_of(tx), code=code.value[0], message=message)


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


class FakeClock:
    """The broadcaster's clock for answers and cool-downs: it moves only when told, so how
    late an orderer answers never depends on how loaded the test machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def broadcaster(*orderers: FakeOrderer, senders: int = 1, overlap_after: float = 0.05,
                clock: FakeClock | None = None, linger: float = 0.0) -> Broadcaster:
    """Without the linger unless asked (the tests of grouping by what is in flight would
    otherwise also see it)."""
    return Broadcaster.over([(f"orderer-{i + 1}", o) for i, o in enumerate(orderers)],  # type: ignore[misc]
                            timeout=1.0, senders=senders, overlap_after=overlap_after,
                            late_after=0.25, linger=linger, clock=clock or FakeClock())


def outcome(b: Broadcaster, tx: bytes) -> str:
    try:
        response = b.broadcast(tx, tx.decode())
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


def _queued(b: Broadcaster, count: int) -> bool:
    deadline = time.monotonic() + 5
    while len(b._queue) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return len(b._queue) == count


def _entered(orderer: FakeOrderer, calls: int) -> bool:
    deadline = time.monotonic() + 5
    while len(orderer.batches) < calls and time.monotonic() < deadline:
        time.sleep(0.005)
    return len(orderer.batches) == calls


@contextlib.contextmanager
def first_group_held(overlap_after: float) -> Iterator[tuple[
        FakeOrderer, Broadcaster, threading.Event, ThreadPoolExecutor, Future[str]]]:
    """Two senders (the endorser's); the first group (b"tx-0") held at the orderer until
    its gate opens."""
    orderer = FakeOrderer()
    gate = orderer.gate = threading.Event()
    b = broadcaster(orderer, senders=2, overlap_after=overlap_after)
    with ThreadPoolExecutor(40) as pool:
        first = pool.submit(outcome, b, b"tx-0")
        assert orderer.entered.wait(5)
        yield orderer, b, gate, pool, first
        gate.set()
        assert first.result(5) == "ok tx-0"
    b.close()


def test_an_idle_second_sender_waits_for_the_group_in_flight() -> None:
    """Arrivals while a group is at the orderer leave together once it is answered: each
    group costs every node about the same, and the idle sender taking each arrival at once
    split them into groups of one or two."""
    with first_group_held(overlap_after=5.0) as (orderer, b, gate, pool, _):
        rest = [pool.submit(outcome, b, f"tx-{i}".encode()) for i in range(1, 31)]
        assert _queued(b, 30), "the idle sender took arrivals while a group was in flight"
        gate.set()
        assert [f.result(5) for f in rest] == [f"ok tx-{i}" for i in range(1, 31)]
    assert [len(batch) for batch in orderer.batches] == [1, 30]


def test_a_group_out_too_long_lets_the_next_leave_alongside() -> None:
    """An orderer slow to answer (or down until the call's timeout) holds the next group
    back for `overlap_after` at most: then the second sender sends it."""
    with first_group_held(overlap_after=0.05) as (orderer, b, gate, pool, _):
        second = pool.submit(outcome, b, b"tx-1")
        assert _entered(orderer, 2), "the next group waited for the stuck one"
        gate.set()
        assert second.result(5) == "ok tx-1"


def test_a_whole_group_waiting_leaves_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from gridledger_endorser import broadcaster as module
    monkeypatch.setattr(module, "MAX_BATCH_TXS", 10)
    with first_group_held(overlap_after=5.0) as (orderer, b, gate, pool, _):
        group = pool.submit(b.broadcast_many, [(f"tx-{i}".encode(), f"tx-{i}")
                                               for i in range(1, 11)])
        assert _entered(orderer, 2), "a full group waited for the one in flight"
        gate.set()
        assert [a.tx_id for a in group.result(5)] == [f"tx-{i}" for i in range(1, 11)]
    assert [len(batch) for batch in orderer.batches] == [1, 10]


def test_with_nothing_in_flight_a_small_group_lingers_for_more() -> None:
    """Below saturation the sender is idle when a transaction arrives: it waits `linger`
    from that arrival for more to join, so one call (one synced write and one forward to
    each peer at the orderer) carries them all, and it never leaves before."""
    orderer = FakeOrderer()
    entered_at: list[float] = []
    answer = orderer.per_tx

    def timed(tx: bytes) -> orderer_pb2.BroadcastResult:
        entered_at.append(time.monotonic())
        return answer(tx)

    orderer.per_tx = timed
    b = broadcaster(orderer, senders=2, linger=1.0)
    with ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        first = pool.submit(outcome, b, b"tx-0")
        rest = [pool.submit(outcome, b, f"tx-{i}".encode()) for i in range(1, 6)]
        assert first.result(5) == "ok tx-0"
        assert [f.result(5) for f in rest] == [f"ok tx-{i}" for i in range(1, 6)]
    assert [len(batch) for batch in orderer.batches] == [6]
    assert entered_at[0] - started >= 1.0
    b.close()


def test_a_group_of_linger_txs_does_not_linger() -> None:
    from gridledger_endorser.broadcaster import LINGER_TXS
    orderer = FakeOrderer()
    b = broadcaster(orderer, linger=30.0)
    with ThreadPoolExecutor(1) as pool:
        answers = pool.submit(b.broadcast_many, [(f"tx-{i}".encode(), f"tx-{i}")
                                                 for i in range(LINGER_TXS)])
        try:
            assert _entered(orderer, 1), "a group of LINGER_TXS waited for the linger"
        finally:
            b.close()  # sends what lingers, so a failure does not wait it out
        assert len(answers.result(5)) == LINGER_TXS


def test_the_arrival_that_makes_a_lingering_group_whole_sends_it() -> None:
    """The sender lingers over a small group; the arrival that brings it to LINGER_TXS
    wakes it, and the group leaves without waiting out the linger."""
    from gridledger_endorser.broadcaster import LINGER_TXS
    orderer = FakeOrderer()
    b = broadcaster(orderer, linger=30.0)
    with ThreadPoolExecutor(2) as pool:
        most = pool.submit(b.broadcast_many, [(f"tx-{i}".encode(), f"tx-{i}")
                                              for i in range(LINGER_TXS - 1)])
        try:
            assert _queued(b, LINGER_TXS - 1)
            time.sleep(0.1)  # the sender is waiting out the linger now
            assert orderer.batches == []
            last = pool.submit(outcome, b, b"tx-last")
            assert _entered(orderer, 1), "the whole group waited for the linger"
        finally:
            b.close()
        assert len(most.result(5)) == LINGER_TXS - 1 and last.result(5) == "ok tx-last"
    assert [len(batch) for batch in orderer.batches] == [LINGER_TXS]


def test_the_linger_runs_from_arrival_also_behind_a_group_in_flight() -> None:
    """What queued behind a group in flight has waited already: once that group is
    answered it leaves when its first transaction's linger is over, not a linger later."""
    from gridledger_endorser.broadcaster import _Pending
    b = broadcaster(FakeOrderer(), linger=60.0)
    now = time.monotonic()
    for age in (90.0, 1.0):  # queued 90 s ago (behind a slow group), then 1 s ago
        pending = _Pending(b"tx", "tx")
        pending.queued_at = now - age
        b._queue.append(pending)
    with b._cond:
        b._in_flight[0] = now
        assert b._wait_to_send() > 0  # a group is in flight: wait for it (overlap)
        del b._in_flight[0]
        assert b._wait_to_send() == 0  # landed: the first has waited over the linger
        b._queue.popleft()
        assert 58.0 < b._wait_to_send() <= 59.0  # the other has 59 s of its linger left
    b._queue.clear()
    b.close()


def test_more_than_a_group_at_once_leaves_as_groups_side_by_side(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One arrival of more than a group (a SubmitBatch) with both senders idle: the first
    takes a group, and the rest does not wait for its answer (the second sender was left
    asleep, so a hung orderer held the rest for its whole timeout)."""
    from gridledger_endorser import broadcaster as module
    monkeypatch.setattr(module, "MAX_BATCH_TXS", 10)
    orderer = FakeOrderer()
    b = broadcaster(orderer, senders=2, overlap_after=5.0)
    assert outcome(b, b"warm") == "ok warm"  # both senders started, now idle
    time.sleep(0.2)  # ... and asleep
    gate = orderer.gate = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        answers = pool.submit(b.broadcast_many, [(f"tx-{i}".encode(), f"tx-{i}")
                                                 for i in range(25)])
        assert _entered(orderer, 3), "the rest waited for the first group's answer"
        gate.set()
        assert [a.tx_id for a in answers.result(5)] == [f"tx-{i}" for i in range(25)]
    assert sorted(len(batch) for batch in orderer.batches) == [1, 5, 10, 10]
    b.close()


def test_each_caller_gets_its_own_answer_and_a_refusal_fails_over() -> None:
    """An orderer refusing what the endorser found valid must not condemn it: a hostile or
    broken orderer would otherwise make every client drop valid transactions."""
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
        assert [f.result(5) for f in futures] == ["ok b", "ok bad", "ok old duplicate"]
    assert orderer.batches == [[b"a"], [b"b", b"bad", b"old"]]
    assert spare.batches == [[b"bad"]]
    b.close()


def test_refused_by_every_orderer_is_not_a_verdict() -> None:
    b = broadcaster(FakeOrderer(lambda tx: refused(tx, Code.PERMISSION_DENIED, "no")),
                    FakeOrderer(fails=Code.INVALID_ARGUMENT))
    assert outcome(b, b"x") == (
        "unavailable: no orderer accepted the transaction (orderer-1: PERMISSION_DENIED: no; "
        "orderer-2: INVALID_ARGUMENT: call failed with INVALID_ARGUMENT)")
    b.close()


def test_an_ok_for_another_transaction_is_no_ok() -> None:
    liar = FakeOrderer(lambda tx: orderer_pb2.BroadcastResult(tx_id="someone-else"))
    honest = FakeOrderer()
    b = broadcaster(liar, honest)
    assert outcome(b, b"x") == "ok x"
    assert honest.batches == [[b"x"]]
    b = broadcaster(liar)
    assert outcome(b, b"x") == ("unavailable: no orderer accepted the transaction "
                                "(orderer-1: acknowledged tx id 'someone-else' instead)")
    b.close()


class WrongCount(FakeOrderer):
    """Answers OK for every transaction of a batch, plus one result too many."""

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        self.batches.append(list(request.endorsed_transactions))
        return orderer_pb2.BroadcastBatchResponse(
            results=[ok(tx) for tx in request.endorsed_transactions] + [ok(b"extra")])


def test_an_answer_of_the_wrong_length_acknowledges_nothing() -> None:
    wrong, honest = WrongCount(), FakeOrderer()
    b = broadcaster(wrong, honest)
    assert outcome(b, b"x") == "ok x"
    assert wrong.batches == [[b"x"]]
    assert honest.batches == [[b"x"]]  # not counted as acknowledged by orderer-1
    b.close()
    b = broadcaster(WrongCount())
    assert outcome(b, b"x") == ("unavailable: no orderer accepted the transaction "
                                "(orderer-1: answered 2 results for 1 transactions)")
    b.close()


def test_every_orderer_full_gives_the_retry_hint() -> None:
    def full(tx: bytes) -> orderer_pb2.BroadcastResult:
        result = refused(tx, Code.RESOURCE_EXHAUSTED, "ordering queue is full")
        result.retry_after_ms = 80
        return result
    b = broadcaster(FakeOrderer(full), FakeOrderer(full))
    with pytest.raises(OrdererUnavailable) as raised:
        b.broadcast(b"x", "x")
    assert raised.value.retry_after_ms == 80
    b.close()
    b = broadcaster(FakeOrderer(full), FakeOrderer(fails=Code.UNAVAILABLE))
    with pytest.raises(OrdererUnavailable) as raised:
        b.broadcast(b"x", "x")
    assert raised.value.retry_after_ms == 0  # one was down: plain UNAVAILABLE
    b.close()


def test_an_orderers_retry_hint_is_capped() -> None:
    """Tried as a hostile member would: its orderer says full with a hint of 2**32 - 1 ms
    (49 days), which the endorser would pass on to every client when the others are full."""
    def full(hint: int) -> Callable[[bytes], orderer_pb2.BroadcastResult]:
        def answer(tx: bytes) -> orderer_pb2.BroadcastResult:
            result = refused(tx, Code.RESOURCE_EXHAUSTED, "ordering queue is full")
            result.retry_after_ms = hint
            return result
        return answer
    b = broadcaster(FakeOrderer(full(2**32 - 1)), FakeOrderer(full(80)))
    with pytest.raises(OrdererUnavailable) as raised:
        b.broadcast(b"x", "x")
    assert raised.value.retry_after_ms == MAX_RETRY_AFTER_MS
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
                                "(orderer-1: UNAVAILABLE: call failed with UNAVAILABLE; "
                                "orderer-2: RESOURCE_EXHAUSTED: full)")
    b.close()


def test_a_refused_call_fails_over() -> None:
    bad, spare = FakeOrderer(fails=Code.INVALID_ARGUMENT), FakeOrderer()
    b = broadcaster(bad, spare)
    assert outcome(b, b"x") == "ok x"
    assert spare.batches == [[b"x"]]
    b.close()


def test_an_orderer_without_batch_rpc_gets_unary_calls() -> None:
    old = FakeOrderer(lambda tx: refused(tx, Code.PERMISSION_DENIED, "no") if tx == b"n"
                      else ok(tx), unary=True)
    b = broadcaster(old)
    assert outcome(b, b"x") == "ok x"
    assert outcome(b, b"n") == ("unavailable: no orderer accepted the transaction "
                                "(orderer-1: PERMISSION_DENIED: no)")
    assert old.unary_calls == [b"x", b"n"]
    b.close()


def test_closed_broadcaster_refuses() -> None:
    b = broadcaster(FakeOrderer())
    assert outcome(b, b"x") == "ok x"
    b.close()
    assert outcome(b, b"y") == "unavailable: the broadcaster is closed"


# -- SubmitTransaction end to end -----------------------------------------------------------

class CountingSigner(Sealer):
    def __init__(self, identity: SigningIdentity) -> None:
        super().__init__(identity)
        self.endorsed = 0

    def __call__(self, payloads: Sequence[bytes]) -> list[envelope_pb2.Endorsement]:
        self.endorsed += len(payloads)
        return super().__call__(payloads)


@dataclass
class Submitter:
    servicer: EndorserServicer
    signer: CountingSigner
    meter: SigningIdentity

    def submit(self, envelope: envelope_pb2.SignedEnvelope | None = None
               ) -> tuple[str, FakeContext]:
        """"OK <tx id>" or "<status>: <details>", and the context (for trailers)."""
        envelope = envelope or self.meter.new_transaction(
            "meter_reading", reading(self.meter.name, past_interval(2)))
        context = FakeContext()
        try:
            response = self.servicer.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), context)  # type: ignore[arg-type]
        except Aborted as exc:
            return f"{exc.code.name}: {exc.details}", context
        assert response.tx_id == envelope_tx_id(envelope)
        return "OK", context


def submitter(genesis: Genesis, consortium_dir: Path, *orderers: FakeOrderer) -> Submitter:
    endorser = identity(consortium_dir, "endorser-1")
    signer = CountingSigner(endorser)
    servicer = EndorserServicer(Ledger(MemoryStore(), genesis, lambda *_: None), endorser,
                                broadcaster(*orderers), sealer=signer)
    return Submitter(servicer, signer, identity(consortium_dir, "meter-1"))


def test_submit_is_ok_only_for_an_orderer_ok_for_that_tx(genesis: Genesis,
                                                         consortium_dir: Path) -> None:
    wrong_id = FakeOrderer(lambda tx: orderer_pb2.BroadcastResult(tx_id="another"))
    s = submitter(genesis, consortium_dir, wrong_id, WrongCount())
    status, _ = s.submit()
    assert status.startswith("UNAVAILABLE: no orderer accepted the transaction (orderer-1: "
                             "acknowledged tx id 'another' instead; orderer-2: answered 2 "
                             "results for 1 transactions); retry with the same envelope")
    assert submitter(genesis, consortium_dir, wrong_id, FakeOrderer()).submit()[0] == "OK"


def test_an_orderer_refusal_is_not_passed_on_as_a_verdict(genesis: Genesis,
                                                          consortium_dir: Path) -> None:
    status, _ = submitter(genesis, consortium_dir, FakeOrderer(
        lambda tx: refused(tx, Code.PERMISSION_DENIED, "ENDORSEMENT_FAILURE: unknown"))).submit()
    assert status.startswith("UNAVAILABLE: no orderer accepted the transaction (orderer-1: "
                             "PERMISSION_DENIED: ENDORSEMENT_FAILURE: unknown)")


def test_full_orderers_give_resource_exhausted_with_the_hint(genesis: Genesis,
                                                             consortium_dir: Path) -> None:
    s = submitter(genesis, consortium_dir, FakeOrderer(fails=Code.RESOURCE_EXHAUSTED))
    status, context = s.submit()
    assert status.startswith("RESOURCE_EXHAUSTED: no orderer accepted")
    assert status.endswith("retry the same envelope after 50 ms")
    assert context.trailers == (("retry-after-ms", "50"),)


class Broken(FakeOrderer):
    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        raise ValueError("a bug")


def test_a_failure_while_forwarding_is_unavailable(genesis: Genesis,
                                                   consortium_dir: Path) -> None:
    status, _ = submitter(genesis, consortium_dir, Broken()).submit()
    assert status == ("UNAVAILABLE: forwarding to the orderers failed (ValueError); retry "
                      "with the same envelope")


def test_a_transaction_above_the_genesis_limit_is_refused_unendorsed(
        genesis: Genesis, consortium_dir: Path) -> None:
    orderer = FakeOrderer()
    meter = identity(consortium_dir, "meter-1")
    envelope = meter.new_transaction("meter_reading", reading("meter-1", past_interval(2)))
    size = envelope.ByteSize()
    # A limit the envelope fits, but not once endorsed.
    small = dataclasses.replace(genesis, limits=Limits(max_tx_bytes=size + 100))
    s = submitter(small, consortium_dir, orderer)
    status, _ = s.submit(envelope)
    assert status.startswith(f"INVALID_ARGUMENT: the envelope is {size} bytes; endorsed it "
                             f"could exceed the genesis limit max_tx_bytes = {size + 100} bytes")
    huge = meter.sign_envelope(bytes(genesis.limits.max_tx_bytes))
    status, _ = submitter(genesis, consortium_dir, orderer).submit(huge)
    assert status.startswith(f"INVALID_ARGUMENT: the envelope is {huge.ByteSize()} bytes")
    assert s.signer.endorsed == 0
    assert orderer.batches == []
    roomy = dataclasses.replace(genesis, limits=Limits(max_tx_bytes=size + 2000))
    assert submitter(roomy, consortium_dir, FakeOrderer()).submit(envelope)[0] == "OK"


def test_broadcast_many_travels_together_and_answers_each_in_order() -> None:
    full = FakeOrderer(lambda tx: refused(tx, Code.RESOURCE_EXHAUSTED, "pool full")
                       if tx == b"b" else ok(tx))
    b = broadcaster(full)
    answers = b.broadcast_many([(b"a", "a"), (b"b", "b"), (b"c", "c")])
    assert full.batches == [[b"a", b"b", b"c"]]  # one BroadcastBatch call
    assert [a.tx_id for a in answers if isinstance(a, orderer_pb2.BroadcastResponse)] == ["a", "c"]
    error = answers[1]
    assert isinstance(error, OrdererUnavailable) and error.retry_after_ms > 0
    b.close()
    with pytest.raises(OrdererUnavailable, match="closed"):
        b.broadcast_many([(b"d", "d")])


def test_an_answered_asyncio_broadcast_leaves_no_reference_cycle(consortium_dir: Path) -> None:
    """Each pending's wake-up callback closes over its batch's pendings; kept after it ran,
    it made a cycle per transaction that only a full collection freed (the endorser's full
    collections took 40-130 ms at the max rate)."""
    b = broadcaster(FakeOrderer(), FakeOrderer(lambda tx: refused(
        tx, grpc.StatusCode.RESOURCE_EXHAUSTED, "full")))
    meter = identity(consortium_dir, "meter-1")
    items = [(e, envelope_tx_id(e)) for e in (
        meter.new_transaction("meter_reading", reading(meter.name, past_interval(n)))
        for n in range(1, 6))]
    seal = Sealer(identity(consortium_dir, "endorser-1"))

    async def broadcast() -> list[Any]:
        return await b.seal_and_broadcast_async(items, seal, asyncio.get_running_loop())

    with cyclic_garbage() as garbage:
        answers = asyncio.run(broadcast())
        assert [a.tx_id for a, _ in answers] == [tx_id for _, tx_id in items]
        del answers
        b.close()  # its sender threads' last batch goes with them
    assert garbage["_Pending"] == 0, garbage.most_common(8)


class SlowOrderer(FakeOrderer):
    """Answers OK, but `delay` seconds later on `clock`: a hostile member's orderer that keeps
    just inside the call's timeout, or an honest one in a stall."""

    def __init__(self, clock: FakeClock, delay: float) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        self.clock.now += self.delay
        return super().BroadcastBatch(request, timeout)


def _cooldowns(orderer: str, reason: str) -> float:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value("gridledger_endorser_orderer_cooldowns_total",
                                     {"orderer": orderer, "reason": reason}) or 0.0


def test_an_orderer_that_answers_late_loses_the_lead() -> None:
    """Tried as a hostile member would: its orderer answers OK, but late. Before, the
    orderer that last took transactions was tried first, so it held every group of the
    endorser for its delay; now it is tried after the others for a cool-down."""
    before = _cooldowns("orderer-1", "late")
    clock = FakeClock()
    slow, fast = SlowOrderer(clock, delay=4.9), FakeOrderer()
    b = broadcaster(slow, fast, overlap_after=0.05, clock=clock)
    assert [outcome(b, f"tx-{i}".encode()) for i in range(5)] == [
        f"ok tx-{i}" for i in range(5)]
    assert slow.batches == [[b"tx-0"]]
    assert fast.batches == [[f"tx-{i}".encode()] for i in range(1, 5)]
    assert _cooldowns("orderer-1", "late") == before + 1  # operators see it
    b.close()


def test_orderers_that_just_failed_or_answered_late_are_tried_after_the_others() -> None:
    clock = FakeClock()
    down_1, down_2 = FakeOrderer(fails=Code.UNAVAILABLE), FakeOrderer(fails=Code.UNAVAILABLE)
    slow, fast = SlowOrderer(clock, delay=0.5), FakeOrderer()  # late, within the cool-down
    b = broadcaster(down_1, down_2, slow, fast, clock=clock)
    assert outcome(b, b"x") == "ok x"  # both fail, slow takes it late: all three cool down
    assert outcome(b, b"y") == "ok y"
    assert down_1.batches == [[b"x"]] and down_2.batches == [[b"x"]]
    assert slow.batches == [[b"x"]]
    assert fast.batches == [[b"y"]]
    b.close()


def test_a_group_alongside_a_stuck_one_goes_to_another_orderer() -> None:
    """Tried as a hostile member would: its orderer holds a call and never answers. The
    group that leaves alongside (after `overlap_after`) went to the same orderer before, so
    both waited for the call's timeout; now it starts at the next orderer."""
    stuck, other = FakeOrderer(), FakeOrderer()
    gate = stuck.gate = threading.Event()
    b = broadcaster(stuck, other, senders=2, overlap_after=0.05)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(outcome, b, b"tx-0")
        assert stuck.entered.wait(5)
        second = pool.submit(outcome, b, b"tx-1")
        assert second.result(3) == "ok tx-1"  # answered while the first is still held
        assert not first.done()
        assert other.batches == [[b"tx-1"]]
        gate.set()
        assert first.result(5) == "ok tx-0"
    b.close()


class SlowUnaryOrderer(FakeOrderer):
    """Says it has no BroadcastBatch, then answers each unary Broadcast OK `delay` seconds
    later on `clock`: a hostile orderer trying to dodge the late-answer rule."""

    def __init__(self, clock: FakeClock, delay: float, unimplemented_after: float = 0.0) -> None:
        super().__init__(unary=True)
        self.clock = clock
        self.delay = delay
        self.unimplemented_after = unimplemented_after

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        self.clock.now += self.unimplemented_after
        return super().BroadcastBatch(request, timeout)

    def Broadcast(self, request: orderer_pb2.BroadcastRequest,
                  timeout: float) -> orderer_pb2.BroadcastResponse:
        if self.delay > timeout:  # as gRPC would: the call ends at its deadline
            self.clock.now += timeout
            self.unary_calls.append(request.endorsed_transaction)
            raise BroadcastRefused(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.clock.now += self.delay
        return super().Broadcast(request, timeout)


def test_the_unary_fallback_is_timed_as_a_whole() -> None:
    clock = FakeClock()
    dodger, fast = SlowUnaryOrderer(clock, delay=0.1), FakeOrderer()
    b = broadcaster(dodger, fast, clock=clock)
    assert b.broadcast_many([(b"a", "a"), (b"b", "b"), (b"c", "c")]) == [
        orderer_pb2.BroadcastResponse(tx_id=t) for t in "abc"]  # 0.3 s in all: late
    assert outcome(b, b"d") == "ok d"
    assert dodger.unary_calls == [b"a", b"b", b"c"]
    assert fast.batches == [[b"d"]]
    b.close()


def test_the_unary_fallback_holds_a_group_for_one_timeout_at_most() -> None:
    """Counted from the batch call's start: an orderer that is slow to say UNIMPLEMENTED
    does not get another whole timeout for its unary calls."""
    clock = FakeClock()
    dodger = SlowUnaryOrderer(clock, delay=0.3, unimplemented_after=0.5)  # timeout: 1 s
    fast = FakeOrderer()
    b = broadcaster(dodger, fast, clock=clock)
    items = [(t.encode(), t) for t in "abcd"]
    assert b.broadcast_many(items) == [orderer_pb2.BroadcastResponse(tx_id=t) for t in "abcd"]
    assert dodger.unary_calls == [b"a", b"b"]  # 0.5 + 0.3, then b met the deadline at 1.0
    assert fast.batches == [[b"b", b"c", b"d"]]
    b.close()


def test_a_full_pool_answered_in_time_is_no_fault_of_the_orderer() -> None:
    before = _cooldowns("orderer-1", "failed")
    full = FakeOrderer(lambda tx: refused(tx, Code.RESOURCE_EXHAUSTED, "ordering queue is full"))
    b = broadcaster(full, FakeOrderer())
    assert outcome(b, b"x") == "ok x"
    assert _cooldowns("orderer-1", "failed") == before
    b.close()


class Scripted(FakeOrderer):
    """Answers each BroadcastBatch call with the next of `answers`: (seconds on `clock`,
    per-transaction result function, or a status code the whole call fails with)."""

    def __init__(self, clock: FakeClock,
                 answers: list[tuple[float, Callable[[bytes], orderer_pb2.BroadcastResult]
                                     | grpc.StatusCode]]) -> None:
        super().__init__()
        self.clock = clock
        self.answers = answers

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       timeout: float) -> orderer_pb2.BroadcastBatchResponse:
        seconds, answer = self.answers.pop(0)
        self.clock.now += seconds
        self.batches.append(list(request.endorsed_transactions))
        if isinstance(answer, grpc.StatusCode):
            raise BroadcastRefused(answer, answer.name)
        return orderer_pb2.BroadcastBatchResponse(
            results=[answer(tx) for tx in request.endorsed_transactions])


def _full(tx: bytes) -> orderer_pb2.BroadcastResult:
    return refused(tx, Code.RESOURCE_EXHAUSTED, "ordering queue is full")


@pytest.mark.parametrize(("answer", "reason"), [
    ((4.9, _full), "late"),  # held, then "full": late all the same
    ((1.0, Code.DEADLINE_EXCEEDED), "failed"),  # held until the timeout
    ((0.0, lambda tx: refused(tx, Code.INVALID_ARGUMENT, "no")), "failed"),  # not its call
    ((0.0, lambda tx: ok(tx) if tx == b"a" else orderer_pb2.BroadcastResult(tx_id="forged")),
     "failed"),  # one acknowledged, one answered wrongly
])
def test_what_strikes_an_orderer(answer: tuple, reason: str) -> None:
    clock = FakeClock()
    suspect, other = Scripted(clock, [answer]), FakeOrderer()
    before = _cooldowns("orderer-1", reason)
    b = broadcaster(suspect, other, clock=clock)
    b.broadcast_many([(b"a", "a"), (b"b", "b")])
    assert outcome(b, b"c") == "ok c"
    assert _cooldowns("orderer-1", reason) == before + 1
    assert b._choice.cooling(0)
    b.close()


@pytest.mark.parametrize("answer", [(0.0, _full), (0.0, Code.RESOURCE_EXHAUSTED)])
def test_a_full_orderer_saying_so_in_time_is_not_struck(answer: tuple) -> None:
    clock = FakeClock()
    full = Scripted(clock, [answer])
    b = broadcaster(full, FakeOrderer(), clock=clock)
    before = _cooldowns("orderer-1", "failed") + _cooldowns("orderer-1", "late")
    assert outcome(b, b"x") == "ok x"  # the other orderer took it (and leads now)
    assert _cooldowns("orderer-1", "failed") + _cooldowns("orderer-1", "late") == before
    assert not b._choice.cooling(0)  # it only said it was full
    b.close()
