"""What a committer has committed: following its SubscribeCommits stream and handing each
committed block to a callback (reconnecting with backoff when the stream breaks), and
confirming given transactions by tx id (the outbox sender's proof that a reading landed)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc

log = logging.getLogger(__name__)

OnBlock = Callable[[committer_pb2.GetBlockResponse], None]


class CommitWatcher:
    """Calls `on_block` for every block from the chain height at start (a new agent does not
    replay history: what it missed it learns from the ledger state or from neighbours), and
    sets `changed` after each block so loops waiting for news wake up."""

    def __init__(self, stub: committer_pb2_grpc.CommitterServiceStub, on_block: OnBlock,
                 stop: threading.Event) -> None:
        self._stub = stub
        self._on_block = on_block
        self._stop = stop
        self.changed = threading.Event()
        self.next_number: int | None = None
        self._stream: grpc.Future | None = None  # the open stream, cancelled at shutdown

    def _cancel_on_stop(self) -> None:
        self._stop.wait()
        if self._stream is not None:
            self._stream.cancel()

    def run(self) -> None:
        threading.Thread(target=self._cancel_on_stop, name="commits-stop", daemon=True).start()
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if self.next_number is None:
                    self.next_number = self._stub.GetChainInfo(
                        committer_pb2.GetChainInfoRequest(), timeout=5).height
                self._follow()
                backoff = 0.5
            except grpc.RpcError as exc:
                log.debug("commit stream: %s", exc.code())  # type: ignore[attr-defined]
            except Exception:
                log.exception("commit watcher")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _follow(self) -> None:
        stream = self._stub.SubscribeCommits(
            committer_pb2.SubscribeCommitsRequest(start_number=self.next_number or 0))
        self._stream = stream
        for event in stream:
            block = self._stub.GetBlock(committer_pb2.GetBlockRequest(number=event.number),
                                        timeout=10)
            self._on_block(block)
            self.next_number = event.number + 1
            self.changed.set()


@dataclass(frozen=True)
class Committed:
    block_number: int
    code: int  # TxValidationCode
    message: str


class CommitConfirmer:
    """Which of some transactions the committer has in a block, with their validation codes
    (GetTransaction; the ledger indexes a tx id's first occurrence). A transaction not found
    is asked about again only once the chain has grown, so waiting costs one GetChainInfo
    per round while nothing commits."""

    def __init__(self, stub: committer_pb2_grpc.CommitterServiceStub,
                 timeout: float = 5.0) -> None:
        self._stub = stub
        self._timeout = timeout
        self._not_found_at: dict[str, int] = {}  # tx id -> chain height when last not found

    def committed(self, tx_ids: Sequence[str]) -> dict[str, Committed]:
        """The committed ones among `tx_ids`. Raises grpc.RpcError when the committer does
        not answer."""
        height = self._stub.GetChainInfo(committer_pb2.GetChainInfoRequest(),
                                         timeout=self._timeout).height
        found: dict[str, Committed] = {}
        for tx_id in tx_ids:
            if self._not_found_at.get(tx_id) == height:
                continue
            try:
                answer = self._stub.GetTransaction(
                    committer_pb2.GetTransactionRequest(tx_id=tx_id), timeout=self._timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    raise
                self._not_found_at[tx_id] = height
                continue
            found[tx_id] = Committed(answer.block_number, answer.validation_code,
                                     answer.message)
        asked = set(tx_ids)  # bounded by what the caller still waits for
        self._not_found_at = {t: h for t, h in self._not_found_at.items()
                              if t in asked and t not in found}
        return found
