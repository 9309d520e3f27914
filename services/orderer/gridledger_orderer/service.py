"""OrdererService (Broadcast, Deliver) for clients and ConsensusService for peer orderers.

Broadcast and BroadcastBatch answer OK (accepted, or `duplicate` of a pending transaction)
only once the transaction is synced into this orderer's LMDB pool (see node.py). Everything
a caller can make the orderer hold is bounded (limits.py): a transaction's size (genesis
`limits.max_tx_bytes`), concurrent calls and streams by kind and client, the bytes waiting
for the consensus thread and in the pool, and each peer's inbound rate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
from prometheus_client import Counter

from gridledger.orderer.v1 import (
    consensus_pb2,
    consensus_pb2_grpc,
    orderer_pb2,
    orderer_pb2_grpc,
)
from gridledger_core.genesis import Genesis
from gridledger_core.ledger.errors import TxInvalid
from gridledger_core.rpc.authz import current_caller
from gridledger_core.rpc.errors import abort_invalid, status_of
from gridledger_core.rpc.height_notifier import STREAM_OPEN, HeightNotifier
from gridledger_orderer.limits import PeerBudget, StreamSlots
from gridledger_orderer.node import INBOUND_DROPPED, NotDurable, OrdererNode, Overloaded, PoolRoom
from gridledger_orderer.store import OrdererStore, tx_id_of

BROADCASTS = Counter("gridledger_orderer_broadcasts",
                     "Broadcast transactions (unary or in a batch), by result.", ["result"])
REFUSED_CALLS = Counter("gridledger_orderer_refused_calls",
                        "Calls refused with RESOURCE_EXHAUSTED because their kind (broadcast, "
                        "deliver, exchange) is at its concurrency limit.", ["kind"])
RECEIVED = Counter("gridledger_orderer_messages_received",
                   "Consensus messages received from peer orderers, by kind (the body's "
                   "field name), before the rate budget and the inbox admit them.", ["kind"])
RETRY_AFTER_MS = "50"
# Per BroadcastBatch call; the bytes limit stays well below the orderer's receive limit
# (limits.OrdererLimits.max_message_bytes).
MAX_BATCH_TXS = 2_000
MAX_BATCH_BYTES = 8 << 20


def _client(context: grpc.ServicerContext) -> tuple[str, str]:
    """The caller's account and member (organisation) for per-client and per-member limits,
    as the authorisation interceptor verified them; without one (tests, tools) the TLS
    certificate's common name and no member."""
    caller = current_caller()
    if caller is not None:
        return caller.name, caller.org
    names = context.auth_context().get("x509_common_name") or [b""]
    return names[0].decode(errors="replace"), ""


