"""Forwarding endorsed transactions to the orderer cluster, failing over between orderers.

The endorser's handler threads each call `broadcast(bytes, tx id)`; the calls that are waiting
at the same time travel together in one `BroadcastBatch` call (a gRPC call costs the orderer
far more than checking one transaction). Every caller still gets its own result.

What a caller is told is what the endorser tells its client, so it must be exact:
`broadcast` returns only when an orderer answered OK (accepted, or already known:
`duplicate`) for *that* transaction (the result's tx id must be the caller's). Anything else
moves the transaction to the next orderer: a retryable status, a malformed answer, and also a
refusal, because the endorser has itself checked everything an orderer checks (so a refusal
says more about that orderer than about the transaction, and one orderer must not be able to
make a valid transaction look invalid). When no orderer took it, `OrdererUnavailable` says
why per orderer; nothing is ever reported as accepted that an orderer did not accept.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence

import grpc

from gridledger.common.v1 import envelope_pb2
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import envelope_tx_id

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Below the orderer's per-call limits (2,000 transactions, 8 MiB).
MAX_BATCH_TXS = 500
MAX_BATCH_BYTES = 4 << 20
# The retry hint given when orderers said RESOURCE_EXHAUSTED without one.
DEFAULT_RETRY_AFTER_MS = 50


class OrdererUnavailable(Exception):
    """No orderer acknowledged the transaction. `retry_after_ms` is set when every orderer
    tried was only full (RESOURCE_EXHAUSTED): then the caller should say so, with the hint."""

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class _Pending:
    __slots__ = ("done", "error", "exhausted_only", "notes", "response", "retry_after_ms",
                 "tx", "tx_id")

    def __init__(self, tx: bytes, tx_id: str) -> None:
        self.tx = tx
        self.tx_id = tx_id
        self.done = threading.Event()
        self.response: orderer_pb2.BroadcastResponse | None = None
        self.error: BaseException | None = None
        # Why each orderer did not take it, for the caller's error.
        self.notes: list[str] = []
        self.exhausted_only = True  # every failure so far was a full pool
        self.retry_after_ms = 0

    def note(self, orderer: str, code: grpc.StatusCode | None, why: str,
             retry_after_ms: int = 0) -> None:
        self.notes.append(f"{orderer}: {why}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.retry_after_ms = max(self.retry_after_ms,
                                      retry_after_ms or DEFAULT_RETRY_AFTER_MS)
        else:
            self.exhausted_only = False

    def give_up(self) -> None:
        reason = "no orderer accepted the transaction (" + "; ".join(self.notes) + ")"
        self.resolve(error=OrdererUnavailable(
            reason, self.retry_after_ms if self.exhausted_only and self.notes else 0))

    def resolve(self, response: orderer_pb2.BroadcastResponse | None = None,
                error: BaseException | None = None) -> None:
        self.response, self.error = response, error
        self.done.set()


class Broadcaster:
    def __init__(self, orderers: Sequence[tuple[str, str]], tls: TlsFiles,
                 timeout: float = 5.0, senders: int = 2) -> None:
        channels = [secure_channel(address, tls) for _, address in orderers]
        self._setup([(name, orderer_pb2_grpc.OrdererServiceStub(channel))
                     for (name, _), channel in zip(orderers, channels, strict=True)],
                    timeout, senders)
        self._channels = channels

    @classmethod
    def over(cls, stubs: Sequence[tuple[str, orderer_pb2_grpc.OrdererServiceStub]],
             timeout: float = 5.0, senders: int = 2) -> Broadcaster:
        """Over given (orderer name, stub) pairs: for tests."""
        broadcaster = cls.__new__(cls)
        broadcaster._setup(stubs, timeout, senders)
        broadcaster._channels = []
        return broadcaster

    def _setup(self, stubs: Sequence[tuple[str, orderer_pb2_grpc.OrdererServiceStub]],
               timeout: float, senders: int) -> None:
        self._names = [name for name, _ in stubs]
        self._stubs = [stub for _, stub in stubs]
        self._current = 0
        self._timeout = timeout
        self._cond = threading.Condition()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._closed = False
        # More than one sender, so a batch stuck on a dead orderer until the timeout does not
        # hold up the next one; started on first use.
        self._senders = [threading.Thread(target=self._send_loop, name=f"broadcast-{i}",
                                          daemon=True) for i in range(senders)]
        self._started = False

    def broadcast(self, endorsed_transaction: bytes,
                  tx_id: str | None = None) -> orderer_pb2.BroadcastResponse:
        """Hand the transaction (whose id is `tx_id`, read from the bytes when not given) to
        one orderer; any orderer forwards it to the primary. Returns only an orderer's OK for
        this tx id (accepted or duplicate); raises OrdererUnavailable, saying why per orderer,
        when none gave one."""
        if tx_id is None:
            tx_id = envelope_tx_id(
                envelope_pb2.EndorsedTransaction.FromString(endorsed_transaction).envelope)
        (result,) = self.broadcast_many([(endorsed_transaction, tx_id)])
        if isinstance(result, BaseException):
            raise result
        return result

    def broadcast_many(self, items: Sequence[tuple[bytes, str]]
                       ) -> list[orderer_pb2.BroadcastResponse | BaseException]:
        """`broadcast` for several (endorsed transaction, tx id) at once: they join the
        queue together (so travel in as few BroadcastBatch calls as the limits allow); each
        gets its own result: an orderer's OK for that tx id, or the error `broadcast` would
        raise (OrdererUnavailable saying why, or what failed here)."""
        pendings = [_Pending(tx, tx_id) for tx, tx_id in items]
        with self._cond:
            if self._closed:
                raise OrdererUnavailable("the broadcaster is closed")
            if not self._started:
                self._started = True
                for thread in self._senders:
                    thread.start()
            self._queue.extend(pendings)
            self._cond.notify_all()
        results: list[orderer_pb2.BroadcastResponse | BaseException] = []
        for pending in pendings:
            pending.done.wait()
            if pending.error is not None:
                results.append(pending.error)
            else:
                assert pending.response is not None
                results.append(pending.response)
        return results

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._senders:
            if thread.is_alive():
                thread.join(timeout=self._timeout + 1)
        for pending in self._drain():
            pending.resolve(error=OrdererUnavailable("the broadcaster is closed"))
        for channel in self._channels:
            channel.close()

    # -- sending -------------------------------------------------------------------------

    def _drain(self) -> list[_Pending]:
        with self._cond:
            batch = list(self._queue)
            self._queue.clear()
        return batch

    def _next_batch(self) -> list[_Pending] | None:
        """Whatever is waiting, up to the batch limits; None once closed and empty."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch: list[_Pending] = []
            size = 0
            while self._queue and len(batch) < MAX_BATCH_TXS:
                size += len(self._queue[0].tx)
                if batch and size > MAX_BATCH_BYTES:
                    break
                batch.append(self._queue.popleft())
            return batch

    def _send_loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._send(batch)
            except BaseException as exc:  # never leave a caller waiting
                log.exception("broadcast failed")
                for pending in batch:
                    if not pending.done.is_set():
                        pending.resolve(error=exc)

    def _send(self, batch: list[_Pending]) -> None:
        """Try the orderers in turn from the current one; each gets what the ones before
        did not acknowledge."""
        start = self._current
        left = batch
        for attempt in range(len(self._stubs)):
            index = (start + attempt) % len(self._stubs)
            name = self._names[index]
            request = orderer_pb2.BroadcastBatchRequest(
                endorsed_transactions=[p.tx for p in left])
            try:
                response = self._stubs[index].BroadcastBatch(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    taken = self._send_unary(index, left)  # an older orderer
                else:
                    for pending in left:
                        pending.note(name, code, _status_text(code, exc.details()))  # type: ignore[attr-defined]
                    continue
            else:
                taken = self._take(name, left, response)
            left = [pending for pending in left if not pending.done.is_set()]
            if taken:
                self._current = index  # it took transactions: start there next time
            if not left:
                return
        for pending in left:
            pending.give_up()

    def _take(self, name: str, batch: list[_Pending],
              response: orderer_pb2.BroadcastBatchResponse) -> int:
        """Resolve the transactions an orderer's batch answer acknowledges; note why for the
        others. Returns how many it acknowledged."""
        if len(response.results) != len(batch):
            for pending in batch:
                pending.note(name, None, f"answered {len(response.results)} results for "
                                         f"{len(batch)} transactions")
            return 0
        taken = 0
        for pending, result in zip(batch, response.results, strict=True):
            code = _CODES.get(result.code, grpc.StatusCode.UNKNOWN)
            if code != grpc.StatusCode.OK:
                pending.note(name, code, _status_text(code, result.message),
                             result.retry_after_ms)
            elif result.tx_id != pending.tx_id:
                pending.note(name, None, f"acknowledged tx id {result.tx_id!r} instead")
            else:
                pending.resolve(orderer_pb2.BroadcastResponse(
                    tx_id=result.tx_id, duplicate=result.duplicate))
                taken += 1
        return taken

    def _send_unary(self, index: int, batch: list[_Pending]) -> int:
        """The unary Broadcast, for an orderer without BroadcastBatch; returns how many it
        acknowledged."""
        name = self._names[index]
        taken = 0
        for pending in batch:
            request = orderer_pb2.BroadcastRequest(endorsed_transaction=pending.tx)
            try:
                response = self._stubs[index].Broadcast(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                pending.note(name, code, _status_text(code, exc.details()))  # type: ignore[attr-defined]
                continue
            if response.tx_id != pending.tx_id:
                pending.note(name, None, f"acknowledged tx id {response.tx_id!r} instead")
                continue
            pending.resolve(response)
            taken += 1
        return taken


def _status_text(code: grpc.StatusCode, details: str | None) -> str:
    return f"{code.name}: {details}" if details else code.name
