"""Who may call what: one table for every RPC of every GridLedger node, and the server
interceptor that enforces it.

The caller is the account its TLS client certificate proves (peer_identity.py: issued by the
TLS CA of its own organisation, an account of that organisation with that role: a genesis
account, or a meter or plant registered on the ledger where the node can look it up). A
method missing from the table is refused (fail closed); docs/operations.md shows the table,
and a unit test keeps the two equal.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.rpc.aio_context import refuse
from gridledger_core.rpc.handler_cache import WrappedHandlers
from gridledger_core.rpc.peer_identity import AccountLookup, Peer, PeerIdentities, PeerRefused

ALL = frozenset(Role)


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role]
    # Only the exact TLS certificate genesis pins for an orderer (OrdererEntry.tls_certificate_pem).
    pinned_orderer: bool = False
    # A request field that must name the caller's own account (unary requests only).
    own_account: str = ""
    why: str = ""


def _rule(*roles: Role, pinned_orderer: bool = False, own_account: str = "",
          why: str = "") -> Rule:
    return Rule(frozenset(roles), pinned_orderer, own_account, why)


_ORDERER = "/gridledger.orderer.v1.OrdererService/"
_CONSENSUS = "/gridledger.orderer.v1.ConsensusService/"
_ENDORSER = "/gridledger.endorser.v1.EndorserService/"
_COMMITTER = "/gridledger.committer.v1.CommitterService/"
_AGENT = "/gridledger.meteragent.v1.MeterAgentService/"
_READ = Rule(ALL, why="ledger reads: every organisation replicates the whole ledger anyway")
_OPEN = Rule(ALL, why="health and reflection")

R = Role
TABLE: dict[str, Rule] = {
    _ORDERER + "Broadcast": _rule(
        R.ENDORSER, R.ADMIN,
        why="endorsers forward endorsed transactions; admins for the ordering bench (the "
            "orderer still verifies every endorsement)"),
    _ORDERER + "BroadcastBatch": _rule(R.ENDORSER, R.ADMIN, why="as Broadcast"),
    _ORDERER + "Deliver": _rule(
        R.ORDERER, R.COMMITTER, R.ENDORSER, R.ADMIN,
        why="replicas follow the chain; admins for inspection and the bench"),
    _ORDERER + "ListEvidence": _rule(
        R.ORDERER, R.ENDORSER, R.COMMITTER, R.ADMIN,
        why="equivocation evidence is for the consortium's nodes and operators"),
    _CONSENSUS + "Exchange": _rule(
        R.ORDERER, pinned_orderer=True,
        why="only the genesis orderers (`OrdererEntry.tls_certificate_pem`)"),
    _ENDORSER + "SubmitTransaction": _rule(
        R.METER, R.PLANT, R.ISSUER, R.TREASURY, R.SETTLEMENT, R.ADMIN,
        why="devices, the issuer, the treasury and the settlement agent, and admins (gridctl, "
            "load generator); the envelope's own signer is judged by the ledger rules"),
    _ENDORSER + "SubmitBatch": _rule(
        R.METER, R.PLANT, R.ISSUER, R.TREASURY, R.SETTLEMENT, R.ADMIN,
        why="as SubmitTransaction: each envelope's own signer is judged by the ledger rules, "
            "so a head-end system (an admin account of its organisation) or a meter-agent "
            "may relay many devices' signed transactions"),
    _ENDORSER + "RequestOptions": _rule(
        R.METER, R.ADMIN,
        why="meters trade (presale); admins for `gridctl order place` on a meter's behalf"),
    _ENDORSER + "RequestOptionsBatch": _rule(
        R.METER, R.ADMIN,
        why="as RequestOptions: each request's own signer is judged, so a head-end system "
            "(an admin account of its organisation) may relay many meters' trade requests"),
    _ENDORSER + "GetBook": _READ,
    **{_COMMITTER + m: _READ for m in (
        "GetChainInfo", "GetBlock", "GetTransaction", "GetState", "ListReadings",
        "ListOpenOrders", "ListOrders", "ListTrades", "GetPlant", "ListContracts",
        "GetContract", "GetCarbonAccount", "SubscribeCommits")},
    **{_COMMITTER + m: _rule(
        R.METER, R.PLANT, R.ADMIN, R.ISSUER, R.TREASURY, R.SETTLEMENT,
        why="money holders and operators; the committer then shows an account (or a meter's "
            "statements) only to itself, its organisation's admins and the initiating "
            "organisation's admin, treasury and settlement (settlement_queries.may_read)")
       for m in ("GetAccount", "ListAccountEntries", "GetSlotSettlement",
                 "ListMeterStatements")},
    _AGENT + "GetStatus": _rule(R.ADMIN, why="operators"),
    _AGENT + "GetPlantDirectory": _rule(
        R.METER, R.PLANT, R.ADMIN, why="neighbouring agents share what they heard"),
    _AGENT + "RankPlants": _rule(R.METER, R.ADMIN, why="a meter's own ranking; operators"),
    _AGENT + "ProposeContract": _rule(
        R.METER, own_account="meter",
        why="a plant signs terms only for the meter that asks for them"),
    "/grpc.health.v1.Health/Check": _OPEN,
    "/grpc.health.v1.Health/Watch": _OPEN,
    "/grpc.health.v1.Health/List": _OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _OPEN,
}

# The verified caller of the RPC running on this thread (for servicers that need its name).
_CALLER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Peer | None:
    """The caller the interceptor verified for the running RPC (None outside one)."""
    return _CALLER.get()


def short_name(full_method: str) -> str:
    """'/gridledger.orderer.v1.OrdererService/Broadcast' -> 'OrdererService/Broadcast'."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{method}"


