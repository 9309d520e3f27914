"""What gRPC's Python server itself costs per call (`python -m bench.grpc_server`).

The measurement behind the endorser's CPU slots (services/endorser/.../cpu_slots.py): a
server process and a client process on loopback, mTLS like the nodes (a throw-away P-256
certificate), a trivial unary handler, 64 concurrent callers; server CPU per call with 64
handler threads busy at once against 8: what GIL contention between handler threads costs.
"""

from __future__ import annotations

import asyncio
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
    def Check(self, request, context):  # type: ignore[no-untyped-def]
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _serve(port: int, pem: tuple[bytes, bytes], workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(workers))
    health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([pem]))
    server.start()
    server.wait_for_termination()


async def _calls(port: int, cert: bytes, count: int, concurrency: int) -> int:
    """`count` calls, `concurrency` at a time; how many failed."""
    channel = aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert),
                                 options=[*CHANNEL_OPTIONS,
                                          ("grpc.ssl_target_name_override", "localhost")])
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    failed = 0

    async def worker(n: int) -> None:
        nonlocal failed
        for _ in range(n):
            try:
                await stub.Check(request, timeout=30)
            except grpc.RpcError:
                failed += 1

    await asyncio.gather(*[worker(count // concurrency) for _ in range(concurrency)])
    await channel.close()
    return failed


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_call(pem: tuple[bytes, bytes], workers: int, calls: int) -> dict:
    """Server CPU per call with `workers` handler threads and 64 concurrent callers."""
    from gridctl.devnet import free_port
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(port, pem, workers), daemon=True)
    process.start()
    try:
        time.sleep(1.5)
        asyncio.run(_calls(port, pem[1], 200, 8))  # connect, warm up
        before, started = _cpu_seconds(process.pid), time.perf_counter()
        failed = asyncio.run(_calls(port, pem[1], calls, 64))
        elapsed = time.perf_counter() - started
        return {"calls_per_s": round(calls / elapsed), "failed_calls": failed,
                "server_cpu_us_per_call": round((_cpu_seconds(process.pid) - before)
                                                / calls * 1e6)}
    finally:
        process.kill()
        process.join()


def run(profile: str = "standard") -> dict:
    calls = 4_000 if profile == "quick" else 20_000
    with tempfile.TemporaryDirectory() as directory:
        pem = _certificate(Path(directory))
        result: dict = {"per_call": {f"{workers}_threads": _per_call(pem, workers, calls)
                                     for workers in (64, 8)}}
    for name, figures in result["per_call"].items():
        print(f"grpc server, {name.replace('_', ' ')} busy: {figures['calls_per_s']:,} calls/s, "
              f"{figures['server_cpu_us_per_call']} µs server CPU per call; "
              f"{figures['failed_calls']} calls failed")
    return result


if __name__ == "__main__":
    run()
