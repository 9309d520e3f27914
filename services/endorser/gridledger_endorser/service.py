"""EndorserService: verify, simulate with the shared rules, endorse, forward; and the
pre-sale market's options (RequestOptions) and book depth (GetBook).

SubmitTransaction answers OK only once an orderer acknowledged that exact transaction
(accepted or already known). Every other outcome is a status the client can act on:
- INVALID_ARGUMENT / UNAUTHENTICATED / PERMISSION_DENIED / ALREADY_EXISTS /
  FAILED_PRECONDITION (rpc/errors.py): this endorser's own verdict on the envelope, at its
  replica's height (ALREADY_EXISTS: the tx id is on the ledger already);
- RESOURCE_EXHAUSTED with a `retry-after-ms` trailer: every orderer was full;
- UNAVAILABLE: no orderer acknowledged it, for any other reason (down, slow, a malformed
  answer, a refusal of what this endorser found valid), or forwarding failed here.
In the last two cases the client retries the same envelope: the tx id makes it idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.ledger.checks import check_envelope
from gridledger_core.ledger.errors import TxInvalid
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.rules.market import ConditionFailed, market_open
from gridledger_core.market import ledger_view as view
from gridledger_core.rpc.errors import abort_invalid
from gridledger_core.signing_identity import SigningIdentity
from gridledger_endorser.batch_signer import DEFAULT_MAX_BATCH, BatchSigner
from gridledger_endorser.book_cache import BookCache, HeldByOptions
from gridledger_endorser.broadcaster import Broadcaster, OrdererUnavailable
from gridledger_endorser.options import DEFAULT_OPTION_TTL, DeskLimits, OptionDesk

REQUESTS = Counter("gridledger_endorser_requests", "Transactions submitted, by type and result.",
                   ["type", "result"])
ENDORSE_SECONDS = Histogram("gridledger_endorser_endorse_seconds",
                            "From request in to endorsement out, before forwarding.",
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
MATCHING_SECONDS = Histogram("gridledger_endorser_matching_seconds",
                             "RequestOptions: from trade request in to signed options out.",
                             buckets=(0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01,
                                      0.025, 0.05, 0.1, 0.25))
log = logging.getLogger(__name__)

TRADE_REQUESTS = Counter("gridledger_endorser_trade_requests",
                         "Trade requests, by side and result (accepted, or the failed "
                         "condition or validation code).", ["side", "result"])


class EndorserServicer(endorser_pb2_grpc.EndorserServiceServicer):
    def __init__(self, ledger: Ledger, identity: SigningIdentity, broadcaster: Broadcaster,
                 books: BookCache | None = None, option_ttl: int = DEFAULT_OPTION_TTL,
                 clock: Callable[[], float] = time.time,
                 signer: BatchSigner | None = None, limits: DeskLimits | None = None) -> None:
        self._ledger = ledger
        self._identity = identity
        self._broadcaster = broadcaster
        # Concurrent submissions share one endorsement signature per batch.
        self._signer = signer if signer is not None else BatchSigner(identity)
        self._clock = clock
        self.books = books if books is not None else BookCache(ledger, clock)
        self._desk = OptionDesk(ledger, self.books, identity, option_ttl, clock, limits)
        self._endorsement_overhead = endorsement_overhead(identity)

    def SubmitTransaction(self, request: endorser_pb2.SubmitTransactionRequest,
                          context: grpc.ServicerContext
                          ) -> endorser_pb2.SubmitTransactionResponse:
        start = time.perf_counter()
        body = "unknown"
        self._check_size(request.envelope.ByteSize(), context)
        try:
            now = int(self._clock())
            checked = check_envelope(request.envelope, self._ledger.signers(now))
            body = checked.body
            self._ledger.simulate(checked, now)
        except TxInvalid as exc:
            REQUESTS.labels(body, exc.code_name.lower()).inc()
            abort_invalid(context, exc)
        endorsement = self._signer.endorse(request.envelope.payload)
        ENDORSE_SECONDS.observe(time.perf_counter() - start)
        endorsed = envelope_pb2.EndorsedTransaction(envelope=request.envelope,
                                                    endorsements=[endorsement])
        raw = endorsed.SerializeToString()
        if len(raw) > self._ledger.genesis.limits.max_tx_bytes:  # a signer with bigger batches
            REQUESTS.labels(body, "too_large").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the endorsed transaction is {len(raw)} bytes; the genesis limit "
                          f"max_tx_bytes is {self._ledger.genesis.limits.max_tx_bytes}")
        try:
            acknowledged = self._broadcaster.broadcast(raw, checked.tx_id)
        except OrdererUnavailable as exc:
            if exc.retry_after_ms:
                REQUESTS.labels(body, "orderers_full").inc()
                context.set_trailing_metadata((("retry-after-ms", str(exc.retry_after_ms)),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{exc}; retry the same envelope after {exc.retry_after_ms} ms")
            REQUESTS.labels(body, "orderer_unavailable").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry with the same envelope")
        except Exception as exc:  # not acknowledged: never OK, and never a verdict on the tx
            log.exception("forwarding %s failed", checked.tx_id)
            REQUESTS.labels(body, "forwarding_failed").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"forwarding to the orderers failed ({type(exc).__name__}); "
                          "retry with the same envelope")
        if acknowledged.tx_id != checked.tx_id:  # the broadcaster's promise, kept here too
            REQUESTS.labels(body, "orderer_unavailable").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "an orderer acknowledged another transaction; retry with the same "
                          "envelope")
        REQUESTS.labels(body, "duplicate" if acknowledged.duplicate else "accepted").inc()
        return endorser_pb2.SubmitTransactionResponse(tx_id=checked.tx_id,
                                                      endorsement=endorsement)

    def _check_size(self, envelope_bytes: int, context: grpc.ServicerContext) -> None:
        """Refuse, before any work, an envelope whose endorsed transaction could exceed the
        genesis limit (orderers and committers refuse those)."""
        limit = self._ledger.genesis.limits.max_tx_bytes
        largest = limit - self._endorsement_overhead
        if envelope_bytes > largest:
            REQUESTS.labels("unknown", "too_large").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the envelope is {envelope_bytes} bytes; endorsed it could exceed "
                          f"the genesis limit max_tx_bytes = {limit} bytes (envelopes of at "
                          f"most {largest} bytes fit)")

    def RequestOptions(self, request: endorser_pb2.RequestOptionsRequest,
                       context: grpc.ServicerContext) -> endorser_pb2.RequestOptionsResponse:
        start = time.perf_counter()
        side = "unknown"
        try:
            side = _request_side(request.request.payload)
            proposal = self._desk.propose(request.request)
        except TxInvalid as exc:
            result = (exc.condition.value if isinstance(exc, ConditionFailed)
                      else exc.code_name.lower())
            TRADE_REQUESTS.labels(side, result).inc()
            abort_invalid(context, exc)
        except HeldByOptions as exc:
            TRADE_REQUESTS.labels(side, "held_by_options").inc()
            context.abort(grpc.StatusCode.ABORTED, str(exc))
        TRADE_REQUESTS.labels(side, "accepted").inc()
        allowance = proposal.allowance
        response = endorser_pb2.RequestOptionsResponse(
            option=proposal.envelope, forecast_net_wh=allowance.forecast_net_wh,
            allowance_wh=allowance.allowance_wh, committed_wh=allowance.committed_wh)
        MATCHING_SECONDS.observe(time.perf_counter() - start)
        return response

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


def endorsement_overhead(identity: SigningIdentity,
                         max_batch: int = DEFAULT_MAX_BATCH) -> int:
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
