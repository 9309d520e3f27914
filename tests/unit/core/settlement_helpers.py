"""A ledger with a market and money for settlement tests (issue 14): signed transactions of
the session consortium's meters, treasury and settlement account, blocks at chosen times,
options matched against the ledger's own book (as the endorser does), and the invariants every
test checks after every block: money conserved, escrow exactly what the orders hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ledger_helpers import ChainBuilder, endorsed, identity, reading
from market_helpers import NOW, SLOT, history, option, place, terms, tx_id
from signed_blocks import SignedChain

from gridledger.common.v1 import (
    block_pb2,
    envelope_pb2,
    market_pb2,
    settlement_pb2,
)
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.ledger import schema
from gridledger_core.ledger.audit import verify_ledger
from gridledger_core.ledger.block_proof import block_verifier
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.ledger.rules import market as market_rules
from gridledger_core.ledger.rules import money
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.market import Order, OrderBook
from gridledger_core.market import ledger_view as view
from gridledger_core.signing_identity import SigningIdentity
from gridledger_core.storage import MemoryStore

VALID = Code.TX_VALIDATION_CODE_VALID
CONFLICT = Code.TX_VALIDATION_CODE_STATE_CONFLICT
NOT_AUTHORIZED = Code.TX_VALIDATION_CODE_NOT_AUTHORIZED
INVALID = Code.TX_VALIDATION_CODE_INVALID_BODY
HOUR = 3600
GATE = SLOT - HOUR  # gate closure of SLOT (default genesis: one hour before delivery)
DEADLINE = SLOT + 2 * HOUR  # readings deadline: slot end + the 3,600 s submission window
METERS = ("meter-1", "meter-2", "meter-3")


def accept_proof(block: block_pb2.Block, header: block_pb2.BlockHeader,
                 previous: bytes | None) -> None:
    """Consensus proofs are the consensus core's tests; these are about settlement."""


def role_account(genesis: Genesis, role: Role) -> str:
    return sorted(a.name for a in genesis.accounts.values()
                  if a.role == role and a.org == genesis.initiating_organization)[0]


