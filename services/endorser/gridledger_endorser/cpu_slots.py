"""A bound on the handler threads doing Python work at once (the threaded server's).

The endorser's default asyncio server (aio_service.py) has no handler threads: its calls'
work all runs on the event loop's thread, so a slot there is always free. This bounds the
`--grpc-server threads` server, which serves calls on many gRPC handler threads because a
submit *waits* (for its batch signature, for an orderer's durable acknowledgement) far longer
than it computes. But when many of those threads compute at the same time they all contend
for the GIL: every switch costs a wake-up and a context switch, and gRPC's own server thread
(the one that takes new calls off the completion queue, where admission control cannot see
them) waits in that convoy too, so calls pile up unseen ahead of the handlers.
`python -m bench.grpc_server` (a trivial unary handler over mTLS): 234 µs of server CPU per
call with 64 busy threads against 138 µs with 8; matching RPC p99 at 1,000 requests/s 174 ms
with two slots against 462 ms without (docs/performance.md).

So the work that needs the GIL for long stretches (verifying, simulating, matching) runs
inside a slot, a few at a time; the waits run outside any slot. A thread waiting for a slot
blocks on a lock and costs nothing. Refusals (admission control) are decided before a slot
is taken, so shedding load never queues behind the work it sheds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Histogram

DEFAULT_CPU_SLOTS = 2

SLOT_WAIT = Histogram("gridledger_endorser_cpu_slot_wait_seconds",
                      "Time a handler waited for a CPU slot before its checks or matching.",
                      buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0))


class CpuSlots:
    def __init__(self, slots: int = DEFAULT_CPU_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"cpu slots must be at least 1, not {slots}")
        self.slots = slots
        self._semaphore = threading.BoundedSemaphore(slots)

    @contextmanager
    def held(self) -> Iterator[None]:
        started = time.perf_counter()
        with self._semaphore:
            SLOT_WAIT.observe(time.perf_counter() - started)
            yield
