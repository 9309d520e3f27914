"""A submitter process of the end-to-end benchmark: plays its share of the meters.

Runs in its own process (spawned, so its gRPC client and signing never share the GIL with
the coordinator that timestamps commits). Open loop at a fixed rate (a slow answer never
delays the next send, and latency counts from the *scheduled* time, so client lag shows
rather than hides), or closed loop at most `window` jobs in flight for the maximum rate.
All times are `time.monotonic()`, which is one clock for every process on the machine.
"""

from __future__ import annotations

import re
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from bench.workload import Job
from gridledger.common.v1 import envelope_pb2, market_pb2, transaction_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import SigningIdentity

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
    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._channel = secure_channel(spec.endorser, spec.tls)
        self._stub = endorser_pb2_grpc.EndorserServiceStub(self._channel)
        self._identities: dict[str, SigningIdentity] = {}
        self.records: list[Record] = []
        self._outstanding = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._window = threading.Semaphore(spec.window)

    def ready(self) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=30)
        for job in {j.meter: j for j in self._spec.jobs if j.kind == "order"}.values():
            self._identity(job.meter)

    def _identity(self, meter: str) -> SigningIdentity:
        identity = self._identities.get(meter)
        if identity is None:
            identity = self._identities[meter] = SigningIdentity.load(
                self._spec.consortium_dir, meter)
        return identity

    def run(self, start: float) -> None:
        spec = self._spec
        if spec.rate > 0:
            interval = 1.0 / spec.rate
            for i, job in enumerate(spec.jobs):
                due = start + i * interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._dispatch(job, due)
        else:
            deadline = start + spec.duration
            for job in spec.jobs:
                self._window.acquire()
                now = time.monotonic()
                if now >= deadline:
                    self._window.release()
                    break
                self._dispatch(job, now)
        with self._idle:
            self._idle.wait_for(lambda: self._outstanding == 0, timeout=CALL_TIMEOUT * 2 + 5)
        self._channel.close()

    def _dispatch(self, job: Job, due: float) -> None:
        with self._lock:
            self._outstanding += 1
        if job.kind == "order":
            request = endorser_pb2.RequestOptionsRequest(
                request=envelope_pb2.SignedEnvelope.FromString(job.payload))
            future = self._stub.RequestOptions.future(request, timeout=CALL_TIMEOUT)
            future.add_done_callback(lambda f: self._optioned(job, due, f))
        else:
            self._submit(job.kind, job.tx_id, job.payload, due, due, 0.0)

    def _optioned(self, job: Job, due: float, future: grpc.Future) -> None:
        now = time.monotonic()
        try:
            answer = future.result()
        except grpc.RpcError as exc:
            self._finish(Record("order", "", due, 0.0, 0.0, "options " + reason(exc), now - due))
            return
        envelope = self._identity(job.meter).new_transaction(
            "place_order", market_pb2.PlaceOrder(option=answer.option))
        tx_id = _tx_id(envelope)
        self._submit("order", tx_id, envelope.SerializeToString(), due, time.monotonic(),
                     now - due)

    def _submit(self, kind: str, tx_id: str, payload: bytes, due: float, sent: float,
                matching: float) -> None:
        request = endorser_pb2.SubmitTransactionRequest(
            envelope=envelope_pb2.SignedEnvelope.FromString(payload))
        future = self._stub.SubmitTransaction.future(request, timeout=CALL_TIMEOUT)

        def done(f: grpc.Future) -> None:
            now = time.monotonic()
            try:
                f.result()
                record = Record(kind, tx_id, due, sent, now, "", matching)
            except grpc.RpcError as exc:
                record = Record(kind, tx_id, due, sent, 0.0, reason(exc), matching)
            self._finish(record)

        future.add_done_callback(done)

    def _finish(self, record: Record) -> None:
        self.records.append(record)
        self._window.release()
        with self._idle:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()


def _tx_id(envelope: envelope_pb2.SignedEnvelope) -> str:
    return transaction_pb2.Transaction.FromString(envelope.payload).header.tx_id


def main(spec: Spec, ready: Any, go: Any, start: Any, results: Any) -> None:
    """Process entry point (multiprocessing queues, event and shared double): connect,
    report ready, wait for the common start, run, report."""
    runner = _Runner(spec)
    runner.ready()
    ready.put(True)
    go.wait()
    runner.run(start.value)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put(Outcome(runner.records, usage.ru_utime + usage.ru_stime))
