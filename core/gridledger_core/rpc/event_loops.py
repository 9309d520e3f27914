"""Which asyncio event loop a process runs its gRPC calls on.

uvloop (libuv's loop, written in C) is the default: the endorser's one loop thread is where
single calls meet their ceiling, and part of every call's work there is the loop's own
(scheduling gRPC's callbacks, its futures, the handler's task), Python code on asyncio's
loop. Measured in interleaved pairs, uvloop cost the endorser less CPU per call and held
the matching RPC's tail lower (docs/performance.md, thirtieth round). `asyncio` (Python's
own loop) stays selectable, the endorser's `--event-loop`, as the fallback should a gRPC or
uvloop release disagree with the other. uvloop's clock (`loop.time()`) reads in whole
milliseconds: what needs finer time reads `time.monotonic()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

DEFAULT = "uvloop"
FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
CHOICES = tuple(FACTORIES)

T = TypeVar("T")


def new_event_loop(kind: str = DEFAULT) -> asyncio.AbstractEventLoop:
    """A new loop of `kind` (one of CHOICES); ValueError for any other."""
    try:
        return FACTORIES[kind]()
    except KeyError:
        raise ValueError(f"event loop {kind!r} is not one of {', '.join(CHOICES)}") from None


def run(main: Coroutine[Any, Any, T], kind: str = DEFAULT) -> T:
    """`asyncio.run(main)` on a new loop of `kind` (Python 3.11's asyncio.run takes no
    loop factory): the loop is closed afterwards, its async generators shut down."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        return runner.run(main)