@dataclass
class Net:
    genesis: Genesis
    ids: dict[str, SigningIdentity]
    ledgers: list[Ledger]  # replicas fed the same blocks
    chain: ChainBuilder | SignedChain = field(default_factory=ChainBuilder)
    blocks: list[block_pb2.Block] = field(default_factory=list)
    funded: int = 0  # money the treasury created in this test
    time: int = NOW

    @property
    def ledger(self) -> Ledger:
        return self.ledgers[0]

    @property
    def endorser(self) -> SigningIdentity:
        return self.ids["endorser-1"]

    @property
    def treasury(self) -> str:
        return role_account(self.genesis, Role.TREASURY)

    @property
    def settler(self) -> str:
        return role_account(self.genesis, Role.SETTLEMENT)

    def state(self) -> StateOverlay:
        return StateOverlay(self.ledger.store)

    def commit(self, *envelopes: envelope_pb2.SignedEnvelope,
               at: int | None = None) -> list[tuple[int, str]]:
        return self.commit_raw([endorsed(e, self.endorser) for e in envelopes], at)

    def commit_raw(self, txs: list[bytes], at: int | None = None) -> list[tuple[int, str]]:
        """Commit endorsed transactions in one block on every replica, then check."""
        self.time = at if at is not None else self.time
        block = self.chain.block(txs, timestamp=self.time)
        results: list[CommitResult] = [ledger.commit(block) for ledger in self.ledgers]
        assert len({r.state_root for r in results}) == 1, "replicas disagree"
        self.blocks.append(block)
        for code, tx in zip(results[0].codes, results[0].transactions, strict=True):
            if code == VALID and tx is not None and tx.WhichOneof("body") == "fund_account":
                self.funded += tx.fund_account.amount_micro
        self.check_invariants()
        return list(zip(results[0].codes, results[0].messages, strict=True))

    # -- transactions -------------------------------------------------------------------------

    def tx(self, signer: str, body_field: str, body: object) -> envelope_pb2.SignedEnvelope:
        return self.ids[signer].new_transaction(body_field, body,  # type: ignore[arg-type]
                                                timestamp=self.time)

    def fund(self, account: str, amount: int, signer: str | None = None
             ) -> envelope_pb2.SignedEnvelope:
        return self.tx(signer or self.treasury, "fund_account",
                       settlement_pb2.FundAccount(account=account, amount_micro=amount))

    def transfer(self, payer: str, to: str, amount: int) -> envelope_pb2.SignedEnvelope:
        return self.tx(payer, "transfer", settlement_pb2.Transfer(to=to, amount_micro=amount))

    def settle(self, slot: int = SLOT, signer: str | None = None) -> envelope_pb2.SignedEnvelope:
        return self.tx(signer or self.settler, "settle_slot",
                       settlement_pb2.SettleSlot(slot_start=slot))

    def cancel(self, meter: str, order_id: str) -> envelope_pb2.SignedEnvelope:
        return self.tx(meter, "cancel_order", market_pb2.CancelOrder(order_id=order_id))

    def readings(self, meter: str, produced: int, consumed: int,
                 slot: int = SLOT) -> list[envelope_pb2.SignedEnvelope]:
        """One reading per 900 s interval of the slot, splitting the totals evenly."""
        return [self.tx(meter, "meter_reading",
                        reading(meter, slot + q * 900, produced // 4, consumed // 4))
                for q in range(4)]

    def order(self, meter: str, side: int, price: int, quantity: int,
              slot: int = SLOT) -> envelope_pb2.SignedEnvelope:
        """A PlaceOrder whose option is matched against the ledger's book, as the endorser
        would match it (price-time priority, self-trade prevention)."""
        book = OrderBook(slot, tick=self.genesis.market.price_tick, lot=self.genesis.market.lot_wh)
        state = self.state()
        for record in view.iter_orders(state, schema.order_book_prefix(slot)):
            book.rest(view.to_book_order(record))
        incoming = Order("(request)", meter, view.side_of(side), price,
                                           quantity, 2**62, slot)
        result = book.match(incoming)
        owners = {o.order_id: o.owner for o in book.open_orders()}
        opt = option(self.endorser, terms(meter, side, price, quantity, slot),
                     [(t.maker_id, owners[t.maker_id], t.price, t.quantity)
                      for t in result.trades],
                     rest=result.remaining, cancelled=result.prevented,
                     expires_at=self.time + 30)
        return self.ids[meter].new_transaction("place_order",
                                               market_pb2.PlaceOrder(option=opt),
                                               timestamp=self.time)

    # -- reads --------------------------------------------------------------------------------

    def account(self, name: str) -> settlement_pb2.MoneyAccount:
        return money.get_account(self.state(), self.genesis, name)

    def record(self, order_id: str) -> market_pb2.OrderRecord:
        found = view.load_order(self.state(), order_id)
        assert found is not None, order_id
        return found

    def statement(self, meter: str, slot: int = SLOT) -> settlement_pb2.MeterStatement:
        raw = self.ledger.get_state(schema.statement_key(slot, meter))
        assert raw is not None, meter
        return settlement_pb2.MeterStatement.FromString(raw)

    def settlement(self, slot: int = SLOT) -> settlement_pb2.SlotSettlement | None:
        raw = self.ledger.get_state(schema.settlement_key(slot))
        return None if raw is None else settlement_pb2.SlotSettlement.FromString(raw)

    def dump(self) -> list[tuple[bytes, bytes]]:
        return list(self.ledger.store.scan(schema.STATE))

    def check_replay(self) -> None:
        """`gridctl ledger verify`: a fresh replay reaches the same codes, roots and state
        (needs signed blocks: new_net(..., signed=True))."""
        report = verify_ledger(self.ledger.store, self.genesis)
        assert report.ok, report.problem
        assert report.state_root == self.ledger.chain.state_root

    # -- invariants ---------------------------------------------------------------------------

    def check_invariants(self) -> None:
        state = self.state()
        allocations = self.genesis.settlement.allocations
        totals: dict[str, tuple[int, int]] = {
            name: (amount, 0) for name, amount in allocations.items()}
        for _, raw in state.scan("money/"):
            record = settlement_pb2.MoneyAccount.FromString(raw)
            totals[record.account] = (record.balance_micro, record.reserved_micro)
        supply = money.supply(state, self.genesis)
        # Conservation: every µ that exists is on some account, as balance or escrow.
        assert sum(b + r for b, r in totals.values()) == supply
        assert supply == sum(allocations.values()) + self.funded
        # Escrow: an account's reserved money is exactly what its orders hold, and each
        # order holds its open quantity's escrow plus what its fills keep until settlement.
        held: dict[str, int] = {}
        for _, raw in state.scan("order/"):
            order = market_pb2.OrderRecord.FromString(raw)
            held[order.owner] = held.get(order.owner, 0) + order.reserved_micro
            assert order.reserved_micro == expected_reserved(self.genesis, state, order), order
        for name, (_, reserved) in totals.items():
            assert reserved == held.get(name, 0), name


def expected_reserved(genesis: Genesis, state: StateOverlay,
                      order: market_pb2.OrderRecord) -> int:
    if state.get(schema.settlement_key(order.slot_start)) is not None:
        return 0
    filled = market_rules.filled_wh(order)
    if order.side == view.BUY_PB:
        return money.ceil_micro(order.price, order.remaining_wh) + sum(
            f.value_micro for f in order.fills)
    rate = genesis.settlement.sell_collateral_micro_per_kwh
    return money.ceil_micro(rate, order.remaining_wh + filled)


def new_net(genesis: Genesis, consortium_dir: Path, replicas: int = 1,
            history_days: int = 7, signed: bool = False) -> Net:
    """A fresh ledger (and replicas) with meter-1 in surplus (6,000 Wh forecast in SLOT) and
    meter-2 (6,000 Wh) and meter-3 (2,000 Wh) in deficit, as in the market tests. `signed`:
    blocks signed by the orderers and checked by the production verifier (for replays)."""
    names = ["endorser-1", *METERS, role_account(genesis, Role.TREASURY),
             role_account(genesis, Role.SETTLEMENT), "plant-1", "admin", "utility-admin"]
    ids = {n: identity(consortium_dir, n) for n in names}
    verify = block_verifier(genesis) if signed else accept_proof
    net = Net(genesis, ids, [Ledger(MemoryStore(), genesis, verify) for _ in range(replicas)])
    if signed:
        net.chain = SignedChain(genesis, consortium_dir)
    e = ids["endorser-1"]
    txs = (history(ids["meter-1"], e, SLOT, 2000, 500, days=history_days)
           + history(ids["meter-2"], e, SLOT, 0, 1500, days=history_days)
           + history(ids["meter-3"], e, SLOT, 100, 600, days=history_days))
    block = net.chain.block(txs, timestamp=NOW)
    for ledger in net.ledgers:
        assert set(ledger.commit(block).codes) == {VALID}
    net.blocks.append(block)
    return net


__all__ = ["DEADLINE", "GATE", "NOW", "SLOT", "Net", "new_net", "place", "tx_id"]
