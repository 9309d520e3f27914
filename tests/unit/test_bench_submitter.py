"""The benchmark's load generator against an overloaded endorser: like a head-end system,
it keeps its calls within a congestion window that shrinks on a refusal, instead of
retrying each refused call while it keeps starting new ones at the offered rate (which made
the endorser spend on refusals the CPU it needed to commit)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from bench import submitter
from bench.workload import Job
from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger_core.rpc.backoff import RETRY_AFTER
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_BYTES
from gridledger_core.rpc.tls import TlsFiles

HINT_MS = 400  # above the generator's own 250 ms floor, so the check below can fail


class OverloadedEndorser:
    """Admits `capacity` calls at once, each answered after `service_s`; refuses the rest
    at once, RESOURCE_EXHAUSTED with a `retry-after-ms` hint, as admission control does."""

    def __init__(self, capacity: int, service_s: float) -> None:
        self._capacity, self._service_s = capacity, service_s
        self._in_flight = 0
        self.calls: list[tuple[float, bytes]] = []  # when each call arrived, and its envelope
        self.refusals: list[tuple[float, bytes]] = []

    async def SubmitTransaction(self, request: endorser_pb2.SubmitTransactionRequest,
                                timeout: float) -> endorser_pb2.SubmitTransactionResponse:
        call = (time.monotonic(), request.envelope.payload)
        self.calls.append(call)
        if self._in_flight >= self._capacity:
            self.refusals.append(call)
            raise grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       grpc.aio.Metadata(),
                                       grpc.aio.Metadata((RETRY_AFTER, str(HINT_MS))),
                                       "the endorser is at its admission bound")
        self._in_flight += 1
        try:
            await asyncio.sleep(self._service_s)
        finally:
            self._in_flight -= 1
        return endorser_pb2.SubmitTransactionResponse(tx_id="t")


def _readings(count: int) -> list[Job]:
    return [Job("reading", "meter-1",
                envelope_pb2.SignedEnvelope(payload=b"reading-%d" % i).SerializeToString(),
                f"tx-{i}") for i in range(count)]


def _run(endorser: OverloadedEndorser, jobs: list[Job], rate: float) -> list[submitter.Record]:
    spec = submitter.Spec("127.0.0.1:1", TlsFiles(Path("ca"), Path("c"), Path("k")),
                          Path("."), jobs, rate, window=0, duration=0, attempts=20)
    runner = submitter._Runner(spec)
    runner._stub = endorser  # type: ignore[assignment]
    runner._batcher = None

    async def drive() -> None:
        tasks = await runner._at_rate(time.monotonic())
        await asyncio.gather(*tasks)

    asyncio.run(drive())
    return runner.records


def test_an_overloaded_endorser_sees_few_refused_calls_and_each_retried_after_its_hint(
) -> None:
    # 300 readings offered at 600/s to an endorser that carries 8 x (1 / 20 ms) = 400/s.
    endorser = OverloadedEndorser(capacity=8, service_s=0.02)
    records = _run(endorser, _readings(300), rate=600)

    assert all(r.acked for r in records)  # every job got in, in the end
    # Before: every job was sent when due and each refused one retried on its own, about
    # one refused call for every two admitted; now a refusal is the rare signal.
    assert len(endorser.refusals) <= len(records) // 10, (len(endorser.refusals),
                                                           len(endorser.calls))
    # A refused envelope comes back no sooner than the hint.
    for refused_at, envelope in endorser.refusals:
        again = [at for at, e in endorser.calls if e == envelope and at > refused_at]
        assert again and again[0] - refused_at >= HINT_MS / 1000


class RecordingBatchEndorser:
    """Answers every SubmitBatch with OK results; keeps each request's size."""

    def __init__(self) -> None:
        self.request_bytes: list[int] = []

    async def SubmitBatch(self, request: endorser_pb2.SubmitBatchRequest,
                          timeout: float) -> endorser_pb2.SubmitBatchResponse:
        self.request_bytes.append(request.ByteSize())
        return endorser_pb2.SubmitBatchResponse(results=[
            endorser_pb2.SubmitResult(tx_id="t") for _ in request.envelopes])


def test_the_batch_api_generator_keeps_each_call_within_the_endorsers_byte_bound() -> None:
    """Envelopes of a megabyte (history chunks) in a run: chunked by count alone, 100 of
    them made one call of 100 MiB, which the endorser refuses whole (INVALID_ARGUMENT)."""
    endorser = RecordingBatchEndorser()
    batcher = submitter.submit_batcher(endorser, 100)  # type: ignore[arg-type]
    large = [envelope_pb2.SignedEnvelope(payload=bytes([i]) * (1 << 20)) for i in range(10)]

    async def drive() -> None:
        await asyncio.gather(*(batcher.submit(envelope) for envelope in large))

    asyncio.run(drive())
    assert len(endorser.request_bytes) > 1
    assert max(endorser.request_bytes) <= SUBMIT_BATCH_BYTES


