"""Best-effort message transport between orderers: one client stream per peer.

Each peer has a queue bounded in messages and in bytes, drained by its own thread into a
ConsensusService.Exchange stream; a broken stream is re-opened with backoff, and when a peer
is down or slow its queue drops the oldest messages (the protocol tolerates loss: timeouts
and sync recover)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence

import grpc
from prometheus_client import Counter

from gridledger.orderer.v1 import consensus_pb2, consensus_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel

log = logging.getLogger(__name__)

DROPPED = Counter("gridledger_orderer_messages_dropped",
                  "Consensus messages dropped because a peer's queue was full (in messages "
                  "or bytes).", ["peer"])

DEFAULT_CAPACITY_BYTES = 32 << 20


class PeerLink:
    def __init__(self, name: str, address: str, tls: TlsFiles, capacity: int = 10_000,
                 capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        self.name = name
        self._address = address
        self._tls = tls
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._queue: deque[tuple[consensus_pb2.ConsensusMessage, int]] = deque()
        self._bytes = 0
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"peer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, message: consensus_pb2.ConsensusMessage, size: int | None = None) -> None:
        """Queue `message` (`size` bytes, computed when not given), dropping the oldest
        queued messages while it does not fit; one larger than the whole budget is dropped."""
        size = message.ByteSize() if size is None else size
        with self._ready:
            if size > self._capacity_bytes:
                DROPPED.labels(self.name).inc()
                return
            while self._queue and (len(self._queue) >= self._capacity
                                   or self._bytes + size > self._capacity_bytes):
                _, dropped = self._queue.popleft()
                self._bytes -= dropped
                DROPPED.labels(self.name).inc()
            self._queue.append((message, size))
            self._bytes += size
            self._ready.notify()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def stop(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        self._thread.join(timeout=5)

    def _requests(self) -> Iterator[consensus_pb2.ExchangeRequest]:
        while not self._stop.is_set():
            with self._ready:
                if not self._queue:
                    self._ready.wait(1.0)
                if self._stop.is_set():
                    return
                if not self._queue:
                    continue
                message, size = self._queue.popleft()
                self._bytes -= size
            yield consensus_pb2.ExchangeRequest(message=message)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                with secure_channel(self._address, self._tls) as channel:
                    stub = consensus_pb2_grpc.ConsensusServiceStub(channel)
                    stub.Exchange(self._requests())
                backoff = 0.05
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                log.debug("link to %s broke: %s", self.name, exc.code())  # type: ignore[attr-defined]
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 1.0)


class Transport:
    def __init__(self, peers: Sequence[tuple[str, str]], tls: TlsFiles,
                 capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        self.links = {name: PeerLink(name, address, tls, capacity_bytes=capacity_bytes)
                      for name, address in peers}

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def send(self, to: str, message: consensus_pb2.ConsensusMessage) -> None:
        link = self.links.get(to)
        if link is not None:
            link.send(message)

    def broadcast(self, message: consensus_pb2.ConsensusMessage) -> None:
        size = message.ByteSize()  # once for every peer
        for link in self.links.values():
            link.send(message, size)

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()
