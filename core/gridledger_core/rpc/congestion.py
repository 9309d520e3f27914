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
  doubles it each round trip), then by 1/window (about 1 each round trip);
- a refusal (RESOURCE_EXHAUSTED, or a deadline passed) shrinks it to `DECREASE` of itself,
  at most once per round trip: only a call sent after the last cut can cut again, so the
  refusals of one burst are one signal, not a collapse to the floor.

The refused call itself waits for the endorser's hint plus jitter (`backoff.Backoff`)
before it asks for a slot again. New calls are not paused (as a single-call client such as
the meter agent pauses): the window already shrank, and pausing every call for the hint
drained the pipeline and left the network idle (measured: 8-12 % of the machine unused at
2x). A call waiting for a slot waits in the client's own bounded outbox, where the client
sheds what it cannot hold; the endorser then sees about as many calls as it admits.
`CallWindow` is the pure rule (the clock is injected); `AsyncCallWindow` makes asyncio
tasks wait for a slot, first come first served.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

INITIAL_WINDOW = 8.0
MIN_WINDOW = 1.0
MAX_WINDOW = 1024.0
# As CUBIC's 0.7 rather than Reno's 0.5: the endorser's bound follows the commit rate and a
# refusal is often one block's hiccup, so a milder cut keeps the pipeline fuller.
DECREASE = 0.7


class CallWindow:
    """The window of one client towards one endorser. `start()` takes a slot (returns its
    send time, or None when the window is full); every started call ends in exactly one of
    `admitted`, `refused` or `ended`."""

    def __init__(self, initial: float = INITIAL_WINDOW, floor: float = MIN_WINDOW,
                 ceiling: float = MAX_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < floor <= initial <= ceiling:
            raise ValueError(f"need 0 < floor <= initial <= ceiling, got {floor}, {initial}, "
                             f"{ceiling}")
        self.window = initial
        self.in_flight = 0
        self._floor, self._ceiling = floor, ceiling
        self._clock = clock
        self._slow_start = True
        self._last_cut = float("-inf")  # when the window was last halved (clock)

    def free(self) -> int:
        """Slots a call could take now."""
        return max(0, int(self.window) - self.in_flight)

    def start(self) -> float | None:
        if self.free() == 0:
            return None
        self.in_flight += 1
        return self._clock()

    def admitted(self) -> None:
        self._end()
        grown = self.window + (1.0 if self._slow_start else 1.0 / self.window)
        self.window = min(self._ceiling, grown)

    def refused(self, sent_at: float) -> None:
        """Refused (RESOURCE_EXHAUSTED) or timed out: the call sent at `sent_at`."""
        self._end()
        if sent_at > self._last_cut:  # one cut per burst of refusals
            self.window = max(self._floor, self.window * DECREASE)
            self._slow_start = False
            self._last_cut = self._clock()

    def ended(self) -> None:
        """Any other outcome (a verdict on the request, the endorser unreachable): the
        window says nothing about it."""
        self._end()

    def _end(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("a call ended that was never started")
        self.in_flight -= 1


class AsyncCallWindow:
    """`CallWindow` for asyncio tasks: `await acquire()` waits for the gate and a slot
    (first come, first served) and returns the send time; then one of `admitted`, `refused`
    or `ended`. Wakes only as many waiters as there are free slots."""

    def __init__(self, window: CallWindow) -> None:
        self.state = window
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._woken = 0  # waiters woken for a slot that have not run yet

    async def acquire(self) -> float:
        if not self._waiters and self._woken == 0:
            sent_at = self.state.start()
            if sent_at is not None:
                return sent_at
        first = True
        while True:
            waiter = asyncio.get_running_loop().create_future()
            if first:
                self._waiters.append(waiter)
            else:  # lost its slot (the window shrank): keeps its turn
                self._waiters.appendleft(waiter)
            first = False
            self._wake()
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                else:  # woken, then cancelled: pass the turn on
                    self._woken -= 1
                    self._wake()
                raise
            self._woken -= 1
            sent_at = self.state.start()
            if sent_at is not None:
                return sent_at

    def admitted(self) -> None:
        self.state.admitted()
        self._wake()

    def refused(self, sent_at: float) -> None:
        self.state.refused(sent_at)
        self._wake()

    def ended(self) -> None:
        self.state.ended()
        self._wake()

    def _wake(self) -> None:
        """Wake as many waiters as there are free slots."""
        free = self.state.free() - self._woken
        while free > 0 and self._waiters:
            self._waiters.popleft().set_result(None)
            self._woken += 1
            free -= 1