class OptionsBatchEndorser:
    """Answers RequestOptionsBatch: an option for every request whose payload is even-numbered,
    ABORTED for the others."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # requests per call

    async def RequestOptionsBatch(self, request: endorser_pb2.RequestOptionsBatchRequest,
                                  timeout: float) -> endorser_pb2.RequestOptionsBatchResponse:
        self.calls.append(len(request.requests))
        results = []
        for r in request.requests:
            n = int(r.payload)
            if n % 2 == 0:
                results.append(endorser_pb2.OptionsResult(
                    code=0, options=endorser_pb2.RequestOptionsResponse(forecast_net_wh=n)))
            else:
                results.append(endorser_pb2.OptionsResult(
                    code=grpc.StatusCode.ABORTED.value[0], message=f"held {n}"))
        return endorser_pb2.RequestOptionsBatchResponse(results=results)


def test_the_batch_api_generator_requests_options_in_batches_each_job_its_own_answer() -> None:
    endorser = OptionsBatchEndorser()
    batcher = submitter.options_batcher(endorser, 100)  # type: ignore[arg-type]

    async def one(n: int) -> int | str:
        try:
            answer = await batcher.submit(envelope_pb2.SignedEnvelope(payload=b"%d" % n))
        except submitter._Failed as failed:
            return f"{failed.code.name}: {failed.details}"
        return answer.forecast_net_wh

    async def drive() -> list[int | str]:
        return await asyncio.gather(*(one(n) for n in range(250)))

    answers = asyncio.run(drive())
    assert endorser.calls == [100, 100, 50]  # 250 concurrent requests, three calls
    assert answers == [n if n % 2 == 0 else f"ABORTED: held {n}" for n in range(250)]


class SlowBatchEndorser:
    """Answers SubmitBatch after a pause, counting the calls in flight."""

    def __init__(self) -> None:
        self.in_flight = self.most = 0
        self.sizes: list[int] = []

    async def SubmitBatch(self, request: endorser_pb2.SubmitBatchRequest,
                          timeout: float) -> endorser_pb2.SubmitBatchResponse:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        self.sizes.append(len(request.envelopes))
        await asyncio.sleep(0.05)
        self.in_flight -= 1
        return endorser_pb2.SubmitBatchResponse(results=[
            endorser_pb2.SubmitResult(tx_id="t") for _ in request.envelopes])


def test_the_batch_api_generator_keeps_a_few_batch_calls_in_flight() -> None:
    """A member may hold 16 batch calls on a node: the generator keeps BATCH_CALLS of one
    kind in flight, and what arrives meanwhile leaves together in the next batches."""
    endorser = SlowBatchEndorser()
    batcher = submitter.submit_batcher(endorser, 100)  # type: ignore[arg-type]

    async def drive() -> None:
        async def trickle(n: int) -> None:  # one job every millisecond, as a busy runner
            await asyncio.sleep(n / 1000)
            await batcher.submit(envelope_pb2.SignedEnvelope(payload=b"%d" % n))
        await asyncio.gather(*(trickle(n) for n in range(300)))

    asyncio.run(drive())
    assert endorser.most == submitter.BATCH_CALLS
    assert sum(endorser.sizes) == 300 and len(endorser.sizes) < 60  # batches, not trickles


def test_the_open_loop_generator_wakes_once_a_tick_not_once_a_job(monkeypatch) -> None:
    """At 2,000 jobs a second a timer per job was 2,000 wake-ups a second of the generator's
    loop; now it sleeps at least DISPATCH_TICK and sends every job due by then, in order,
    and each job still records when it was due."""
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def counted(delay: float, *args: object) -> None:
        sleeps.append(delay)
        await real_sleep(delay, *args)

    service_s = 0.0011  # the endorser's own sleeps, told apart by their length
    endorser = OverloadedEndorser(capacity=1_000, service_s=service_s)
    monkeypatch.setattr(submitter.asyncio, "sleep", counted)
    rate, count = 2_000, 400  # 0.2 s of jobs
    records = _run(endorser, _readings(count), rate=rate)

    assert all(r.acked for r in records)
    schedule = [d for d in sleeps if d != service_s]  # the generator's timed waits
    # One wake-up per tick (a few more if the loop is late), not one per job.
    assert len(schedule) <= count / rate / submitter.DISPATCH_TICK + 5 < count / 4
    assert [e for _, e in endorser.calls] == [b"reading-%d" % i for i in range(count)]
    dues = sorted(r.scheduled for r in records)
    assert dues == [pytest.approx(dues[0] + i / rate) for i in range(count)]
