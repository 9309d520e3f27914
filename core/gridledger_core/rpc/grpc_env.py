"""How every GridLedger process runs gRPC's core: settings that gRPC reads from the
environment once, when `grpc` is first imported, so they are given to a process before it
starts (the devnet launcher, the container image, the benchmark's load generator), never
set from inside one.

`GRPC_EXPERIMENTS=-event_engine_listener,-event_engine_client`: the connections a process
accepts and opens are served by gRPC's polling engine in the thread that already waits for
gRPC's events (grpc.aio's poller, a sync server's or channel's polling thread) instead of
being handed on to EventEngine's worker threads. Measured with grpcio 1.85.1 (docs/
performance.md, twenty-fifth round): about 30 % fewer context switches per call on a
grpc.aio server and 11-37 % less client CPU per call; end to end, more committed
transactions a second on the batch API in each of seven pairs (+2 % to +58 %) and a lower
70 % p99 in five of six, the single-call max rate unchanged within its spread. Both are
gRPC's own switches back to its older I/O path; measure again before upgrading grpcio.
"""

from __future__ import annotations

from collections.abc import Mapping

SETTINGS: dict[str, str] = {"GRPC_EXPERIMENTS": "-event_engine_listener,-event_engine_client"}


def environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` (a process environment) with SETTINGS added where it does not set them: an
    operator's own value wins."""
    return {**SETTINGS, **base}
