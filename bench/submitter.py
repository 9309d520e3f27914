"""A submitter process of the end-to-end benchmark: plays its share of the meters.

Runs in its own process (spawned, so its gRPC client and signing never share the GIL with
the coordinator that timestamps commits), on one asyncio loop. Open loop at a fixed rate (a
slow answer never delays the next send, and latency counts from the *scheduled* time, so
client lag shows rather than hides), or closed loop with at most `window` jobs in flight
for the maximum rate. All times are `time.monotonic()`, one clock for every process on the
machine.

Like a head-end system, a submitter keeps its calls to the endorser within a congestion
window that shrinks when the endorser refuses (core `rpc/congestion.py`); a refused call
waits at least the endorser's retry hint (plus jitter), then for a slot, and is sent again.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc

from bench.workload import Job, sign_request
from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.rpc.backoff import Backoff, retry_after_ms
from gridledger_core.rpc.congestion import AsyncCallWindow, CallWindow
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_ENVELOPES, submit_batches
from gridledger_core.rpc.tls import CHANNEL_OPTIONS, TlsFiles
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id

T = TypeVar("T")

CALL_TIMEOUT = 30.0
# A refused (RESOURCE_EXHAUSTED) call is retried after the endorser's hint plus jitter (and a
# slot in the congestion window), up to this many calls in all; then the job counts as
# refused (what a meter would buffer).
MAX_ATTEMPTS = 4
BATCH_LINGER = 0.002  # seconds a batch waits for more transactions once one is queued
# Open loop: the generator wakes at most this often and sends every job then due, instead of
# one timer wake-up per job (at 2x the capacity 700-800 a second per submitter, shed or
# sent; in process at 1,500 jobs a second the generator's CPU fell from 72-83 to 61-64 ms a
# second, CPU the network beside it gets). A job leaves at most this late; its latency still
# counts from when it was due.
DISPATCH_TICK = 0.005
# Batch calls of one kind a submitter keeps in flight: a member may hold 16 batch calls on a
# node (core rpc/call_shares.py), and a benchmark's two submitters each batch two kinds.
# While they are out, what arrives waits and leaves in the next, larger, batch.
BATCH_CALLS = 4
SHED = "SHED: the load generator's open-loop bound was reached (not sent)"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED}  # the untimed set-up's retries
# What tells the congestion window the endorser is overloaded.
CONGESTION = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


class Record(NamedTuple):
    kind: str
    tx_id: str  # "" when no transaction was submitted (the option was refused)
    scheduled: float  # when the job was due (rate) or sent (max)
    submitted: float  # when SubmitTransaction was sent (orders: after their option)
    acked: float  # 0.0 when not acknowledged
    error: str  # "" or "CODE: message with numbers elided"
    matching: float  # RequestOptions latency from `scheduled`, orders only
    attempts: int = 1  # calls made for the job's transaction (retries after RESOURCE_EXHAUSTED)
    last_sent: float = 0.0  # when the last call was sent (the accepted one, if acknowledged)
    # When the job's first call was sent (its lag behind `scheduled`: the generator's own,
    # and the wait for a slot in the congestion window).
    started: float = 0.0


@dataclass(frozen=True)
class Spec:
    endorser: str
    tls: TlsFiles
    consortium_dir: Path
    jobs: list[Job]
    rate: float  # jobs per second for this submitter; 0 = as fast as `window` allows
    window: int
    duration: float  # max mode: stop sending after this many seconds
    batch: int = 0  # > 0: transactions go in SubmitBatch calls of at most this many
    attempts: int = MAX_ATTEMPTS  # calls per transaction before it counts as refused
    # Open loop: jobs in progress (sent, retrying, waiting for an answer) at most; a job due
    # while this many are in progress is shed by the load generator itself (counted, not
    # sent), as a head-end system's bounded outbox would, so that on a machine the
    # generator shares with the network its own backlog cannot grow without bound.
    open_loop_limit: int = 600


@dataclass
class Outcome:
    records: list[Record]
    cpu_seconds: float


def reason(exc: grpc.RpcError) -> str:
    return reason_of(exc.code(), exc.details() or "")  # type: ignore[attr-defined]


def reason_of(code: grpc.StatusCode, details: str) -> str:
    # Ids and numbers elided, so refusals group by reason.
    details = re.sub(r"\b[0-9a-f]{12,}\b", "<id>", details)
    details = re.sub(r"\d+", "N", details)
    return f"{code.name}: {details[:90]}"


class _Failed(Exception):
    """One transaction's non-OK outcome, from a single call or a batch result."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_ms: int) -> None:
        super().__init__(details)
        self.code, self.details, self.retry_ms = code, details, retry_ms

    @classmethod
    def of(cls, exc: grpc.RpcError) -> _Failed:
        return cls(exc.code(), exc.details() or "", retry_after_ms(exc))  # type: ignore[attr-defined]


