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
from gridledger_core.rpc.errors import abort_invalid
from gridledger_core.rpc.height_notifier import HeightNotifier
from gridledger_orderer.node import OrdererNode
from gridledger_orderer.store import OrdererStore, tx_id_of

BROADCASTS = Counter("gridledger_orderer_broadcasts", "Broadcast calls, by result.", ["result"])
RETRY_AFTER_MS = "50"


class OrdererServicer(orderer_pb2_grpc.OrdererServiceServicer):
    def __init__(self, node: OrdererNode, store: OrdererStore,
                 notifier: HeightNotifier) -> None:
        self._node = node
        self._store = store
        self._notifier = notifier

    def Broadcast(self, request: orderer_pb2.BroadcastRequest,
                  context: grpc.ServicerContext) -> orderer_pb2.BroadcastResponse:
        raw = request.endorsed_transaction
        tx_id = tx_id_of(raw)
        if not tx_id:
            BROADCASTS.labels("malformed").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "endorsed_transaction is not a decodable EndorsedTransaction")
        if self._node.replica.knows_tx(tx_id.encode()) or self._store.has_tx(tx_id):
            BROADCASTS.labels("duplicate").inc()
            return orderer_pb2.BroadcastResponse(tx_id=tx_id, duplicate=True)
        refused = self._node.admit(raw)
        if refused is not None:
            BROADCASTS.labels("rejected").inc()
            abort_invalid(context, refused)
        if self._node.replica.pool_full:
            BROADCASTS.labels("resource_exhausted").inc()
            context.set_trailing_metadata((("retry-after-ms", RETRY_AFTER_MS),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"ordering queue is full; retry after {RETRY_AFTER_MS} ms")
        self._node.submit_transactions([raw])
        BROADCASTS.labels("accepted").inc()
        return orderer_pb2.BroadcastResponse(tx_id=tx_id)

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
