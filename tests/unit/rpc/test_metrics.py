"""The server metrics' series per method: every call counted once, with its final code."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from gridledger_core.rpc.metrics import AioMetricsInterceptor, MetricsInterceptor

SERVICE = "gridledger.test.v1.Probe"


class _Context:
    """What the interceptor reads of a call: the code a handler set (None: none)."""

    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code


def _handled(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method,
        "grpc_code": code}) or 0.0


def _started(method: str) -> float:
    return REGISTRY.get_sample_value("grpc_server_started_total", {
        "grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method}) or 0.0


def _observed(method: str) -> float:
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", {
        "grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": method}) or 0.0


class _Aborted(Exception):
    pass


def _answer(request: Any, context: Any) -> str:
    return "answer"


def _abort(request: Any, context: Any) -> str:
    raise _Aborted  # as context.abort: the code is set on the context first


def _fail(request: Any, context: Any) -> str:
    raise ValueError("a bug")


def _threaded_call(method: str, behaviour: Any, context: _Context) -> Any:
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    return MetricsInterceptor()._wrap(handler, f"/{SERVICE}/{method}").unary_unary(None,
                                                                                 context)


def _aio_unary(method: str, behaviour: Any) -> Any:
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    return AioMetricsInterceptor._wrap(handler, f"/{SERVICE}/{method}").unary_unary


def _asyncio_call(method: str, behaviour: Any, context: _Context) -> Any:
    async def coroutine(request: Any, context: Any) -> str:
        return behaviour(request, context)

    return asyncio.run(_aio_unary(method, coroutine)(None, context))


@pytest.mark.parametrize("server", [_threaded_call, _asyncio_call], ids=["threads", "asyncio"])
@pytest.mark.parametrize(("outcome", "behaviour", "context_code", "expected"), [
    ("Ok", _answer, None, "OK"),
    ("Aborted", _abort, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    ("Bug", _fail, None, "UNKNOWN"),
])
def test_a_call_is_counted_once_with_its_final_code(
        server: Any, outcome: str, behaviour: Any, context_code: grpc.StatusCode | None,
        expected: str) -> None:
    name = f"{server.__name__}{outcome}"
    started, handled, observed = _started(name), _handled(name, expected), _observed(name)
    try:
        assert server(name, behaviour, _Context(context_code)) == "answer"
    except (_Aborted, ValueError):
        assert expected != "OK"
    assert _started(name) == started + 1
    assert _handled(name, expected) == handled + 1
    assert _observed(name) == observed + 1


def test_an_asyncio_call_cancelled_midway_counts_as_cancelled() -> None:
    async def forever(request: Any, context: Any) -> str:
        await asyncio.sleep(3600)
        return "never"

    wrapped = _aio_unary("AioCancelled", forever)
    before = _handled("AioCancelled", "CANCELLED")

    async def call_then_cancel() -> None:
        task = asyncio.ensure_future(wrapped(None, _Context()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(call_then_cancel())
    assert _handled("AioCancelled", "CANCELLED") == before + 1
