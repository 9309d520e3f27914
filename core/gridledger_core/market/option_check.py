"""What a meter checks before it signs a PlaceOrder (issue 14 item 8): the option it got back
answers *its* request, with exactly the terms it asked for.

The ledger rule cannot do this: the request itself never reaches the ledger, so an endorser
(hostile or buggy) could answer with an option made for another meter, for other terms, or
replay one it made earlier, and the meter's signature would turn it into a binding order.
The endorser puts SHA-256 of the signed request's payload bytes into
``TradeOption.request_digest``; the client compares it and the terms here, in one pure
function shared by the meter-agent and ``gridctl order place``.

Each refusal names its condition (``OptionRefused.condition``) so a client can count it and
say why.
"""

from __future__ import annotations

from gridledger.common.v1 import envelope_pb2, market_pb2
from gridledger_core.crypto import sha256
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Signers
from gridledger_core.ledger.errors import TxInvalid
from gridledger_core.ledger.rules.market import verify_option
from gridledger_core.market import ledger_view as view

# The condition names a refusal can carry (also the meter-agent's metric label values).
BAD_SIGNATURE = "option_signature"
DIGEST = "request_digest_mismatch"
TERMS = "terms_mismatch"
PRICE = "trade_beyond_limit"
QUANTITY = "quantity_mismatch"
CONDITIONS = (BAD_SIGNATURE, DIGEST, TERMS, PRICE, QUANTITY)

_TERM_FIELDS = ("meter", "side", "slot_start", "price", "quantity_wh")


class OptionRefused(Exception):
    """The client must not sign this option; ``condition`` is one of CONDITIONS."""

    def __init__(self, condition: str, message: str) -> None:
        super().__init__(f"{condition}: {message}")
        self.condition = condition


def request_digest(request_payload: bytes) -> bytes:
    """What TradeOption.request_digest carries: SHA-256 of the signed request's payload."""
    return sha256(request_payload)


def check_option(request_payload: bytes, option: market_pb2.TradeOption) -> None:
    """Raise OptionRefused unless `option` answers the request whose signed payload bytes are
    `request_payload`, with its exact terms, trades at or within its price limit, and
    trades + rest + cancelled == its quantity. Pure: no clock, no I/O."""
    asked = market_pb2.TradeRequest.FromString(request_payload).terms
    if option.request_digest != request_digest(request_payload):
        raise OptionRefused(DIGEST, f"option {option.option_id} answers request digest "
                            f"{option.request_digest.hex() or '(none)'}, not this request's "
                            f"{request_digest(request_payload).hex()} (an option for another "
                            "request, or a replayed one)")
    for name in _TERM_FIELDS:
        got, want = getattr(option.terms, name), getattr(asked, name)
        if got != want:
            raise OptionRefused(TERMS, f"option {option.option_id} has {name} {got!r}, the "
                                f"request asked {want!r}")
    buying = asked.side == market_pb2.ORDER_SIDE_BUY
    for trade in option.trades:
        beyond = trade.price > asked.price if buying else trade.price < asked.price
        if beyond:
            raise OptionRefused(PRICE, f"option {option.option_id} trades {trade.quantity_wh} "
                                f"Wh at {trade.price} µ/kWh, beyond the "
                                f"{view.side_name(asked.side)} limit {asked.price} µ/kWh")
    traded = sum(t.quantity_wh for t in option.trades)
    total = traded + option.rest_wh + option.cancelled_wh
    if total != asked.quantity_wh or any(t.quantity_wh == 0 for t in option.trades):
        raise OptionRefused(QUANTITY, f"option {option.option_id} trades {traded} + rests "
                            f"{option.rest_wh} + cancels {option.cancelled_wh} Wh (trades "
                            f"of 0 Wh not allowed), not the requested {asked.quantity_wh} Wh")


def accept_option(option_envelope: envelope_pb2.SignedEnvelope, request_payload: bytes,
                  genesis: Genesis, now: int) -> market_pb2.TradeOption:
    """The decoded option if it is signed by an endorser account of the consortium's genesis
    (judged at `now`, as the ledger rule's verify_option) and passes check_option; else
    OptionRefused."""
    try:
        _, option = verify_option(option_envelope, Signers(genesis.membership, now, None))
    except TxInvalid as exc:
        raise OptionRefused(BAD_SIGNATURE, exc.message) from exc
    check_option(request_payload, option)
    return option
