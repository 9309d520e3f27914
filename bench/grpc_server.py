"""What gRPC's Python server itself costs per call (`python -m bench.grpc_server`).

A server process and a client process on loopback, mTLS like the nodes (a throw-away P-256
certificate), 64 concurrent callers; server CPU per call:
- a trivial unary handler on gRPC's threaded server with 64 handler threads busy at once
  against 8: what GIL contention between handler threads costs (the endorser's CPU slots);
- a handler computing ~300 µs in Python (about an endorser call) on the threaded server (64
  and 8 threads) and on the asyncio server, where it runs on the event loop's thread: what
  the hand-offs between gRPC's polling thread and handler threads cost (the endorser's
  asyncio server, core rpc/aio_server.py);
- a trivial handler on the nodes' own servers (NodeServer, AioNodeServer) with a consortium's
  certificates: what the interceptors every call passes cost on top (metrics, the caller
  judged by its certificate and counted against its member's share as the call starts,
  core rpc/authz.py and rpc/call_shares.py);
- a trivial echo on the asyncio server on uvloop (as the endorser serves), as unary calls and
  as the messages of long-lived bidirectional streams (one per caller): what gRPC's work per
  call is against its work per message, the share a stream API would save.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import observe
from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.rpc.tls import CHANNEL_OPTIONS


def _certificate(directory: Path) -> tuple[bytes, bytes]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True,
                   capture_output=True)
    return key.read_bytes(), cert.read_bytes()


WORK_ROUNDS = 6_000  # ~300 µs of Python on this machine


def _work(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += i * i
    return total


_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class _Health(health_pb2_grpc.HealthServicer):
    def __init__(self, rounds: int) -> None:
        self._rounds = rounds

    def Check(self, request, context):  # type: ignore[no-untyped-def]
        _work(self._rounds)
        return _SERVING


class _AsyncHealth(health_pb2_grpc.HealthServicer):
    def __init__(self, rounds: int) -> None:
        self._rounds = rounds

    async def Check(self, request, context):  # type: ignore[no-untyped-def]
        _work(self._rounds)
        return _SERVING


def _serve(port: int, pem: tuple[bytes, bytes], workers: int, rounds: int) -> None:
    """workers > 0: the threaded server with that many handler threads; 0: asyncio."""
    if workers == 0:
        asyncio.run(_serve_asyncio(port, pem, rounds))
        return
    server = grpc.server(futures.ThreadPoolExecutor(workers))
    health_pb2_grpc.add_HealthServicer_to_server(_Health(rounds), server)
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([pem]))
    server.start()
    server.wait_for_termination()


async def _serve_asyncio(port: int, pem: tuple[bytes, bytes], rounds: int) -> None:
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(_AsyncHealth(rounds), server)
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([pem]))
    await server.start()
    await server.wait_for_termination()


async def _calls(port: int, cert: bytes, count: int, concurrency: int) -> int:
    """`count` health checks, `concurrency` at a time; how many failed."""
    channel = aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert),
                                 options=[*CHANNEL_OPTIONS,
                                          ("grpc.ssl_target_name_override", "localhost")])
    return await _drive(channel, health_pb2_grpc.HealthStub(channel).Check,
                        health_pb2.HealthCheckRequest(), count, concurrency)


async def _drive(channel: aio.Channel, method: Any, request: Any, count: int,
                 concurrency: int) -> int:
    """`count` calls of `method`, `concurrency` at a time, then the channel closed; how
    many failed."""
    failed = 0

    async def worker(n: int) -> None:
        nonlocal failed
        for _ in range(n):
            try:
                await method(request, timeout=30)
            except grpc.RpcError:
                failed += 1

    await asyncio.gather(*[worker(count // concurrency) for _ in range(concurrency)])
    await channel.close()
    return failed


def _cpu_seconds(pid: int) -> float:
    """The server process's CPU so far; it must be alive (OSError if not), so a server that
    died mid-run fails the figure instead of reading as 0."""
    return observe.stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def _per_call(pem: tuple[bytes, bytes], workers: int, calls: int, rounds: int = 0) -> dict:
    """Server CPU per call with `workers` handler threads (0: the asyncio server) and 64
    concurrent callers, the handler computing `rounds` rounds."""
    return _measured(_serve, (pem, workers, rounds),
                     lambda port, count, at_once: _calls(port, pem[1], count, at_once),
                     calls, settle=1.5)


def _measured(serve: Callable[..., None], args: tuple, drive: Callable[[int, int, int], Any],
              calls: int, settle: float) -> dict:
    """Server CPU per call: `serve(port, *args)` in a process of its own, `drive(port,
    count, concurrency)` (a coroutine: how many calls failed) calling it, 64 at a time."""
    from gridctl.devnet import free_port
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, *args), daemon=True)
    process.start()
    try:
        time.sleep(settle)
        asyncio.run(drive(port, 200, 8))  # connect, warm up
        before, started = _cpu_seconds(process.pid), time.perf_counter()
        failed = asyncio.run(drive(port, calls, 64))
        elapsed = time.perf_counter() - started
        return {"calls_per_s": round(calls / elapsed), "failed_calls": failed,
                "server_cpu_us_per_call": round((_cpu_seconds(process.pid) - before)
                                                / calls * 1e6)}
    finally:
        process.kill()
        process.join()


class _ChainInfo(committer_pb2_grpc.CommitterServiceServicer):
    """A committer servicer whose GetChainInfo answers at once (threads or asyncio)."""

    def GetChainInfo(self, request, context):  # type: ignore[no-untyped-def]
        return committer_pb2.GetChainInfoResponse(height=1)


class _AsyncChainInfo(committer_pb2_grpc.CommitterServiceServicer):
    async def GetChainInfo(self, request, context):  # type: ignore[no-untyped-def]
        return committer_pb2.GetChainInfoResponse(height=1)


def _serve_node(port: int, consortium: str, kind: str) -> None:
    """The node server of `kind` ("threads", "asyncio") answering GetChainInfo, with room for
    the benchmark's one member's 64 concurrent calls."""
    from gridledger_core.genesis import Genesis
    from gridledger_core.rpc.aio_server import AioNodeServer
    from gridledger_core.rpc.server import NodeServer
    from gridledger_core.rpc.tls import TlsFiles
    directory = Path(consortium)
    genesis = Genesis.load(directory / "genesis.json")
    tls = TlsFiles.for_node(directory, "committer-1")
    name = committer_pb2.DESCRIPTOR.services_by_name["CommitterService"].full_name
    server: Any
    if kind == "asyncio":
        server = AioNodeServer("bench", "committer", f"127.0.0.1:{port}", "127.0.0.1:0", tls,
                               genesis=genesis, calls_per_member=128)
        server.add_service(committer_pb2_grpc.add_CommitterServiceServicer_to_server,
                           _AsyncChainInfo(), name)
    else:
        server = NodeServer("bench", "committer", f"127.0.0.1:{port}", "127.0.0.1:0", tls,
                            genesis=genesis, max_workers=4 * 64 + 4, calls_per_member=64)
        server.add_service(committer_pb2_grpc.add_CommitterServiceServicer_to_server,
                           _ChainInfo(), name)
    server.start()
    threading.Event().wait()


async def _node_calls(port: int, consortium: Path, count: int, concurrency: int) -> int:
    from gridledger_core.rpc.tls import TlsFiles
    tls = TlsFiles.for_node(consortium, "admin")
    channel = aio.secure_channel(f"localhost:{port}", tls.channel_credentials(),
                                 options=CHANNEL_OPTIONS)
    return await _drive(channel, committer_pb2_grpc.CommitterServiceStub(channel).GetChainInfo,
                        committer_pb2.GetChainInfoRequest(), count, concurrency)


def _per_node_call(consortium: Path, kind: str, calls: int) -> dict:
    """Server CPU per call of the node server of `kind`, 64 concurrent callers."""
    return _measured(_serve_node, (str(consortium), kind),
                     lambda port, count, at_once: _node_calls(port, consortium, count,
                                                              at_once),
                     calls, settle=2.5)


ECHO_SERVICE = "bench.Echo"
ECHO_MESSAGE = bytes(400)  # about a signed trade request


async def _echo(message: bytes, context: Any) -> bytes:
    return message


async def _echo_stream(messages: Any, context: Any) -> Any:
    async for message in messages:
        yield message


def _serve_echo(port: int, pem: tuple[bytes, bytes]) -> None:
    """Unary and bidirectional-stream echoes of raw bytes on gRPC's asyncio server on
    uvloop, as the endorser's loop runs."""
    from gridledger_core.rpc.event_loops import new_event_loop

    async def serve() -> None:
        server = aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(_echo),
            "Stream": grpc.stream_stream_rpc_method_handler(_echo_stream)}),))
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([pem]))
        await server.start()
        await server.wait_for_termination()

    new_event_loop().run_until_complete(serve())


