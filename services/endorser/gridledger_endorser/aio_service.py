"""EndorserService on the asyncio server (core rpc/aio_server.py): the same calls, checks,
outcomes and statuses as EndorserServicer, whose steps it takes, without a thread per call.

A call's computing (admission, the checks and simulation, matching) runs on the loop's thread,
where it would have held a CPU slot; its wait for the orderers' acknowledgement is a future the
broadcaster's sender threads resolve, so no thread sits waiting. Checks of a large batch are
taken a slice at a time, letting other calls (a meter's RequestOptions) in between; so are
the trade requests of a RequestOptionsBatch. A
submission, once admitted, runs to its end whatever its caller does (`_submit`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from gridledger.endorser.v1 import endorser_pb2, endorser_pb2_grpc
from gridledger_core.rpc.aio_context import Aborted, SyncContext, refuse
from gridledger_endorser.service import (
    EndorserServicer,
    Outcome,
    batch_refusal,
    batch_response,
    member_of_caller,
    options_batch_refusal,
    options_batch_response,
    retry_trailer,
    single_response,
)

# Checks between two turns of the loop (~10-30 ms of work).
CHECK_SLICE = 32


class AsyncEndorserServicer(endorser_pb2_grpc.EndorserServiceServicer):
    def __init__(self, servicer: EndorserServicer) -> None:
        self._servicer = servicer
        self._running: set[asyncio.Future[list[Outcome]]] = set()

    async def SubmitTransaction(self, request: endorser_pb2.SubmitTransactionRequest,
                                context: grpc.aio.ServicerContext
                                ) -> endorser_pb2.SubmitTransactionResponse:
        result = (await self._submit([request.envelope]))[0]
        if result.code != grpc.StatusCode.OK:
            return refuse(context, result.code, result.message,
                            retry_trailer(result.retry_after_ms)
                            if result.retry_after_ms else ())
        return single_response(result)

    async def SubmitBatch(self, request: endorser_pb2.SubmitBatchRequest,
                          context: grpc.aio.ServicerContext) -> endorser_pb2.SubmitBatchResponse:
        refusal = batch_refusal(request)
        if refusal:
            return refuse(context, grpc.StatusCode.INVALID_ARGUMENT, refusal)
        return batch_response(await self._submit(list(request.envelopes)))

    async def RequestOptions(self, request: endorser_pb2.RequestOptionsRequest,
                             context: grpc.aio.ServicerContext
                             ) -> endorser_pb2.RequestOptionsResponse:
        return await _inline(self._servicer.RequestOptions, request, context)

    async def RequestOptionsBatch(self, request: endorser_pb2.RequestOptionsBatchRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> endorser_pb2.RequestOptionsBatchResponse:
        refusal = options_batch_refusal(request)
        if refusal:
            return refuse(context, grpc.StatusCode.INVALID_ARGUMENT, refusal)
        member = member_of_caller()
        requests = request.requests
        results = []
        for start in range(0, len(requests), CHECK_SLICE):
            if start:  # a slice at a time: single calls get in between
                await asyncio.sleep(0)
            results += [self._servicer.options_in_batch(r, member)
                        for r in requests[start:start + CHECK_SLICE]]
        return options_batch_response(results)

    async def GetBook(self, request: endorser_pb2.GetBookRequest,
                      context: grpc.aio.ServicerContext) -> endorser_pb2.GetBookResponse:
        return await _inline(self._servicer.GetBook, request, context)

    async def _submit(self, envelopes: list[Any]) -> list[Outcome]:
        """EndorserServicer._submit's steps, awaiting the acknowledgements. The submission
        runs as a task of its own that the call only awaits: a caller that goes away (or
        whose deadline passes) cancels its wait, never the submission, so what it admitted
        is checked, forwarded and answered, and the admission slots of whatever the orderers
        do not acknowledge are freed, as on the threaded server."""
        task = asyncio.ensure_future(self._submission(envelopes))
        self._running.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def _submission(self, envelopes: list[Any]) -> list[Outcome]:
        servicer = self._servicer
        submission = servicer.admit(envelopes)
        passed = []
        work = submission.work
        for start in range(0, len(work), CHECK_SLICE):
            if start:
                await asyncio.sleep(0)
            passed += servicer.check(work[start:start + CHECK_SLICE], submission)
        if passed:
            servicer.checked(submission)
            answers = await servicer.forward_async(passed, asyncio.get_running_loop())
            servicer.record_answers(passed, answers, submission)
        return submission.outcomes_in_order()


async def _inline(method: Callable[[Any, Any], Any], request: Any,
                  context: grpc.aio.ServicerContext) -> Any:
    shim = SyncContext()
    try:
        return method(request, shim)
    except Aborted as aborted:
        return refuse(context, aborted.code, aborted.details, shim.trailing)
