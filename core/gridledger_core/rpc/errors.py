"""One mapping from the ledger's validation codes to gRPC status codes, for every service."""

from __future__ import annotations

from typing import NoReturn

import grpc

from gridledger_core.ledger.errors import Code, TxInvalid

STATUS_OF_CODE: dict[int, grpc.StatusCode] = {
    Code.TX_VALIDATION_CODE_MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Code.TX_VALIDATION_CODE_BAD_HEADER: grpc.StatusCode.INVALID_ARGUMENT,
    Code.TX_VALIDATION_CODE_INVALID_BODY: grpc.StatusCode.INVALID_ARGUMENT,
    Code.TX_VALIDATION_CODE_BAD_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
    Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER: grpc.StatusCode.UNAUTHENTICATED,
    Code.TX_VALIDATION_CODE_NOT_AUTHORIZED: grpc.StatusCode.PERMISSION_DENIED,
    Code.TX_VALIDATION_CODE_ENDORSEMENT_FAILURE: grpc.StatusCode.PERMISSION_DENIED,
    Code.TX_VALIDATION_CODE_DUPLICATE_TXID: grpc.StatusCode.ALREADY_EXISTS,
    Code.TX_VALIDATION_CODE_STATE_CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
}


class EdgeRefusal(TxInvalid):
    """A refusal at a node's edge (not a ledger rule) with its own gRPC status, e.g. a cap
    (RESOURCE_EXHAUSTED); the validation code is only for metrics labels."""

    def __init__(self, code: int, status: grpc.StatusCode, message: str,
                 retry_after_ms: int = 0) -> None:
        super().__init__(code, message)
        self.status = status
        self.retry_after_ms = retry_after_ms  # for a refusal for now: when to come back


def status_of(error: TxInvalid) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and details that refuse `error`, in a call or in a batch's result."""
    if isinstance(error, EdgeRefusal):
        return error.status, error.message
    return (STATUS_OF_CODE.get(error.code, grpc.StatusCode.INVALID_ARGUMENT),
            f"{error.code_name}: {error.message}")


def abort_invalid(context: grpc.ServicerContext, error: TxInvalid) -> NoReturn:
    context.abort(*status_of(error))


def describe_rpc_error(exc: grpc.RpcError) -> str:
    """A failed call for a log line: its status code's name and details ("error: ..." for
    an RpcError that carries none, e.g. one raised before the call started)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'error'}: {details}"