async def _echo_calls(port: int, cert: bytes, count: int, concurrency: int,
                      streamed: bool) -> int:
    """`count` echoes, `concurrency` callers at once, each as a unary call or as a message
    of the caller's one stream (written, then its answer read); how many failed."""
    channel = aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert),
                                 options=[*CHANNEL_OPTIONS,
                                          ("grpc.ssl_target_name_override", "localhost")])
    if not streamed:
        return await _drive(channel, channel.unary_unary(f"/{ECHO_SERVICE}/Unary"),
                            ECHO_MESSAGE, count, concurrency)
    failed = 0
    open_stream = channel.stream_stream(f"/{ECHO_SERVICE}/Stream")

    async def caller(n: int) -> None:
        nonlocal failed
        try:
            stream = open_stream(timeout=60)
            for _ in range(n):
                await stream.write(ECHO_MESSAGE)
                await stream.read()
            await stream.done_writing()
            if await stream.code() != grpc.StatusCode.OK:
                failed += 1
        except grpc.RpcError:
            failed += n

    await asyncio.gather(*[caller(count // concurrency) for _ in range(concurrency)])
    await channel.close()
    return failed


def _per_echo(pem: tuple[bytes, bytes], calls: int, streamed: bool) -> dict:
    return _measured(_serve_echo, (pem,),
                     lambda port, count, at_once: _echo_calls(port, pem[1], count, at_once,
                                                              streamed),
                     calls, settle=1.5)


def run(profile: str = "standard") -> dict:
    calls = 4_000 if profile == "quick" else 20_000
    with tempfile.TemporaryDirectory() as directory:
        pem = _certificate(Path(directory))
        result: dict = {"per_call": {f"{workers}_threads": _per_call(pem, workers, calls)
                                     for workers in (64, 8)},
                        "per_call_300us_handler": {
                            name: _per_call(pem, workers, calls // 2, WORK_ROUNDS)
                            for name, workers in (("64_threads", 64), ("8_threads", 8),
                                                  ("asyncio", 0))}}
        result["per_message_asyncio_uvloop"] = {
            name: _per_echo(pem, calls // 2, streamed)
            for name, streamed in (("unary_call", False), ("stream_message", True))}
        consortium = Path(directory) / "consortium"
        create_consortium(consortium, default_topology())
        result["per_call_node_server"] = {kind: _per_node_call(consortium, kind, calls // 2)
                                          for kind in ("threads", "asyncio")}
    for name, figures in result["per_call"].items():
        print(f"grpc server, trivial handler, {name.replace('_', ' ')} busy: "
              f"{figures['calls_per_s']:,} calls/s, {figures['server_cpu_us_per_call']} µs "
              f"server CPU per call; {figures['failed_calls']} calls failed")
    for name, figures in result["per_call_300us_handler"].items():
        print(f"grpc server, ~300 µs handler, {name.replace('_', ' ')}: "
              f"{figures['calls_per_s']:,} calls/s, {figures['server_cpu_us_per_call']} µs "
              f"server CPU per call; {figures['failed_calls']} calls failed")
    for name, figures in result["per_message_asyncio_uvloop"].items():
        print(f"asyncio server on uvloop, echo as a {name.replace('_', ' ')}: "
              f"{figures['calls_per_s']:,} per s, {figures['server_cpu_us_per_call']} µs "
              f"server CPU each; {figures['failed_calls']} failed")
    for name, figures in result["per_call_node_server"].items():
        print(f"node server ({name}), trivial handler behind the interceptors: "
              f"{figures['calls_per_s']:,} calls/s, {figures['server_cpu_us_per_call']} µs "
              f"server CPU per call; {figures['failed_calls']} calls failed")
    return result


if __name__ == "__main__":
    run()
