"""Answering a meter's trade request with an endorser-signed option (claims 2-3).

The preset conditions are the ledger rule's own ``check_terms`` (run against this endorser's
replica at its clock), the matching is the pure order book's ``match`` against the book cache,
and the option is signed over its exact serialized bytes. Nothing is recorded: the option
only becomes a trade when the meter submits it in a PlaceOrder transaction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

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
from gridledger_core.signing_identity import SigningIdentity
from gridledger_endorser.book_cache import MATCHED_WH, TRADES, BookCache

DEFAULT_OPTION_TTL = 30  # seconds an option can wait for its block
REQUEST_SEQUENCE = 2**62  # the request is newer than any resting order


@dataclass(frozen=True)
class Proposal:
    envelope: envelope_pb2.SignedEnvelope
    option: market_pb2.TradeOption
    allowance: Allowance


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
                 clock: Callable[[], float] = time.time) -> None:
        self._ledger = ledger
        self._books = books
        self._identity = identity
        self._ttl = option_ttl
        self._clock = clock

    def propose(self, envelope: envelope_pb2.SignedEnvelope) -> Proposal:
        """Check the signed request and return the signed option; raises TxInvalid (a
        ``ConditionFailed`` for a preset condition) without recording anything."""
        now = int(self._clock())
        signer, request = verify_request(envelope, self._ledger, now)
        terms = request.terms
        allowance = check_terms(StateOverlay(self._ledger.store), self._ledger.genesis,
                                signer, terms, now)
        order = Order("(request)", terms.meter, view.side_of(terms.side), terms.price,
                      terms.quantity_wh, REQUEST_SEQUENCE, terms.slot_start)
        option_id, expires_at = os.urandom(16).hex(), now + self._ttl
        result, owners, height = self._books.match(order, hold=(option_id, expires_at))
        option = market_pb2.TradeOption(
            option_id=option_id, endorser=self._identity.name, terms=terms,
            trades=[market_pb2.ProposedTrade(maker_order_id=t.maker_id, maker=owners[t.maker_id],
                                             price=t.price, quantity_wh=t.quantity)
                    for t in result.trades],
            rest_wh=result.remaining, cancelled_wh=result.prevented, issued_at=now,
            expires_at=expires_at, ledger_height=height)
        TRADES.labels("proposed").inc(len(result.trades))
        MATCHED_WH.labels("proposed").inc(result.filled)
        signed = self._identity.sign_envelope(option.SerializeToString())
        return Proposal(signed, option, allowance)
