"""EndorserService: verify, simulate with the shared rules, endorse, forward; and the
pre-sale market's options (RequestOptions) and book depth (GetBook)."""

from __future__ import annotations

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
from gridledger_endorser.batch_signer import BatchSigner
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

    def SubmitTransaction(self, request: endorser_pb2.SubmitTransactionRequest,
                          context: grpc.ServicerContext
                          ) -> endorser_pb2.SubmitTransactionResponse:
        start = time.perf_counter()
        body = "unknown"
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
        try:
            self._broadcaster.broadcast(endorsed.SerializeToString())
        except OrdererUnavailable as exc:
            REQUESTS.labels(body, "orderer_unavailable").inc()
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry with the same envelope")
        except grpc.RpcError as exc:
            REQUESTS.labels(body, "orderer_refused").inc()
            context.abort(exc.code(), f"orderer refused: {exc.details()}")  # type: ignore[attr-defined]
        REQUESTS.labels(body, "accepted").inc()
        return endorser_pb2.SubmitTransactionResponse(tx_id=checked.tx_id,
                                                      endorsement=endorsement)

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


def _request_side(payload: bytes) -> str:
    """The side a request claims, for the metrics label only (before anything is verified)."""
    try:
        return view.side_name(market_pb2.TradeRequest.FromString(payload).terms.side)
    except DecodeError:
        return "unknown"