@contextlib.contextmanager
def _slot(slots: StreamSlots, kind: str, context: grpc.ServicerContext,
          caller: tuple[str, str]) -> Iterator[None]:
    """Hold one of `slots` for the call of `caller` (account, member), or refuse it with
    RESOURCE_EXHAUSTED."""
    identity, member = caller
    if not slots.acquire(identity, member):
        REFUSED_CALLS.labels(kind).inc()
        context.set_trailing_metadata((("retry-after-ms", RETRY_AFTER_MS),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"too many concurrent {kind} calls (in all, from {identity} or from its "
                      f"organisation {member or '?'}); retry after {RETRY_AFTER_MS} ms")
    try:
        yield
    finally:
        slots.release(identity, member)


def _exhausted_result(result: orderer_pb2.BroadcastResult) -> None:
    result.code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    result.message = f"ordering queue is full; retry after {RETRY_AFTER_MS} ms"
    result.retry_after_ms = int(RETRY_AFTER_MS)


class OrdererServicer(orderer_pb2_grpc.OrdererServiceServicer):
    def __init__(self, node: OrdererNode, store: OrdererStore,
                 notifier: HeightNotifier) -> None:
        self._node = node
        self._store = store
        self._notifier = notifier
        limits = node.limits
        members = node.organization_count
        limits.warn_if_short(members)
        self._broadcasts = StreamSlots(
            limits.broadcast_calls, limits.broadcast_calls,
            limits.member_cap(limits.broadcast_calls, limits.broadcast_calls_per_member,
                              members))
        self._delivers = StreamSlots(
            limits.deliver_streams, limits.deliver_streams_per_client,
            limits.member_cap(limits.deliver_streams, limits.deliver_streams_per_member,
                              members))

    def _judge(self, raw: bytes, tx_id: bytes, room: PoolRoom,
               earlier: set[bytes]) -> tuple[str, TxInvalid | None]:
        """Broadcast's verdict on one transaction (counted): "duplicate" (final, or earlier
        in the same call), "pending" (a duplicate of a transaction in the pool: answered
        `duplicate` once durable here too), "rejected" (with why), "resource_exhausted" when
        the call's `room` has none left for its member, else "accepted" (room taken)."""
        if tx_id in earlier:
            verdict, refused = "duplicate", None
        elif tx_id in self._node.replica.pool:
            verdict, refused = "pending", None
        elif self._node.replica.is_final(tx_id):
            verdict, refused = "duplicate", None
        else:
            refused = self._node.admit(raw)
            verdict = "rejected" if refused is not None else \
                "accepted" if room.take(self._node.member_of(raw), len(raw)) else \
                "resource_exhausted"
        BROADCASTS.labels("duplicate" if verdict == "pending" else verdict).inc()
        return verdict, refused

    def _make_durable(self, txs: list[bytes]) -> str | None:
        """Hand `txs` to the consensus thread and wait until they are in the LMDB pool;
        None when they are, else the status name to answer (RESOURCE_EXHAUSTED when the
        inbox is full, UNAVAILABLE when they could not be written)."""
        try:
            self._node.wait_durable(self._node.submit_transactions(txs))
        except Overloaded:
            return "RESOURCE_EXHAUSTED"
        except NotDurable:
            return "UNAVAILABLE"
        return None

    def _exhausted(self, context: grpc.ServicerContext, what: str) -> None:
        context.set_trailing_metadata((("retry-after-ms", RETRY_AFTER_MS),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"{what}; retry after {RETRY_AFTER_MS} ms")

    def Broadcast(self, request: orderer_pb2.BroadcastRequest,
                  context: grpc.ServicerContext) -> orderer_pb2.BroadcastResponse:
        with _slot(self._broadcasts, "broadcast", context, _client(context)):
            return self._broadcast(request.endorsed_transaction, context)

    def _broadcast(self, raw: bytes,
                   context: grpc.ServicerContext) -> orderer_pb2.BroadcastResponse:
        too_large = self._node.too_large(raw)
        if too_large is not None:
            BROADCASTS.labels("too_large").inc()
            abort_invalid(context, too_large)
        tx_id = self._node.tx_id(raw)
        if not tx_id:
            BROADCASTS.labels("malformed").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "endorsed_transaction is not a decodable EndorsedTransaction")
        verdict, refused = self._judge(raw, tx_id, self._node.pool_room(), set())
        if verdict == "duplicate":
            return orderer_pb2.BroadcastResponse(tx_id=tx_id.decode(), duplicate=True)
        if refused is not None:
            abort_invalid(context, refused)
        if verdict == "resource_exhausted":
            self._exhausted(context, "ordering queue is full")
        failed = self._make_durable([raw])
        if failed == "RESOURCE_EXHAUSTED":
            self._exhausted(context, "ordering queue is full")
        if failed is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "the transaction could not be made durable here; retry")
        return orderer_pb2.BroadcastResponse(tx_id=tx_id.decode(),
                                             duplicate=verdict == "pending")

    def BroadcastBatch(self, request: orderer_pb2.BroadcastBatchRequest,
                       context: grpc.ServicerContext) -> orderer_pb2.BroadcastBatchResponse:
        with _slot(self._broadcasts, "broadcast", context, _client(context)):
            return self._broadcast_batch(list(request.endorsed_transactions), context)

    def _broadcast_batch(self, raws: list[bytes], context: grpc.ServicerContext,
                         ) -> orderer_pb2.BroadcastBatchResponse:
        """Broadcast's checks per transaction, in request order. The request is checked whole
        before anything is admitted, so a refused call leaves nothing behind."""
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
        # An oversized transaction is refused alone; its id is parsed without being cached.
        ids = [tx_id_of(raw).encode() if self._node.too_large(raw) else self._node.tx_id(raw)
               for raw in raws]
        for index, tx_id in enumerate(ids):
            if not tx_id:
                BROADCASTS.labels("malformed").inc()
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"endorsed_transactions[{index}] is not a decodable "
                              "EndorsedTransaction with a tx id; nothing was admitted")
        # Room is checked for the batch as a whole, its own additions counted.
        room = self._node.pool_room()
        results: list[orderer_pb2.BroadcastResult] = []
        durable: list[tuple[orderer_pb2.BroadcastResult, bytes]] = []
        in_batch: set[bytes] = set()
        for raw, tx_id in zip(raws, ids, strict=True):
            result = orderer_pb2.BroadcastResult(tx_id=tx_id.decode())
            results.append(result)
            too_large = self._node.too_large(raw)
            if too_large is not None:
                BROADCASTS.labels("too_large").inc()
                result.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                result.message = f"{too_large.code_name}: {too_large.message}"
                continue
            verdict, refused = self._judge(raw, tx_id, room, in_batch)
            if verdict in ("duplicate", "pending"):
                result.duplicate = True
                if verdict == "pending":
                    durable.append((result, raw))
            elif refused is not None:
                status, result.message = status_of(refused)
                result.code = status.value[0]
            elif verdict == "resource_exhausted":
                _exhausted_result(result)
            else:
                in_batch.add(tx_id)
                durable.append((result, raw))
        if durable:
            failed = self._make_durable([raw for _, raw in durable])
            for result, _ in durable:
                if failed == "RESOURCE_EXHAUSTED":
                    result.duplicate = False
                    _exhausted_result(result)
                elif failed is not None:
                    result.duplicate = False
                    result.code = grpc.StatusCode.UNAVAILABLE.value[0]
                    result.message = "the transaction could not be made durable here; retry"
        return orderer_pb2.BroadcastBatchResponse(results=results)

    def Deliver(self, request: orderer_pb2.DeliverRequest,
                context: grpc.ServicerContext) -> Iterator[orderer_pb2.DeliverResponse]:
        with _slot(self._delivers, "deliver", context, _client(context)):
            context.send_initial_metadata((STREAM_OPEN,))  # answered (height_notifier.py)
            yield from self._deliver(request, context)

    def _deliver(self, request: orderer_pb2.DeliverRequest,
                 context: grpc.ServicerContext) -> Iterator[orderer_pb2.DeliverResponse]:
        number = request.start_number
        end = number + request.limit if request.limit else None
        while context.is_active() and (end is None or number < end):
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
        limits = node.limits
        self._streams = StreamSlots(limits.exchange_streams_per_peer * len(self._orgs),
                                    limits.exchange_streams_per_peer)
        # One budget per orderer, shared by its concurrent streams.
        self._budgets = {name: PeerBudget(limits) for name in self._orgs}

    def _peer(self, context: grpc.ServicerContext) -> str | None:
        # The authorisation interceptor (rpc/authz.py) verified the caller: issued by its own
        # organisation's TLS CA, and presenting exactly the TLS certificate genesis pins for
        # that orderer. Without that verdict (no interceptor) nobody is accepted.
        caller = current_caller()
        if caller is None or not caller.pinned_orderer:
            return None
        return caller.pinned_orderer if self._orgs.get(caller.pinned_orderer) == caller.org \
            else None

    def Exchange(self, request_iterator: Iterator[consensus_pb2.ExchangeRequest],
                 context: grpc.ServicerContext) -> consensus_pb2.ExchangeResponse:
        sender = self._peer(context)
        if sender is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "only the consortium's orderers may exchange consensus messages")
        with _slot(self._streams, "exchange", context, (sender, "")):
            budget = self._budgets.setdefault(sender, PeerBudget(self._node.limits))
            for request in request_iterator:
                RECEIVED.labels(request.message.WhichOneof("body") or "none").inc()
                size = request.ByteSize()
                if not budget.admit(size):
                    INBOUND_DROPPED.labels(sender, "rate").inc()
                    continue
                self._node.receive(sender, request.message, size)
        return consensus_pb2.ExchangeResponse()
