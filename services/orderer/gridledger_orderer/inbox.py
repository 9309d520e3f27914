"""The consensus thread's input queue, bounded in bytes.

Clients' transactions share one byte budget; each peer orderer has its own, so a flooding
peer can neither crowd out the others nor the clients. Whatever does not fit is refused at
once (`put_*` returns False): clients are then told RESOURCE_EXHAUSTED, peer messages are
dropped (the protocol tolerates loss). The consumer takes every waiting client submission
in one go (one durable write acknowledges them all), alternating with peer messages so
neither kind starves the other.

Peer messages that move a height forward (proposals, votes, certificates, round changes,
block fetches) are taken before bulk ones (transaction forwards, state sync), as CometBFT
gives its consensus channel priority over the mempool's: a burst of forwards, or a peer
flooding them within its byte budget, does not hold back the votes of the others. One bulk
message is still taken after every `BULK_EVERY` urgent ones, so forwards keep flowing. Within
each class the peers take turns (one message each, round robin), so a peer that floods
messages of a class, votes as well as forwards, delays each other peer's next message of
that class by at most one of its own."""

from __future__ import annotations

import threading
from collections import deque

from gridledger.orderer.v1 import consensus_pb2

BULK_KINDS = frozenset({"tx_forward", "sync_request", "sync_response"})
BULK_EVERY = 4


def is_bulk(message: consensus_pb2.ConsensusMessage) -> bool:
    """A transaction forward or state sync, as opposed to a message that moves a height."""
    return message.WhichOneof("body") in BULK_KINDS


class BulkShare:
    """Which class goes next, for the inbox and the outgoing peer queues alike: urgent
    first, and one bulk message after every BULK_EVERY urgent ones."""

    def __init__(self) -> None:
        self._urgent_streak = 0  # urgent messages taken since the last bulk one

    def bulk_next(self, urgent_waiting: bool, bulk_waiting: bool) -> bool:
        """True to take a bulk message now; call only with something waiting."""
        if bulk_waiting and (not urgent_waiting or self._urgent_streak >= BULK_EVERY):
            self._urgent_streak = 0
            return True
        self._urgent_streak += 1
        return False


class Submission:
    """Transactions one API call asks to have ordered. `done` is set once they are durable
    in this orderer's pool (`error` is None) or could not be made so (`error` says why)."""

    __slots__ = ("done", "error", "size", "txs")

    def __init__(self, txs: list[bytes]) -> None:
        self.txs = txs
        self.size = sum(len(tx) for tx in txs)
        self.done = threading.Event()
        self.error: str | None = None

    def finish(self, error: str | None = None) -> None:
        self.error = error
        self.done.set()


Queued = tuple[str, consensus_pb2.ConsensusMessage, int]  # (sender, message, size)


class _TakingTurns:
    """One class of peer messages: a queue per sender, served in turn."""

    def __init__(self) -> None:
        self._by_sender: dict[str, deque[Queued]] = {}
        self._turns: deque[str] = deque()  # senders with something queued, next first

    def __bool__(self) -> bool:
        return bool(self._turns)

    def append(self, item: Queued) -> None:
        queue = self._by_sender.get(item[0])
        if queue is None:
            queue = self._by_sender[item[0]] = deque()
            self._turns.append(item[0])
        queue.append(item)

    def popleft(self) -> Queued:
        sender = self._turns.popleft()
        queue = self._by_sender[sender]
        item = queue.popleft()
        if queue:
            self._turns.append(sender)  # its next message waits for the others' turns
        else:
            del self._by_sender[sender]
        return item


class Inbox:
    def __init__(self, client_bytes: int, peer_bytes: int) -> None:
        self._client_limit = client_bytes
        self._peer_limit = peer_bytes
        self._cond = threading.Condition()
        self._submissions: deque[Submission] = deque()
        self._client_used = 0
        self._urgent = _TakingTurns()
        self._bulk = _TakingTurns()
        self._share = BulkShare()
        self._peer_used: dict[str, int] = {}
        self._closed = False
        self._messages_turn = False

    def put_submission(self, submission: Submission) -> bool:
        with self._cond:
            if self._closed or self._client_used + submission.size > self._client_limit:
                return False
            self._submissions.append(submission)
            self._client_used += submission.size
            self._cond.notify()
            return True

    def put_message(self, sender: str, message: consensus_pb2.ConsensusMessage,
                    size: int) -> bool:
        with self._cond:
            used = self._peer_used.get(sender, 0)
            # A peer with nothing queued may always queue one message (any size the gRPC
            # limit let through), so a large honest SyncResponse is never refused forever.
            if used and used + size > self._peer_limit:
                return False
            queue = self._bulk if is_bulk(message) else self._urgent
            queue.append((sender, message, size))
            self._peer_used[sender] = used + size
            self._cond.notify()
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def client_bytes(self) -> int:
        return self._client_used

    def get(self, timeout: float, max_txs: int = 5_000, max_bytes: int = 8 << 20,
            ) -> list[Submission] | tuple[str, consensus_pb2.ConsensusMessage] | None:
        """Waiting client submissions (all of them, up to about `max_txs` transactions and
        `max_bytes`: the group is forwarded to the peers as one message, which must stay
        below their receive limit), or one peer message as (sender, message); None on
        timeout or when closed."""
        with self._cond:
            if not self._closed and not self._submissions and not self._urgent \
                    and not self._bulk:
                self._cond.wait(timeout)
            if self._closed:
                return None
            take_messages = bool(self._urgent or self._bulk) and (
                self._messages_turn or not self._submissions)
            if take_messages:
                self._messages_turn = False
                queue = (self._bulk if self._share.bulk_next(bool(self._urgent), bool(self._bulk))
                         else self._urgent)
                sender, message, size = queue.popleft()
                left = self._peer_used[sender] - size
                if left:
                    self._peer_used[sender] = left
                else:
                    del self._peer_used[sender]
                return sender, message
            if not self._submissions:
                return None
            self._messages_turn = True
            taken: list[Submission] = []
            count = size = 0
            while self._submissions and (not taken or (
                    count < max_txs and size + self._submissions[0].size <= max_bytes)):
                submission = self._submissions.popleft()
                self._client_used -= submission.size
                count += len(submission.txs)
                size += submission.size
                taken.append(submission)
            return taken

    def drain(self) -> list[Submission]:
        """Everything clients submitted and nobody took (on stop: to refuse it)."""
        with self._cond:
            taken = list(self._submissions)
            self._submissions.clear()
            self._client_used = 0
            return taken