def _roles(rule: Rule) -> str:
    if rule.roles == ALL:
        return "any member"
    return ", ".join(r.value for r in Role if r in rule.roles)


class Refused(Exception):
    """PERMISSION_DENIED, with the rule's name in the message."""


def judge(identities: PeerIdentities, full_method: str, pem: bytes | None,
          request: Any = None) -> Peer:
    """The verified caller of `full_method`, or Refused naming the rule."""
    name = short_name(full_method)
    rule = TABLE.get(full_method)
    if rule is None:
        raise Refused(f"{name}: no authorisation rule for this method; refused")
    if not pem:
        raise Refused(f"{name}: a client certificate is required")
    try:
        peer = identities.identify(pem)
    except PeerRefused as exc:
        raise Refused(f"{name}: {exc}") from exc
    if peer.role not in rule.roles:
        raise Refused(f"{name}: role {peer.role.value} of {peer.org} ({peer.name}) may not "
                      f"call; allowed: {_roles(rule)}")
    if rule.pinned_orderer and not peer.pinned_orderer:
        raise Refused(f"{name}: {peer.name} did not present the TLS certificate genesis pins "
                      "for it; only the genesis orderers may call")
    if rule.own_account and request is not None:
        asked = getattr(request, rule.own_account)
        if asked != peer.name:
            raise Refused(f"{name}: {peer.name} may ask only for its own account, not "
                          f"{rule.own_account} {asked!r}")
    return peer


