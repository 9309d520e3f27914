"""OrdererService (Broadcast, Deliver) for clients and ConsensusService for peer orderers."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import Counter

from gridledger.orderer.v1 import (
    consensus_pb2,
    consensus_pb2_grpc,
    orderer_pb2,
    orderer_pb2_grpc,
)
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import TxInvalid
from gridledger_core.rpc.errors import STATUS_OF_CODE, abort_invalid
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_orderer.node import OrdererNode
from gridledger_orderer.store import OrdererStore

BROADCASTS = Counter("gridledger_orderer_broadcasts",
                     "Broadcast transactions (unary or in a batch), by result.", ["result"])
RETRY_AFTER_MS = "50"
# Per BroadcastBatch call; the bytes limit stays well below the servers' 64 MiB message limit.
MAX_BATCH_TXS = 2_000
MAX_BATCH_BYTES = 8 << 20


class OrdererServicer(orderer_pb2_grpc.OrdererServiceServicer):
    def __init__(self, node: OrdererNode, store: OrdererStore,
                 notifier: HeightNotifier) -> None:
        self._node = node
        self._store = store
        self._notifier = notifier

    def _judge(self, raw: bytes, tx_id: bytes, full: bool,
               earlier: set[bytes]) -> tuple[str, TxInvalid | None]:
        """Broadcast's verdict on one transaction (counted): "duplicate" (on the ledger, in
        the pool, or earlier in the same call), "rejected" (with why), "resource_exhausted"
        when `full`, else "accepted"."""
        if tx_id in earlier or self._node.replica.knows_tx(tx_id) or \
                self._store.has_tx(tx_id.decode()):
            verdict, refused = "duplicate", None
        else:
            refused = self._node.admit(raw)
            verdict = "rejected" if refused is not None else \
                "resource_exhausted" if full else "accepted"
        BROADCASTS.labels(verdict).inc()
        return verdict, refused

    def Broadcast(self, request: orderer_pb2.BroadcastRequest,
                  context: grpc.ServicerContext) -> orderer_pb2.BroadcastResponse:
        raw = request.endorsed_transaction
        tx_id = self._node.tx_id(raw)
        if not tx_id:
            BROADCASTS.labels("malformed").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "endorsed_transaction is not a decodable EndorsedTransaction")
        verdict, refused = self._judge(raw, tx_id, self._node.replica.pool_full, set())
        if verdict == "duplicate":
            return orderer_pb2.BroadcastResponse(tx_id=tx_id.decode(), duplicate=True)
        if refused is not None:
            abort_invalid(context, refused)
        if verdict == "resource_exhausted":
            context.set_trailing_metadata((("retry-after-ms", RETRY_AFTER_MS),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"ordering queue is full; retry after {RETRY_AFTER_MS} ms")
        self._node.submit_transactions([raw])
        return orderer_pb2.BroadcastResponse(tx_id=tx_id.decode())

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       context: grpc.ServicerContext) -> orderer_pb2.BroadcastBatchResponse:
        """Broadcast's checks per transaction, in request order. The request is checked whole
        before anything is admitted, so a refused call leaves nothing behind."""
        raws = list(request.endorsed_transactions)
        if not raws:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "endorsed_transactions is empty")
        if len(raws) > MAX_BATCH_TXS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"endorsed_transactions holds {len(raws)} transactions; at most "
                          f"{MAX_BATCH_TXS} per call; nothing was admitted")
        size = sum(len(raw) for raw in raws)
        if size > MAX_BATCH_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"endorsed_transactions holds {size} bytes; at most "
                          f"{MAX_BATCH_BYTES} per call; nothing was admitted")
        ids = [self._node.tx_id(raw) for raw in raws]
        for index, tx_id in enumerate(ids):
            if not tx_id:
                BROADCASTS.labels("malformed").inc()
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"endorsed_transactions[{index}] is not a decodable "
                              "EndorsedTransaction with a tx id; nothing was admitted")
        replica = self._node.replica
        # Room is checked once for the batch, like Broadcast checks `pool_full` per call.
        room = replica.pool.capacity - replica.pending_transactions
        results: list[orderer_pb2.BroadcastResult] = []
        accepted: list[bytes] = []
        in_batch: set[bytes] = set()
        for raw, tx_id in zip(raws, ids, strict=True):
            result = orderer_pb2.BroadcastResult(tx_id=tx_id.decode())
            results.append(result)
            verdict, refused = self._judge(raw, tx_id, room <= 0, in_batch)
            if verdict == "duplicate":
                result.duplicate = True
            elif refused is not None:
                status = STATUS_OF_CODE.get(refused.code, grpc.StatusCode.INVALID_ARGUMENT)
                result.code = status.value[0]
                result.message = f"{refused.code_name}: {refused.message}"
            elif verdict == "resource_exhausted":
                result.code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                result.message = f"ordering queue is full; retry after {RETRY_AFTER_MS} ms"
                result.retry_after_ms = int(RETRY_AFTER_MS)
            else:
                room -= 1
                in_batch.add(tx_id)
                accepted.append(raw)
        if accepted:
            self._node.submit_transactions(accepted)
        return orderer_pb2.BroadcastBatchResponse(results=results)

    def Deliver(self, request: orderer_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[orderer_pb2.DeliverResponse]:
        number = request.start_number
        while context.is_active():
            if number >= self._store.height:
                if not request.follow:
                    return
                if not self._notifier.wait_for_height(number + 1, 1.0):
                    return
                continue
            block = self._store.block(number)
            assert block is not None
            yield orderer_pb2.DeliverResponse(block=block)
            number += 1

    def ListEvidence(self, request: orderer_pb2.ListEvidenceRequest,
                     context: grpc.ServicerContext) -> orderer_pb2.ListEvidenceResponse:
        """Equivocation evidence this orderer detected, newest first."""
        limit = min(request.limit or 100, 1_000)
        return orderer_pb2.ListEvidenceResponse(evidence=self._store.evidence(limit))


class ConsensusServicer(consensus_pb2_grpc.ConsensusServiceServicer):
    """Receives a peer's message stream. The sender is the orderer named by the peer's TLS
    certificate, which must belong to that orderer's organisation in the genesis file."""

    def __init__(self, node: OrdererNode, genesis: Genesis) -> None:
        self._node = node
        self._orgs = {o.id: o.org for o in genesis.orderers}

    def _peer(self, context: grpc.ServicerContext) -> str | None:
        pem = context.auth_context().get("x509_pem_cert")
        if not pem:
            return None
        cert = x509.load_pem_x509_certificate(pem[0])
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if len(names) != 1 or len(orgs) != 1:
            return None
        name, org = str(names[0].value), str(orgs[0].value)
        return name if self._orgs.get(name) == org else None

    def Exchange(self, request_iterator: Iterator[consensus_pb2.ExchangeRequest],
                 context: grpc.ServicerContext) -> consensus_pb2.ExchangeResponse:
        sender = self._peer(context)
        if sender is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "only the consortium's orderers may exchange consensus messages")
        for request in request_iterator:
            self._node.receive(sender, request.message)
        return consensus_pb2.ExchangeResponse()
