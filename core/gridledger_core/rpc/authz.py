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
from gridledger_core.rpc.backoff import RETRY_AFTER
from gridledger_core.rpc.call_shares import (
    LARGE_REQUEST_METHODS,
    RETRY_AFTER_MS,
    UNBOUNDED,
    CallShares,
)
from gridledger_core.rpc.handler_cache import WrappedHandlers, mark_wire_kind
from gridledger_core.rpc.peer_identity import (
    AccountLookup,
    LookupUnavailable,
    Peer,
    PeerIdentities,
    PeerRefused,
    Subject,
)
from gridledger_core.rpc.request_timing import request_arrived

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
    """PERMISSION_DENIED, with the rule's name in the message; UNAVAILABLE with a retry
    hint when the caller's account could not be looked up now (no verdict on it)."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    @property
    def code(self) -> grpc.StatusCode:
        return (grpc.StatusCode.PERMISSION_DENIED if self.retry_after_ms is None
                else grpc.StatusCode.UNAVAILABLE)

    @property
    def trailing(self) -> tuple[tuple[str, str], ...]:
        """The retry hint, as trailing metadata."""
        return () if self.retry_after_ms is None else (
            (RETRY_AFTER, str(self.retry_after_ms)),)


class ShareFull(Refused):
    """RESOURCE_EXHAUSTED with the shares' retry hint: the caller's `member` holds its share
    of the server's calls in progress (call_shares.py)."""

    def __init__(self, message: str, member: str) -> None:
        super().__init__(message)
        self.member = member

    @property
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def trailing(self) -> tuple[tuple[str, str], ...]:
        return ((RETRY_AFTER, str(RETRY_AFTER_MS)),)


def take_place(identities: PeerIdentities, shares: CallShares, full_method: str,
               pem: bytes | None, large: bool) -> Subject:
    """What a call is judged on before its request arrives: the caller's certificate
    (`caller_subject`), then a place in its member's share of `shares` (`large`: a method of
    LARGE_REQUEST_METHODS, whose place is given back with the same). Refused (its `code`:
    PERMISSION_DENIED) or ShareFull (RESOURCE_EXHAUSTED with a hint) when the call ends
    here. The one step of both interceptors and of the endorser's fronts."""
    subject = caller_subject(identities, full_method, pem)
    refusal = shares.try_enter(subject.org, large)
    if refusal is not None:
        raise ShareFull(f"{short_name(full_method)}: {refusal}", subject.org)
    return subject


def caller_subject(identities: PeerIdentities, full_method: str, pem: bytes | None) -> Subject:
    """What the caller's certificate `pem` proves by itself (its organisation: the one whose
    TLS CA issued it; its account not yet looked up), or Refused naming the rule."""
    if full_method not in TABLE:
        raise Refused(f"{short_name(full_method)}: no authorisation rule for this method; "
                      "refused")
    if not pem:
        raise Refused(f"{short_name(full_method)}: a client certificate is required")
    try:
        return identities.subject(pem)
    except PeerRefused as exc:
        raise Refused(f"{short_name(full_method)}: {exc}") from exc


def judge_subject(identities: PeerIdentities, full_method: str, subject: Subject) -> Peer:
    """The verified caller of `full_method`, whose certificate was read (`caller_subject`),
    or Refused naming the rule; its request is judged apart (`judge_request`), once read.
    Messages are made only for a refusal: this runs on every call."""
    rule = TABLE[full_method]
    try:
        peer = identities.admit(subject)
    except LookupUnavailable as exc:
        raise Refused(f"{short_name(full_method)}: {exc}", exc.retry_after_ms) from exc
    except PeerRefused as exc:
        raise Refused(f"{short_name(full_method)}: {exc}") from exc
    if peer.role not in rule.roles:
        raise Refused(f"{short_name(full_method)}: role {peer.role.value} of {peer.org} "
                      f"({peer.name}) may not call; allowed: {_roles(rule)}")
    if rule.pinned_orderer and not peer.pinned_orderer:
        raise Refused(f"{short_name(full_method)}: {peer.name} did not present the TLS "
                      "certificate genesis pins for it; only the genesis orderers may call")
    return peer


def judge_request(full_method: str, peer: Peer, request: Any) -> None:
    """What `full_method`'s rule asks of the request of its judged caller `peer`, or
    Refused (a method without a rule never gets this far: `caller_subject` refused it)."""
    rule = TABLE[full_method]
    if rule.own_account:
        asked = getattr(request, rule.own_account)
        if asked != peer.name:
            raise Refused(f"{short_name(full_method)}: {peer.name} may ask only for its own "
                          f"account, not {rule.own_account} {asked!r}")


