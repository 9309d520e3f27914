"""Forwarding endorsed transactions to the orderer cluster, failing over between orderers.

The endorser's handler threads each call `broadcast(bytes)`; the calls that are waiting at
the same time travel together in one `BroadcastBatch` call (a gRPC call costs the orderer
far more than checking one transaction). Every caller still gets its own result: the
transaction's `BroadcastResponse`, or the exception a unary `Broadcast` would have raised.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence

import grpc

from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Below the orderer's per-call limits (2,000 transactions, 8 MiB).
MAX_BATCH_TXS = 500
MAX_BATCH_BYTES = 4 << 20


class OrdererUnavailable(Exception):
    pass


def _note(errors: list[str], error: str) -> None:
    if error not in errors:
        errors.append(error)


class BroadcastRefused(grpc.RpcError):
    """An orderer refused one transaction of a batch: raised to that transaction's caller
    with the status the unary Broadcast would have failed with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Pending:
    __slots__ = ("done", "error", "response", "tx")

    def __init__(self, tx: bytes) -> None:
        self.tx = tx
        self.done = threading.Event()
        self.response: orderer_pb2.BroadcastResponse | None = None
        self.error: BaseException | None = None

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

    def broadcast(self, endorsed_transaction: bytes) -> orderer_pb2.BroadcastResponse:
        """Hand the transaction to one orderer; any orderer forwards it to the primary.
        Unavailability (also a full queue) fails over to the next orderer, and raises
        OrdererUnavailable when none took it; any other refusal is raised as RpcError."""
        pending = _Pending(endorsed_transaction)
        with self._cond:
            if self._closed:
                raise OrdererUnavailable("the broadcaster is closed")
            if not self._started:
                self._started = True
                for thread in self._senders:
                    thread.start()
            self._queue.append(pending)
            self._cond.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        return pending.response

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
        """Try the orderers in turn from the current one; each keeps what the one before
        could not take (a retryable status for the call or for the transaction)."""
        errors: list[str] = []
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
                    left = self._send_unary(index, left, errors)  # an older orderer
                elif code in RETRYABLE:
                    _note(errors, f"{name}: {code.name}")
                    continue
                else:  # the request itself was refused: every caller gets the refusal
                    for pending in left:
                        pending.resolve(error=exc)
                    return
            else:
                retry: list[_Pending] = []
                for pending, result in zip(left, response.results, strict=True):
                    code = _CODES.get(result.code, grpc.StatusCode.UNKNOWN)
                    if code == grpc.StatusCode.OK:
                        pending.resolve(orderer_pb2.BroadcastResponse(
                            tx_id=result.tx_id, duplicate=result.duplicate))
                    elif code in RETRYABLE:
                        retry.append(pending)
                        _note(errors, f"{name}: {code.name}")
                    else:
                        pending.resolve(error=BroadcastRefused(code, result.message))
                left = retry
            if len(left) < len(request.endorsed_transactions):
                self._current = index  # it took transactions: start there next time
            if not left:
                return
        reason = "no orderer accepted the transaction (" + "; ".join(errors) + ")"
        for pending in left:
            pending.resolve(error=OrdererUnavailable(reason))

    def _send_unary(self, index: int, batch: list[_Pending],
                    errors: list[str]) -> list[_Pending]:
        """The unary Broadcast, for an orderer without BroadcastBatch; returns what it did
        not take for a retryable reason."""
        left: list[_Pending] = []
        for pending in batch:
            request = orderer_pb2.BroadcastRequest(endorsed_transaction=pending.tx)
            try:
                pending.resolve(self._stubs[index].Broadcast(request, timeout=self._timeout))
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code in RETRYABLE:
                    _note(errors, f"{self._names[index]}: {code.name}")
                    left.append(pending)
                else:
                    pending.resolve(error=exc)
        return left
