"""Sending the outbox to the endorser and keeping every reading until it is seen committed.

Due items go in SubmitBatch calls (one result per envelope, the same as SubmitTransaction's;
an endorser without SubmitBatch gets one SubmitTransaction each, in order).

The endorser's OK means an orderer acknowledged the transaction, not that it is in a block:
so an item leaves the outbox only when a committer shows it committed VALID. Per item:

- not sent yet, or sent `resubmit_after` seconds ago and still not committed -> submit the
  SAME envelope (its tx id makes this idempotent);
- OK or ALREADY_EXISTS (the ledger already has the tx id) -> submitted: await the commit;
- RESOURCE_EXHAUSTED (the endorser's admission control, or full orderers) -> keep it, send
  nothing until the retry hint plus jitter has passed (backoff.py), longer while it repeats;
- UNAVAILABLE / DEADLINE_EXCEEDED, or any status that is not a verdict on the envelope ->
  keep it, back off, retry in order;
- a definite verdict, INVALID_ARGUMENT / PERMISSION_DENIED / UNAUTHENTICATED /
  FAILED_PRECONDITION -> dead letter with the reason (it will never become valid), except
  the ledger's `reading_not_ended` on a reading that ended less than `FRESH_SECONDS` ago by
  this clock: the one reading verdict a clock difference can cause, so it is retried. Any
  other verdict on a fresh reading (say its submission deadline passed: block time only
  grows) is dead-lettered at once, so it never holds back the readings queued behind it;
- committed VALID -> removed; committed with any other code -> dead letter, with the block
  number, code and message.

Without a committer (`confirm=None`) the agent cannot see commits: an item then leaves the
outbox on the endorser's OK, i.e. it is as durable as the orderers' acknowledgement, and a
reading lost by the ordering service is not sent again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Gauge

from gridledger.common.v1 import envelope_pb2, transaction_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.ledger.errors import Code, code_name
from gridledger_core.ledger.rules.readings import READING_NOT_ENDED
from gridledger_core.rpc.backoff import Backoff, retry_after_ms
from gridledger_core.rpc.submit_batches import submit_batches
from gridledger_core.signing_identity import envelope_tx_id
from gridledger_meter_agent.commit_watch import CommitConfirmer
from gridledger_meter_agent.outbox import Outbox

log = logging.getLogger(__name__)

SENT = Counter("gridledger_meter_readings_sent",
               "Submissions the endorser acknowledged (resubmissions included).")
COMMITTED = Counter("gridledger_meter_readings_committed",
                    "Readings seen committed VALID and removed from the outbox.")
RESUBMITTED = Counter("gridledger_meter_readings_resubmitted",
                      "Acknowledged readings sent again because no commit was seen in time.")
REFUSED = Counter("gridledger_meter_readings_refused",
                  "Readings dead-lettered, by gRPC status or committed validation code.",
                  ["status"])
BUFFERED = Gauge("gridledger_meter_readings_buffered",
                 "Readings in the outbox (not yet sent, or awaiting their commit).")
THROTTLED = Counter("gridledger_meter_readings_throttled",
                    "Rounds the endorser refused RESOURCE_EXHAUSTED (admission control): "
                    "sending paused for its retry hint plus jitter.")
AWAITING = Gauge("gridledger_meter_readings_awaiting_commit",
                 "Readings the endorser acknowledged that are not yet seen committed.")

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}
SUBMITTED = {grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS}
DEFINITE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION}
FRESH_SECONDS = 300
DEFAULT_BATCH_SIZE = 128  # envelopes per SubmitBatch (the endorser takes up to 1,000)
_CODES = {code.value[0]: code for code in grpc.StatusCode}
DEFAULT_RESUBMIT_AFTER = 30.0
WINDOW = 256  # oldest items considered per round


@dataclass
class _Sent:
    tx_id: str
    at: float  # when the endorser last acknowledged it (monotonic)


class OutboxSender:
    def __init__(self, outbox: Outbox, stub: endorser_pb2_grpc.EndorserServiceStub,
                 confirm: CommitConfirmer | None = None, timeout: float = 10.0,
                 resubmit_after: float = DEFAULT_RESUBMIT_AFTER,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 batch_size: int = DEFAULT_BATCH_SIZE, backoff: Backoff | None = None) -> None:
        self._outbox = outbox
        self._stub = stub
        self._confirm = confirm
        self._timeout = timeout
        self._resubmit_after = resubmit_after
        self._clock = clock
        self._wall_clock = wall_clock
        # Acknowledged and awaiting the commit. Not persisted: after a restart everything
        # queued is simply sent again (same envelopes, deduplicated by tx id).
        self._sent: dict[int, _Sent] = {}
        self.sent = 0
        self.wake = threading.Event()
        self._batch_size = max(1, batch_size)
        self._use_batch = True  # until the endorser answers UNIMPLEMENTED
        self._backoff = backoff if backoff is not None else Backoff()
        self._not_before = 0.0  # (clock) no sending before this: admission control's hint
        self._refusals = 0  # consecutive rounds refused RESOURCE_EXHAUSTED

    @property
    def awaiting(self) -> int:
        return len(self._sent)

    def drain(self, stop: threading.Event, batch: int = WINDOW) -> bool:
        """One round over the oldest `batch` items: send what is due (in SubmitBatch calls
        of at most `batch_size`), then look for commits. False when the endorser is
        unreachable (the caller backs off). After a RESOURCE_EXHAUSTED (the endorser's
        admission control) nothing is sent until its retry hint, plus jitter, has passed."""
        items = self._outbox.peek(batch)
        due: list[tuple[int, bytes]] = []
        for seq, payload in items:
            sent = self._sent.get(seq)
            if sent is not None and self._clock() - sent.at < self._resubmit_after:
                continue
            if sent is not None:
                RESUBMITTED.inc()
                log.info("reading %d (%s) not seen committed after %.0f s; sending it again",
                         seq, sent.tx_id, self._resubmit_after)
            due.append((seq, payload))
        reachable = True
        if due and self._clock() >= self._not_before:
            reachable = self._send(due, stop)
        if self._confirm is not None and self._sent:
            self._look_for_commits()
        BUFFERED.set(self._outbox.pending())
        AWAITING.set(len(self._sent))
        return reachable

    def _send(self, due: list[tuple[int, bytes]], stop: threading.Event) -> bool:
        for run in submit_batches(due, lambda item: len(item[1]), max_count=self._batch_size):
            if stop.is_set():
                return True
            chunk = [(seq, envelope_pb2.SignedEnvelope.FromString(payload))
                     for seq, payload in run]
            results = self._submit(chunk)
            verdict = "sent"
            hint_ms = 0
            progressed = False
            # The one-by-one fallback stops at the first failure: fewer results, rest untried.
            for (seq, envelope), (code, details, hint) in zip(chunk, results, strict=False):
                outcome = self._apply(seq, envelope, code, details)
                progressed |= outcome == "sent"
                if outcome == "exhausted":
                    hint_ms = max(hint_ms, hint)
                    verdict = "exhausted"
                elif outcome == "transient" and verdict == "sent":
                    verdict = "transient"
                    log.info("endorser: %s: %s; %d readings buffered", code.name, details,
                             self._outbox.pending())
            if verdict == "exhausted":
                if progressed:
                    self._refusals = 0  # some got in: wait the hint, do not grow the backoff
                self._exhausted(hint_ms)
                return True  # reachable: it said when to come back
            if verdict == "transient":
                return False
            self._refusals = 0
        return True

    def _submit(self, chunk: list[tuple[int, envelope_pb2.SignedEnvelope]]
                ) -> list[tuple[grpc.StatusCode, str, int]]:
        """(status, details, retry hint ms) per envelope: one SubmitBatch, or one
        SubmitTransaction each for an endorser without SubmitBatch."""
        if self._use_batch:
            request = endorser_pb2.SubmitBatchRequest(envelopes=[e for _, e in chunk])
            try:
                response = self._stub.SubmitBatch(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code != grpc.StatusCode.UNIMPLEMENTED:
                    return [(code, exc.details(), retry_after_ms(exc))] * len(chunk)  # type: ignore[attr-defined]
                log.info("the endorser has no SubmitBatch; submitting one by one")
                self._use_batch = False
            else:
                if len(response.results) == len(chunk):
                    return [(_CODES.get(r.code, grpc.StatusCode.UNKNOWN), r.message,
                             r.retry_after_ms) for r in response.results]
                return [(grpc.StatusCode.UNKNOWN, f"answered {len(response.results)} results "
                         f"for {len(chunk)} envelopes", 0)] * len(chunk)
        results: list[tuple[grpc.StatusCode, str, int]] = []
        for _, envelope in chunk:
            try:
                self._stub.SubmitTransaction(
                    endorser_pb2.SubmitTransactionRequest(envelope=envelope),
                    timeout=self._timeout)
                results.append((grpc.StatusCode.OK, "", 0))
            except grpc.RpcError as exc:
                results.append((exc.code(), exc.details(), retry_after_ms(exc)))  # type: ignore[attr-defined]
                break  # in order: the rest waits for the next round
        return results

    def _apply(self, seq: int, envelope: envelope_pb2.SignedEnvelope, code: grpc.StatusCode,
               details: str) -> str:
        """Act on one envelope's status: "sent", "dead", "exhausted" or "transient"."""
        if code in SUBMITTED:
            SENT.inc()
            self.sent += 1
            if self._confirm is None:  # nothing to confirm with: the endorser's OK must do
                self._outbox.remove(seq)
            else:
                self._sent[seq] = _Sent(envelope_tx_id(envelope), self._clock())
            return "sent"
        if code in DEFINITE and not self._clock_difference(envelope, details):
            self._dead_letter(seq, code.name, f"{code.name}: {details}")
            return "dead"
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return "exhausted"
        return "transient"

    def _exhausted(self, hint_ms: int) -> None:
        """Refused by admission control: wait the hint plus jitter, longer if it repeats."""
        delay = self._backoff.delay(self._refusals, hint_ms)
        self._not_before = max(self._not_before, self._clock() + delay)
        self._refusals += 1
        THROTTLED.inc()

    def _look_for_commits(self) -> None:
        assert self._confirm is not None
        try:
            found = self._confirm.committed([s.tx_id for s in self._sent.values()])
        except grpc.RpcError as exc:  # the committer is away: ask again next round
            log.info("committer: %s; %d readings await their commit",
                     exc.code().name, len(self._sent))  # type: ignore[attr-defined]
            return
        for seq, sent in list(self._sent.items()):
            outcome = found.get(sent.tx_id)
            if outcome is None:
                continue
            del self._sent[seq]
            if outcome.code == Code.TX_VALIDATION_CODE_VALID:
                self._outbox.remove(seq)
                COMMITTED.inc()
            else:
                name = code_name(outcome.code)
                self._dead_letter(seq, name, f"committed in block {outcome.block_number} as "
                                             f"{name}: {outcome.message}")

    def _dead_letter(self, seq: int, label: str, reason: str) -> None:
        REFUSED.labels(label).inc()
        self._sent.pop(seq, None)
        self._outbox.dead_letter(seq, reason)
        log.error("reading %d refused for good: %s", seq, reason)

    def _clock_difference(self, envelope: envelope_pb2.SignedEnvelope, details: str) -> bool:
        """The ledger says the reading's interval has not ended, and by this clock it ended
        less than FRESH_SECONDS ago: the clocks differ, the reading is retried."""
        return f"{READING_NOT_ENDED}:" in details and self._fresh(envelope)

    def _fresh(self, envelope: envelope_pb2.SignedEnvelope) -> bool:
        """A reading whose interval ended less than FRESH_SECONDS ago by this clock."""
        try:
            tx = transaction_pb2.Transaction.FromString(envelope.payload)
        except DecodeError:
            return False
        if not tx.HasField("meter_reading"):
            return False
        end = tx.meter_reading.interval_start + tx.meter_reading.interval_seconds
        return end > self._wall_clock() - FRESH_SECONDS
