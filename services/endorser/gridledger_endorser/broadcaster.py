"""Forwarding endorsed transactions to the orderer cluster, failing over between orderers.

The endorser's handler threads each call `seal_and_broadcast` with the envelopes they checked
(or `broadcast` with an endorsed transaction); the transactions that are waiting at the same
time travel together in one `BroadcastBatch` call (a gRPC call costs the orderer far more
than checking one transaction), and the sender thread endorses such a group with one
signature just before sending it (sealing.py). Every caller still gets its own result.

One group is in flight at a time: what arrives meanwhile waits for its answer and leaves as
the next group. A group costs every node of the network about the same whatever its size
(the orderer's call, its forward to each peer orderer, the group's endorsement signature
verified by every orderer and committer), and an idle second sender taking each arrival at
once made groups half as large with nothing gained but the wait for one orderer's durable
write. The second sender starts a group alongside only when the one in flight has been out
for `overlap_after` seconds (an orderer slow to answer, or down until the call's timeout),
or when a whole group is waiting already.

With nothing in flight, a group smaller than `LINGER_TXS` waits until its first transaction
has waited `linger` (30 ms) for more to join it, as Kafka's producer lingers. Below
saturation the sender is often idle when a transaction arrives, and each one then left
alone or nearly: at 470 tx/s a call carried 4-5 transactions, and each call cost the lead
orderer its checks, a synced write and a forward to every peer (the lead orderer used twice
the CPU of the others). Lingering 10 ms halved the calls and forwards there and at the max
rate; 30 ms halved them again at 70 % of the max rate, where the orderers' CPU follows
their calls and blocks, not the transactions (about 0.48 cores at 150 and at 600 tx/s),
for at most 20 ms more before a transaction's block (docs/performance.md, twenty-third
round).
The linger runs from a group's first arrival, also while another group is in flight (so
once that one is answered, what queued behind it has usually waited long enough already): a
transaction waits at most `linger` more than it would have; a whole group leaves at once.

Which orderer, and in what order after it: `orderer_choice.py` (an orderer whose call
fails, whose answer is malformed or refuses a transaction for another reason than a full
pool, or that answers later than `late_after`, loses the lead and is tried after the others
for a cool-down; one another sender's call is at comes after all the others).

An orderer's OK is believed until the ledger should show the transaction: with
`watch_acknowledgements`, what an orderer acknowledged and the ledger has not shown committed
`lost_after` seconds later is sent again, to the other orderers first, and the orderer that
acknowledged it as new is struck when an orderer with no recent strikes takes it as new too
(ack_watch.py: a hostile member's orderer may answer OK and drop what it took).

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

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc
from prometheus_client import Counter, Histogram

from gridledger.common.v1 import envelope_pb2
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import envelope_tx_id
from gridledger_endorser.ack_watch import AckWatch, Watched
from gridledger_endorser.orderer_choice import OrdererChoice
from gridledger_endorser.sealing import MAX_GROUP, Seal, sealed

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# Below the orderer's per-call limits (2,000 transactions, 8 MiB); a group is also what one
# endorsement signature covers.
MAX_BATCH_TXS = MAX_GROUP
MAX_BATCH_BYTES = 4 << 20
# The retry hint given when orderers said RESOURCE_EXHAUSTED without one.
DEFAULT_RETRY_AFTER_MS = 50
# The longest hint an orderer's word can put on the endorser's clients (an honest orderer says
# 50 ms; a hostile one could otherwise tell every client of this endorser to wait for days).
MAX_RETRY_AFTER_MS = 1000
# How long a group may be in flight before the next one leaves alongside it: well above an
# orderer's usual answer (a synced write), well below the call's timeout.
DEFAULT_OVERLAP_AFTER = 0.05
# With nothing in flight, how long a small group waits for more (module docstring), and the
# size at which it leaves at once: well above the 9-20 transactions a call carries at 70 % of
# capacity (with 10 and 30 ms), where the linger pays.
DEFAULT_LINGER = 0.03
LINGER_TXS = 32
# An answer later than this strikes its orderer (orderer_choice.py): rare for an honest
# orderer on the bench machine under load (3-6 % of its answers, as the endorser sees them,
# took over 50 ms), far below the call's timeout a hostile one could otherwise use.
DEFAULT_LATE_AFTER = 0.25

# Per item of seal_and_broadcast: the orderer's OK or why not, and its endorsement.
Answers = list[tuple[orderer_pb2.BroadcastResponse | BaseException,
                     envelope_pb2.Endorsement | None]]

GROUP_SIZE = Histogram("gridledger_endorser_broadcast_batch_transactions",
                       "Transactions per BroadcastBatch group (what waited together).",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
ANSWER_SECONDS = Histogram("gridledger_endorser_orderer_answer_seconds",
                           "How long an orderer took to answer a BroadcastBatch group (all "
                           "its unary calls, for an orderer without it), as this endorser "
                           "sees it: what --broadcast-late-ms is compared with.", ["orderer"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
COOLDOWNS = Counter("gridledger_endorser_orderer_cooldowns",
                    "Strikes: times an orderer was put after the others (losing the lead) "
                    "for a while, by orderer and why: 'failed' (the call failed or timed out, "
                    "or its answer was malformed or refused a transaction for another reason "
                    "than a full pool), 'late' (otherwise, it answered after "
                    "--broadcast-late-ms), 'lost' (it acknowledged transactions that another "
                    "orderer took as new when they were sent again, overdue: ack_watch.py).",
                    ["orderer", "reason"])
LOST_ACKNOWLEDGEMENTS = Counter(
    "gridledger_endorser_lost_acknowledgements",
    "Transactions an orderer acknowledged that were not committed --ack-lost-after-s later "
    "and that another orderer took as new when sent again: the orderer did not pass them on "
    "(ack_watch.py).", ["orderer"])
RESENT = Counter("gridledger_endorser_acknowledged_resent",
                 "Acknowledged transactions sent again because the ledger had not shown them "
                 "committed --ack-lost-after-s after their acknowledgement.")
# How often the watch thread looks for overdue acknowledgements, and its key among the
# senders' calls (so a group leaving meanwhile goes to another orderer first).
WATCH_INTERVAL = 1.0
WATCH_SENDER = -1


class OrdererUnavailable(Exception):
    """No orderer acknowledged the transaction. `retry_after_ms` is set when every orderer
    tried was only full (RESOURCE_EXHAUSTED): then the caller should say so, with the hint."""

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class _Pending:
    __slots__ = ("done", "endorsement", "envelope", "error", "exhausted_only", "notes",
                 "on_done", "queued_at", "response", "retry_after_ms", "seal", "size", "tx",
                 "tx_id")

    def __init__(self, tx: bytes, tx_id: str,
                 envelope: envelope_pb2.SignedEnvelope | None = None,
                 seal: Seal | None = None) -> None:
        self.tx = tx  # the endorsed transaction; b"" until its group is sealed
        self.tx_id = tx_id
        self.envelope = envelope
        self.seal = seal
        self.endorsement: envelope_pb2.Endorsement | None = None
        self.size = len(tx) if envelope is None else envelope.ByteSize()
        self.queued_at = 0.0  # monotonic, set when it joins the queue
        self.done = threading.Event()
        self.response: orderer_pb2.BroadcastResponse | None = None
        self.error: BaseException | None = None
        # Why each orderer did not take it, for the caller's error.
        self.notes: list[str] = []
        self.exhausted_only = True  # every failure so far was a full pool
        self.retry_after_ms = 0
        # Called once, on the thread that resolves it (the asyncio callers' wake-up).
        self.on_done: Callable[[], None] | None = None

    def note(self, orderer: str, code: grpc.StatusCode | None, why: str,
             retry_after_ms: int = 0) -> None:
        self.notes.append(f"{orderer}: {why}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            hint = min(retry_after_ms or DEFAULT_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS)
            self.retry_after_ms = max(self.retry_after_ms, hint)
        else:
            self.exhausted_only = False

    def give_up(self) -> None:
        reason = "no orderer accepted the transaction (" + "; ".join(self.notes) + ")"
        self.resolve(error=OrdererUnavailable(
            reason, self.retry_after_ms if self.exhausted_only and self.notes else 0))

    def accept(self, response: orderer_pb2.BroadcastResponse) -> None:
        """An orderer acknowledged it: its caller is told once the watch holds it (`_try`)."""
        self.response = response

    def resolve(self, response: orderer_pb2.BroadcastResponse | None = None,
                error: BaseException | None = None) -> None:
        first = not self.done.is_set()
        self.response, self.error = response, error
        self.done.set()
        # Dropped once called: the callback's closure holds its batch's pendings, a cycle
        # that would outlive the call until a full garbage collection.
        on_done, self.on_done = self.on_done, None
        if first and on_done is not None:
            on_done()

    def outcome(self) -> orderer_pb2.BroadcastResponse | BaseException:
        """The answer of a resolved pending."""
        if self.error is not None:
            return self.error
        assert self.response is not None
        return self.response


class Broadcaster:
    def __init__(self, orderers: Sequence[tuple[str, str]], tls: TlsFiles,
                 timeout: float = 5.0, senders: int = 2,
                 overlap_after: float = DEFAULT_OVERLAP_AFTER,
                 late_after: float = DEFAULT_LATE_AFTER,
                 linger: float = DEFAULT_LINGER) -> None:
        channels = [secure_channel(address, tls) for _, address in orderers]
        self._setup([(name, orderer_pb2_grpc.OrdererServiceStub(channel))
                     for (name, _), channel in zip(orderers, channels, strict=True)],
                    timeout, senders, overlap_after, late_after, linger, time.monotonic)
        self._channels = channels

    @classmethod
    def over(cls, stubs: Sequence[tuple[str, orderer_pb2_grpc.OrdererServiceStub]],
             timeout: float = 5.0, senders: int = 2,
             overlap_after: float = DEFAULT_OVERLAP_AFTER,
             late_after: float = DEFAULT_LATE_AFTER, linger: float = DEFAULT_LINGER,
             clock: Callable[[], float] = time.monotonic) -> Broadcaster:
        """Over given (orderer name, stub) pairs: for tests and the orderer-only benchmark.
        `late_after`: an acknowledgement later than this strikes its orderer; `clock` times
        answers and cool-downs."""
        broadcaster = cls.__new__(cls)
        broadcaster._setup(stubs, timeout, senders, overlap_after, late_after, linger, clock)
        broadcaster._channels = []
        return broadcaster

    def _setup(self, stubs: Sequence[tuple[str, orderer_pb2_grpc.OrdererServiceStub]],
               timeout: float, senders: int, overlap_after: float, late_after: float,
               linger: float, clock: Callable[[], float]) -> None:
        self._names = [name for name, _ in stubs]
        self._stubs = [stub for _, stub in stubs]
        self._choice = OrdererChoice(len(stubs), clock)
        self._clock = clock
        self._timeout = timeout
        self._overlap_after = overlap_after
        self._linger = linger
        self._late_after = late_after
        self._cond = threading.Condition()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_bytes = 0
        # When each group in flight left (monotonic), by sender.
        self._in_flight: dict[int, float] = {}
        # The orderer each sender's call is at now (index), so another group starts elsewhere.
        self._calling: dict[int, int] = {}
        self._closed = False
        # More than one sender, so a batch stuck on a dead orderer until the timeout does not
        # hold up the next one; started on first use.
        self._senders = [threading.Thread(target=self._send_loop, args=(i,),
                                          name=f"broadcast-{i}", daemon=True)
                         for i in range(senders)]
        self._started = False
        # Acknowledgements checked against the ledger: off until watch_acknowledgements.
        self._watch: AckWatch | None = None
        self._committed: Callable[[str], bool] = lambda _tx_id: False
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def watch_acknowledgements(self, committed: Callable[[str], bool],
                               watch: AckWatch | None = None) -> None:
        """Keep what orderers acknowledge until `on_block` reports it committed, and send
        what is overdue again (ack_watch.py). `committed(tx_id)`: whether the ledger holds
        the transaction (looked up before sending one again, as its block may have come
        before its acknowledgement was recorded)."""
        self._committed = committed
        self._watch = watch if watch is not None else AckWatch()
        self._watcher = threading.Thread(target=self._watch_loop, name="broadcast-watch",
                                         daemon=True)
        self._watcher.start()

    def on_block(self, tx_ids: Sequence[str]) -> None:
        """The ledger committed these transactions (valid or not)."""
        if self._watch is not None:
            self._watch.committed(tx_ids)

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
        self._enqueue(pendings)
        return [self._result(p) for p in pendings]

    def seal_and_broadcast(self, items: Sequence[tuple[envelope_pb2.SignedEnvelope, str]],
                           seal: Seal) -> Answers:
        """`broadcast_many` for checked (envelope, tx id) pairs not yet endorsed: each is
        endorsed by `seal` together with whatever else leaves in the same BroadcastBatch
        group. Per item: the result `broadcast_many` gives, and its endorsement (None if
        sealing failed)."""
        pendings = [_Pending(b"", tx_id, envelope, seal) for envelope, tx_id in items]
        self._enqueue(pendings)
        return [(self._result(p), p.endorsement) for p in pendings]

    def seal_and_broadcast_async(
            self, items: Sequence[tuple[envelope_pb2.SignedEnvelope, str]], seal: Seal,
            loop: asyncio.AbstractEventLoop) -> asyncio.Future[Answers]:
        """`seal_and_broadcast` for a caller on `loop` (the asyncio server), without
        blocking it: a future of `loop` that gets the same list once every item has its
        answer. Call it on the loop's thread; raises OrdererUnavailable when closed."""
        future: asyncio.Future[Answers] = loop.create_future()
        pendings = [_Pending(b"", tx_id, envelope, seal) for envelope, tx_id in items]
        left = len(pendings)
        lock = threading.Lock()

        def settle() -> None:  # on the loop's thread
            if not future.done():
                future.set_result([(p.outcome(), p.endorsement) for p in pendings])

        def one_done() -> None:  # on a sender's thread (or close's)
            nonlocal left
            with lock:
                left -= 1
                if left:
                    return
            # RuntimeError: the loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        for pending in pendings:
            pending.on_done = one_done
        self._enqueue(pendings)
        return future

    def _enqueue(self, pendings: list[_Pending]) -> None:
        with self._cond:
            if self._closed:
                raise OrdererUnavailable("the broadcaster is closed")
            if not self._started:
                self._started = True
                for thread in self._senders:
                    thread.start()
            was_empty = not self._queue
            now = time.monotonic()
            for pending in pendings:
                pending.queued_at = now
            self._queue.extend(pendings)
            self._queued_bytes += sum(p.size for p in pendings)
            # Wake a sender when it may send, or once per group to time the overlap: while a
            # group is in flight its sender takes what waits when it lands, and waking the
            # other at every arrival cost a thread switch and a GIL hand-off per call.
            if was_empty or not self._wait_to_send():
                self._cond.notify()

    @staticmethod
    def _result(pending: _Pending) -> orderer_pb2.BroadcastResponse | BaseException:
        pending.done.wait()
        return pending.outcome()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=self._timeout * len(self._stubs) + 1)
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
            self._queued_bytes = 0
        return batch

    def _wait_to_send(self) -> float:
        """0 when a group may leave now, else how long until it may: a whole group leaves
        at once; with a group in flight, the next when that one has been out for
        `overlap_after` (or lands first); with none, one of `LINGER_TXS` or more at once, a
        smaller one when its oldest transaction has waited `linger`. Call with the lock
        held and something queued."""
        if self._closed or len(self._queue) >= MAX_BATCH_TXS \
                or self._queued_bytes >= MAX_BATCH_BYTES:
            return 0.0
        now = time.monotonic()
        if self._in_flight:
            return max(0.0, self._overlap_after - (now - min(self._in_flight.values())))
        if len(self._queue) >= LINGER_TXS:
            return 0.0
        return max(0.0, self._queue[0].queued_at + self._linger - now)

    def _next_batch(self, sender: int) -> list[_Pending] | None:
        """Whatever is waiting, up to the batch limits, once it may leave (`_wait_to_send`);
        None once closed and empty. The group counts as in flight for `sender` until
        `_landed`."""
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                wait = self._wait_to_send()
                if not wait:
                    break
                self._cond.wait(wait)
            batch: list[_Pending] = []
            size = 0
            while self._queue and len(batch) < MAX_BATCH_TXS:
                if batch and size + self._queue[0].size > MAX_BATCH_BYTES:
                    break
                size += self._queue[0].size
                batch.append(self._queue.popleft())
            self._queued_bytes -= size
            self._in_flight[sender] = time.monotonic()
            if self._queue:  # more than a group: the other sender sends it or times it
                self._cond.notify()
            return batch

    def _landed(self, sender: int) -> None:
        """`sender`'s group has its answers; the sender itself takes the next (no wake-up)."""
        with self._cond:
            self._in_flight.pop(sender, None)

    def _send_loop(self, sender: int) -> None:
        while True:
            batch = self._next_batch(sender)
            if batch is None:
                return
            GROUP_SIZE.observe(len(batch))
            try:
                ready = self._sealed(batch)
                if ready:
                    self._send(ready, sender)
            except BaseException as exc:  # never leave a caller waiting
                log.exception("broadcast failed")
                for pending in batch:
                    if not pending.done.is_set():  # an orderer's OK stands (its durable word)
                        pending.resolve(pending.response, None if pending.response else exc)
            finally:
                self._landed(sender)

    @staticmethod
    def _sealed(batch: list[_Pending]) -> list[_Pending]:
        """Endorse the group's unsealed transactions, one signature per seal (in practice one
        for the group); what could not be sealed fails to its callers and is not sent."""
        groups: dict[Seal, list[_Pending]] = {}
        for pending in batch:
            if pending.seal is not None and not pending.tx:
                groups.setdefault(pending.seal, []).append(pending)
        for seal, group in groups.items():
            try:
                made = sealed([p.envelope for p in group], seal)  # type: ignore[misc]
            except Exception as exc:  # never leave a caller waiting
                log.exception("endorsing a group of %d failed", len(group))
                for pending in group:
                    pending.resolve(error=exc)
                continue
            for pending, (raw, endorsement) in zip(group, made, strict=True):
                pending.tx, pending.endorsement = raw, endorsement
        return [p for p in batch if not p.done.is_set()]

    def _send(self, batch: list[_Pending], sender: int) -> None:
        """Try the orderers in `OrdererChoice`'s order (the other senders' calls counted as
        busy); each gets what the ones before did not acknowledge."""
        with self._cond:
            order = self._choice.order(
                {index for other, index in self._calling.items() if other != sender})
            self._calling[sender] = order[0]
        left = batch
        try:
            for index in order:
                with self._cond:
                    self._calling[sender] = index
                left = self._try(index, left)
                if not left:
                    return
        finally:
            with self._cond:
                self._calling.pop(sender, None)
        for pending in left:
            pending.give_up()

    def _try(self, index: int, batch: list[_Pending]) -> list[_Pending]:
        """`_call`, then the orderer judged by its verdict and what it acknowledged
        watched; returns what it did not acknowledge."""
        left, verdict = self._call(index, batch)
        with self._cond:
            if verdict == "in_time":
                self._choice.in_time(index)
            elif verdict in ("late", "failed"):
                self._choice.strike(index)
        if verdict in ("late", "failed"):
            COOLDOWNS.labels(self._names[index], verdict).inc()
        # Watched (on disk, with a journal) before any caller is told OK: a restart of this
        # endorser must not forget an acknowledgement a dropping orderer gave.
        self._watch_acknowledged(index, batch, left)
        for pending in batch:
            if pending.response is not None and not pending.done.is_set():
                pending.resolve(pending.response)
        return left

    # -- acknowledgements checked against the ledger (ack_watch.py) ----------------------

    def _watch_acknowledged(self, index: int, batch: list[_Pending],
                            left: list[_Pending]) -> list[tuple[str, bytes, bool]]:
        """What `index` acknowledged of `batch` (`left`: what it did not), watched; returns
        it as (tx id, endorsed transaction, whether it answered `duplicate`)."""
        watch = self._watch
        if watch is None or len(left) == len(batch):
            return []
        acknowledged = [(p.tx_id, p.tx, p.response.duplicate) for p in batch
                        if p.response is not None]
        watch.acknowledged(index, acknowledged)
        return acknowledged

    def _watch_loop(self) -> None:
        while not self._watch_stop.wait(WATCH_INTERVAL):
            try:
                self.resend_overdue()
            except Exception:  # the watch must outlive a bug, or a dropping orderer wins
                log.exception("sending overdue acknowledged transactions again failed")

    def resend_overdue(self) -> None:
        """Send the overdue acknowledged transactions the ledger does not hold again, in
        groups by the orderer that last acknowledged them; strike each orderer once if a
        witness took as new any that it had acknowledged as new."""
        assert self._watch is not None
        by_orderer: dict[int, list[Watched]] = {}
        committed = []
        for watched in self._watch.due():
            if self._committed(watched.tx_id):
                committed.append(watched.tx_id)
            else:
                by_orderer.setdefault(watched.acknowledged_by, []).append(watched)
        self._watch.committed(committed)
        lost: dict[int, int] = {}
        for acknowledger, overdue in by_orderer.items():
            for group in _groups(overdue):
                if self._watch_stop.is_set():
                    return
                took_any, taken_as_new = self._resend(acknowledger, group)
                if taken_as_new:
                    lost[acknowledger] = lost.get(acknowledger, 0) + taken_as_new
                if not took_any:
                    break  # no orderer took any (all down or full): these come due again
        for acknowledger, count in lost.items():
            name = self._names[acknowledger]
            log.warning("orderer %s acknowledged %d transactions that another orderer took "
                        "as new %.0f s later: it did not pass them on; striking it", name,
                        count, self._watch.lost_after)
            with self._cond:
                self._choice.strike(acknowledger)
            COOLDOWNS.labels(name, "lost").inc()
            LOST_ACKNOWLEDGEMENTS.labels(name).inc(count)

    def _resend(self, acknowledger: int, overdue: list[Watched]) -> tuple[bool, int]:
        """`overdue` again: to the orderers with no recent strikes first, then the others,
        `acknowledger` (which last acknowledged it) last. Sending again moves no lead and
        strikes nobody by itself. Returns whether any orderer took any of it, and how many
        of those `acknowledger` had taken as new the witnesses (the other orderers with no
        recent strikes) took as new."""
        assert self._watch is not None
        RESENT.inc(len(overdue))
        with self._cond:
            order = [i for i in self._choice.order(set(self._calling.values()))
                     if i != acknowledger]
            witnesses = {i for i in order if self._choice.clean(i)}
        order = ([i for i in order if i in witnesses] + [i for i in order if i not in witnesses]
                 + [acknowledger])
        blamable = {w.tx_id for w in overdue if w.orderer is not None}
        left = [_Pending(w.tx, w.tx_id) for w in overdue]
        taken_as_new = 0
        try:
            for index in order:
                with self._cond:
                    self._calling[WATCH_SENDER] = index
                tried = left
                left, _ = self._call(index, tried)
                acknowledged = self._watch_acknowledged(index, tried, left)
                if index in witnesses:
                    taken_as_new += sum(1 for tx_id, _, duplicate in acknowledged
                                        if not duplicate and tx_id in blamable)
                if not left:
                    break
        finally:
            with self._cond:
                self._calling.pop(WATCH_SENDER, None)
        by_id = {w.tx_id: w for w in overdue}
        for pending in left:  # nobody took it now: look again later
            self._watch.retry(by_id[pending.tx_id])
        return len(left) < len(overdue), taken_as_new

    def _call(self, index: int, batch: list[_Pending]) -> tuple[list[_Pending], str]:
        """One orderer's try at `batch`: (what it did not acknowledge, its verdict). "failed":
        the call failed (a timeout too), or its answer refused a transaction for any reason
        but a full pool or was malformed; "late": otherwise, it answered after `late_after`
        (even only to say it is full); "in_time": it acknowledged some and did nothing of the
        above; "refused": it only said it is full (RESOURCE_EXHAUSTED), in time: no fault of
        the orderer."""
        name = self._names[index]
        request = orderer_pb2.BroadcastBatchRequest(endorsed_transactions=[p.tx for p in batch])
        started = self._clock()
        answered: float | None = None  # when the batch call's answer came
        code: grpc.StatusCode | None = None  # the batch call's failure
        try:
            response = self._stubs[index].BroadcastBatch(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNIMPLEMENTED:  # an older orderer: unary calls
                taken, faulty = self._send_unary(index, batch, started)
            else:
                for pending in batch:
                    pending.note(name, code, _status_text(code, exc.details()))  # type: ignore[attr-defined]
                taken, faulty = 0, code != grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            answered = self._clock()  # the orderer's answer, not our handling of it
            taken, faulty = self._take(name, batch, response)
        answered_in = (self._clock() if answered is None else answered) - started
        if answered is not None or code == grpc.StatusCode.UNIMPLEMENTED:
            ANSWER_SECONDS.labels(name).observe(answered_in)  # an answer, not a failure
        if faulty:
            verdict = "failed"
        elif answered_in > self._late_after:
            verdict = "late"
        else:
            verdict = "in_time" if taken else "refused"
        return [pending for pending in batch if pending.response is None], verdict

    def _take(self, name: str, batch: list[_Pending],
              response: orderer_pb2.BroadcastBatchResponse) -> tuple[int, bool]:
        """Resolve the transactions an orderer's batch answer acknowledges; note why for the
        others. Returns how many it acknowledged, and whether it was at fault: a malformed
        answer, or a refusal other than a full pool (the endorser checked everything an
        orderer checks)."""
        if len(response.results) != len(batch):
            for pending in batch:
                pending.note(name, None, f"answered {len(response.results)} results for "
                                         f"{len(batch)} transactions")
            return 0, True
        taken, faulty = 0, False
        for pending, result in zip(batch, response.results, strict=True):
            code = _CODES.get(result.code, grpc.StatusCode.UNKNOWN)
            if code != grpc.StatusCode.OK:
                pending.note(name, code, _status_text(code, result.message),
                             result.retry_after_ms)
                faulty = faulty or code != grpc.StatusCode.RESOURCE_EXHAUSTED
            elif result.tx_id != pending.tx_id:
                pending.note(name, None, f"acknowledged tx id {result.tx_id!r} instead")
                faulty = True
            else:
                pending.accept(orderer_pb2.BroadcastResponse(
                    tx_id=result.tx_id, duplicate=result.duplicate))
                taken += 1
        return taken, faulty

    def _send_unary(self, index: int, batch: list[_Pending], started: float
                    ) -> tuple[int, bool]:
        """The unary Broadcast, for an orderer without BroadcastBatch: every call within one
        timeout from `started` (when the batch call began), so an orderer cannot hold a group
        for a timeout per transaction. Returns how many it acknowledged, and whether it was
        at fault (as `_take`)."""
        name = self._names[index]
        deadline = started + self._timeout
        taken, faulty = 0, False
        for pending in batch:
            left = deadline - self._clock()
            if left <= 0:
                pending.note(name, grpc.StatusCode.DEADLINE_EXCEEDED,
                             "DEADLINE_EXCEEDED: its unary calls took the whole timeout")
                faulty = True
                continue
            request = orderer_pb2.BroadcastRequest(endorsed_transaction=pending.tx)
            try:
                response = self._stubs[index].Broadcast(request, timeout=left)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                pending.note(name, code, _status_text(code, exc.details()))  # type: ignore[attr-defined]
                faulty = faulty or code != grpc.StatusCode.RESOURCE_EXHAUSTED
                continue
            if response.tx_id != pending.tx_id:
                pending.note(name, None, f"acknowledged tx id {response.tx_id!r} instead")
                faulty = True
                continue
            pending.accept(response)
            taken += 1
        return taken, faulty


def _status_text(code: grpc.StatusCode, details: str | None) -> str:
    return f"{code.name}: {details}" if details else code.name


def _groups(overdue: list[Watched]) -> list[list[Watched]]:
    """`overdue` in groups within a BroadcastBatch's limits."""
    groups: list[list[Watched]] = []
    group: list[Watched] = []
    size = 0
    for watched in overdue:
        if group and (len(group) == MAX_BATCH_TXS or size + len(watched.tx) > MAX_BATCH_BYTES):
            groups.append(group)
            group, size = [], 0
        group.append(watched)
        size += len(watched.tx)
    if group:
        groups.append(group)
    return groups