_CODES = {code.value[0]: code for code in grpc.StatusCode}


# One envelope's result in a batch call: (gRPC code, message, retry hint in ms, answer).
_Result = tuple[int, str, int, Any]
_SendBatch = Callable[[list[envelope_pb2.SignedEnvelope]], Awaitable[list[_Result]]]


class _Batcher:
    """Coalesces the runner's concurrent calls of one kind into batch calls (`send`: one
    SubmitBatch or RequestOptionsBatch): the first queued envelope waits BATCH_LINGER for
    company (at most `size` per call, and within the endorser's byte bound); at most
    `max_calls` calls run at once (the rest wait for one to end, and leave together), each
    envelope gets its own result."""

    def __init__(self, send: _SendBatch, size: int, max_calls: int = BATCH_CALLS) -> None:
        self._send_batch = send
        self._size = size
        self._max_calls = max_calls
        self._queue: list[tuple[envelope_pb2.SignedEnvelope, asyncio.Future]] = []
        self._flush: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()

    async def submit(self, envelope: envelope_pb2.SignedEnvelope) -> Any:
        """The envelope's answer in its batch, or _Failed with its status."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((envelope, future))
        if len(self._queue) >= self._size:
            self._send()
        elif self._flush is None:
            self._flush = asyncio.create_task(self._linger())
        return await future

    async def _linger(self) -> None:
        await asyncio.sleep(BATCH_LINGER)
        self._flush = None
        self._send()

    def _send(self) -> None:
        """Send what is queued, as far as the calls in flight allow; the rest waits for the
        next call to end."""
        if len(self._calls) >= self._max_calls or not self._queue:
            return
        # Only as many batches as may leave now are cut (each envelope sized once); the
        # rest of the queue waits as it is.
        batches = list(itertools.islice(
            submit_batches(self._queue, lambda item: item[0].ByteSize(),  # bytes too
                           max_count=min(self._size, SUBMIT_BATCH_ENVELOPES)),
            self._max_calls - len(self._calls)))
        del self._queue[:sum(len(batch) for batch in batches)]
        for batch in batches:
            task = asyncio.create_task(self._call(batch))
            self._calls.add(task)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        self._calls.discard(task)
        if not task.cancelled():  # cancelled: the run is ending
            self._send()

    async def _call(self, batch: list[tuple[envelope_pb2.SignedEnvelope, asyncio.Future]]
                    ) -> None:
        """One batch call; every envelope's future gets an outcome, whatever happens (a
        future left pending would hold its job, and its window slot, for good)."""
        futures = [future for _, future in batch]
        try:
            results = await self._send_batch([e for e, _ in batch])
            if len(results) != len(batch):
                raise _Failed(grpc.StatusCode.UNKNOWN, f"answered {len(results)} "
                              f"results for {len(batch)} envelopes", 0)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except grpc.RpcError as exc:
            failed = _Failed.of(exc)
        except Exception as exc:  # a malformed answer, or a bug: fail the batch
            failed = exc if isinstance(exc, _Failed) else \
                _Failed(grpc.StatusCode.UNKNOWN, repr(exc), 0)
        else:
            for future, (code, message, retry_ms, answer) in zip(futures, results, strict=True):
                if code == 0:
                    future.set_result(answer)
                else:
                    future.set_exception(_Failed(
                        _CODES.get(code, grpc.StatusCode.UNKNOWN), message, retry_ms))
            return
        for future in futures:
            future.set_exception(failed)


def submit_batcher(stub: endorser_pb2_grpc.EndorserServiceStub, size: int) -> _Batcher:
    """Transactions in SubmitBatch calls."""
    async def send(envelopes: list[envelope_pb2.SignedEnvelope]) -> list[_Result]:
        response = await stub.SubmitBatch(
            endorser_pb2.SubmitBatchRequest(envelopes=envelopes), timeout=CALL_TIMEOUT)
        return [(r.code, r.message, r.retry_after_ms, None) for r in response.results]
    return _Batcher(send, size)


def options_batcher(stub: endorser_pb2_grpc.EndorserServiceStub, size: int) -> _Batcher:
    """Signed trade requests in RequestOptionsBatch calls; each answer is the request's
    RequestOptionsResponse."""
    async def send(requests: list[envelope_pb2.SignedEnvelope]) -> list[_Result]:
        response = await stub.RequestOptionsBatch(
            endorser_pb2.RequestOptionsBatchRequest(requests=requests), timeout=CALL_TIMEOUT)
        return [(r.code, r.message, r.retry_after_ms, r.options) for r in response.results]
    return _Batcher(send, size)


class _Runner:
    """One asyncio loop drives every call (grpc.aio): no thread per call or callback, so the
    generator's own CPU per job stays small next to the network's."""

    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._identities: dict[str, SigningIdentity] = {}
        self._batcher: _Batcher | None = None  # SubmitBatch, with spec.batch
        self._options_batcher: _Batcher | None = None  # RequestOptionsBatch, likewise
        self.records: list[Record] = []
        self.cpu_at_start = 0.0
        self._window = AsyncCallWindow(CallWindow())
        # A refusal without a hint (gRPC's own concurrency limit) waits 250 ms and doubling.
        self._backoff = Backoff(base_s=0.25)

    def _identity(self, meter: str) -> SigningIdentity:
        identity = self._identities.get(meter)
        if identity is None:
            identity = self._identities[meter] = SigningIdentity.load(
                self._spec.consortium_dir, meter)
        return identity

    async def run(self, ready: Any, go: Any, start: Any) -> None:
        spec = self._spec
        async with grpc.aio.secure_channel(spec.endorser, spec.tls.channel_credentials(),
                                           options=CHANNEL_OPTIONS) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
            self._stub = endorser_pb2_grpc.EndorserServiceStub(channel)
            self._batcher = submit_batcher(self._stub, spec.batch) if spec.batch else None
            self._options_batcher = (options_batcher(self._stub, spec.batch) if spec.batch
                                     else None)
            for job in spec.jobs:
                if job.kind == "order":
                    self._identity(job.meter)
            ready.put(True)
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            self.cpu_at_start = _cpu_seconds()
            tasks = await (self._at_rate(start.value) if spec.rate > 0
                           else self._at_max(start.value))
            await asyncio.gather(*tasks)

    async def _at_rate(self, begin: float) -> list[asyncio.Task]:
        interval = 1.0 / self._spec.rate
        tasks = []
        in_progress = 0

        async def one(job: Job, due: float) -> None:
            nonlocal in_progress
            try:
                await self._job(job, due)
            finally:
                in_progress -= 1

        for i, job in enumerate(self._spec.jobs):
            due = begin + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(max(delay, DISPATCH_TICK))
            if in_progress >= self._spec.open_loop_limit:
                self.records.append(Record(job.kind, "", due, 0.0, 0.0, SHED, 0.0, 0))
                continue
            in_progress += 1
            tasks.append(asyncio.create_task(one(job, due)))
        return tasks

    async def _at_max(self, begin: float) -> list[asyncio.Task]:
        deadline = begin + self._spec.duration
        window = asyncio.Semaphore(self._spec.window)
        tasks = []

        async def one(job: Job) -> None:
            try:
                await self._job(job, time.monotonic())
            finally:
                window.release()

        for job in self._spec.jobs:
            await window.acquire()
            if time.monotonic() >= deadline:
                break
            tasks.append(asyncio.create_task(one(job)))
        return tasks

    async def _job(self, job: Job, due: float) -> None:
        if job.kind != "order":
            await self._submit(job.kind, job.tx_id, job.payload, due, due, 0.0, None)
            return

        def options() -> Awaitable[endorser_pb2.RequestOptionsResponse]:
            # Stamped and signed now, not when the job was made: the endorser refuses
            # requests more than its --request-window off its clock.
            request = sign_request(self._identity(job.meter), job.payload)
            if self._options_batcher is not None:
                return self._options_batcher.submit(request)
            return self._stub.RequestOptions(
                endorser_pb2.RequestOptionsRequest(request=request), timeout=CALL_TIMEOUT)

        started = None
        for attempt in range(self._spec.attempts):
            answer, failure, sent_at = await self._attempt(options)
            started = sent_at if started is None else started
            if failure is None:
                break
            if not self._retries(failure, attempt):
                self.records.append(Record("order", "", due, 0.0, 0.0, "options " + reason_of(
                    failure.code, failure.details), time.monotonic() - due, attempt + 1,
                    started=started or 0.0))
                return
            await asyncio.sleep(self._backoff.delay(attempt, failure.retry_ms))
        assert answer is not None
        matched = time.monotonic()
        envelope = self._identity(job.meter).new_transaction(
            "place_order", market_pb2.PlaceOrder(option=answer.option))
        await self._submit("order", envelope_tx_id(envelope), envelope.SerializeToString(), due,
                           time.monotonic(), matched - due, started)

    async def _submit(self, kind: str, tx_id: str, payload: bytes, due: float, sent: float,
                      matching: float, started: float | None) -> None:
        """Submit, retrying after RESOURCE_EXHAUSTED (at least the hint, then a slot in the
        window); latency still counts from `sent` (a reading's schedule), `last_sent` is
        when each call was made, `started` the job's first call (this one's if None)."""
        envelope = envelope_pb2.SignedEnvelope.FromString(payload)
        for attempt in range(self._spec.attempts):
            _, failure, last_sent = await self._attempt(lambda: self._one(envelope))
            started = last_sent if started is None else started
            if failure is None:
                self.records.append(Record(kind, tx_id, due, sent, time.monotonic(), "",
                                           matching, attempt + 1, last_sent, started))
                return
            if not self._retries(failure, attempt):
                self.records.append(Record(kind, tx_id, due, sent, 0.0,
                                           reason_of(failure.code, failure.details),
                                           matching, attempt + 1, last_sent, started))
                return
            await asyncio.sleep(self._backoff.delay(attempt, failure.retry_ms))

    async def _attempt(self, send: Callable[[], Awaitable[T]]
                       ) -> tuple[T | None, _Failed | None, float]:
        """One call within the congestion window: (answer, None, sent at) or (None, failure,
        sent at). Refused or timed out, it cuts the window; however it ends, its slot is
        given back."""
        async with self._window.call() as call:
            try:
                answer = await send()
            except grpc.RpcError as exc:
                failure = _Failed.of(exc)
            except _Failed as failed:
                failure = failed
            else:
                call.admitted()
                return answer, None, call.sent_at
            if failure.code in CONGESTION:
                call.refused()
            return None, failure, call.sent_at

    def _retries(self, failure: _Failed, attempt: int) -> bool:
        """Only admission control's refusal is sent again, up to the job's attempts."""
        return failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED and \
            attempt + 1 < self._spec.attempts

    async def _one(self, envelope: envelope_pb2.SignedEnvelope) -> None:
        """One submission of the envelope: OK, or _Failed."""
        if self._batcher is not None:
            await self._batcher.submit(envelope)
            return
        try:
            await self._stub.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            raise _Failed.of(exc) from exc


def main(spec: Spec, ready: Any, go: Any, start: Any, results: Any) -> None:
    """Process entry point (multiprocessing queues, event and shared double): connect,
    report ready, wait for the common start, run, report."""
    runner = _Runner(spec)
    asyncio.run(runner.run(ready, go, start))
    results.put(Outcome(runner.records, _cpu_seconds() - runner.cpu_at_start))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
