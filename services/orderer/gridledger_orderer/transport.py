"""Best-effort message transport between orderers: one client stream per peer.

Each peer has a bounded queue drained by its own thread into a ConsensusService.Exchange
stream; a broken stream is re-opened with backoff, and when a peer is down its queue drops
the oldest messages (the protocol tolerates loss: timeouts and sync recover)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence

import grpc
from prometheus_client import Counter

from gridledger.orderer.v1 import consensus_pb2, consensus_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel

log = logging.getLogger(__name__)

DROPPED = Counter("gridledger_orderer_messages_dropped",
                  "Consensus messages dropped because a peer's queue was full.", ["peer"])

_CLOSE = object()


class PeerLink:
    def __init__(self, name: str, address: str, tls: TlsFiles, capacity: int = 10_000) -> None:
        self.name = name
        self._address = address
        self._tls = tls
        self._queue: queue.Queue[object] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"peer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, message: consensus_pb2.ConsensusMessage) -> None:
        while True:
            try:
                self._queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    DROPPED.labels(self.name).inc()
                except queue.Empty:
                    pass

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_CLOSE)
        self._thread.join(timeout=5)

    def _requests(self) -> Iterator[consensus_pb2.ExchangeRequest]:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is _CLOSE:
                return
            yield consensus_pb2.ExchangeRequest(message=item)  # type: ignore[arg-type]

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
    def __init__(self, peers: Sequence[tuple[str, str]], tls: TlsFiles) -> None:
        self.links = {name: PeerLink(name, address, tls) for name, address in peers}

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def send(self, to: str, message: consensus_pb2.ConsensusMessage) -> None:
        link = self.links.get(to)
        if link is not None:
            link.send(message)

    def broadcast(self, message: consensus_pb2.ConsensusMessage) -> None:
        for link in self.links.values():
            link.send(message)

    def stop(self) -> None:
        for link in self.links.values():
            link.stop()