class AuthzInterceptor(grpc.ServerInterceptor):
    """Applies TABLE to every call before the servicer sees it."""

    def __init__(self, genesis: Genesis, account_lookup: AccountLookup | None = None) -> None:
        # account_lookup: ledger-registered meters and plants (None: genesis accounts only).
        self._identities = PeerIdentities(genesis, account_lookup)
        self._handlers = WrappedHandlers(self._wrap)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(continuation(details), details.method)

    def _check(self, method: str, context: grpc.ServicerContext,
               request: Any = None) -> contextvars.Token[Peer | None]:
        try:
            peer = _judge_call(self._identities, method, context, request)
        except Refused as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return _CALLER.set(peer)

    def _wrap(self, handler: Any, method: str) -> Any:
        check = self._check
        kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler, False),
                 ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
                 ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
                 ("stream_stream", grpc.stream_stream_rpc_method_handler, True))
        for attr, make, streams_out in kinds:
            behaviour = getattr(handler, attr)
            if behaviour is None:
                continue
            unary_in = attr.startswith("unary")
            wrapper = (_streaming(behaviour, check, method, unary_in) if streams_out
                       else _single(behaviour, check, method, unary_in))
            return make(wrapper, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
        return handler


def _single(behaviour: Callable[..., Any], check: Callable[..., Any], method: str,
            unary_in: bool) -> Callable[..., Any]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        token = check(method, context, request if unary_in else None)
        try:
            return behaviour(request, context)
        finally:
            _CALLER.reset(token)
    return wrapper


def _streaming(behaviour: Callable[..., Iterator[Any]], check: Callable[..., Any], method: str,
               unary_in: bool) -> Callable[..., Iterator[Any]]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        token = check(method, context, request if unary_in else None)
        try:
            yield from behaviour(request, context)
        finally:
            # A generator resumed in another context has nothing to undo here.
            with contextlib.suppress(ValueError):
                _CALLER.reset(token)
    return wrapper


def _judge_call(identities: PeerIdentities, method: str, context: Any, request: Any) -> Peer:
    pem = context.auth_context().get("x509_pem_cert")
    return judge(identities, method, pem[0] if pem else None, request)


class AioAuthzInterceptor(grpc.aio.ServerInterceptor):
    """AuthzInterceptor for an asyncio server (aio_server.py): the same table and verdicts;
    handlers there are coroutines or async generators, and an abort is awaited."""

    def __init__(self, genesis: Genesis, account_lookup: AccountLookup | None = None) -> None:
        self._identities = PeerIdentities(genesis, account_lookup)
        self._handlers = WrappedHandlers(lambda handler, method: _wrap_async(
            handler, lambda request, context: self._check(method, context, request)))

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(await continuation(details), details.method)

    async def _check(self, method: str, context: grpc.aio.ServicerContext,
                     request: Any) -> bool:
        """True when the caller may go on; else the call is refused (its status set: no
        `context.abort`, whose exception gRPC would keep in a cycle, rpc/aio_context.py)."""
        try:
            peer = _judge_call(self._identities, method, context, request)
        except Refused as exc:
            refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
            return False
        # Each call runs in a task of its own, whose context ends with it: nothing to reset.
        _CALLER.set(peer)
        return True


def _wrap_async(handler: Any, check: Callable[[Any, Any], Any]) -> Any:
    """`handler` with `check(request or None, context)` awaited before its behaviour, which
    runs only when it returns True (the asyncio server's coroutines and async generators;
    the caller is set for the call's task)."""
    kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler),
             ("unary_stream", grpc.unary_stream_rpc_method_handler),
             ("stream_unary", grpc.stream_unary_rpc_method_handler),
             ("stream_stream", grpc.stream_stream_rpc_method_handler))
    for attr, make in kinds:
        behaviour = getattr(handler, attr)
        if behaviour is None:
            continue
        unary_in = attr.startswith("unary")
        if inspect.isasyncgenfunction(behaviour):
            async def stream(request: Any, context: Any, behaviour: Any = behaviour,
                             unary_in: bool = unary_in) -> AsyncIterator[Any]:
                if not await check(request if unary_in else None, context):
                    return
                async for item in behaviour(request, context):
                    yield item
            wrapper: Any = stream
        elif inspect.iscoroutinefunction(behaviour):
            async def single(request: Any, context: Any, behaviour: Any = behaviour,
                             unary_in: bool = unary_in) -> Any:
                if not await check(request if unary_in else None, context):
                    return None
                return await behaviour(request, context)
            wrapper = single
        else:
            # A synchronous method on an asyncio servicer: an unimplemented one of a generated
            # base class (grpc_health's List). Checked, then refused as unimplemented.
            async def unimplemented(request: Any, context: Any,
                                    unary_in: bool = unary_in) -> Any:
                if await check(request if unary_in else None, context):
                    refuse(context, grpc.StatusCode.UNIMPLEMENTED,
                           "method not implemented on this server")
            wrapper = unimplemented
        return make(wrapper, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
    return handler


def markdown_table() -> str:
    """The table as docs/operations.md shows it."""
    lines = ["| RPC | Allowed roles | Condition / why |", "|---|---|---|"]
    for method, rule in TABLE.items():
        condition = [rule.why] if rule.why else []
        if rule.pinned_orderer:
            condition.insert(0, "pinned TLS certificate")
        if rule.own_account:
            condition.insert(0, f"`{rule.own_account}` must be the caller's own account")
        lines.append(f"| `{short_name(method)}` | {_roles(rule)} | {'; '.join(condition)} |")
    return "\n".join(lines)
