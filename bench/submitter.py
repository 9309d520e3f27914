"""A submitter process of the end-to-end benchmark: plays its share of the meters.

Runs in its own process (spawned, so its gRPC client and signing never share the GIL with
the coordinator that timestamps commits), on one asyncio loop. Open loop at a fixed rate (a
slow answer never delays the next send, and latency counts from the *scheduled* time, so
client lag shows rather than hides), or closed loop with at most `window` jobs in flight
for the maximum rate. All times are `time.monotonic()`, one clock for every process on the
machine.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from bench.workload import Job, sign_request
from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.rpc.tls import CHANNEL_OPTIONS, TlsFiles
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id

CALL_TIMEOUT = 30.0
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED}


class Record(NamedTuple):
    kind: str
    tx_id: str  # "" when no transaction was submitted (the option was refused)
    scheduled: float  # when the job was due (rate) or sent (max)
    submitted: float  # when SubmitTransaction was sent (orders: after their option)
    acked: float  # 0.0 when not acknowledged
    error: str  # "" or "CODE: message with numbers elided"
    matching: float  # RequestOptions latency from `scheduled`, orders only


@dataclass(frozen=True)
class Spec:
    endorser: str
    tls: TlsFiles
    consortium_dir: Path
    jobs: list[Job]
    rate: float  # jobs per second for this submitter; 0 = as fast as `window` allows
    window: int
    duration: float  # max mode: stop sending after this many seconds


@dataclass
class Outcome:
    records: list[Record]
    cpu_seconds: float


def reason(exc: grpc.RpcError) -> str:
    # Ids and numbers elided, so refusals group by reason.
    details = re.sub(r"\b[0-9a-f]{12,}\b", "<id>", exc.details() or "")  # type: ignore[attr-defined]
    details = re.sub(r"\d+", "N", details)
    return f"{exc.code().name}: {details[:90]}"  # type: ignore[attr-defined]


class _Runner:
    """One asyncio loop drives every call (grpc.aio): no thread per call or callback, so the
    generator's own CPU per job stays small next to the network's."""

    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._identities: dict[str, SigningIdentity] = {}
        self.records: list[Record] = []
        self.cpu_at_start = 0.0

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
        for i, job in enumerate(self._spec.jobs):
            due = begin + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._job(job, due)))
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
            await self._submit(job.kind, job.tx_id, job.payload, due, due, 0.0)
            return
        # Stamped and signed now, not when the job was made: the endorser refuses requests
        # more than its --request-window off its clock.
        request = endorser_pb2.RequestOptionsRequest(
            request=sign_request(self._identity(job.meter), job.payload))
        try:
            answer = await self._stub.RequestOptions(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            self.records.append(Record("order", "", due, 0.0, 0.0, "options " + reason(exc),
                                       time.monotonic() - due))
            return
        matched = time.monotonic()
        envelope = self._identity(job.meter).new_transaction(
            "place_order", market_pb2.PlaceOrder(option=answer.option))
        await self._submit("order", envelope_tx_id(envelope), envelope.SerializeToString(), due,
                           time.monotonic(), matched - due)

    async def _submit(self, kind: str, tx_id: str, payload: bytes, due: float, sent: float,
                      matching: float) -> None:
        request = endorser_pb2.SubmitTransactionRequest(
            envelope=envelope_pb2.SignedEnvelope.FromString(payload))
        try:
            await self._stub.SubmitTransaction(request, timeout=CALL_TIMEOUT)
            record = Record(kind, tx_id, due, sent, time.monotonic(), "", matching)
        except grpc.RpcError as exc:
            record = Record(kind, tx_id, due, sent, 0.0, reason(exc), matching)
        self.records.append(record)


def main(spec: Spec, ready: Any, go: Any, start: Any, results: Any) -> None:
    """Process entry point (multiprocessing queues, event and shared double): connect,
    report ready, wait for the common start, run, report."""
    runner = _Runner(spec)
    asyncio.run(runner.run(ready, go, start))
    results.put(Outcome(runner.records, _cpu_seconds() - runner.cpu_at_start))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
