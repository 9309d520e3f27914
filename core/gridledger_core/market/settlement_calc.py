"""Ex-post settlement of one delivery slot (issue 14), pure: no I/O, integers only.

Two-settlement, as lemlab's balancing: every trade settles in full at its trade price; each
meter's deviation of its metered net export from its traded net position is an imbalance with
the balancing account, priced at the genesis imbalance prices. Per meter m with trades in the
slot:

    S, B   Wh sold / bought;  Vs, Vb the sums of those trades' values (price * Wh // 1000)
    P, C   Wh produced / consumed by its readings of intervals inside the slot (missing = 0)
    N = P - C  (metered net export),  Q = S - B  (traded net),  I = N - Q  (imbalance)
    delivered_sold = min(S, max(0, N + B))
    I < 0: shortfall |I| Wh, charge  shortfall_price * |I| // 1000  (meter -> balancing)
    I > 0: surplus    I  Wh, credit  surplus_price  *  I  // 1000  (balancing -> meter)

``rules/settlement.py`` moves the money; this module only computes the figures, so they can be
property-tested on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TradeFacts:
    buyer: str
    seller: str
    quantity_wh: int
    value_micro: int


@dataclass(frozen=True)
class Metered:
    produced_wh: int = 0
    consumed_wh: int = 0
    readings: int = 0


@dataclass(frozen=True)
class Position:
    """One meter's settlement figures for one slot."""

    meter: str
    sold_wh: int
    bought_wh: int
    sold_value_micro: int
    bought_value_micro: int
    metered: Metered

    @property
    def metered_net_wh(self) -> int:
        return self.metered.produced_wh - self.metered.consumed_wh

    @property
    def traded_net_wh(self) -> int:
        return self.sold_wh - self.bought_wh

    @property
    def imbalance_wh(self) -> int:
        return self.metered_net_wh - self.traded_net_wh

    @property
    def shortfall_wh(self) -> int:
        return max(0, -self.imbalance_wh)

    @property
    def surplus_wh(self) -> int:
        return max(0, self.imbalance_wh)

    @property
    def delivered_sold_wh(self) -> int:
        return min(self.sold_wh, max(0, self.metered_net_wh + self.bought_wh))

    def shortfall_charge_micro(self, shortfall_price: int) -> int:
        return shortfall_price * self.shortfall_wh // 1000

    def surplus_credit_micro(self, surplus_price: int) -> int:
        return surplus_price * self.surplus_wh // 1000


def positions(trades: Iterable[TradeFacts],
              metered: Mapping[str, Metered]) -> list[Position]:
    """Every meter that bought or sold in the slot, sorted by name (the order money moves in,
    so every replica moves it alike)."""
    sold: dict[str, list[int]] = {}
    bought: dict[str, list[int]] = {}
    for trade in trades:
        s = sold.setdefault(trade.seller, [0, 0])
        s[0] += trade.quantity_wh
        s[1] += trade.value_micro
        b = bought.setdefault(trade.buyer, [0, 0])
        b[0] += trade.quantity_wh
        b[1] += trade.value_micro
    result = []
    for meter in sorted(sold.keys() | bought.keys()):
        s_wh, s_value = sold.get(meter, [0, 0])
        b_wh, b_value = bought.get(meter, [0, 0])
        result.append(Position(meter, s_wh, b_wh, s_value, b_value,
                               metered.get(meter, Metered())))
    return result
