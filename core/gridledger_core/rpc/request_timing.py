"""When a call's one request arrived, for the server's latency metrics.

Every method is served as if its request were a stream (authz.py), so a handler starts when
the call does, before its request arrives; the metrics interceptor, around it, would count
the client's time to send the request as the server's handling time. The authorisation
interceptor marks the arrival here; the metrics interceptor times a unary request's call
from that mark (from the call's start when nothing marked it: a refusal before the request).
A context variable: the asyncio server runs each call in a task of its own, the threaded
server on one thread, so the two interceptors of one call share it.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

REQUEST_ARRIVED: ContextVar[float] = ContextVar("gridledger_request_arrived", default=0.0)


def request_arrived() -> None:
    REQUEST_ARRIVED.set(time.perf_counter())
