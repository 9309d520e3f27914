"""EndorserService: verify, simulate with the shared rules, endorse, forward; and the
pre-sale market's options (RequestOptions, RequestOptionsBatch) and book depth (GetBook).

SubmitTransaction answers OK only once an orderer acknowledged that exact transaction
(accepted or already known). Every other outcome is a status the client can act on:
- INVALID_ARGUMENT / UNAUTHENTICATED / PERMISSION_DENIED / ALREADY_EXISTS /
  FAILED_PRECONDITION (rpc/errors.py): this endorser's own verdict on the envelope, at its
  ledger's height (ALREADY_EXISTS: the tx id is on the ledger already);
- RESOURCE_EXHAUSTED with a `retry-after-ms` trailer: admission control (admission.py: the
  network cannot commit more within the latency budget; refused before any work), or every
  orderer was full;
- UNAVAILABLE: no orderer acknowledged it, for any other reason (down, slow, a malformed
  answer, a refusal of what this endorser found valid), or forwarding failed here.
In the last two cases the client retries the same envelope: the tx id makes it idempotent.

SubmitBatch gives each envelope of a batch exactly the outcome SubmitTransaction would (one
code path, `_submit`); RequestOptionsBatch each trade request the outcome RequestOptions
would (one code path, `options`). Endorsement signatures are shared by whatever leaves for
the orderers together (the broadcaster seals each BroadcastBatch group: sealing.py), single
calls and batches alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger.orderer.v1 import orderer_pb2
from gridledger_core.ledger.checks import check_envelope
from gridledger_core.ledger.errors import TxInvalid
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.ledger.rules.market import ConditionFailed, market_open
from gridledger_core.market import ledger_view as view
from gridledger_core.rpc.authz import current_caller
from gridledger_core.rpc.errors import status_of
from gridledger_core.rpc.submit_batches import SUBMIT_BATCH_BYTES, SUBMIT_BATCH_ENVELOPES
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id
from gridledger_endorser.admission import Admission, AdmissionConfig, Admitted, Full
from gridledger_endorser.book_cache import BookCache, HeldByOptions, MemberHoldsItsShare
from gridledger_endorser.broadcaster import Answers, Broadcaster, OrdererUnavailable
from gridledger_endorser.cpu_slots import CpuSlots
from gridledger_endorser.options import DEFAULT_OPTION_TTL, BeingAnswered, DeskLimits, OptionDesk
from gridledger_endorser.sealing import MAX_GROUP, Seal, Sealer

REQUESTS = Counter("gridledger_endorser_requests", "Transactions submitted, by type and result.",
                   ["type", "result"])
ENDORSE_SECONDS = Histogram("gridledger_endorser_endorse_seconds",
                            "From request in to its checks passed, before it is endorsed "
                            "and forwarded with its broadcast group.",
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
MATCHING_SECONDS = Histogram("gridledger_endorser_matching_seconds",
                             "RequestOptions: from trade request in to signed options out.",
                             buckets=(0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01,
                                      0.025, 0.05, 0.1, 0.25))
BATCH_ENVELOPES = Histogram("gridledger_endorser_submit_batch_envelopes",
                            "Envelopes per SubmitBatch call.",
                            buckets=(1, 4, 16, 64, 128, 256, 512, 1000))
OPTIONS_BATCH_REQUESTS = Histogram("gridledger_endorser_options_batch_requests",
                                   "Trade requests per RequestOptionsBatch call.",
                                   buckets=(1, 4, 16, 64, 128, 256, 512, 1000))
log = logging.getLogger(__name__)
# SubmitBatch's own limits (whole-call INVALID_ARGUMENT above them) are core's
# SUBMIT_BATCH_ENVELOPES and SUBMIT_BATCH_BYTES (rpc/submit_batches.py, where clients split
# their calls by them): below the broadcaster's batch and the gRPC receive limit, and what
# one call checks in well under a second.

TRADE_REQUESTS = Counter("gridledger_endorser_trade_requests",
                         "Trade requests, by side and result (accepted; answered_again: the "
                         "same request sent again got its kept option; or the failed "
                         "condition or validation code).", ["side", "result"])


class EndorserServicer(endorser_pb2_grpc.EndorserServiceServicer):
    def __init__(self, ledger: Ledger, identity: SigningIdentity, broadcaster: Broadcaster,
                 books: BookCache | None = None, option_ttl: int = DEFAULT_OPTION_TTL,
                 clock: Callable[[], float] = time.time,
                 sealer: Seal | None = None, limits: DeskLimits | None = None,
                 admission: Admission | None = None,
                 cpu_slots: CpuSlots | None = None) -> None:
        self._ledger = ledger
        self._identity = identity
        self._broadcaster = broadcaster
        # What leaves for the orderers together shares one endorsement signature.
        self._sealer = sealer if sealer is not None else Sealer(identity)
        self._clock = clock
        self.books = books if books is not None else BookCache(ledger, identity.name, clock)
        self._desk = OptionDesk(ledger, self.books, identity, option_ttl, clock, limits)
        self._endorsement_overhead = endorsement_overhead(identity)
        # Off unless given (tests, tools); main.py always gives one.
        self._admission = admission if admission is not None else Admission(
            AdmissionConfig(budget_ms=0))
        # Checks and matching run a few threads at a time; waits run outside (cpu_slots.py).
        self._cpu = cpu_slots if cpu_slots is not None else CpuSlots()

    def on_commit(self, result: CommitResult) -> None:
        """The ledger follower's listener: the book cache, then admission control and the
        broadcaster's watch of acknowledgements (which must see the block's transactions
        even if the cache failed on it)."""
        try:
            self.books.on_commit(result)
        finally:
            self._admission.on_block(result.tx_ids, len(result.blocks))
            self._broadcaster.on_block(result.tx_ids)

    def SubmitTransaction(self, request: endorser_pb2.SubmitTransactionRequest,
                          context: grpc.ServicerContext
                          ) -> endorser_pb2.SubmitTransactionResponse:
        result = self._submit([request.envelope])[0]
        if result.code != grpc.StatusCode.OK:
            if result.retry_after_ms:
                context.set_trailing_metadata(retry_trailer(result.retry_after_ms))
            context.abort(result.code, result.message)
        return single_response(result)

    def SubmitBatch(self, request: endorser_pb2.SubmitBatchRequest,
                    context: grpc.ServicerContext) -> endorser_pb2.SubmitBatchResponse:
        refusal = batch_refusal(request)
        if refusal:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal)
        return batch_response(self._submit(list(request.envelopes)))

    def _submit(self, envelopes: list[envelope_pb2.SignedEnvelope]) -> list[Outcome]:
        """Admit, verify, simulate, endorse and forward; one outcome per envelope, the same
        for an envelope whether it came alone or in a batch. The same tx id twice in one
        batch is handled once and both get that outcome."""
        submission = self.admit(envelopes)
        with self._cpu.held():
            passed = self.check(submission.work, submission)
        if passed:
            self.checked(submission)
            self.record_answers(passed, self._forward(passed), submission)
        return submission.outcomes_in_order()

    # The steps of `_submit`, also taken by the asyncio server's servicer (aio_service.py).

    def admit(self, envelopes: list[envelope_pb2.SignedEnvelope]) -> Submission:
        """Size limits, repeats within the call and admission control: what is left to
        check. Refusing costs nothing of the checks."""
        submission = Submission(envelopes, time.perf_counter())
        claimed: list[tuple[int, str]] = []
        for i, envelope in enumerate(envelopes):
            refusal = self._size_refusal(envelope.ByteSize())
            if refusal is not None:
                REQUESTS.labels("unknown", "too_large").inc()
                submission.outcomes[i] = refusal
                continue
            tx_id = _claimed_tx_id(envelope)
            if tx_id and tx_id in submission.first_of:
                continue  # a repeat within the batch: takes the first one's outcome
            if tx_id:
                submission.first_of[tx_id] = i
            claimed.append((i, tx_id))
        member = member_of_caller()
        admitted = self._admission.admit((t for _, t in claimed if t), member=member)
        verdicts = iter(admitted)
        full: Full | None = None  # the call's one refusal, made when first needed
        for i, tx_id in claimed:
            verdict = next(verdicts) if tx_id else Admitted.NEW
            if verdict is Admitted.REFUSED:
                REQUESTS.labels("unknown", "admission_full").inc()
                full = full or self._admission.full_error(member)
                submission.outcomes[i] = Outcome(
                    tx_id, grpc.StatusCode.RESOURCE_EXHAUSTED, str(full),
                    retry_after_ms=full.retry_after_ms)
                continue
            submission.work.append(_Work(i, envelopes[i], tx_id,
                                         bool(tx_id) and verdict is Admitted.NEW))
        return submission

    def check(self, work: list[_Work], submission: Submission) -> list[_Work]:
        """Verify and simulate each at the ledger's height; the ones that pass (the caller
        holds a CPU slot, or is the asyncio server's loop)."""
        passed = []
        now = int(self._clock())
        signers = self._ledger.signers(now)
        for w in work:
            try:
                checked = check_envelope(w.envelope, signers)
                w.body, w.tx_id = checked.body, checked.tx_id
                self._ledger.simulate(checked, now)
            except TxInvalid as exc:
                REQUESTS.labels(w.body, exc.code_name.lower()).inc()
                submission.outcomes[w.index] = _invalid(w.tx_id, exc)
                self._release(w)
                continue
            passed.append(w)
        return passed

    @staticmethod
    def checked(submission: Submission) -> None:
        """Every check of the call is done and some passed."""
        ENDORSE_SECONDS.observe(time.perf_counter() - submission.started)

    def _forward(self, passed: list[_Work]) -> Answers:
        """Endorse checked work with its broadcast group and wait for the orderers' answers."""
        try:
            return self._broadcaster.seal_and_broadcast(_items(passed), self._sealer)
        except Exception as exc:  # OrdererUnavailable (closed): nothing acknowledged
            return _unsent(passed, exc)

    def forward_async(self, passed: list[_Work], loop: asyncio.AbstractEventLoop
                      ) -> asyncio.Future[Answers]:
        """`_forward`'s answers as a future of `loop`, which is not blocked meanwhile."""
        try:
            return self._broadcaster.seal_and_broadcast_async(_items(passed), self._sealer,
                                                              loop)
        except Exception as exc:
            future: asyncio.Future[Answers] = loop.create_future()
            future.set_result(_unsent(passed, exc))
            return future

    def record_answers(self, passed: list[_Work], answers: Answers,
                       submission: Submission) -> None:
        """What the orderers' answers mean for each client; the endorsement is the one its
        broadcast group was sealed with. No size check after signing: a group holds at most
        MAX_GROUP transactions, whose audit path `_size_refusal` already admitted against."""
        for w, (answer, endorsement) in zip(passed, answers, strict=True):
            outcome = self._answer(w, answer)
            if outcome.code == grpc.StatusCode.OK:
                assert endorsement is not None
                outcome.endorsement = endorsement
            else:
                self._release(w)
            submission.outcomes[w.index] = outcome

    def _answer(self, w: _Work, answer: object) -> Outcome:
        """What an orderer's answer (or the failure to get one) means for the client."""
        if isinstance(answer, OrdererUnavailable):
            if answer.retry_after_ms:
                REQUESTS.labels(w.body, "orderers_full").inc()
                return Outcome(w.tx_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{answer}; retry the same envelope after "
                               f"{answer.retry_after_ms} ms", retry_after_ms=answer.retry_after_ms)
            REQUESTS.labels(w.body, "orderer_unavailable").inc()
            return Outcome(w.tx_id, grpc.StatusCode.UNAVAILABLE,
                           f"{answer}; retry with the same envelope")
        if isinstance(answer, BaseException):  # not acknowledged: never OK, never a verdict
            log.error("forwarding %s failed: %r", w.tx_id, answer)
            REQUESTS.labels(w.body, "forwarding_failed").inc()
            return Outcome(w.tx_id, grpc.StatusCode.UNAVAILABLE,
                           f"forwarding to the orderers failed ({type(answer).__name__}); "
                           "retry with the same envelope")
        assert isinstance(answer, orderer_pb2.BroadcastResponse)
        if answer.tx_id != w.tx_id:  # the broadcaster's promise, kept here too
            REQUESTS.labels(w.body, "orderer_unavailable").inc()
            return Outcome(w.tx_id, grpc.StatusCode.UNAVAILABLE,
                           "an orderer acknowledged another transaction; retry with the same "
                           "envelope")
        REQUESTS.labels(w.body, "duplicate" if answer.duplicate else "accepted").inc()
        return Outcome(w.tx_id, grpc.StatusCode.OK, "")

    def _release(self, w: _Work) -> None:
        """Not acknowledged: no longer in flight (only if this call counted it: a repeat of
        an in-flight tx id, possibly a forged claim, must not free the real one's slot)."""
        if w.counted:
            self._admission.release(w.claimed)

    def _size_refusal(self, envelope_bytes: int) -> Outcome | None:
        """Refuse, before any work, an envelope whose endorsed transaction could exceed the
        genesis limit (orderers and committers refuse those)."""
        limit = self._ledger.genesis.limits.max_tx_bytes
        largest = limit - self._endorsement_overhead
        if envelope_bytes <= largest:
            return None
        return Outcome("", grpc.StatusCode.INVALID_ARGUMENT,
                       f"the envelope is {envelope_bytes} bytes; endorsed it could exceed "
                       f"the genesis limit max_tx_bytes = {limit} bytes (envelopes of at "
                       f"most {largest} bytes fit)")

    def RequestOptions(self, request: endorser_pb2.RequestOptionsRequest,
                       context: grpc.ServicerContext) -> endorser_pb2.RequestOptionsResponse:
        result = self.options(request.request, member_of_caller())
        if result.code != grpc.StatusCode.OK:
            if result.retry_after_ms:
                context.set_trailing_metadata(retry_trailer(result.retry_after_ms))
            context.abort(result.code, result.message)
        assert result.response is not None
        return result.response

    def RequestOptionsBatch(self, request: endorser_pb2.RequestOptionsBatchRequest,
                            context: grpc.ServicerContext
                            ) -> endorser_pb2.RequestOptionsBatchResponse:
        refusal = options_batch_refusal(request)
        if refusal:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal)
        member = member_of_caller()
        return options_batch_response([self.options_in_batch(r, member)
                                       for r in request.requests])

    def options_in_batch(self, envelope: envelope_pb2.SignedEnvelope,
                         member: str) -> OptionsOutcome:
        """`options` for one request of a batch: an unexpected failure (a bug, or this
        node's storage) answers that request UNKNOWN, as it fails only its own call when
        sent alone, instead of failing the batch and the options already given in it."""
        try:
            return self.options(envelope, member)
        except Exception as exc:
            log.exception("a trade request of a batch failed unexpectedly")
            return OptionsOutcome(grpc.StatusCode.UNKNOWN,
                                  f"Unexpected {type(exc)}: {exc}")  # as gRPC words it

    def options(self, envelope: envelope_pb2.SignedEnvelope, member: str) -> OptionsOutcome:
        """One trade request, from signed request in to signed option out (or the status
        that refuses it): the same whether it came alone or in a batch."""
        start = time.perf_counter()
        side = _request_side(envelope.payload)
        try:
            # An option leads to a place_order within seconds: not taken when that would be
            # refused anyway (and its hold would block others' energy for nothing).
            self._admission.check("options", member)
        except Full as exc:
            TRADE_REQUESTS.labels(side, "admission_full").inc()
            return OptionsOutcome(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                  retry_after_ms=exc.retry_after_ms)
        try:
            with self._cpu.held():
                proposal = self._desk.propose(envelope, member)
        except TxInvalid as exc:
            result = (exc.condition.value if isinstance(exc, ConditionFailed)
                      else "being_answered" if isinstance(exc, BeingAnswered)
                      else exc.code_name.lower())
            TRADE_REQUESTS.labels(side, result).inc()
            return OptionsOutcome(*status_of(exc),
                                  retry_after_ms=getattr(exc, "retry_after_ms", 0))
        except HeldByOptions as exc:
            TRADE_REQUESTS.labels(side, "held_by_options").inc()
            return OptionsOutcome(grpc.StatusCode.ABORTED, str(exc))
        except MemberHoldsItsShare as exc:
            TRADE_REQUESTS.labels(side, "member_share").inc()
            # Its options' holds end at their block: the mean block interval is the hint
            # (a member in bad standing holding nothing is told when its share may grow).
            return OptionsOutcome(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                  retry_after_ms=exc.retry_after_ms
                                  or self._admission.retry_after_ms())
        TRADE_REQUESTS.labels(side, "answered_again" if proposal.again else "accepted").inc()
        allowance = proposal.allowance
        response = endorser_pb2.RequestOptionsResponse(
            option=proposal.envelope, forecast_net_wh=allowance.forecast_net_wh,
            allowance_wh=allowance.allowance_wh, committed_wh=allowance.committed_wh)
        if not proposal.again:  # a kept answer is not a match
            MATCHING_SECONDS.observe(time.perf_counter() - start)
        return OptionsOutcome(grpc.StatusCode.OK, response=response)

    def GetBook(self, request: endorser_pb2.GetBookRequest,
                context: grpc.ServicerContext) -> endorser_pb2.GetBookResponse:
        depth, height = self.books.depth(request.slot_start, request.levels or None)
        return endorser_pb2.GetBookResponse(
            slot_start=request.slot_start, ledger_height=height,
            open=market_open(self._ledger.genesis.market, request.slot_start,
                             int(self._clock())),
            bids=[endorser_pb2.BookLevel(price=lv.price, quantity_wh=lv.quantity,
                                         orders=lv.orders) for lv in depth.bids],
            asks=[endorser_pb2.BookLevel(price=lv.price, quantity_wh=lv.quantity,
                                         orders=lv.orders) for lv in depth.asks])


