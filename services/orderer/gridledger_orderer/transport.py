"""Best-effort message transport between orderers: one client stream per peer.

Each peer has a queue bounded in messages and in bytes, drained by its own thread into a
ConsensusService.Exchange stream; a broken stream is re-opened with backoff, and when a peer
is down or slow its queue drops the oldest messages (the protocol tolerates loss: timeouts
and sync recover).

The outgoing side keeps the inbox's two classes (inbox.py): messages that move a height
forward (proposals, votes, certificates, round changes) are written before bulk ones
(transaction forwards, state sync), one bulk message after every BULK_EVERY urgent ones so
forwards keep flowing; and a full queue drops bulk messages first, so a burst of forwards
neither delays this orderer's votes behind megabytes on a slow stream nor pushes them out
of the queue."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence

import grpc
from prometheus_client import Counter

from gridledger.orderer.v1 import consensus_pb2, consensus_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_orderer.inbox import BulkShare, is_bulk

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
        self._urgent: deque[tuple[consensus_pb2.ConsensusMessage, int]] = deque()
        self._bulk: deque[tuple[consensus_pb2.ConsensusMessage, int]] = deque()
        self._share = BulkShare()
        self._bytes = 0
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"peer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, message: consensus_pb2.ConsensusMessage, size: int | None = None) -> None:
        """Queue `message` (`size` bytes, computed when not given). While it does not fit,
        the oldest bulk message is dropped, or, when none is left, the new message if it is
        bulk itself, else the oldest urgent one; one larger than the whole budget is
        dropped."""
        size = message.ByteSize() if size is None else size
        bulk = is_bulk(message)
        with self._ready:
            if size > self._capacity_bytes:
                DROPPED.labels(self.name).inc()
                return
            while (self._urgent or self._bulk) and (
                    len(self._urgent) + len(self._bulk) >= self._capacity
                    or self._bytes + size > self._capacity_bytes):
                if not self._bulk and bulk:
                    DROPPED.labels(self.name).inc()  # forwards never push out votes
                    return
                _, dropped = (self._bulk or self._urgent).popleft()
                self._bytes -= dropped
                DROPPED.labels(self.name).inc()
            (self._bulk if bulk else self._urgent).append((message, size))
            self._bytes += size
            self._ready.notify()

    def _next(self) -> tuple[consensus_pb2.ConsensusMessage, int] | None:
        """The next message to write (urgent first, one bulk after BULK_EVERY urgent)."""
        if not self._urgent and not self._bulk:
            return None
        if self._share.bulk_next(bool(self._urgent), bool(self._bulk)):
            return self._bulk.popleft()
        return self._urgent.popleft()

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
                if not self._urgent and not self._bulk:
                    self._ready.wait(1.0)
                if self._stop.is_set():
                    return
                taken = self._next()
                if taken is None:
                    continue
                message, size = taken
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
            except Exception:
                # Opening a channel reads the TLS files (out of descriptors, a file being
                # replaced): a link that ended here would cut this orderer off from the
                # peer for good, behind SERVING, with only its drop counter growing.
                log.exception("link to %s failed; opening it again", self.name)
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
