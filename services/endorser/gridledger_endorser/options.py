"""Answering a meter's trade request with an endorser-signed option (claims 2-3).

The preset conditions are the ledger rule's own ``check_terms`` (run against this endorser's
replica at its clock), the matching is the pure order book's ``match`` against the book cache,
and the option is signed over its exact serialized bytes. Nothing is recorded on the ledger:
the option only becomes a trade when the meter submits it in a PlaceOrder transaction.

Two edge rules keep one meter from taking the market's liquidity (they are this endorser's,
not ledger rules, so they use its clock):

- Freshness: a request must have been made within ``request_window`` seconds of this
  endorser's clock, and its nonce not seen from that meter within the window
  (FAILED_PRECONDITION / ALREADY_EXISTS). Memory is bounded: a nonce is forgotten once its
  request would be stale anyway, and a meter may have at most ``max_requests_per_window``
  remembered requests (RESOURCE_EXHAUSTED beyond).
- Answered once: the very same signed request sent again while fresh (its answer was lost
  on the way) by the same member gets the same option back, not a second one: a second
  option would hold the energy again and leave the first to lapse, charged to the meter's
  member. Only options that hold energy are kept (losing one that trades nothing costs
  nothing), as serialized bytes, while their request is fresh and within
  ``max_kept_answer_bytes``, of which each organisation may use an equal share (so no member
  can crowd out the others'); beyond it a resend is refused ALREADY_EXISTS, as before, and
  the meter signs a new request. A resend that arrives while its first copy is still being
  answered is told to come back (ABORTED with a short retry hint), not refused.
- Held energy: the energy a meter's outstanding options hold in the book (matched, not yet on
  the ledger, not expired) plus the new request's quantity may not exceed
  ``max_held_percent`` % of its allowance left for that slot and side (RESOURCE_EXHAUSTED).
  Without it, repeated requests each pass the allowance check (which counts only what is on
  the ledger) and together hold all of a slot's liquidity.

Held energy per member (book_cache.py): a member's CA can enrol any number of meters, so a
slot's energy is also shared among the members asking for it.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger_core.identity import Identity
from gridledger_core.ledger.checks import open_signed
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.ledger import Ledger
from gridledger_core.ledger.rules.market import Allowance, check_terms
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.market import Order
from gridledger_core.market import ledger_view as view
from gridledger_core.market.option_check import request_digest
from gridledger_core.rpc.errors import EdgeRefusal
from gridledger_core.sigcache import VERIFIED
from gridledger_core.signing_identity import SigningIdentity
from gridledger_endorser.book_cache import (
    HOLD_GRACE_SECONDS,
    MATCHED_WH,
    TRADES,
    BookCache,
    HeldByOptions,
    MemberHoldsItsShare,
)

DEFAULT_OPTION_TTL = 30  # seconds an option can wait for its block
REQUEST_SEQUENCE = 2**62  # the request is newer than any resting order
MIN_CAP_RETRY_MS = 100
MIN_OPTION_SECONDS = 3  # the least life an option is offered with before its gate closure
MAX_NONCE_BYTES = 64
# Bytes a kept answer costs beside its serialized option (objects, dict entry; measured about
# 400 for a 783-byte option).
KEPT_OVERHEAD = 512
PENDING_RETRY_MS = 100  # a resend of a request still being answered comes back after this
# Kept answers looked at, oldest first, for one whose option no longer holds when a member's
# bytes ran out: a member whose answers all still hold must not make each of its requests
# scan (and lock the book cache for) every answer kept.
DEAD_ANSWER_SCAN = 64


@dataclass(frozen=True)
class DeskLimits:
    request_window: int = 30  # seconds a request's requested_at may differ from our clock
    max_requests_per_window: int = 1_000  # remembered nonces per meter
    max_held_percent: int = 100  # of the meter's allowance left (slot, side)
    max_kept_answer_bytes: int = 32 * 2**20  # answers kept for resent requests, in all


def add_flags(parser: argparse.ArgumentParser) -> None:
    d = DeskLimits()
    parser.add_argument("--request-window", type=int, default=d.request_window,
                        help="seconds a trade request's requested_at may be off this "
                             "endorser's clock; its nonce is remembered that long")
    parser.add_argument("--max-requests-per-window", type=int,
                        default=d.max_requests_per_window,
                        help="trade requests one meter may make within the window")
    parser.add_argument("--max-held-percent", type=int, default=d.max_held_percent,
                        help="energy a meter's outstanding options may hold, in percent of "
                             "its allowance left for the slot and side")
    parser.add_argument("--max-kept-answer-bytes", type=int, default=d.max_kept_answer_bytes,
                        help="bytes of options kept, while their request is fresh, to answer "
                             "the same request sent again (its answer lost) with the same "
                             "option")


def limits_from(args: argparse.Namespace) -> DeskLimits:
    return DeskLimits(args.request_window, args.max_requests_per_window,
                      args.max_held_percent, args.max_kept_answer_bytes)


@dataclass(frozen=True)
class _Kept:
    """The answer to a request, for the same request sent again."""

    digest: bytes  # of the request's signed payload: the same nonce with other terms is not it
    member: str  # who asked: only the same member is answered again
    option_id: str
    option: bytes  # the signed option (a SignedEnvelope), serialized
    allowance: Allowance
    size: int  # bytes counted against max_kept_answer_bytes


class RequestFreshness:
    """Refuses stale, future and replayed trade requests, in bounded memory, and keeps the
    answers to fresh requests for their resending."""

    def __init__(self, limits: DeskLimits, members: int = 1,
                 holds: Callable[[str], bool] = lambda option_id: True) -> None:
        """`members`: the consortium's organisations, which share the kept bytes equally.
        `holds(option id)`: whether an option still holds energy; a kept answer whose option
        no longer does (placed, void, expired) makes room for a new one when bytes run out."""
        self._holds = holds
        self._window = limits.request_window
        self._per_meter = limits.max_requests_per_window
        self._max_kept_bytes = limits.max_kept_answer_bytes
        self._member_kept_bytes = limits.max_kept_answer_bytes // max(1, members)
        # (meter, nonce) -> when it is forgotten (its request stale)
        self._seen: dict[tuple[str, bytes], int] = {}
        self._pending: set[tuple[str, bytes]] = set()  # admitted, being answered
        self._kept: dict[tuple[str, bytes], _Kept] = {}
        self.kept_bytes = 0
        # member -> its kept answers' keys, oldest first (dicts keep insertion order)
        self._kept_by_member: dict[str, dict[tuple[str, bytes], None]] = {}
        self._member_bytes: dict[str, int] = {}
        self._forget: list[tuple[int, str, bytes]] = []  # (forget at, meter, nonce)
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def remembered(self) -> int:
        """Nonces held now (bounded by meters x max_requests_per_window)."""
        return len(self._seen)

    def admit(self, meter: str, request: market_pb2.TradeRequest, now: int) -> None:
        """Remember the request's nonce, or raise EdgeRefusal (stale, replayed, too many)."""
        nonce, at = request.nonce, request.requested_at
        if not 0 < len(nonce) <= MAX_NONCE_BYTES:
            raise EdgeRefusal(Code.TX_VALIDATION_CODE_MALFORMED,
                              grpc.StatusCode.INVALID_ARGUMENT,
                              f"trade request nonce must be 1 to {MAX_NONCE_BYTES} bytes, "
                              f"not {len(nonce)}")
        if abs(now - at) > self._window:
            raise EdgeRefusal(Code.TX_VALIDATION_CODE_BAD_HEADER,
                              grpc.StatusCode.FAILED_PRECONDITION,
                              f"trade request of {meter} was made at {at}, {now - at} s from "
                              f"this endorser's clock ({now}); at most {self._window} s: sign "
                              "a new request")
        with self._lock:
            while self._forget and self._forget[0][0] < now:
                at_expiry, old_meter, old_nonce = heapq.heappop(self._forget)
                # Not if forgotten when refused (and maybe admitted again since).
                if self._seen.get((old_meter, old_nonce)) == at_expiry:
                    del self._seen[(old_meter, old_nonce)]
                    self._drop_kept((old_meter, old_nonce))
                self._count[old_meter] -= 1
                if not self._count[old_meter]:
                    del self._count[old_meter]
            if (meter, nonce) in self._pending:
                raise _being_answered(meter, nonce)
            if (meter, nonce) in self._seen:
                raise EdgeRefusal(Code.TX_VALIDATION_CODE_DUPLICATE_TXID,
                                  grpc.StatusCode.ALREADY_EXISTS,
                                  f"trade request of {meter} with nonce {nonce.hex()} was "
                                  "already answered; sign a new request with a new nonce")
            if self._count.get(meter, 0) >= self._per_meter:
                raise EdgeRefusal(Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"{meter} made {self._per_meter} trade requests within "
                                  f"{self._window} s (max-requests-per-window); retry later")
            forget_at = self._stale_after(request)
            self._seen[(meter, nonce)] = forget_at
            self._pending.add((meter, nonce))
            heapq.heappush(self._forget, (forget_at, meter, nonce))
            self._count[meter] = self._count.get(meter, 0) + 1

    def forget(self, meter: str, request: market_pb2.TradeRequest) -> None:
        """The request was refused for now (held energy, shares): the same signed request
        may be sent again after the hint. It still counts as a request made within the
        window (its expiry entry stays), so a meter refused again and again is bounded by
        max_requests_per_window like any other."""
        key = (meter, request.nonce)
        with self._lock:
            # Only this request's entry (the nonce may have expired and been admitted anew).
            if self._seen.get(key) == self._stale_after(request):
                del self._seen[key]
                self._drop_kept(key)

    def answered_with(self, meter: str, request: market_pb2.TradeRequest, digest: bytes,
                      member: str, proposal: Proposal | None) -> None:
        """The admitted request's answer is out: `proposal`, or None (refused). An option
        that holds energy is kept for the same request sent again while it is fresh, if the
        bytes kept (in all, and by `member`) allow it."""
        key = (meter, request.nonce)
        with self._lock:
            self._pending.discard(key)
            if proposal is None or not proposal.option.trades:
                return
            if self._seen.get(key) != self._stale_after(request) or key in self._kept:
                return  # no longer this request's entry
            option = proposal.envelope.SerializeToString()
            option_id = proposal.option.option_id
            size = len(option) + len(digest) + len(member) + len(option_id) + KEPT_OVERHEAD
            if not self._room(member, size):
                self._drop_dead_answers(member)
                if not self._room(member, size):
                    return
            self._kept[key] = _Kept(digest, member, option_id, option, proposal.allowance,
                                    size)
            self.kept_bytes += size
            self._kept_by_member.setdefault(member, {})[key] = None
            self._member_bytes[member] = self._member_bytes.get(member, 0) + size

    def _room(self, member: str, size: int) -> bool:
        return self.kept_bytes + size <= self._max_kept_bytes and \
            self._member_bytes.get(member, 0) + size <= self._member_kept_bytes

    def _drop_dead_answers(self, member: str) -> None:
        """Drop `member`'s kept answers whose option no longer holds (they would only be
        refused, ALREADY_EXISTS, if asked for again), among its DEAD_ANSWER_SCAN oldest: the
        oldest are the likeliest placed or expired. Runs only when its bytes ran out."""
        oldest = list(itertools.islice(self._kept_by_member.get(member, {}), DEAD_ANSWER_SCAN))
        for key in [k for k in oldest if not self._holds(self._kept[k].option_id)]:
            self._drop_kept(key)

    def answered(self, meter: str, request: market_pb2.TradeRequest, digest: bytes,
                 member: str, now: int) -> tuple[envelope_pb2.SignedEnvelope, Allowance] | None:
        """The option already given to this very request (same meter, nonce and signed
        payload, asked by the same member) if the request is still fresh and its answer was
        kept; else None. Raises EdgeRefusal (ABORTED, come back soon) while the request's
        first copy is still being answered."""
        if abs(now - request.requested_at) > self._window:
            return None  # admit() refuses it as stale
        key = (meter, request.nonce)
        with self._lock:
            if self._seen.get(key) != self._stale_after(request):
                return None
            if key in self._pending:
                raise _being_answered(meter, request.nonce)
            kept = self._kept.get(key)
            if kept is None or kept.digest != digest or kept.member != member:
                return None
            option, allowance = kept.option, kept.allowance
        return envelope_pb2.SignedEnvelope.FromString(option), allowance

    def _drop_kept(self, key: tuple[str, bytes]) -> None:
        # Not its pending mark: only the call that admitted it (answered_with) ends that, or
        # a copy admitted after a refusal for now could lose its mark to the first call.
        kept = self._kept.pop(key, None)
        if kept is None:
            return
        self.kept_bytes -= kept.size
        keys = self._kept_by_member[kept.member]
        del keys[key]
        if keys:
            self._member_bytes[kept.member] -= kept.size
        else:
            del self._kept_by_member[kept.member], self._member_bytes[kept.member]

    def _stale_after(self, request: market_pb2.TradeRequest) -> int:
        """When `request` is stale, so its nonce need not be remembered."""
        return request.requested_at + self._window


