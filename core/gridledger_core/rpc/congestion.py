"""Client-side congestion control for a client with many calls to one endorser (a head-end
system, the benchmark's load generator): how many calls it keeps in flight.

Admission control refuses what the network cannot commit within its budget, but a refusal
is still a whole gRPC call (TLS, HTTP/2, a handler) on the endorser's one loop. A client
that answers each refusal by retrying that call later while it keeps starting new ones
makes the endorser spend on refusals the CPU it needs to commit what it admitted: at twice
the capacity offered, about 700 refused calls a second (docs/performance.md, eighth
round). So a client bounds its calls in flight by a window that follows what gets
admitted, as TCP's congestion window follows what gets through (AIMD):

- every admitted call grows the window: by 1 until the first refusal (slow start, which
  doubles it each round trip); after a cut, as CUBIC does (RFC 9438): back towards the
  window it had before the cut along a cubic of the time since, reached after
  K = cbrt(W_max (1 - DECREASE) / CUBIC_C) seconds, slowly near it, faster beyond; each
  admitted call moves it 1/window of the way to the curve (capped at 1.5 x the window: at
  most +50 % a round trip), at least by 1/window (about 1 each round trip, Reno's pace);
  but only up to twice the most calls it had in flight, so a lightly loaded client cannot
  store up a burst. Reno's pace alone took longer than a 30 s overload phase to win back one
  cut of a window of 200 calls with round trips of half a second, so a client held its
  calls (and the network sat below capacity) long after the refusals had stopped;
- a refusal (RESOURCE_EXHAUSTED, or a deadline passed) shrinks it to `DECREASE` of itself,
  at most once per round trip: only a call sent after the last cut can cut again, so the
  refusals of one burst are one signal, not a collapse to the floor;
- so does an answer slower than `slow_after` (default `SLOW_ANSWER`, the endorser's
  default latency budget), though its call was admitted, as an ECN mark cuts TCP's window
  without a packet lost (RFC 3168). Refusals alone came too late: gRPC's asyncio server
  takes new calls from gRPC's core one at a time, between its loop's other work, so calls
  arriving faster queue inside gRPC, before admission control or a member's share of calls
  can count or refuse them (at twice the capacity offered the load generator had about
  1,100 calls in flight while the endorser had at most 128 in progress and 55-375
  transactions in flight). Slow start, seeing every call admitted, doubled the window
  into that queue, and accepted calls waited 1-2 s there for up to 12 s of an overload,
  until refusals came (docs/performance.md, twenty-ninth round).

The refused call itself waits at least the endorser's hint (`backoff.Backoff`: the hint or
the exponential delay, whichever is longer, plus jitter) before it asks for a slot again.
New calls are not paused, as a one-call-at-a-time client such as the meter agent pauses: the
window already shrank, and pausing every call for the hint drained the pipeline and left
the network idle (measured: 8-12 % of the machine unused at 2x). A call waiting for a slot
waits in the client's own bounded outbox, where the client sheds what it cannot hold; the
endorser then sees about as many calls as it admits. `CallWindow` is the pure rule (the
clock is injected); `AsyncCallWindow` makes asyncio tasks wait for a slot, first come first
served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from gridledger_core.rpc.latency_budget import DEFAULT_LATENCY_BUDGET_MS

INITIAL_WINDOW = 8.0
MIN_WINDOW = 1.0
MAX_WINDOW = 1024.0
# An admitted call answered later than this cuts the window as a refusal does (module
# docstring): the endorser's default latency budget, submission to commit, so an answer
# slower than all of it means a queue ahead of the endorser's own bound.
SLOW_ANSWER = DEFAULT_LATENCY_BUDGET_MS / 1000
# As CUBIC's 0.7 rather than Reno's 0.5: the endorser's bound follows the commit rate and a
# refusal is often one block's hiccup, so a milder cut keeps the pipeline fuller.
DECREASE = 0.7
# RFC 9438's constant (window in calls, time in seconds): back to the pre-cut window within
# 3-6 s for windows of 50-200 calls.
CUBIC_C = 0.4


class CallWindow:
    """The window of one client towards one endorser. `start()` takes a slot (returns its
    send time, or None when the window is full); every started call ends in exactly one of
    `admitted`, `refused` or `ended`."""

    def __init__(self, initial: float = INITIAL_WINDOW, floor: float = MIN_WINDOW,
                 ceiling: float = MAX_WINDOW, slow_after: float = SLOW_ANSWER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < floor <= initial <= ceiling:
            raise ValueError(f"need 0 < floor <= initial <= ceiling, got {floor}, {initial}, "
                             f"{ceiling}")
        if not slow_after > 0:
            raise ValueError(f"slow_after must be above 0 s, got {slow_after}")
        self.window = initial
        self.in_flight = 0
        self._floor, self._ceiling = floor, ceiling
        self._slow_after = slow_after
        self._clock = clock
        self._slow_start = True
        self._last_cut = float("-inf")  # when the window was last cut (clock)
        self._window_at_cut = initial  # W_max: the window just before the last cut
        self._k = 0.0  # seconds from the last cut until the curve is back at W_max
        self._peak = 0  # the most calls in flight since the last cut

    def free(self) -> int:
        """Slots a call could take now."""
        return max(0, int(self.window) - self.in_flight)

    def start(self) -> float | None:
        if self.free() == 0:
            return None
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)
        return self._clock()

    def admitted(self, sent_at: float | None = None) -> None:
        """Admitted: the call sent at `sent_at` (its answer's delay is then judged too)."""
        if sent_at is not None and self._clock() - sent_at > self._slow_after:
            self.refused(sent_at)  # a congestion signal, though the call got through
            return
        self._end()
        if self._peak * 2 < self.window:
            # Not the limit (RFC 7661's idea): growing here would only store up a burst
            # for the next stall, so the window stays within twice the most ever used.
            return
        if self._slow_start:
            grown = self.window + 1.0
        else:
            # RFC 9438 4.2: each admitted call moves the window 1/window of the way to the
            # curve, the curve capped at 1.5 x the window (so it never doubles per round
            # trip once far past the old size); Reno's pace is the least.
            target = min(self._cubic(self._clock() - self._last_cut), 1.5 * self.window)
            grown = self.window + max(1.0, target - self.window) / self.window
        self.window = min(self._ceiling, grown)

    def refused(self, sent_at: float) -> None:
        """Refused (RESOURCE_EXHAUSTED) or timed out: the call sent at `sent_at`."""
        self._end()
        if sent_at > self._last_cut:  # one cut per burst of refusals
            self._window_at_cut = self.window
            self.window = max(self._floor, self.window * DECREASE)
            # K: when the curve is back at the old size, from where the window now is (the
            # floor may have kept it above DECREASE of it).
            self._k = ((self._window_at_cut - self.window) / CUBIC_C) ** (1 / 3)
            self._slow_start = False
            self._last_cut = self._clock()
            self._peak = self.in_flight

    def _cubic(self, since_cut: float) -> float:
        """CUBIC's window `since_cut` seconds after the last cut."""
        return CUBIC_C * (since_cut - self._k) ** 3 + self._window_at_cut

    def ended(self) -> None:
        """Any other outcome (a verdict on the request, the endorser unreachable): the
        window says nothing about it."""
        self._end()

    def _end(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("a call ended that was never started")
        self.in_flight -= 1


class Call:
    """One call's slot in an `AsyncCallWindow.call()` block: mark it `admitted()` or
    `refused()`; unmarked (another verdict, an exception, a cancellation) it just ends."""

    __slots__ = ("outcome", "sent_at")

    def __init__(self, sent_at: float) -> None:
        self.sent_at = sent_at
        self.outcome = "ended"

    def admitted(self) -> None:
        self.outcome = "admitted"

    def refused(self) -> None:
        self.outcome = "refused"


class AsyncCallWindow:
    """`CallWindow` for asyncio tasks. `async with window.call() as call:` waits for a slot
    (first come, first served), and gives it back on leaving the block, however it is left.
    A waiter is handed its slot when it is woken, so it cannot lose it to a newcomer."""

    def __init__(self, window: CallWindow) -> None:
        self.state = window
        self._waiters: collections.deque[asyncio.Future[float]] = collections.deque()

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[Call]:
        call = Call(await self._acquire())
        try:
            yield call
        finally:
            if call.outcome == "admitted":
                self.state.admitted(call.sent_at)
            elif call.outcome == "refused":
                self.state.refused(call.sent_at)
            else:
                self.state.ended()
            self._wake()

    async def _acquire(self) -> float:
        """A slot: its send time."""
        if not self._waiters:
            sent_at = self.state.start()
            if sent_at is not None:
                return sent_at
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # no slot was taken for it; drop it if still queued
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            else:  # handed a slot, then cancelled before it ran: give the slot back
                self.state.ended()
                self._wake()
            raise

    def _wake(self) -> None:
        """Hand free slots to the waiters in their order."""
        while self._waiters and self.state.free() > 0:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled one is skipped (its task removes nothing)
                sent_at = self.state.start()
                assert sent_at is not None
                waiter.set_result(sent_at)
