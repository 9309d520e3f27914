"""Draining the outbox to the endorser, oldest first, acknowledging only what the network took.

Outcomes per envelope:
- accepted, or ALREADY_EXISTS (the ledger has this tx id: an earlier send got through) -> ack;
- UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED -> keep it, back off, retry in order;
- any other status is a permanent refusal of this exact envelope (it will never become
  valid): it is moved to the dead-letter list with the reason, counted, logged, and acked,
  so one bad reading cannot block the ones behind it.
"""

from __future__ import annotations

import logging
import threading

import grpc
from prometheus_client import Counter, Gauge

from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_meter_agent.outbox import Outbox

log = logging.getLogger(__name__)

SENT = Counter("gridledger_meter_readings_sent", "Envelopes the endorser accepted.")
REFUSED = Counter("gridledger_meter_readings_refused",
                  "Envelopes refused for good, by gRPC status.", ["status"])
BUFFERED = Gauge("gridledger_meter_readings_buffered", "Envelopes waiting in the outbox.")

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}


class OutboxSender:
    def __init__(self, outbox: Outbox, stub: endorser_pb2_grpc.EndorserServiceStub,
                 timeout: float = 10.0) -> None:
        self._outbox = outbox
        self._stub = stub
        self._timeout = timeout
        self.sent = 0
        self.wake = threading.Event()

    def drain(self, stop: threading.Event, batch: int = 64) -> bool:
        """Send until the outbox is empty (True) or the network fails (False)."""
        while not stop.is_set():
            items = self._outbox.peek(batch)
            BUFFERED.set(self._outbox.pending())
            if not items:
                return True
            for seq, payload in items:
                if not self._send_one(seq, payload):
                    return False
        return True

    def _send_one(self, seq: int, payload: bytes) -> bool:
        envelope = envelope_pb2.SignedEnvelope.FromString(payload)
        try:
            self._stub.SubmitTransaction(
                endorser_pb2.SubmitTransactionRequest(envelope=envelope), timeout=self._timeout)
            SENT.inc()
            self.sent += 1
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code in TRANSIENT:
                log.info("endorser unavailable (%s); %d readings buffered", code.name,
                         self._outbox.pending())
                return False
            if code != grpc.StatusCode.ALREADY_EXISTS:
                REFUSED.labels(code.name).inc()
                self._outbox.dead_letter(seq, f"{code.name}: {exc.details()}")  # type: ignore[attr-defined]
                log.error("reading %d refused for good: %s: %s", seq, code.name,
                          exc.details())  # type: ignore[attr-defined]
        self._outbox.ack(seq)
        return True