class BeingAnswered(EdgeRefusal):
    """A copy of a request whose first copy is still being answered: come back shortly (its
    answer is then kept, or the request refused)."""


def _being_answered(meter: str, nonce: bytes) -> BeingAnswered:
    return BeingAnswered(Code.TX_VALIDATION_CODE_STATE_CONFLICT, grpc.StatusCode.ABORTED,
                         f"trade request of {meter} with nonce {nonce.hex()} is still being "
                         "answered; send it again shortly", retry_after_ms=PENDING_RETRY_MS)


@dataclass
class _Holding:
    option_id: str  # "" while the request is being matched (a reservation)
    key: tuple[int, int]  # (slot, side)
    wh: int
    expires_at: int


@dataclass
class _MeterHoldings:
    items: list[_Holding] = field(default_factory=list)


class HeldEnergy:
    """What each meter's outstanding options hold, and the cap on it."""

    def __init__(self, percent: int, used: Callable[[str], bool]) -> None:
        self._percent = percent
        self._used = used  # option id -> placed on the ledger or no longer holding
        self._meters: dict[str, _MeterHoldings] = {}
        self._lock = threading.Lock()

    def reserve(self, meter: str, terms: market_pb2.OrderTerms, left_wh: int,
                now: int) -> _Holding:
        """Reserve the request's quantity under the cap, or raise EdgeRefusal."""
        key = (terms.slot_start, terms.side)
        cap = left_wh * self._percent // 100
        with self._lock:
            holdings = self._meters.setdefault(meter, _MeterHoldings())
            holdings.items = [h for h in holdings.items if not self._over(h, now)]
            here = [h for h in holdings.items if h.key == key]
            held = sum(h.wh for h in here)
            if held + terms.quantity_wh > cap:
                # At the latest when its first option there stops holding (a block may place
                # one sooner); a reservation still being matched ends within the call.
                ends = [h.expires_at + HOLD_GRACE_SECONDS + 1 for h in here if h.option_id]
                wait_ms = max(MIN_CAP_RETRY_MS, (min(ends) - now) * 1000 if ends else 0)
                raise EdgeRefusal(
                    Code.TX_VALIDATION_CODE_STATE_CONFLICT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{meter}'s outstanding options hold {held} Wh of slot {terms.slot_start} "
                    f"({view.side_name(terms.side)}); with {terms.quantity_wh} Wh more that "
                    f"exceeds its cap of {cap} Wh ({self._percent}% of its allowance left, "
                    f"max-held-percent); request at most {max(0, cap - held)} Wh, or submit or "
                    f"let those options expire first (within {wait_ms} ms)",
                    retry_after_ms=wait_ms)
            holding = _Holding("", key, terms.quantity_wh, now + 1)
            holdings.items.append(holding)
            return holding

    def settle(self, meter: str, holding: _Holding, option_id: str, held_wh: int,
               expires_at: int) -> None:
        """The reservation becomes what the option actually holds (nothing: dropped)."""
        with self._lock:
            holdings = self._meters.get(meter)
            if holdings is None or holding not in holdings.items:
                return
            holdings.items.remove(holding)
            if held_wh:
                holdings.items.append(_Holding(option_id, holding.key, held_wh, expires_at))
            if not holdings.items:
                del self._meters[meter]

    def _over(self, h: _Holding, now: int) -> bool:
        if not h.option_id:
            return False  # a reservation in progress ends in settle()
        return h.expires_at + HOLD_GRACE_SECONDS < now or self._used(h.option_id)