# Each kind of handler gRPC may hand out -> the handler the interceptors serve it with (the
# request always taken as a stream), whether responses stream, and the kind on the wire of
# a method whose one request is read by the interceptor (None: the request is a stream).
_KINDS = (("unary_unary", grpc.stream_unary_rpc_method_handler, False, "unary"),
          ("unary_stream", grpc.stream_stream_rpc_method_handler, True, "server_stream"),
          ("stream_unary", grpc.stream_unary_rpc_method_handler, False, None),
          ("stream_stream", grpc.stream_stream_rpc_method_handler, True, None))


def _rewrapped(handler: Any, wrap: Callable[[Any, bool, bool], Any]) -> Any:
    """`handler` served as a stream-request handler around `wrap(behaviour, streams_out,
    unary_in)`, marked with its kind on the wire (handler_cache.mark_wire_kind)."""
    for attr, make, streams_out, unary_kind in _KINDS:
        behaviour = getattr(handler, attr)
        if behaviour is None:
            continue
        wrapper = wrap(behaviour, streams_out, unary_kind is not None)
        if unary_kind is not None:
            mark_wire_kind(wrapper, unary_kind)
        return make(wrapper, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
    return handler


class AuthzInterceptor(grpc.ServerInterceptor):
    """Applies TABLE to every call before the servicer sees it, and holds each caller's
    member to its share of the server's calls in progress (call_shares.py).

    Every method is served as if its request were a stream: gRPC then runs the handler as
    soon as the call starts, so the caller is judged and counted before its request arrives
    (a unary handler would wait for the request first, holding a handler thread or a place
    of the server's bound for any caller that never sends it). The one request is then read
    and judged (`Rule.own_account`) before the method sees it."""

    def __init__(self, genesis: Genesis, account_lookup: AccountLookup | None = None,
                 shares: CallShares | None = None) -> None:
        # account_lookup: ledger-registered meters and plants (None: genesis accounts only).
        self._identities = PeerIdentities(genesis, account_lookup)
        self._shares = shares or CallShares(UNBOUNDED)
        self._handlers = WrappedHandlers(self._wrap)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(continuation(details), details.method)

    def _enter(self, method: str, context: grpc.ServicerContext, large: bool) -> Subject:
        """Take a place in the caller's member's share, by the organisation whose TLS CA
        issued its certificate (before its account is looked up: a meter agent asks its
        committer, and those lookups count against the caller too); its certificate, or the call
        ends here (PERMISSION_DENIED, or RESOURCE_EXHAUSTED beyond the share). `large`: a
        method of LARGE_REQUEST_METHODS, decided once per method by the wrapper, which gives
        the place back with the same."""
        try:
            return take_place(self._identities, self._shares, method, _pem(context), large)
        except Refused as exc:
            if exc.trailing:
                context.set_trailing_metadata(exc.trailing)
            context.abort(exc.code, str(exc))

    def _judge(self, method: str, context: grpc.ServicerContext, subject: Subject) -> Peer:
        try:
            return judge_subject(self._identities, method, subject)
        except Refused as exc:
            if exc.trailing:
                context.set_trailing_metadata(exc.trailing)
            context.abort(exc.code, str(exc))

    def _begin(self, method: str, context: grpc.ServicerContext, subject: Subject,
               requests: Any, unary_in: bool) -> tuple[Peer, Any]:
        """The judged caller (its place taken) and what its method is given: the one
        request, read now, or the request stream."""
        peer = self._judge(method, context, subject)
        return peer, self._request(requests, method, context, peer) if unary_in else requests

    @staticmethod
    def _request(requests: Iterator[Any], method: str, context: grpc.ServicerContext,
                 peer: Peer) -> Any:
        for request in requests:
            request_arrived()
            try:
                judge_request(method, peer, request)
            except Refused as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            return request
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _NO_REQUEST.format(short_name(method)))

    def _wrap(self, handler: Any, method: str) -> Any:
        return _rewrapped(handler, lambda behaviour, streams_out, unary_in: (
            self._streaming(behaviour, method, unary_in) if streams_out
            else self._single(behaviour, method, unary_in)))

    def _single(self, behaviour: Callable[..., Any], method: str,
                unary_in: bool) -> Callable[..., Any]:
        large = method in LARGE_REQUEST_METHODS

        def wrapper(requests: Any, context: grpc.ServicerContext) -> Any:
            subject = self._enter(method, context, large)
            try:
                peer, request = self._begin(method, context, subject, requests, unary_in)
                token = _CALLER.set(peer)
                try:
                    return behaviour(request, context)
                finally:
                    _CALLER.reset(token)
            finally:
                self._shares.leave(subject.org, large)
        return wrapper

    def _streaming(self, behaviour: Callable[..., Iterator[Any]], method: str,
                   unary_in: bool) -> Callable[..., Iterator[Any]]:
        large = method in LARGE_REQUEST_METHODS

        def wrapper(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # The place is given back only when the generator ends (gRPC drops it, closing
            # it, once the call is over), never when the call ends: its thread may still be
            # busy in the servicer, and a place must stand for a thread.
            subject = self._enter(method, context, large)
            try:
                peer, request = self._begin(method, context, subject, requests, unary_in)
                token = _CALLER.set(peer)
                try:
                    yield from behaviour(request, context)
                finally:
                    # A generator resumed in another context has nothing to undo here.
                    with contextlib.suppress(ValueError):
                        _CALLER.reset(token)
            finally:
                self._shares.leave(subject.org, large)
        return wrapper


_NO_REQUEST = "{} requires exactly one request message"


def _pem(context: Any) -> bytes | None:
    pem = context.auth_context().get("x509_pem_cert")
    return pem[0] if pem else None


class AioAuthzInterceptor(grpc.aio.ServerInterceptor):
    """AuthzInterceptor for an asyncio server (aio_server.py): the same table, shares and
    verdicts; handlers there are coroutines or async generators, and a refusal sets the
    call's status (no `context.abort`, whose exception gRPC would keep in a cycle,
    rpc/aio_context.py)."""

    def __init__(self, genesis: Genesis, account_lookup: AccountLookup | None = None,
                 shares: CallShares | None = None) -> None:
        self._identities = PeerIdentities(genesis, account_lookup)
        self._shares = shares or CallShares(UNBOUNDED)
        self._handlers = WrappedHandlers(self._wrap)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                details: grpc.HandlerCallDetails) -> Any:
        return self._handlers.get(await continuation(details), details.method)

    def _enter(self, method: str, context: grpc.aio.ServicerContext,
               large: bool) -> Subject | None:
        """As AuthzInterceptor._enter; None when the call was refused."""
        try:
            return take_place(self._identities, self._shares, method, _pem(context), large)
        except Refused as exc:
            refuse(context, exc.code, str(exc), exc.trailing)
            return None

    def _judge(self, method: str, context: grpc.aio.ServicerContext,
               subject: Subject) -> Peer | None:
        """The judged caller, set for the call's task (each call runs in a task of its own,
        whose context ends with it: nothing to reset); None when it was refused."""
        try:
            peer = judge_subject(self._identities, method, subject)
        except Refused as exc:
            refuse(context, exc.code, str(exc), exc.trailing)
            return None
        _CALLER.set(peer)
        return peer

    @staticmethod
    async def _request(method: str, context: grpc.aio.ServicerContext,
                       peer: Peer) -> tuple[bool, Any]:
        """(True, the one request) or (False, None) with the call refused. Read with
        `context.read()`: the request iterator gRPC also offers is an async generator, a
        tenth of a trivial call's cost more."""
        request = await context.read()
        request_arrived()
        if request is grpc.aio.EOF:
            refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                   _NO_REQUEST.format(short_name(method)))
            return False, None
        try:
            judge_request(method, peer, request)
        except Refused as exc:
            refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
            return False, None
        return True, request

    async def _begin(self, method: str, context: grpc.aio.ServicerContext, subject: Subject,
                     requests: Any, unary_in: bool) -> tuple[bool, Any]:
        """As AuthzInterceptor._begin: (True, what the method is given: the one request,
        read now, or the request stream) or (False, None) with the call refused."""
        peer = self._judge(method, context, subject)
        if peer is None:
            return False, None
        if not unary_in:
            return True, requests
        return await self._request(method, context, peer)

    def _wrap(self, handler: Any, method: str) -> Any:
        return _rewrapped(handler, lambda behaviour, _streams_out, unary_in:
                          self._wrapper(behaviour, method, unary_in))

    def _wrapper(self, behaviour: Any, method: str, unary_in: bool) -> Any:
        # A place is given back in the handler's `finally`: a cancelled call's task gets
        # CancelledError at its await, also inside an async generator.
        enter, begin, shares = self._enter, self._begin, self._shares
        large = method in LARGE_REQUEST_METHODS
        if inspect.isasyncgenfunction(behaviour):
            async def stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                subject = enter(method, context, large)
                if subject is None:
                    return
                try:
                    ok, request = await begin(method, context, subject, requests, unary_in)
                    if ok:
                        async for item in behaviour(request, context):
                            yield item
                finally:
                    shares.leave(subject.org, large)
            return stream
        if inspect.iscoroutinefunction(behaviour):
            async def single(requests: Any, context: Any) -> Any:
                subject = enter(method, context, large)
                if subject is None:
                    return None
                try:
                    ok, request = await begin(method, context, subject, requests, unary_in)
                    return await behaviour(request, context) if ok else None
                finally:
                    shares.leave(subject.org, large)
            return single

        # A synchronous method on an asyncio servicer: an unimplemented one of a generated
        # base class (grpc_health's List). Judged, then refused as unimplemented.
        async def unimplemented(requests: Any, context: Any) -> Any:
            subject = enter(method, context, large)
            if subject is None:
                return
            try:
                if self._judge(method, context, subject) is not None:
                    refuse(context, grpc.StatusCode.UNIMPLEMENTED,
                           "method not implemented on this server")
            finally:
                shares.leave(subject.org, large)
        return unimplemented


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
