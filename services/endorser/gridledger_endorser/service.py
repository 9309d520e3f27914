"""EndorserService: verify, simulate with the shared rules, endorse, forward."""

from __future__ import annotations

import time

import grpc
from prometheus_client import Counter, Histogram

from gridledger.common.v1 import envelope_pb2
from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.ledger.checks import check_envelope
from gridledger_core.ledger.errors import TxInvalid
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.rpc.errors import abort_invalid
from gridledger_core.signing_identity import SigningIdentity
from gridledger_endorser.broadcaster import Broadcaster, OrdererUnavailable

REQUESTS = Counter("gridledger_endorser_requests", "Transactions submitted, by type and result.",
                   ["type", "result"])
ENDORSE_SECONDS = Histogram("gridledger_endorser_endorse_seconds",
                            "From request in to endorsement out, before forwarding.",
                            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))


class EndorserServicer(endorser_pb2_grpc.EndorserServiceServicer):
    def __init__(self, ledger: Ledger, identity: SigningIdentity, broadcaster: Broadcaster) -> None:
        self._ledger = ledger
        self._identity = identity
        self._broadcaster = broadcaster

    def SubmitTransaction(self, request: endorser_pb2.SubmitTransactionRequest,
                          context: grpc.ServicerContext
                          ) -> endorser_pb2.SubmitTransactionResponse:
        start = time.perf_counter()
        body = "unknown"
        try:
            checked = check_envelope(request.envelope, self._ledger.genesis.membership)
            body = checked.body
            self._ledger.simulate(checked, int(time.time()))
        except TxInvalid as exc:
            REQUESTS.labels(body, exc.code_name.lower()).inc()
            abort_invalid(context, exc)
        endorsement = self._identity.endorse(request.envelope)
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
