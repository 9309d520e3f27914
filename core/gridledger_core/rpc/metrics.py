"""gRPC server metrics with the grpc-ecosystem (go-grpc-prometheus) names, via an interceptor."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from gridledger_core.rpc.handler_cache import WrappedHandlers, wire_kind
from gridledger_core.rpc.request_timing import REQUEST_ARRIVED

STARTED = Counter("grpc_server_started", "RPCs started on the server.",
                  ["grpc_type", "grpc_service", "grpc_method"])
HANDLED = Counter("grpc_server_handled", "RPCs completed on the server, regardless of outcome.",
                  ["grpc_type", "grpc_service", "grpc_method", "grpc_code"])
HANDLING = Histogram("grpc_server_handling_seconds",
                     "Response latency of RPCs handled by the server.",
                     ["grpc_type", "grpc_service", "grpc_method"],
                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                              1, 2.5, 5, 10))


def _code_of(context: grpc.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self._handlers = WrappedHandlers(self._wrap)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(continuation(handler_call_details),
                                  handler_call_details.method)

    def _wrap(self, handler: Any, full_method: str) -> Any:
        found = _measured_kind(handler)
        if found is None:
            return handler  # streaming requests are left unmeasured (none of ours are hot)
        kind, behaviour, make = found
        series = MethodSeries(kind, full_method)
        wrap = self._wrap_unary if kind == "unary" else self._wrap_stream
        return make(wrap(behaviour, series),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    @staticmethod
    def _wrap_unary(behaviour: Callable[..., Any], series: MethodSeries) -> Callable[..., Any]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            with series.timed(context):
                return behaviour(request, context)
        return wrapper

    @staticmethod
    def _wrap_stream(behaviour: Callable[..., Iterator[Any]],
                     series: MethodSeries) -> Callable[..., Iterator[Any]]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with series.timed(context):
                yield from behaviour(request, context)
        return wrapper


class AioMetricsInterceptor(grpc.aio.ServerInterceptor):
    """MetricsInterceptor for an asyncio server (aio_server.py): the same series."""

    def __init__(self) -> None:
        self._handlers = WrappedHandlers(self._wrap)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(await continuation(handler_call_details),
                                  handler_call_details.method)

    @staticmethod
    def _wrap(handler: Any, full_method: str) -> Any:
        found = _measured_kind(handler)
        if found is None:
            return handler  # streaming requests are left unmeasured (none of ours are hot)
        kind, behaviour, make = found
        series = MethodSeries(kind, full_method)
        wrapper: Any = None
        if kind == "unary" and inspect.iscoroutinefunction(behaviour):
            async def unary(request: Any, context: Any) -> Any:
                with series.timed(context):
                    return await behaviour(request, context)
            wrapper = unary
        elif kind == "server_stream" and inspect.isasyncgenfunction(behaviour):
            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                with series.timed(context):
                    async for item in behaviour(request, context):
                        yield item
            wrapper = stream
        elif kind == "server_stream" and inspect.iscoroutinefunction(behaviour):
            async def writes(request: Any, context: Any) -> None:  # writes with context.write
                with series.timed(context):
                    await behaviour(request, context)
            wrapper = writes
        if wrapper is None:
            return handler
        return make(wrapper, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


# The kinds the metrics measure: (handler attribute, kind on the wire, handler factory). A
# unary request taken as a stream (authz.py) is measured as the wire's kind.
_MEASURED = (("unary_unary", "unary", grpc.unary_unary_rpc_method_handler),
             ("stream_unary", "unary", grpc.stream_unary_rpc_method_handler),
             ("unary_stream", "server_stream", grpc.unary_stream_rpc_method_handler),
             ("stream_stream", "server_stream", grpc.stream_stream_rpc_method_handler))


def _measured_kind(handler: Any) -> tuple[str, Any, Any] | None:
    """(kind on the wire, behaviour, handler factory) of a method with a unary request on
    the wire, else None."""
    for attr, kind, make in _MEASURED:
        behaviour = getattr(handler, attr)
        if behaviour is None:
            continue
        if attr.startswith("stream") and wire_kind(behaviour) != kind:
            return None  # a request that really streams
        return kind, behaviour, make
    return None


class MethodSeries:
    """One method's series with their labels bound once, when its handler is wrapped:
    `labels()` looks the child up under a lock, three times a call. `timed(context)`
    measures one call."""

    __slots__ = ("handled", "handling", "labels", "started", "unary")

    def __init__(self, kind: str, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.labels = (kind, service, method)
        self.unary = kind == "unary"
        self.started = STARTED.labels(kind, service, method)
        self.handling = HANDLING.labels(kind, service, method)
        self.handled: dict[str, Any] = {}  # code -> its child (gRPC's codes: bounded)

    def timed(self, context: grpc.ServicerContext) -> _TimedCall:
        return _TimedCall(self, context)


class _TimedCall:
    """One call's measurement, a plain context manager (no generator to create and resume
    per call): counts the call, times it (a unary call from its request's arrival,
    request_timing.py) and records its final status code."""

    __slots__ = ("_context", "_series", "_start", "_token")

    def __init__(self, series: MethodSeries, context: grpc.ServicerContext) -> None:
        self._series, self._context = series, context

    def __enter__(self) -> None:
        series = self._series
        series.started.inc()
        # Only a unary call's handler surely ends in the context it began in (a stream's
        # generator may be closed on another thread); its thread or task may have served
        # others.
        self._token = REQUEST_ARRIVED.set(0.0) if series.unary else None
        self._start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # An abort sets the code on the context before it raises; any other exception is
        # UNKNOWN; the asyncio server's call, cancelled or out of time, is CANCELLED; a
        # stream the client closed (GeneratorExit) is OK, as a completed one.
        if exc is None:
            code = _code_of(self._context)
        elif isinstance(exc, asyncio.CancelledError):
            code = "CANCELLED"
        elif isinstance(exc, Exception):
            code = _code_of(self._context) if self._context.code() else "UNKNOWN"
        else:
            code = "OK"
        series = self._series
        handled = series.handled.get(code)
        if handled is None:
            handled = series.handled[code] = HANDLED.labels(*series.labels, code)
        handled.inc()
        start = self._start
        if self._token is not None:
            start = max(start, REQUEST_ARRIVED.get())
            REQUEST_ARRIVED.reset(self._token)
        series.handling.observe(time.perf_counter() - start)
