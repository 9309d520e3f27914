"""Forwarding endorsed transactions to the orderer cluster, failing over between orderers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import grpc

from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}


class OrdererUnavailable(Exception):
    pass


class Broadcaster:
    def __init__(self, orderers: Sequence[tuple[str, str]], tls: TlsFiles,
                 timeout: float = 5.0) -> None:
        self._orderers = list(orderers)
        self._channels = [secure_channel(address, tls) for _, address in self._orderers]
        self._stubs = [orderer_pb2_grpc.OrdererServiceStub(c) for c in self._channels]
        self._current = 0
        self._lock = threading.Lock()
        self._timeout = timeout

    def broadcast(self, endorsed_transaction: bytes) -> orderer_pb2.BroadcastResponse:
        """Hand the transaction to one orderer; any orderer forwards it to the primary.
        Errors other than unavailability (bad input) are raised to the caller as RpcError."""
        request = orderer_pb2.BroadcastRequest(endorsed_transaction=endorsed_transaction)
        errors = []
        start = self._current
        for attempt in range(len(self._stubs)):
            index = (start + attempt) % len(self._stubs)
            try:
                response = self._stubs[index].Broadcast(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:  # type: ignore[attr-defined]
                    raise
                errors.append(f"{self._orderers[index][0]}: {exc.code().name}")  # type: ignore[attr-defined]
                continue
            with self._lock:
                self._current = index
            return response
        raise OrdererUnavailable("no orderer accepted the transaction (" + "; ".join(errors) + ")")

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