@dataclass(frozen=True)
class Proposal:
    envelope: envelope_pb2.SignedEnvelope
    option: market_pb2.TradeOption
    allowance: Allowance
    again: bool = False  # the kept answer to the same request, sent again


def verify_request(envelope: envelope_pb2.SignedEnvelope, ledger: Ledger,
                   now: int) -> tuple[Identity, market_pb2.TradeRequest]:
    """The request's verified signer (judged at `now`) and its decoded terms."""
    signer = open_signed(envelope, ledger.signers(now), "request",
                         Code.TX_VALIDATION_CODE_UNKNOWN_SIGNER,
                         Code.TX_VALIDATION_CODE_BAD_SIGNATURE)
    try:
        request = market_pb2.TradeRequest.FromString(envelope.payload)
    except DecodeError as exc:
        raise TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                        "request payload is not a gridledger.common.v1.TradeRequest") from exc
    return signer, request


class OptionDesk:
    def __init__(self, ledger: Ledger, books: BookCache, identity: SigningIdentity,
                 option_ttl: int = DEFAULT_OPTION_TTL,
                 clock: Callable[[], float] = time.time,
                 limits: DeskLimits | None = None) -> None:
        self._ledger = ledger
        self._books = books
        self._identity = identity
        self._ttl = option_ttl
        self._clock = clock
        limits = limits or DeskLimits()
        self._fresh = RequestFreshness(limits,
                                       members=len(ledger.genesis.membership.organisations),
                                       holds=books.holds)
        self._held = HeldEnergy(limits.max_held_percent, self._option_ended)

    def _option_ended(self, option_id: str) -> bool:
        """No longer holding in the book cache (placed in a block, expired, or made void by a
        maker's fill or cancel): it no longer counts against its meter's cap."""
        return not self._books.holds(option_id)

    def propose(self, envelope: envelope_pb2.SignedEnvelope, member: str = "") -> Proposal:
        """Check the signed request and return the signed option; raises TxInvalid (a
        ``ConditionFailed`` for a preset condition) without recording anything. `member` is
        the caller's verified organisation, which the option's hold is charged to (the
        signer's when there is none: tests, in-process tools)."""
        now = int(self._clock())
        signer, request = verify_request(envelope, self._ledger, now)
        member = member or signer.org
        digest = request_digest(envelope.payload)
        again = self._fresh.answered(signer.name, request, digest, member, now)
        if again is not None:
            return self._again(*again, now)
        self._fresh.admit(signer.name, request, now)
        proposal = None
        try:
            proposal = self._answer(signer, request, digest, member, now)
            return proposal
        finally:
            self._fresh.answered_with(signer.name, request, digest, member, proposal)

    def _answer(self, signer: Identity, request: market_pb2.TradeRequest, digest: bytes,
                member: str, now: int) -> Proposal:
        """The signed option for an admitted request (or a refusal: TxInvalid, EdgeRefusal,
        or refused for now, when the request is forgotten so it may come again)."""
        terms = request.terms
        allowance = check_terms(StateOverlay(self._ledger.store), self._ledger.genesis,
                                signer, terms, now)
        order = Order("(request)", terms.meter, view.side_of(terms.side), terms.price,
                      terms.quantity_wh, REQUEST_SEQUENCE, terms.slot_start)
        # No block at or after gate closure can place it: its hold (and its lapse) ends there;
        # one that could live only a moment there would lapse (charged): not offered.
        closure = self._ledger.genesis.market.gate_closure(terms.slot_start)
        if closure - 1 - now < MIN_OPTION_SECONDS:
            raise EdgeRefusal(Code.TX_VALIDATION_CODE_STATE_CONFLICT,
                              grpc.StatusCode.FAILED_PRECONDITION,
                              f"slot {terms.slot_start}'s market closes at {closure}, "
                              f"{closure - now} s from now: too late for an option to reach a "
                              f"block (at least {MIN_OPTION_SECONDS} s); order a later slot")
        option_id, expires_at = os.urandom(16).hex(), min(now + self._ttl, closure - 1)
        try:
            reserved = self._held.reserve(signer.name, terms, allowance.left_wh, now)
            held_wh = 0
            try:
                result, owners, height = self._books.match(
                    order, hold=(option_id, expires_at), member=member)
                held_wh = result.filled
            finally:
                self._held.settle(signer.name, reserved, option_id, held_wh, expires_at)
        except (EdgeRefusal, HeldByOptions, MemberHoldsItsShare):
            # Refused for now, not answered: the same signed request may come again.
            self._fresh.forget(signer.name, request)
            raise
        option = market_pb2.TradeOption(
            option_id=option_id, endorser=self._identity.name, terms=terms,
            trades=[market_pb2.ProposedTrade(maker_order_id=t.maker_id, maker=owners[t.maker_id],
                                             price=t.price, quantity_wh=t.quantity)
                    for t in result.trades],
            rest_wh=result.remaining, cancelled_wh=result.prevented, issued_at=now,
            expires_at=expires_at, ledger_height=height,
            # The meter compares it with its own request before it signs (option_check.py).
            request_digest=digest)
        TRADES.labels("proposed").inc(len(result.trades))
        MATCHED_WH.labels("proposed").inc(result.filled)
        signed = self._identity.sign_envelope(option.SerializeToString())
        # Its own signature: the place_order carrying it is then checked at submit and at the
        # replica's commit without two more Ed25519 verifications.
        VERIFIED.remember(self._identity.signer.public_key_bytes, signed.signature,
                          signed.payload)
        return Proposal(signed, option, allowance)

    def _again(self, signed: envelope_pb2.SignedEnvelope, allowance: Allowance,
               now: int) -> Proposal:
        """The kept answer, while it can still become a trade: else the meter is told to
        sign a new request (ALREADY_EXISTS, as for any request answered before)."""
        option = market_pb2.TradeOption.FromString(signed.payload)
        if option.expires_at - now < MIN_OPTION_SECONDS or \
                not self._books.holds(option.option_id):
            raise EdgeRefusal(Code.TX_VALIDATION_CODE_DUPLICATE_TXID,
                              grpc.StatusCode.ALREADY_EXISTS,
                              f"trade request of {option.terms.meter} was already answered "
                              f"with option {option.option_id}, which can no longer be placed "
                              "(expired, or the energy it held is gone); sign a new request "
                              "with a new nonce")
        return Proposal(signed, option, allowance, again=True)
