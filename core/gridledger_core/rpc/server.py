"""A node's gRPC server: mTLS only, every call authorised by the one table in authz.py,
health checking, reflection, /metrics, graceful SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Info, start_http_server

from gridledger_core.gc_pauses import watch_pauses
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.authz import AuthzInterceptor
from gridledger_core.rpc.call_shares import CallShares, per_member
from gridledger_core.rpc.metrics import MetricsInterceptor
from gridledger_core.rpc.peer_identity import AccountLookup
from gridledger_core.rpc.tls import SERVER_OPTIONS, TlsFiles, receive_limit

log = logging.getLogger(__name__)

NODE_INFO = Info("gridledger_node", "Identity of this GridLedger node.")
DEFAULT_CALLS_PER_MEMBER = 8
SPARE_THREADS = 4  # beyond the members' shares: calls refused at once still need a thread


def merged_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """SERVER_OPTIONS, with `options` overriding those of the same name (e.g. a smaller
    receive limit)."""
    return list({**dict(SERVER_OPTIONS), **dict(options)}.items())


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def health_statuses(live: bool, ready: bool, services: Sequence[str]) -> list[tuple[str, int]]:
    """The health service's status of each name: the overall "" (the liveness probe's) is
    `live`; each of the role's services (the readiness probe's) is `ready` and `live`."""
    def status(serving: bool) -> int:
        return (health_pb2.HealthCheckResponse.SERVING if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING)
    return [("", status(live)), *((name, status(live and ready)) for name in services)]


class NodeServer:
    def __init__(self, name: str, role: str, listen: str, metrics_listen: str, tls: TlsFiles,
                 *, genesis: Genesis, max_workers: int | None = None,
                 health_listen: str | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 account_lookup: AccountLookup | None = None,
                 maximum_concurrent_rpcs: int | None = None,
                 calls_per_member: int | None = None) -> None:
        """`account_lookup` lets callers be meters and plants registered on the ledger
        (peer_identity.ledger_lookup / RemoteAccounts); without it, genesis accounts only.
        `calls_per_member`: the calls one member (organisation) may have in progress (by
        default an equal share of `max_workers`, or DEFAULT_CALLS_PER_MEMBER); every call
        holds a handler thread from its start (call_shares.py), so `max_workers` defaults to
        every member's share and a few threads more."""
        self.name = name
        self.role = role
        self._listen = listen
        self._metrics_listen = metrics_listen
        self._tls = tls
        members = len(genesis.organizations)
        share = calls_per_member or (per_member(max_workers, members) if max_workers
                                     else DEFAULT_CALLS_PER_MEMBER)
        self.shares = CallShares(share)
        workers = max_workers or members * share + SPARE_THREADS
        # Calls waiting for a thread (to be served, or refused by their member's share) are
        # bounded too: beyond as many again, gRPC refuses at once (no hint).
        maximum_concurrent_rpcs = maximum_concurrent_rpcs or 2 * workers
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                   # Metrics outermost, so refusals are counted too.
                                   interceptors=[MetricsInterceptor(),
                                                 AuthzInterceptor(genesis, account_lookup,
                                                                  self.shares)],
                                   options=merged_options(options),
                                   # Beyond it gRPC refuses at once (RESOURCE_EXHAUSTED)
                                   # instead of queueing calls for a worker without bound.
                                   maximum_concurrent_rpcs=maximum_concurrent_rpcs)
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self._services: list[str] = []
        self._on_stop: list[Callable[[], None]] = []
        self._on_close: list[Callable[[], None]] = []
        self._stopping = threading.Event()
        self.port = 0
        # Kubelet's native gRPC probe cannot present a client certificate, so a node may also
        # serve the same health service (and nothing else) in plaintext on a separate port.
        self._health_listen = health_listen
        self._health_server: grpc.Server | None = None

    def add_service(self, register: Callable[[Any, grpc.Server], None], servicer: Any,
                    full_name: str) -> None:
        register(servicer, self._server)
        self._services.append(full_name)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run `callback` when shutdown starts: new RPCs are refused, running ones continue
        (stop background work and end long-lived streams here)."""
        self._on_stop.append(callback)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` after every RPC has finished (close storage here)."""
        self._on_close.append(callback)

    def start(self) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self._server)
        self.port = self._server.add_secure_port(self._listen, self._tls.server_credentials())
        if self.port == 0:
            raise OSError(f"cannot listen on {self._listen}")
        host, port = split_host_port(self._metrics_listen)
        start_http_server(port, addr=host)
        NODE_INFO.info({"name": self.name, "role": self.role})
        watch_pauses()
        self._server.start()
        if self._health_listen:
            self._health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                                              options=[receive_limit(0)])  # a few bytes
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
            if self._health_server.add_insecure_port(self._health_listen) == 0:
                raise OSError(f"cannot listen on {self._health_listen}")
            self._health_server.start()
        for service in ["", *self._services]:
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s (%s) serving gRPC on %s, metrics on %s", self.name, self.role,
                 self._listen, self._metrics_listen)

    def set_serving(self, serving: bool) -> None:
        self.set_health(serving, serving)

    def set_health(self, live: bool, ready: bool) -> None:
        """The overall service "" (the liveness probe's) says `live`; the role's services
        (the readiness probe's) say `ready` (health_board.py)."""
        for service, serving in health_statuses(live, ready, self._services):
            self._health.set(service, serving)

    def stop(self) -> None:
        """Stop at once, without the graceful sequence (in-process tests)."""
        self._server.stop(None).wait()
        if self._health_server is not None:
            self._health_server.stop(None).wait()

    def request_stop(self) -> None:
        self._stopping.set()

    def serve_until_signal(self, grace_seconds: float = 5.0) -> None:
        """Block until SIGTERM or SIGINT, then shut down gracefully."""
        wait_for_stop_signal(self._stopping, self.name)
        self._health.enter_graceful_shutdown()
        stopped = self._server.stop(grace_seconds)
        run_all(self._on_stop)
        stopped.wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
        run_all(self._on_close)
        log.info("%s stopped", self.name)


def wait_for_stop_signal(stopping: threading.Event, name: str) -> None:
    """Block until SIGTERM or SIGINT (or until `stopping` is set by request_stop)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    log.info("%s stopping", name)


def run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("error during shutdown")
