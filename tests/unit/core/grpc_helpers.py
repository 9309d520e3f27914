"""Calling a servicer in process: a context whose abort raises, as gRPC's does."""

from __future__ import annotations

import grpc


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def set_trailing_metadata(self, metadata: object) -> None:
        self.trailers = metadata
