"""A node's gRPC server on asyncio: what server.NodeServer offers (mTLS only, the authz table,
health, reflection, /metrics, graceful SIGTERM), for servicers whose handlers are coroutines.

Why a second server. gRPC's threaded Python server hands every call from its polling thread
to a handler thread and back, and each hand-off is a GIL transfer between threads (a futex
wake-up and a context switch). The endorser's calls compute a few hundred microseconds each,
and at 1,000 trade requests/s the threaded endorser filled its core and queued (p99 over a
second) where this server answers them with p99 in tens of milliseconds; the endorser's CPU
per committed transaction fell by a fifth (docs/performance.md, "The endorser on one event
loop").

The loop runs in a thread of its own, so a node's main thread keeps its shape: start(), then
serve_until_signal(); set_serving() and stop() may be called from any thread. How late the
loop runs what is due is exported as `gridledger_loop_lag_seconds` (loop_lag.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from gridledger.rpc.v1 import relay_pb2_grpc
from gridledger_core.gc_pauses import watch_pauses
from gridledger_core.genesis import Genesis
from gridledger_core.rpc import event_loops
from gridledger_core.rpc.authz import AioAuthzInterceptor
from gridledger_core.rpc.call_shares import UNBOUNDED, CallShares, per_member
from gridledger_core.rpc.loop_lag import watch_lag
from gridledger_core.rpc.metrics import AioMetricsInterceptor
from gridledger_core.rpc.peer_identity import AccountLookup
from gridledger_core.rpc.relay import (
    RELAY_MESSAGE_LIMIT,
    CallRelayServicer,
    method_handlers,
    prepare_socket,
)
from gridledger_core.rpc.server import (
    NODE_INFO,
    health_statuses,
    merged_options,
    run_all,
    split_host_port,
    wait_for_stop_signal,
)
from gridledger_core.rpc.tls import TlsFiles, receive_limit

log = logging.getLogger(__name__)


class AioNodeServer:
    def __init__(self, name: str, role: str, listen: str, metrics_listen: str, tls: TlsFiles,
                 *, genesis: Genesis, health_listen: str | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 account_lookup: AccountLookup | None = None,
                 maximum_concurrent_rpcs: int | None = None,
                 calls_per_member: int | None = None,
                 event_loop: str = event_loops.DEFAULT,
                 relay_socket: Path | None = None,
                 on_relay_streams: Callable[[int], None] | None = None) -> None:
        """`calls_per_member`: the calls one member (organisation) may have in progress
        (call_shares.py); by default an equal share of `maximum_concurrent_rpcs`, unbounded
        when neither is set. gRPC's own bound (`maximum_concurrent_rpcs`) is set only when
        asked for: at it, gRPC's asyncio server does not refuse, it takes no new call until
        one ends, so the calls beyond wait inside gRPC's core, uncounted, instead of being
        refused with a hint by the member shares; and below it the bound costs the loop a
        task per call. Calls not yet taken wait there anyway, as the server takes them one
        at a time between the loop's other work (docs/architecture.md, admission control).
        `event_loop`: the loop's kind (event_loops.py; uvloop unless asked otherwise).
        `relay_socket`: serve the services only to front processes, over the call relay on
        this Unix socket (relay.py), instead of on `listen`: the fronts listen there;
        `on_relay_streams(n)` is told how many fronts' streams are open when that changes."""
        self.name = name
        self.role = role
        self._listen = listen
        self._metrics_listen = metrics_listen
        self._tls = tls
        self._genesis = genesis
        self._account_lookup = account_lookup
        self._options = merged_options(options)
        members = len(genesis.organizations)
        share = calls_per_member or (per_member(maximum_concurrent_rpcs, members)
                                     if maximum_concurrent_rpcs else UNBOUNDED)
        self._maximum_concurrent_rpcs = maximum_concurrent_rpcs
        self.shares = CallShares(share)
        self._health_listen = health_listen
        self._registrations: list[tuple[Callable[[Any, Any], None], Any]] = []
        self._services: list[str] = []
        self._on_stop: list[Callable[[], None]] = []
        self._on_close: list[Callable[[], None]] = []
        self._stopping = threading.Event()
        self.port = 0
        self._loop = event_loops.new_event_loop(event_loop)
        self.event_loop = event_loop
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-grpc",
                                        daemon=True)
        self._server: aio.Server | None = None
        self._health_server: aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._lag_probe: asyncio.Task[None] | None = None
        self._relay_socket = relay_socket
        self._on_relay_streams = on_relay_streams

    def add_service(self, register: Callable[[Any, Any], None], servicer: Any,
                    full_name: str) -> None:
        self._registrations.append((register, servicer))
        self._services.append(full_name)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """As NodeServer.on_stop: run when shutdown starts (end background work here)."""
        self._on_stop.append(callback)

    def on_close(self, callback: Callable[[], None]) -> None:
        """As NodeServer.on_close: run after every RPC has finished (close storage here)."""
        self._on_close.append(callback)

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> None:
        self._thread.start()
        self._run(self._start())
        host, port = split_host_port(self._metrics_listen)
        start_http_server(port, addr=host)
        NODE_INFO.info({"name": self.name, "role": self.role})
        watch_pauses()
        where = (self._listen if self._relay_socket is None
                 else f"the relay socket {self._relay_socket} (its fronts on {self._listen})")
        log.info("%s (%s) serving gRPC (asyncio, %s loop) on %s, metrics on %s", self.name,
                 self.role, self.event_loop, where, self._metrics_listen)

    async def _start(self) -> None:
        interceptors = [AioMetricsInterceptor(),
                        AioAuthzInterceptor(self._genesis, self._account_lookup, self.shares)]
        self._health = health.aio.HealthServicer()
        if self._relay_socket is None:
            server = self._public_server(interceptors)
        else:
            server = self._relay_server(interceptors, self._relay_socket)
        await server.start()
        self._server = server
        if self._health_listen:
            # Kubelet's gRPC probe presents no client certificate: health alone, plaintext.
            plain = aio.server(options=[receive_limit(0)])  # a health check's few bytes
            health_pb2_grpc.add_HealthServicer_to_server(self._health, plain)
            if plain.add_insecure_port(self._health_listen) == 0:
                raise OSError(f"cannot listen on {self._health_listen}")
            await plain.start()
            self._health_server = plain
        await self._set_all(True, True)
        self._lag_probe = asyncio.ensure_future(watch_lag())

    def _public_server(self, interceptors: list[aio.ServerInterceptor]) -> aio.Server:
        server = aio.server(interceptors=interceptors, options=self._options,
                            maximum_concurrent_rpcs=self._maximum_concurrent_rpcs)
        for register, servicer in self._registrations:
            register(servicer, server)
        assert self._health is not None
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        self.port = server.add_secure_port(self._listen, self._tls.server_credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {self._listen}")
        return server

    def _relay_server(self, interceptors: list[aio.ServerInterceptor],
                      socket: Path) -> aio.Server:
        """The services for the fronts only: the relay, whose calls pass `interceptors` one by
        one (relay.py), and health, which the fronts mirror on the public port."""
        server = aio.server(options=merged_options([*self._options, RELAY_MESSAGE_LIMIT]))
        relay = CallRelayServicer(method_handlers(self._registrations), interceptors,
                                  self._on_relay_streams,
                                  members=[o.name for o in self._genesis.organizations])
        relay_pb2_grpc.add_CallRelayServiceServicer_to_server(relay, server)
        assert self._health is not None
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if server.add_insecure_port(f"unix:{prepare_socket(socket)}") == 0:
            raise OSError(f"cannot listen on the relay socket {socket}")
        return server

    async def _set_all(self, live: bool, ready: bool) -> None:
        assert self._health is not None
        for service, status in health_statuses(live, ready, self._services):
            await self._health.set(service, status)

    def set_serving(self, serving: bool) -> None:
        self.set_health(serving, serving)

    def set_health(self, live: bool, ready: bool) -> None:
        """The overall service "" (the liveness probe's) says `live`; the role's services
        (the readiness probe's) say `ready` (health_board.py)."""
        asyncio.run_coroutine_threadsafe(self._set_all(live, ready), self._loop)

    def stop(self) -> None:
        """Stop at once, without the graceful sequence (in-process tests)."""
        self._run(self._stop_servers(None))
        self._end_loop()

    async def _stop_servers(self, grace: float | None) -> None:
        stopping = [s.stop(grace) for s in (self._server, self._health_server) if s is not None]
        await asyncio.gather(*stopping)

    def _within(self, step: Coroutine[Any, Any, Any] | concurrent.futures.Future[Any],
                seconds: float) -> None:
        """A shutdown step, waited for at most `seconds`; past that it is logged and left."""
        if not isinstance(step, concurrent.futures.Future):
            step = asyncio.run_coroutine_threadsafe(step, self._loop)
        try:
            step.result(seconds)
        except concurrent.futures.TimeoutError:
            log.error("%s: a shutdown step took over %.0f s; going on without it", self.name,
                      seconds)

    async def _end_lag_probe(self) -> None:
        probe = self._lag_probe
        if probe is not None and not probe.done():
            probe.cancel()
            await asyncio.wait({probe})  # never raises, whatever ended the probe

    def _end_loop(self) -> None:
        if self._loop.is_running():
            self._within(self._end_lag_probe(), 1)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def request_stop(self) -> None:
        self._stopping.set()

    def serve_until_signal(self, grace_seconds: float = 5.0) -> None:
        """Block until SIGTERM or SIGINT, then shut down gracefully (as NodeServer)."""
        wait_for_stop_signal(self._stopping, self.name)
        assert self._health is not None and self._server is not None
        # Each step waits a bounded time: a wedged loop must not keep the process from
        # closing its storage and exiting (the kubelet would kill it uncleanly instead).
        bound = grace_seconds + 5
        self._within(self._health.enter_graceful_shutdown(), bound)
        # New calls are refused from here; running ones get `grace_seconds`, during which the
        # on_stop callbacks end background work (they may block: not on the loop's thread).
        stopped = asyncio.run_coroutine_threadsafe(self._server.stop(grace_seconds),
                                                   self._loop)
        run_all(self._on_stop)
        self._within(stopped, bound)
        if self._health_server is not None:
            self._within(self._health_server.stop(0), bound)
        self._end_loop()
        run_all(self._on_close)
        log.info("%s stopped", self.name)

