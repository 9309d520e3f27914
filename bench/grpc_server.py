"""What gRPC's Python server itself costs per call (`python -m bench.grpc_server`).

The measurement behind the endorser's CPU slots (services/endorser/.../cpu_slots.py): a
server process and a client process on loopback, mTLS like the nodes (a throw-away P-256
certificate), a trivial unary handler, 64 concurrent callers; server CPU per call with 64
handler threads busy at once against 8: what GIL contention between handler threads costs.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import subprocess
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gridledger_core.rpc.tls import CHANNEL_OPTIONS


def _certificate(directory: Path) -> tuple[bytes, bytes]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True,
                   capture_output=True)
    return key.read_bytes(), cert.read_bytes()


class _Health(health_pb2_grpc.HealthServicer):
    def __init__(self, busy_s: float) -> None:
        self._busy_s = busy_s

    def Check(self, request, context):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        while time.perf_counter() - started < self._busy_s:
            pass
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _serve(port: int, pem: tuple[bytes, bytes], workers: int, busy_s: float,
           options: list, max_rpcs: int | None) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(workers), options=options,
                         maximum_concurrent_rpcs=max_rpcs)
    health_pb2_grpc.add_HealthServicer_to_server(_Health(busy_s), server)
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([pem]))
    server.start()
    server.wait_for_termination()


async def _calls(port: int, cert: bytes, count: int, *,
                 concurrency: int) -> tuple[list[float], collections.Counter[str]]:
    """`count` calls, `concurrency` at a time; (latencies, errors)."""
    channel = aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert),
                                 options=[*CHANNEL_OPTIONS,
                                          ("grpc.ssl_target_name_override", "localhost")])
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def one(due: float) -> None:
        try:
            await stub.Check(request, timeout=30)
            latencies.append(time.monotonic() - due)
        except grpc.RpcError as exc:
            errors[f"{exc.code().name}"] += 1  # type: ignore[attr-defined]

    async def worker(n: int) -> None:
        for _ in range(n):
            await one(time.monotonic())
    await asyncio.gather(*[worker(count // concurrency) for _ in range(concurrency)])
    await channel.close()
    return latencies, errors


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_server(pem: tuple[bytes, bytes], port: int, workers: int, busy_s: float,
                 options: list, max_rpcs: int | None, measure):  # type: ignore[no-untyped-def]
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(port, pem, workers, busy_s, options, max_rpcs), daemon=True)
    process.start()
    try:
        time.sleep(1.5)
        asyncio.run(_calls(port, pem[1], 200, concurrency=8))  # connect, warm up
        return measure(process.pid)
    finally:
        process.kill()
        process.join()


def run(profile: str = "standard") -> dict:
    from gridctl.devnet import free_port
    calls = 4_000 if profile == "quick" else 20_000
    result: dict = {"per_call": {}}
    with tempfile.TemporaryDirectory() as directory:
        pem = _certificate(Path(directory))
        for workers in (64, 8):
            port = free_port()

            def per_call(pid: int, port: int = port) -> dict:
                before, started = _cpu_seconds(pid), time.perf_counter()
                asyncio.run(_calls(port, pem[1], calls, concurrency=64))
                elapsed = time.perf_counter() - started
                return {"calls_per_s": round(calls / elapsed),
                        "server_cpu_us_per_call": round((_cpu_seconds(pid) - before)
                                                        / calls * 1e6)}
            result["per_call"][f"{workers}_threads"] = _with_server(
                pem, port, workers, 0.0, [], None, per_call)
    for name, figures in result["per_call"].items():
        print(f"grpc server, {name.replace('_', ' ')} busy: {figures['calls_per_s']:,} calls/s, "
              f"{figures['server_cpu_us_per_call']} µs server CPU per call")
    return result


if __name__ == "__main__":
    run()