@dataclass
class Outcome:
    tx_id: str
    code: grpc.StatusCode
    message: str
    endorsement: envelope_pb2.Endorsement | None = None
    retry_after_ms: int = 0


@dataclass
class OptionsOutcome:
    code: grpc.StatusCode
    message: str = ""
    response: endorser_pb2.RequestOptionsResponse | None = None  # with OK
    retry_after_ms: int = 0


def member_of_caller() -> str:
    """The member admission control charges for this call: the organisation of the caller's
    verified TLS identity ("" when no interceptor runs: tests, tools)."""
    caller = current_caller()
    return caller.org if caller is not None else ""


@dataclass
class _Work:
    index: int
    envelope: envelope_pb2.SignedEnvelope
    claimed: str  # the tx id the payload claims (admission's key)
    counted: bool  # admission counted it for this call
    tx_id: str = ""
    body: str = "unknown"

    def __post_init__(self) -> None:
        self.tx_id = self.claimed


@dataclass
class Submission:
    """One call's envelopes on their way through `admit`, `check` and `record_answers`."""

    envelopes: list[envelope_pb2.SignedEnvelope]
    started: float
    outcomes: list[Outcome | None] = field(init=False)  # one per envelope, None until known
    first_of: dict[str, int] = field(default_factory=dict)  # tx id -> its first index
    work: list[_Work] = field(default_factory=list)  # admitted, to check

    def __post_init__(self) -> None:
        self.outcomes = [None] * len(self.envelopes)

    def outcomes_in_order(self) -> list[Outcome]:
        """One per envelope; a repeat within the call gets its first occurrence's."""
        for i, envelope in enumerate(self.envelopes):
            if self.outcomes[i] is None:
                self.outcomes[i] = self.outcomes[self.first_of[_claimed_tx_id(envelope)]]
        return [o for o in self.outcomes if o is not None]


