"""A steady stream of real, signed meter readings into a devnet, for tests and benchmarks.

Each meter posts readings for distinct past intervals, walking back from `start`, so every
transaction is valid and none collides with what the meter-agents post. Envelopes are
signed ahead of time by `prepare`, so the generator measures the network, not itself.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gridledger.common.v1 import envelope_pb2, transaction_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.rpc.backoff import Backoff, retry_after_ms
from gridledger_core.rpc.submit_batches import submit_batches
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import SigningIdentity


def distant_past(interval_seconds: int, now: int | None = None) -> int:
    """An interval boundary 60 days ago: far behind anything the meter-agents post and
    outside every forecast's window, so readings walking back from it disturb nothing."""
    now = int(time.time()) if now is None else now
    return (now // interval_seconds - 60 * 86400 // interval_seconds) * interval_seconds


def past_reading(identity: SigningIdentity, base: int, back: int, interval_seconds: int,
                 produced_wh: int, consumed_wh: int) -> envelope_pb2.SignedEnvelope:
    """The signed reading of the interval `back` intervals before `base`."""
    reading = transaction_pb2.MeterReading(
        meter=identity.name, interval_start=base - back * interval_seconds,
        interval_seconds=interval_seconds, produced_wh=produced_wh, consumed_wh=consumed_wh)
    return identity.new_transaction("meter_reading", reading)


def prepare_readings(consortium_dir: Path, meters: Sequence[str], count: int, *,
                     interval_seconds: int = 900, start: int | None = None,
                     ) -> list[envelope_pb2.SignedEnvelope]:
    """`count` signed readings, round-robin over `meters`, for intervals older than `start`
    (default: `distant_past`)."""
    identities = [SigningIdentity.load(consortium_dir, m) for m in meters]
    base = start if start is not None else distant_past(interval_seconds)
    return [past_reading(identity, base, i // len(identities) + 1, interval_seconds,
                         i % 1000, (7 * i) % 1000)
            for i, identity in zip(range(count), itertools.cycle(identities), strict=False)]


@dataclass
class LoadStats:
    accepted: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    tx_ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


class LoadGenerator:
    """Submits prepared envelopes at `rate` per second from a background thread: one
    SubmitTransaction each, or (`batch` > 0) SubmitBatch calls of up to `batch` envelopes
    (what is due at each send). A refused envelope (RESOURCE_EXHAUSTED: admission control;
    UNAVAILABLE) is sent again after the endorser's hint plus jitter (growing only while a
    round makes no progress), up to `attempts` calls."""

    def __init__(self, endorser: str, tls: TlsFiles,
                 envelopes: Sequence[envelope_pb2.SignedEnvelope], rate: float,
                 batch: int = 0, attempts: int = 50, backoff: Backoff | None = None) -> None:
        self._channel = secure_channel(endorser, tls)
        self._stub = endorser_pb2_grpc.EndorserServiceStub(self._channel)
        self._envelopes = list(envelopes)
        self._rate = rate
        self._batch = batch
        self._attempts = attempts
        self._backoff = backoff or Backoff(base_s=0.1, cap_s=5.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self.stats = LoadStats()

    def start(self) -> LoadGenerator:
        self._thread.start()
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        self._thread.join(timeout=30)
        self._channel.close()
        return self.stats

    def join(self, timeout: float | None = None) -> LoadStats:
        """Wait until every envelope was sent (or given up), then close."""
        self._thread.join(timeout)
        return self.stop()

    def _run(self) -> None:
        interval = 1.0 / self._rate
        next_at = time.monotonic()
        size = max(1, self._batch)
        sent = 0
        while sent < len(self._envelopes):
            if self._stop.is_set():
                return
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            # What is due by now (at least one), up to the batch size.
            due = max(1, min(size, int((time.monotonic() - next_at) / interval) + 1))
            chunk = self._envelopes[sent:sent + due]
            sent += len(chunk)
            next_at += len(chunk) * interval
            if self._batch:
                for run in submit_batches(chunk, lambda e: e.ByteSize(), max_count=size):
                    self._submit_batch(run)
            else:
                self._submit(chunk[0])

    def _submit(self, envelope: envelope_pb2.SignedEnvelope) -> None:
        started = time.perf_counter()
        for attempt in range(self._attempts):  # retried with the same envelope
            try:
                response = self._stub.SubmitTransaction(
                    endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=10)
                self._accepted(response.tx_id, started)
                return
            except grpc.RpcError as exc:
                code = exc.code().name  # type: ignore[attr-defined]
                if code == "ALREADY_EXISTS":
                    return
                self.stats.failed[code] = self.stats.failed.get(code, 0) + 1
                if code not in RETRY or self._stop.wait(self._delay(attempt,
                                                                   retry_after_ms(exc))):
                    return

    def _submit_batch(self, envelopes: list[envelope_pb2.SignedEnvelope]) -> None:
        started = time.perf_counter()
        left = envelopes
        attempt = 0  # rounds in a row without progress: the backoff grows only then
        for _ in range(self._attempts):
            try:
                response = self._stub.SubmitBatch(
                    endorser_pb2.SubmitBatchRequest(envelopes=left), timeout=30)
            except grpc.RpcError as exc:
                code = exc.code().name  # type: ignore[attr-defined]
                self.stats.failed[code] = self.stats.failed.get(code, 0) + len(left)
                hint = retry_after_ms(exc)
                attempt += 1
                if code not in RETRY:
                    return
            else:
                again, hint = [], 0
                for envelope, result in zip(left, response.results, strict=True):
                    code = _CODES.get(result.code, grpc.StatusCode.UNKNOWN).name
                    if result.code == 0:
                        self._accepted(result.tx_id, started)
                        continue
                    if code == "ALREADY_EXISTS":
                        continue
                    self.stats.failed[code] = self.stats.failed.get(code, 0) + 1
                    if code in RETRY:
                        again.append(envelope)
                        hint = max(hint, result.retry_after_ms)
                attempt = 0 if len(again) < len(left) else attempt + 1
                left = again
            if not left or self._stop.wait(self._delay(attempt, hint)):
                return

    def _delay(self, attempt: int, hint_ms: int) -> float:
        """The endorser's hint plus jitter (growing while refused); without a hint (an
        unavailable cluster) a steady 0.2 s, so a failover is crossed quickly."""
        return self._backoff.delay(attempt, hint_ms) if hint_ms else UNAVAILABLE_RETRY_S

    def _accepted(self, tx_id: str, started: float) -> None:
        self.stats.accepted += 1
        self.stats.tx_ids.append(tx_id)
        self.stats.latencies.append(time.perf_counter() - started)


RETRY = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
UNAVAILABLE_RETRY_S = 0.2
_CODES = {code.value[0]: code for code in grpc.StatusCode}
