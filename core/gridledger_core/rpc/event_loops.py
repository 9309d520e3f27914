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
from collections.abc import Callable

import uvloop

DEFAULT = "uvloop"
FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
CHOICES = tuple(FACTORIES)


def new_event_loop(kind: str = DEFAULT) -> asyncio.AbstractEventLoop:
    """A new loop of `kind` (one of CHOICES); ValueError for any other."""
    try:
        return FACTORIES[kind]()
    except KeyError:
        raise ValueError(f"event loop {kind!r} is not one of {', '.join(CHOICES)}") from None
