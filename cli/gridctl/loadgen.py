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
    """Submits prepared envelopes at `rate` per second from a background thread."""

    def __init__(self, endorser: str, tls: TlsFiles,
                 envelopes: Sequence[envelope_pb2.SignedEnvelope], rate: float) -> None:
        self._channel = secure_channel(endorser, tls)
        self._stub = endorser_pb2_grpc.EndorserServiceStub(self._channel)
        self._envelopes = list(envelopes)
        self._rate = rate
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

    def _run(self) -> None:
        interval = 1.0 / self._rate
        next_at = time.monotonic()
        for envelope in self._envelopes:
            if self._stop.is_set():
                return
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at += interval
            self._submit(envelope)

    def _submit(self, envelope: envelope_pb2.SignedEnvelope) -> None:
        started = time.perf_counter()
        for _ in range(50):  # an unavailable cluster is retried with the same envelope
            try:
                response = self._stub.SubmitTransaction(
                    endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=10)
                self.stats.accepted += 1
                self.stats.tx_ids.append(response.tx_id)
                self.stats.latencies.append(time.perf_counter() - started)
                return
            except grpc.RpcError as exc:
                code = exc.code().name  # type: ignore[attr-defined]
                if code == "ALREADY_EXISTS":
                    return
                self.stats.failed[code] = self.stats.failed.get(code, 0) + 1
                if code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED") or \
                        self._stop.wait(0.2):
                    return
