"""Helpers for the authorisation tests: certificates forged with a consortium's own CA keys,
every GridLedger service served by a real NodeServer (servicers that just answer), and a call
of any method by its full name that reports the status code."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from gridledger.committer.v1 import committer_pb2
from gridledger.endorser.v1 import endorser_pb2
from gridledger.meteragent.v1 import meteragent_pb2
from gridledger.orderer.v1 import consensus_pb2, orderer_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.rpc.aio_server import AioNodeServer
from gridledger_core.rpc.backoff import retry_after_ms
from gridledger_core.rpc.peer_identity import AccountLookup
from gridledger_core.rpc.server import NodeServer
from gridledger_core.rpc.tls import TlsFiles

OUR_SERVICES = [orderer_pb2.DESCRIPTOR.services_by_name["OrdererService"],
                consensus_pb2.DESCRIPTOR.services_by_name["ConsensusService"],
                endorser_pb2.DESCRIPTOR.services_by_name["EndorserService"],
                committer_pb2.DESCRIPTOR.services_by_name["CommitterService"],
                meteragent_pb2.DESCRIPTOR.services_by_name["MeterAgentService"]]
BUILT_IN = [health_pb2.DESCRIPTOR.services_by_name["Health"],
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]]


def full_name(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def all_methods() -> dict[str, MethodDescriptor]:
    return {full_name(m): m for s in OUR_SERVICES + BUILT_IN for m in s.methods}


def _cls(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)


def issue_tls(consortium_dir: Path, ca_org: str, cn: str, org: str, ou: str,
              out: Path) -> TlsFiles:
    """A TLS client certificate with subject CN/O/OU, issued by `ca_org`'s TLS CA."""
    ca_dir = consortium_dir / "orgs" / ca_org
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "tls-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "tls-ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tls.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return TlsFiles(consortium_dir / "tls-ca-bundle.pem", out / "tls.pem", out / "tls.key")


def _answering_handler(service: Any) -> grpc.GenericRpcHandler:
    """A servicer for `service` whose every method answers an empty response at once."""
    handlers = {}
    for m in service.methods:
        req, resp = _cls(m.input_type), _cls(m.output_type)
        kwargs = {"request_deserializer": req.FromString,
                  "response_serializer": resp.SerializeToString}
        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                lambda it, ctx, r=resp: _drain_then_one(it, r), **kwargs)
        elif m.client_streaming:
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(
                lambda it, ctx, r=resp: next(_drain_then_one(it, r)), **kwargs)
        elif m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                lambda req, ctx, r=resp: iter([r()]), **kwargs)
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                lambda req, ctx, r=resp: r(), **kwargs)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _drain_then_one(requests: Iterator[Any], resp: Any) -> Iterator[Any]:
    for _ in requests:
        pass
    yield resp()