def _items(passed: list[_Work]) -> list[tuple[envelope_pb2.SignedEnvelope, str]]:
    return [(w.envelope, w.tx_id) for w in passed]


def _unsent(passed: list[_Work], why: Exception) -> Answers:
    """Every item's answer when the broadcaster took none of them."""
    return [(why, None)] * len(passed)


def retry_trailer(retry_after_ms: int) -> tuple[tuple[str, str], ...]:
    return (("retry-after-ms", str(retry_after_ms)),)


def single_response(result: Outcome) -> endorser_pb2.SubmitTransactionResponse:
    return endorser_pb2.SubmitTransactionResponse(tx_id=result.tx_id,
                                                  endorsement=result.endorsement)


def batch_refusal(request: endorser_pb2.SubmitBatchRequest) -> str:
    """Why the whole batch is refused (INVALID_ARGUMENT), or ""."""
    return _over_batch_limits(len(request.envelopes), request.ByteSize(), "envelopes")


def options_batch_refusal(request: endorser_pb2.RequestOptionsBatchRequest) -> str:
    """Why the whole batch of trade requests is refused (INVALID_ARGUMENT), or "": the
    same limits as SubmitBatch's."""
    return _over_batch_limits(len(request.requests), request.ByteSize(), "requests")


def _over_batch_limits(count: int, size: int, what: str) -> str:
    if count > SUBMIT_BATCH_ENVELOPES or size > SUBMIT_BATCH_BYTES:
        return (f"the batch has {count} {what}, {size} bytes; at most "
                f"{SUBMIT_BATCH_ENVELOPES} {what} and {SUBMIT_BATCH_BYTES} bytes")
    return ""


