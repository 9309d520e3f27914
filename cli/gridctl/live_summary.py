"""The devnet's live market summary (foreground `gridctl devnet up` / `gridctl demo`).

Every tick it reads what is new on the ledger from a committer, incrementally and bounded
(a cursor over trades, each meter's orders and the traded slots not yet settled; all
contracts, of which a devnet has a handful), and returns one status line and a line per new
event: a trade (and whether it filled an order only in part), a settled slot with its
imbalances, a supply contract signed (and how much of it coins pay), delivered and ended,
coins and a certificate issued. What a newcomer should see within minutes of `make run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gridledger.committer.v1 import committer_pb2, committer_pb2_grpc
from gridledger.common.v1 import energy_pb2, market_pb2, settlement_pb2
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger import schema

PAGE = 200  # records read per listing and tick: the summary never falls behind by much
TIMEOUT = 2.0


def _clock(seconds: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


@dataclass
class MarketTotals:
    orders: int = 0
    buy_orders: int = 0
    sell_orders: int = 0
    trades: int = 0
    traded_wh: int = 0
    partial_fills: int = 0  # trades that filled an order only in part
    settled_slots: int = 0
    shortfall_wh: int = 0
    surplus_wh: int = 0
    imbalance_micro: int = 0  # shortfall charges + surplus credits
    contracts: dict[str, int] = field(default_factory=dict)  # status -> count
    coins_issued: int = 0
    certificates: int = 0
    coins_paid: int = 0  # carbon coins that paid part of a contract


@dataclass
class _Contract:
    status: int
    delivered_wh: int


class LiveSummary:
    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.meters = sorted(a.name for a in genesis.accounts.values() if a.role == Role.METER)
        self.totals = MarketTotals()
        self._trade_token = schema.trade_prefix()
        self._order_tokens: dict[str, str] = {m: schema.order_meter_prefix(m)
                                              for m in self.meters}
        self._unsettled: set[int] = set()  # traded slots not yet seen settled
        self._contracts: dict[str, _Contract] = {}

    # -- one tick ---------------------------------------------------------------------------

    def poll(self, stub: committer_pb2_grpc.CommitterServiceStub) -> list[str]:
        """Read what is new; returns the event lines (oldest first). Raises grpc.RpcError
        when the committer does not answer (the caller shows the line without it)."""
        events: list[str] = []
        self._orders(stub)
        events += self._trades(stub)
        events += self._settlements(stub)
        events += self._contract_events(stub)
        return events

    def line(self) -> str:
        t = self.totals
        c = t.contracts
        settled = (f"settled {t.settled_slots} slots (imbalance: short {t.shortfall_wh} Wh, "
                   f"surplus {t.surplus_wh} Wh, {t.imbalance_micro} µ)")
        return (f"orders {t.orders} (buy {t.buy_orders}, sell {t.sell_orders}) | trades "
                f"{t.trades} ({t.traded_wh} Wh, {t.partial_fills} partial fills) | {settled} | "
                f"contracts {', '.join(f'{k} {v}' for k, v in sorted(c.items())) or 'none'} | "
                f"coins issued {t.coins_issued}, certificates {t.certificates}, coins paid "
                f"{t.coins_paid}")

    # -- parts ------------------------------------------------------------------------------

    def _orders(self, stub: committer_pb2_grpc.CommitterServiceStub) -> None:
        for meter in self.meters:
            token = self._order_tokens[meter]
            page = stub.ListOrders(committer_pb2.ListOrdersRequest(
                meter=meter, page_size=PAGE, page_token=_after(token)), timeout=TIMEOUT)
            for order in page.orders:
                self.totals.orders += 1
                if order.side == market_pb2.ORDER_SIDE_BUY:
                    self.totals.buy_orders += 1
                else:
                    self.totals.sell_orders += 1
                token = schema.order_meter_key(meter, order.slot_start, order.sequence)
            self._order_tokens[meter] = token

    def _trades(self, stub: committer_pb2_grpc.CommitterServiceStub) -> list[str]:
        page = stub.ListTrades(committer_pb2.ListTradesRequest(
            page_size=PAGE, page_token=_after(self._trade_token)), timeout=TIMEOUT)
        events = []
        for trade in page.trades:
            self._trade_token = schema.trade_key(trade.slot_start, trade.sequence)
            self.totals.trades += 1
            self.totals.traded_wh += trade.quantity_wh
            self._unsettled.add(trade.slot_start)
            partial = [side for side, order_id in (("sell", trade.sell_order_id),
                                                   ("buy", trade.buy_order_id))
                       if _quantity(stub, order_id) > trade.quantity_wh]
            if partial:
                self.totals.partial_fills += 1
            events.append(
                f"trade    slot {_clock(trade.slot_start)}: {trade.seller} -> {trade.buyer} "
                f"{trade.quantity_wh} Wh at {trade.price} µ/kWh = {trade.value_micro} µ"
                + (f" (partial fill of the {' and '.join(partial)} order)" if partial else ""))
        return events

    def _settlements(self, stub: committer_pb2_grpc.CommitterServiceStub) -> list[str]:
        events = []
        for slot in sorted(self._unsettled)[:PAGE]:
            found = stub.GetState(committer_pb2.GetStateRequest(
                key=schema.settlement_key(slot)), timeout=TIMEOUT)
            if not found.found:
                continue
            self._unsettled.discard(slot)
            s = settlement_pb2.SlotSettlement.FromString(found.value)
            t = self.totals
            t.settled_slots += 1
            t.shortfall_wh += s.shortfall_wh
            t.surplus_wh += s.surplus_wh
            t.imbalance_micro += s.imbalance_charges_micro + s.imbalance_credits_micro
            events.append(
                f"settled  slot {_clock(slot)}: {s.meters} meters, {s.trades} trades, traded "
                f"{s.traded_wh} Wh, delivered {s.delivered_wh} Wh; imbalance: short "
                f"{s.shortfall_wh} Wh (charged {s.imbalance_charges_micro} µ), surplus "
                f"{s.surplus_wh} Wh (credited {s.imbalance_credits_micro} µ)"
                + (f", unpaid {s.unpaid_micro} µ" if s.unpaid_micro else ""))
        return events

    def _contract_events(self, stub: committer_pb2_grpc.CommitterServiceStub) -> list[str]:
        events: list[str] = []
        counts: dict[str, int] = {}
        coins_issued = certificates = coins_paid = 0
        # New contracts are told after the changes, so the one the coins pay comes after them.
        new_contracts: list[str] = []
        token = ""
        while True:
            page = stub.ListContracts(committer_pb2.ListContractsRequest(
                page_size=1000, page_token=token), timeout=TIMEOUT)
            for record in page.contracts:
                status = _status_name(record.status)
                counts[status] = counts.get(status, 0) + 1
                coins_issued += record.coins_issued
                certificates += record.status == energy_pb2.CONTRACT_STATUS_ISSUED
                coins_paid += record.coins_paid
                changes, signed = self._contract_change(record)
                events += changes
                new_contracts += signed
            token = page.next_page_token
            if not token:
                break
        t = self.totals
        t.contracts, t.coins_issued, t.certificates, t.coins_paid = (
            counts, coins_issued, certificates, coins_paid)
        return events + new_contracts

    def _contract_change(self, record: energy_pb2.SupplyContractRecord
                         ) -> tuple[list[str], list[str]]:
        """(status changes, the contract's signing if new) as event lines."""
        seen = self._contracts.get(record.contract_id)
        self._contracts[record.contract_id] = _Contract(record.status, record.delivered_wh)
        name = f"contract {record.contract_id[:12]} {record.plant} -> {record.meter}"
        events, signed = [], []
        if seen is None:
            paid = (f", {record.coins_paid} carbon coins pay "
                    f"{record.coins_paid * record.coin_value_micro} µ of it"
                    if record.coins_paid else "")
            signed.append(f"signed   {name}: {record.energy_wh} Wh at "
                          f"{record.price_micro_per_kwh} µ/kWh = {record.amount_micro} µ{paid}")
        before = seen.status if seen else energy_pb2.CONTRACT_STATUS_OPEN
        if before == energy_pb2.CONTRACT_STATUS_OPEN and record.status != before:
            # Ended (or closed, cancelled): told even if coins came before this tick saw it.
            status = "ended" if record.status == energy_pb2.CONTRACT_STATUS_ISSUED \
                else _status_name(record.status)
            why = f" ({record.end_reason})" if record.end_reason else ""
            events.append(f"{status:<8} {name}: {record.delivered_wh} of {record.energy_wh} "
                          f"Wh delivered{why}, {record.paid_micro} µ paid to the plant")
        if record.status == energy_pb2.CONTRACT_STATUS_ISSUED and before != record.status:
            events.append(f"issued   {name}: {record.coins_issued} carbon coins and a "
                          "certificate")
        return events, signed


def _after(token: str) -> str:
    """The page token that starts right after state key `token` (a prefix: from its start)."""
    return token if token.endswith("/") else token + "\x00"


def _quantity(stub: committer_pb2_grpc.CommitterServiceStub, order_id: str) -> int:
    found = stub.GetState(committer_pb2.GetStateRequest(key=schema.order_key(order_id)),
                          timeout=TIMEOUT)
    return market_pb2.OrderRecord.FromString(found.value).quantity_wh if found.found else 0


def _status_name(status: int) -> str:
    return energy_pb2.ContractStatus.Name(status).removeprefix("CONTRACT_STATUS_").lower()
