"""What a supply contract's end pays (issue 14 item 6): pure, integer, the same on every node.

A contract ends fulfilled (TradeEnd), expired (CloseContract after its deadline) or cancelled
(CancelContract by both parties). In every case it is paid pro rata on the energy attributed
to it (`delivered_wh`):

    value    = price * delivered_wh // 1000                        (µ)
    coins    = min(coins_paid, ceil(value / coin_value))           coins count first
    money    = max(0, value - coins * coin_value)                  from the meter's escrow
    returned coins = coins_paid - coins;  released money = reserved - money

`money <= reserved` always: if every coin is used, money = value - coins_paid * coin_value
<= amount - coins_paid * coin_value = reserved; otherwise the coins already cover the value.
A fulfilled contract (delivered = energy) pays exactly its amount: all coins and the whole
escrow.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridledger_core.energy.terms import amount_micro, coins_to_plant


@dataclass(frozen=True)
class EndSplit:
    value_micro: int
    coins_to_plant: int
    coins_returned: int
    paid_micro: int
    released_micro: int


def end_split(delivered_wh: int, price_micro_per_kwh: int, coins_paid: int,
              coin_value_micro: int, reserved_micro: int) -> EndSplit:
    value = amount_micro(price_micro_per_kwh, delivered_wh)
    coins = coins_to_plant(value, coins_paid, coin_value_micro)
    paid = max(0, value - coins * coin_value_micro)
    if paid > reserved_micro:
        raise ValueError(f"delivered value {value} exceeds coins and escrow {reserved_micro}")
    return EndSplit(value, coins, coins_paid - coins, paid, reserved_micro - paid)