def batch_response(results: list[Outcome]) -> endorser_pb2.SubmitBatchResponse:
    BATCH_ENVELOPES.observe(len(results))
    return endorser_pb2.SubmitBatchResponse(results=[
        endorser_pb2.SubmitResult(tx_id=r.tx_id, code=r.code.value[0], message=r.message,
                                  endorsement=r.endorsement, retry_after_ms=r.retry_after_ms)
        for r in results])


def options_batch_response(results: list[OptionsOutcome]
                           ) -> endorser_pb2.RequestOptionsBatchResponse:
    OPTIONS_BATCH_REQUESTS.observe(len(results))
    return endorser_pb2.RequestOptionsBatchResponse(results=[
        endorser_pb2.OptionsResult(code=r.code.value[0], message=r.message, options=r.response,
                                   retry_after_ms=r.retry_after_ms)
        for r in results])


def _invalid(tx_id: str, error: TxInvalid) -> Outcome:
    """The status and message abort_invalid gives, as an outcome."""
    return Outcome(tx_id, *status_of(error))


def _claimed_tx_id(envelope: envelope_pb2.SignedEnvelope) -> str:
    """The tx id the payload claims (unverified; "" when it does not decode: the checks
    then give their verdict)."""
    try:
        return envelope_tx_id(envelope)
    except DecodeError:
        return ""


def endorsement_overhead(identity: SigningIdentity,
                         max_batch: int = MAX_GROUP) -> int:
    """The most bytes wrapping an envelope into an EndorsedTransaction with one endorsement
    by `identity` can add: the largest batch proof (index, count, audit path of a batch of
    `max_batch`) plus the envelope field's own tag and length."""
    depth = max(1, (max_batch - 1).bit_length())
    largest = envelope_pb2.Endorsement(
        signature=bytes(64), endorser_certificate=identity.certificate,
        leaf_index=max_batch - 1, leaf_count=max_batch, audit_path=[bytes(32)] * depth)
    wrapper = envelope_pb2.EndorsedTransaction(endorsements=[largest]).ByteSize()
    return wrapper + 1 + 5  # the envelope field: tag, length (a varint, at most 5 bytes)


def _request_side(payload: bytes) -> str:
    """The side a request claims, for the metrics label only (before anything is verified)."""
    try:
        return view.side_name(market_pb2.TradeRequest.FromString(payload).terms.side)
    except DecodeError:
        return "unknown"