def _answering_aio_handler(service: Any) -> grpc.GenericRpcHandler:
    """`_answering_handler` for the asyncio server: coroutines and async generators."""
    handlers = {}
    for m in service.methods:
        resp = _cls(m.output_type)
        kwargs = {"request_deserializer": _cls(m.input_type).FromString,
                  "response_serializer": resp.SerializeToString}

        async def drained_one(requests: Any, ctx: Any, r: Any = resp) -> Any:
            async for _ in requests:
                pass
            return r()

        async def drained_stream(requests: Any, ctx: Any, r: Any = resp) -> AsyncIterator[Any]:
            async for _ in requests:
                pass
            yield r()

        async def one_stream(request: Any, ctx: Any, r: Any = resp) -> AsyncIterator[Any]:
            yield r()

        async def one(request: Any, ctx: Any, r: Any = resp) -> Any:
            return r()

        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(drained_stream, **kwargs)
        elif m.client_streaming:
            handlers[m.name] = grpc.stream_unary_rpc_method_handler(drained_one, **kwargs)
        elif m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(one_stream, **kwargs)
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(one, **kwargs)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def answering_server(genesis: Genesis, tls: TlsFiles,
                     replace: dict[str, tuple[Any, Any]] | None = None,
                     account_lookup: AccountLookup | None = None,
                     kind: str = "threads", **bounds: Any) -> NodeServer | AioNodeServer:
    """A started NodeServer (or, `kind` "asyncio", AioNodeServer) serving every GridLedger
    service; `replace` maps a service's full name to (register function, servicer) to serve
    a real servicer instead; `bounds`: the server's bounds on calls (max_workers, ...)."""
    server: NodeServer | AioNodeServer
    if kind == "asyncio":
        server = AioNodeServer("test", "test", "127.0.0.1:0", "127.0.0.1:0", tls,
                               genesis=genesis, account_lookup=account_lookup, **bounds)
    else:
        server = NodeServer("test", "test", "127.0.0.1:0", "127.0.0.1:0", tls,
                            genesis=genesis, account_lookup=account_lookup, **bounds)
    for service in OUR_SERVICES:
        if replace and service.full_name in replace:
            register, servicer = replace[service.full_name]
            server.add_service(register, servicer, service.full_name)
        else:
            handler = (_answering_aio_handler(service) if kind == "asyncio"
                       else _answering_handler(service))
            server.add_service(lambda _s, srv, h=handler: srv.add_generic_rpc_handlers((h,)),
                               None, service.full_name)
    server.start()
    return server


def invoke(channel: grpc.Channel, method: MethodDescriptor,
           request: Any = None) -> grpc.StatusCode:
    """Call `method` once (streams: one request, first response) and return the status."""
    req_cls, resp_cls = _cls(method.input_type), _cls(method.output_type)
    request = request if request is not None else req_cls()
    if method.full_name == "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo":
        request = req_cls(list_services="")
    kwargs = {"request_serializer": req_cls.SerializeToString,
              "response_deserializer": resp_cls.FromString}
    name = full_name(method)
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(name, **kwargs)(iter([request]), timeout=10)
            next(call)
            call.cancel()
        elif method.client_streaming:
            channel.stream_unary(name, **kwargs)(iter([request]), timeout=10)
        elif method.server_streaming:
            call = channel.unary_stream(name, **kwargs)(request, timeout=10)
            next(call)
            call.cancel()
        else:
            channel.unary_unary(name, **kwargs)(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def channel_to(port: int, tls: TlsFiles) -> grpc.Channel:
    return grpc.secure_channel(f"localhost:{port}", tls.channel_credentials())


class SilentCalls:
    """Calls to `method` that start and never send their request: a client opens the
    stream (its headers reach the server) and then waits, as a hostile one may for ever."""

    def __init__(self, address: str, tls: TlsFiles, method: str, count: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._never: asyncio.Event | None = None
        self.calls: list[Any] = []
        self._run(self._open(address, tls, method, count))

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _open(self, address: str, tls: TlsFiles, method: str, count: int) -> None:
        self._never = asyncio.Event()
        # Several connections: a server may allow few streams on one (the orderer's 64).
        self._channels = [grpc.aio.secure_channel(address, tls.channel_credentials(),
                                                  options=[("grpc.use_local_subchannel_pool", 1)])
                          for _ in range(-(-count // 32))]
        never = self._never

        async def silence() -> AsyncIterator[bytes]:
            await never.wait()
            yield b""

        self.calls = [self._channels[i // 32].stream_unary(method)(silence())
                      for i in range(count)]
        await asyncio.sleep(0.5)  # every call started on the server

    def refused(self) -> list[tuple[grpc.StatusCode, str, int]]:
        """The calls the server ended already: (code, details, retry hint ms)."""
        async def ended() -> list[tuple[grpc.StatusCode, str, int]]:
            out = []
            for call in self.calls:
                if call.done():
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        out.append((exc.code(), exc.details() or "", retry_after_ms(exc)))
            return out
        return self._run(ended())  # type: ignore[no-any-return]

    def close(self) -> None:
        async def end() -> None:
            for call in self.calls:
                call.cancel()
            for channel in self._channels:
                await channel.close()
        self._run(end())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
