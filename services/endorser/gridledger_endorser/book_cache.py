"""The endorser's order books: a cache of the open orders on the ledger it follows (its
replica, or its organisation's committer's ledger).

It is rebuilt from the ledger at start (every open order of every slot whose market has not
closed) and updated from each committed block (or run of blocks read together from the
committer's ledger): for every valid market transaction, the orders it touched are re-read
from the state as of that block and put in the book as the ledger then had them. So the
cache never holds an order, or a quantity, the ledger does not; it can only lag the
ledger by the blocks being applied, and an option matched against a lagging book fails the
commit-time rules (a stale option), never the ledger's consistency. If an update ever fails
(it should not), the whole cache is rebuilt from the ledger.

Options hold what they take: the quantity one of this endorser's outstanding options trades
against a resting order is taken out of the cached order until the option's place_order is
valid in a block, a block fills, cancels or (at gate closure) expires that order so the
option can no longer be placed, or the option expires (at gate closure at the latest): a
block's time is past its expiry, or this clock is past it by more than block times trail it
while rounds go well. A hold that ends unplaced is settled by the chain: credited if a block
places the option after all, else a lapse once a block's time passes its expiry, unless
another member's doing voided it; until then it counts as lapsed for its member's standing.
An invalid place_order ends nothing: the option may still be placed, and its unverified
payload may name any option. Concurrent requests are then never offered the same resting
energy twice (which the ledger would refuse at commit as an over-fill), at the cost of
keeping that energy from other buyers for the option's lifetime plus at most 11 s.

Members share what options hold. Each meter's holds are capped by its own allowance
(options.py), but a member's CA can enrol any number of meters: without a bound per member,
its meters could request options for all of a slot's energy, never place them, and renew them
as they expire, so no other member could trade in that slot. So what one side of a slot offers
(resting in the cache plus held by options) is shared equally among the members that asked
to take from it in the last ``DEMAND_SECONDS`` (a request whose price crosses energy there,
resting or held): a member whose options already hold energy there may add an option only
while all it holds stays within its share (all of it while it is the only one asking). Its
first option there may take any quantity (one order may clear a thin book, as in any market)
while it is in good standing: the energy its options let lapse (expired without a valid
place_order, or made void by its own member's cancel or fill through another endorser) in
the last ten minutes is no more than the energy its own meters' options traded with other
members (hold_conduct.py).
So a member that holds without trading is held to its share. A void by another member's
doing being free, two members could take turns holding a third member's energy (one's option
takes the other's small order with it, the other cancels or fills it before the option
lapses): beyond VOID_BUDGET such voids of one holder's options within the window, the holder
is charged (`_voided_in_turns`). The member is the organisation
of the caller's verified TLS identity (a head-end system's, or the meter's own), whose calls
got the options; without one (tests, in-process tools), the request signer's organisation.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from gridledger.common.v1 import market_pb2
from gridledger_core.consensus.clock import DEADLINE_SETTLED_AFTER_S
from gridledger_core.ledger import schema
from gridledger_core.ledger.errors import Code
from gridledger_core.ledger.ledger import CommitResult, Ledger
from gridledger_core.ledger.rules.identity import LedgerAccounts
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.market import BookSet, Depth, MatchResult, Order, OrderBook, Side
from gridledger_core.market import ledger_view as view
from gridledger_core.storage import KeyValueStore
from gridledger_endorser.hold_conduct import WINDOW_SECONDS, HoldConduct

log = logging.getLogger(__name__)

TRADES = Counter("gridledger_endorser_trades", "Trades proposed in options and committed.",
                 ["stage"])
MATCHED_WH = Counter("gridledger_endorser_matched_energy_wh",
                     "Energy of the trades proposed in options and committed, Wh.", ["stage"])
HELD_OPTIONS = Gauge("gridledger_endorser_held_options",
                     "Outstanding options whose trades hold resting quantity in the book cache.")
# A place_order may still be valid in a block whose time trails this clock (consensus/clock.py).
HOLD_GRACE_SECONDS = DEADLINE_SETTLED_AFTER_S
DEMAND_SECONDS = 60  # a member that asked for a slot's side this recently shares its energy
# Options of one member that other members' doing may void (a cancel, or a fill through
# another endorser) within the conduct window, while they also held a third member's
# energy, before each further such void is charged to the holder as a lapse.
VOID_BUDGET = 3


class MemberHoldsItsShare(Exception):
    """The request would take its member past its share of the slot's offered energy: its
    outstanding options hold it (they end at their block or expiry), or, in bad standing, the
    request alone exceeds it. `retry_after_ms`: when the share may grow (0: at its block)."""

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class HeldByOptions(Exception):
    """The request would rest across energy that outstanding options hold: the ledger still
    shows that energy open, so the resting remainder would cross it. A concurrency conflict
    that clears with the options' block (or their expiry): ask again then."""


@dataclass(frozen=True)
class _Hold:
    expires_at: int
    takes: tuple[tuple[str, int], ...]  # (maker order id, Wh)
    owners: tuple[str, ...]  # the makers' owners (accounts), as `takes`
    slot: int
    maker_side: Side
    prices: tuple[int, ...]  # of the makers it holds
    member: str  # the organisation that asked for the option (options.py)
    wh: int  # all it holds


@dataclass
class _Unsettled:
    member: str
    wh: int
    expires_at: int
    charge: bool  # charged as lapsed if no block places it (False: made void by others)


OPEN_ORDERS = Gauge("gridledger_endorser_book_open_orders",
                    "Open orders in the endorser's book cache, all slots.")
REBUILDS = Counter("gridledger_endorser_book_rebuilds", "Full rebuilds of the book cache.")
HOLDS_ENDED_EARLY = Counter(
    "gridledger_endorser_holds_ended_early",
    "Options whose hold ended before expiry because a block filled or cancelled a maker they "
    "trade with, by whether their member is charged if unplaced (its own doing).",
    ["charged"])
VOIDED = Counter(
    "gridledger_endorser_options_voided_holding_others",
    "Options voided by another member's doing (its cancel, or its fill through another "
    "endorser) while they also held a third member's energy (counted towards VOID_BUDGET; "
    "charged: beyond it).", ["charged"])
# Ended holds awaiting a block past their expiry (only a chain without blocks for long
# gathers many): beyond this the oldest are settled at once, as lapses where due.
MAX_UNSETTLED = 100_000


@dataclass
class _BlockChanges:
    """What one committed block did to the market, as the book cache needs it."""

    block_time: int
    # This endorser's options placed validly in the block: (option id, the taking meter, its
    # trades). An option of another endorser may carry the same id: not ours.
    traded: list[tuple[str, str, list[market_pb2.ProposedTrade]]]
    trades: list[market_pb2.ProposedTrade]  # every trade the block committed
    # Resting orders the block filled, cancelled or expired -> the accounts that did it
    # outside this endorser's options (their cancel, or a fill through another endorser): a
    # hold they void is charged when one is of the holding member.
    consumed: dict[str, set[str]]
    taken: dict[str, int]  # Wh the block's trades took from each resting order
    ended: list[str]  # resting orders the block cancelled or expired
    touched: list[str]  # orders to re-read: makers and takers of its trades, cancelled ones
    expired: list[str]  # orders its prologue expired at gate closure

    @classmethod
    def of(cls, result: CommitResult, endorser: str) -> _BlockChanges:
        block = cls(result.block_time, [], [], {order_id: set() for order_id in
                                                 result.expired_orders},
                    {}, list(result.expired_orders), [], list(result.expired_orders))
        for index, tx in enumerate(result.transactions):
            if tx is None or result.codes[index] != Code.TX_VALIDATION_CODE_VALID:
                # An invalid place_order ends no hold: its option may still be placed validly
                # until it expires (and its payload, unverified, may name any option or maker).
                continue
            body = tx.WhichOneof("body")
            if body == "place_order":
                option = market_pb2.TradeOption.FromString(tx.place_order.option.payload)
                ours = option.endorser == endorser
                if ours:
                    block.traded.append((option.option_id, tx.header.creator,
                                         list(option.trades)))
                block.touched += [t.maker_order_id for t in option.trades]
                block.touched.append(tx.header.tx_id)
                block.trades += option.trades
                for t in option.trades:
                    block.taken[t.maker_order_id] = (block.taken.get(t.maker_order_id, 0)
                                                     + t.quantity_wh)
                    doers = block.consumed.setdefault(t.maker_order_id, set())
                    if not ours:  # ours were held here: no hold was voided to make room
                        doers.add(tx.header.creator)
            elif body == "cancel_order":
                block.touched.append(tx.cancel_order.order_id)
                block.ended.append(tx.cancel_order.order_id)
                block.consumed.setdefault(tx.cancel_order.order_id, set()).add(
                    tx.header.creator)
        return block


class BookCache:
    def __init__(self, ledger: Ledger, endorser: str,
                 clock: Callable[[], float] = time.time) -> None:
        """`endorser`: this endorser's name; only its own options hold here (an option id is
        only unique per endorser)."""
        self._ledger = ledger
        self._endorser = endorser
        self._clock = clock
        # The node's health component "books": False while the books could not be read
        # again after a failed update, so they miss blocks (the endorser's options would be
        # judged against a stale book); True once an update or a rebuild works.
        self.on_health: Callable[[bool], None] = lambda healthy: None
        self._current = True
        self._market = ledger.genesis.market
        self._lock = threading.Lock()
        self._books = self._new_books()
        self._holds: dict[str, _Hold] = {}  # option id -> what it holds
        self._held: dict[str, int] = {}  # maker order id -> Wh held by outstanding options
        self._slot_holds: dict[int, set[str]] = {}  # slot -> option ids holding in it
        self._maker_holds: dict[str, set[str]] = {}  # maker order id -> option ids on it
        # (slot, maker side) -> member -> Wh its options hold there
        self._member_held: dict[tuple[int, Side], dict[str, int]] = {}
        self._conduct = HoldConduct()  # how each member's options ended recently
        # (slot, maker side) -> member -> when its meters last asked to take from it
        self._demand: dict[tuple[int, Side], dict[str, int]] = {}
        # (expiry, option id), oldest first; ids already released are skipped when popped.
        self._expiries: list[tuple[int, str]] = []
        # Options whose hold ended unplaced while a block may still place them: credited if
        # one does, else settled once a block's time passes their expiry; with their
        # (expiry, option id), oldest first, and each member's Wh that will be charged.
        self._unsettled: dict[str, _Unsettled] = {}
        self._unsettled_expiries: list[tuple[int, str]] = []
        self._pending_lapse: dict[str, int] = {}
        self.height = 0  # ledger height the cache reflects
        self._block_time = 0  # header time of the last block applied
        self.rebuild()

    def _new_books(self) -> BookSet:
        return BookSet(tick=self._market.price_tick, lot=self._market.lot_wh)

    # -- reading ----------------------------------------------------------------------------

    def match(self, order: Order, hold: tuple[str, int] | None = None, member: str = "",
              ) -> tuple[MatchResult, dict[str, str], int]:
        """Propose (never apply) ``order`` against its slot's book: the result, the owners of
        the resting orders it trades with, and the ledger height of the book. With ``hold``
        = (option id, expiry), the traded quantities are held for that option, requested by
        a meter of ``member``. Raises HeldByOptions if the order's remainder would rest
        across held energy, MemberHoldsItsShare if the hold would take the member past its
        share; either leaves the cache as it was."""
        with self._lock:
            now = self._now()
            self._expire(now)
            self._close_slots(now)
            book = self._books.book(order.slot)
            result = book.match(order)
            crosses_held = bool(result.remaining) and self._crosses_held(order)
            if hold is not None and (result.filled or crosses_held):
                # It asked to take energy there (even if refused below: a member that finds
                # everything held must count, or it never gets its share).
                self._demand.setdefault((order.slot, order.side.opposite), {})[member] = now
            if crosses_held:
                raise HeldByOptions(
                    f"the remainder of {result.remaining} Wh would rest across energy held by "
                    "options that are not committed yet; request again after the next block")
            if hold is not None and result.filled:
                self._check_member_share(book, order, member, result.filled, now)
            owners = {}
            for trade in result.trades:
                maker = book.get(trade.maker_id)
                assert maker is not None
                owners[trade.maker_id] = maker.owner
            if hold is not None and result.trades:
                option_id, expires_at = hold
                for trade in result.trades:
                    book.fill(trade)
                    self._held[trade.maker_id] = self._held.get(trade.maker_id, 0) + \
                        trade.quantity
                taken = _Hold(
                    expires_at, tuple((t.maker_id, t.quantity) for t in result.trades),
                    tuple(owners[t.maker_id] for t in result.trades), order.slot,
                    order.side.opposite, tuple(t.price for t in result.trades), member,
                    result.filled)
                self._holds[option_id] = taken
                self._count_held(taken, taken.wh)
                self._slot_holds.setdefault(order.slot, set()).add(option_id)
                for trade in result.trades:
                    self._maker_holds.setdefault(trade.maker_id, set()).add(option_id)
                heapq.heappush(self._expiries, (expires_at, option_id))
                HELD_OPTIONS.set(len(self._holds))
            return result, owners, self.height

    def _check_member_share(self, book: OrderBook, order: Order, member: str, wh: int,
                            now: int) -> None:
        key = (order.slot, order.side.opposite)
        holding = self._member_held.get(key, {})
        held = holding.get(member, 0)
        traded, lapsed = self._conduct.totals(member, now)
        # Options that ended unplaced count as lapsed until a block says otherwise (on a
        # chain without blocks they would never be charged).
        lapsed += self._pending_lapse.get(member, 0)
        if not held and lapsed <= traded:
            return  # its first option on this side may take any quantity
        asking = self._demand[key]
        for other in [m for m, at in asking.items() if at + DEMAND_SECONDS < now]:
            del asking[other]
        offered = book.open_quantity(key[1]) + sum(holding.values())  # few members
        share = offered // len(asking)  # the member itself is one of them
        if held + wh > share:
            whose = (f"{member or 'this member'} may hold at most {share} Wh of slot "
                     f"{order.slot}'s {key[1].value} offers (the {offered} Wh offered, shared "
                     f"by the {len(asking)} members asking for them)")
            less = f"request at most {max(0, share - held)} Wh"
            if held:
                raise MemberHoldsItsShare(
                    f"{whose} and its outstanding options hold {held} Wh there; {held + wh} "
                    f"Wh would exceed that: {less}, or again after its options' block")
            # In bad standing: the share grows when another member stops asking.
            others = [at for m, at in asking.items() if m != member]
            wait_s = max(1, min(others) + DEMAND_SECONDS + 1 - now) if others else 1
            raise MemberHoldsItsShare(
                f"{whose}, as its options let {lapsed} Wh lapse in the last {WINDOW_SECONDS} "
                f"s and traded {traded} Wh with other members (its first option may take more "
                f"again once they traded as much as they let lapse); {wh} Wh would exceed "
                f"that: {less}, or again in {wait_s} s", retry_after_ms=wait_s * 1000)

    def _count_held(self, hold: _Hold, wh: int) -> None:
        """Add (or, negative, take away) `wh` held by `hold`'s member on its slot's side."""
        key = (hold.slot, hold.maker_side)
        members = self._member_held.setdefault(key, {})
        member_held = members.get(hold.member, 0) + wh
        if member_held:
            members[hold.member] = member_held
        else:
            members.pop(hold.member, None)
        if not members:
            del self._member_held[key]

    def holds(self, option_id: str) -> bool:
        """Does the option still hold energy here (not placed, expired or made void)?"""
        with self._lock:
            return option_id in self._holds

    def depth(self, slot_start: int, levels: int | None = None) -> tuple[Depth, int]:
        with self._lock:
            self._close_slots(self._now())
            book = self._books.get(slot_start)
            depth = book.depth(levels) if book is not None else Depth((), ())
            return depth, self.height

    def open_orders(self) -> list[tuple[int, str, int, int]]:
        """(slot, order id, price, remaining) of every cached order, for comparisons."""
        with self._lock:
            self._close_slots(self._now())
            return [(book.slot, o.order_id, o.price, o.remaining)
                    for book in self._books for o in book.open_orders()]

    # -- following the ledger ----------------------------------------------------------------

    def rebuild(self, committed: KeyValueStore | None = None) -> None:
        """Replace the cache with the open orders of the ledger's slots that are still open:
        as of the ledger's height, read from `committed` (the state at that height, when the
        ledger's store may have moved on: another process writes it) or its store."""
        REBUILDS.inc()
        # The scan runs outside the lock: matching (on the endorser's event loop) waits only
        # for the swap. The ledger's height cannot move meanwhile: its follower is the thread
        # rebuilding (or has not started yet).
        height = self._ledger.height
        block_time = max(self._block_time, self._ledger.tip_time())
        now = self._now(block_time)
        books = self._new_books()
        store = committed or self._ledger.store
        state = StateOverlay(store)
        start = schema.state_key(schema.order_book_prefix(self._first_open_slot(now)))
        for _, value in store.scan(schema.state_key("order-book/"), start=start):
            record = view.load_order(state, value.decode())
            if record is not None and record.remaining_wh and self._open(record, now):
                books.rest(view.to_book_order(record))
        with self._lock:
            self._block_time = max(self._block_time, block_time)
            # Open holds end (the new books hold nothing), credited if a block places them
            # yet, never charged: a rebuild follows a failure here (a block half applied), so
            # who voided them, or whether that block placed them, is not known.
            for option_id in list(self._holds):
                self._end_unplaced(option_id, charge=False)
            self._books = books
            self._holds.clear()
            self._held.clear()
            self._slot_holds.clear()
            self._maker_holds.clear()
            self._member_held.clear()
            self._expiries.clear()
            HELD_OPTIONS.set(0)
            self.height = height
            OPEN_ORDERS.set(sum(len(b) for b in books))

    def _now(self, block_time: int | None = None) -> int:
        """The later of this endorser's clock and the last block's time (`block_time`, or
        the one applied): a slot closed by either is closed (the ledger expires its orders at
        the first block past closure)."""
        return max(int(self._clock()), self._block_time if block_time is None else block_time)

    def _close_slots(self, now: int) -> None:
        for slot in [b.slot for b in self._books if self._closed(b.slot, now)]:
            self._books.close(slot)
            for side in Side:
                self._demand.pop((slot, side), None)
        OPEN_ORDERS.set(sum(len(b) for b in self._books))

    def _first_open_slot(self, now: int) -> int:
        slot = self._market.slot_seconds
        return max(0, (now + self._market.gate_closure_seconds) // slot * slot)

    def _closed(self, slot_start: int, now: int) -> bool:
        """Past gate closure: the slot's orders are final and can no longer trade."""
        return now >= self._market.gate_closure(slot_start)

    def _open(self, record: market_pb2.OrderRecord, now: int) -> bool:
        return not self._closed(record.slot_start, now)

    def on_commit(self, result: CommitResult) -> None:
        """The ledger follower's callback: apply the block's (or blocks') valid market
        transactions, against the state as of its last block (`result.committed_state`
        when the ledger's store may have moved on). The books are read again when an update
        fails, or when blocks come that do not follow the last one applied (an update and
        the rebuild after it failed): applied on top, they would match against books
        missing a block."""
        try:
            if result.first_number == self.height:
                self._apply(result)
                self._report(True)
                return
            log.error("book cache at height %d given blocks from %d on; rebuilding",
                      self.height, result.first_number)
        except Exception:
            log.exception("book cache update for block %d failed; rebuilding", result.number)
        try:
            self.rebuild(result.committed_state)
        except Exception:
            # Tried again with the next block; meanwhile the books miss blocks: not SERVING.
            self._report(False)
            raise
        self._report(True)

    def _report(self, current: bool) -> None:
        if current != self._current:  # told only on a change
            self._current = current
            self.on_health(current)

    def _apply(self, result: CommitResult) -> None:
        """Apply a block, or a run of blocks read together from the committer's ledger: each
        block in turn for what depends on its time and on who did what in it (expiries, our
        options it placed, the holds its fills, cancels and expiries void), the state read
        once, as of the last block (`result.committed_state`, else the ledger's store)."""
        blocks = [_BlockChanges.of(part, self._endorser) for part in result.blocks]
        # What the blocks after each one took from each resting order (fills, a cancel, an
        # expiry): the state read is the last block's, and a hold is judged against what
        # its maker had left after its own block.
        removed_after: list[dict[str, int]] = [{} for _ in blocks]
        state = StateOverlay(result.committed_state or self._ledger.store)
        for index in range(len(blocks) - 1, 0, -1):
            later = dict(removed_after[index])
            for maker_id, wh in blocks[index].taken.items():
                later[maker_id] = later.get(maker_id, 0) + wh
            for maker_id in blocks[index].ended:
                record = view.load_order(state, maker_id)
                if record is not None:
                    later[maker_id] = (later.get(maker_id, 0) + record.cancelled_wh
                                       + record.expired_wh)
            removed_after[index - 1] = later
        touched: list[str] = []
        expired: list[str] = []
        with self._lock:
            accounts = LedgerAccounts(state)
            reread: list[str] = []  # makers whose holds ended
            for block, later in zip(blocks, removed_after, strict=True):
                self._block_time = max(self._block_time, block.block_time)
                now = self._now()
                # First what this block's time settles: an option expired before it is a
                # lapse whatever the block does to its makers.
                self._expire(now, state)
                for option_id, taker, trades in block.traded:
                    member = self._placed(option_id)
                    if member is not None:
                        self._conduct.traded(member, self._earned(accounts, member, taker,
                                                                  trades), now)
                    reread += self._release(option_id)
                for order_id, doers in block.consumed.items():
                    reread += self._end_holds_on(state, accounts, order_id, doers, now,
                                                 later.get(order_id, 0))
                touched += block.touched
                expired += block.expired
            now = self._now()
            # Makers before the takers (a taker's rest must not cross a maker not yet re-read).
            for order_id in [*expired, *reread, *touched]:
                self._sync(state, order_id, now)
            self._close_slots(now)
            self.height = result.number + 1
        committed_trades = [t for block in blocks for t in block.trades]
        TRADES.labels("committed").inc(len(committed_trades))
        MATCHED_WH.labels("committed").inc(sum(t.quantity_wh for t in committed_trades))

    def _placed(self, option_id: str) -> str | None:
        """The member whose option (ours) this block placed, unless already settled: its
        hold, or a hold that ended unplaced while a block could still place it."""
        hold = self._holds.get(option_id)
        if hold is not None:
            return hold.member
        unsettled = self._unsettled.pop(option_id, None)
        if unsettled is None:
            return None
        self._count_pending(unsettled, -1)
        return unsettled.member

    def _earned(self, accounts: LedgerAccounts, member: str, taker: str,
                trades: list[market_pb2.ProposedTrade]) -> int:
        """The Wh of `trades` that count for `member`'s standing: its own meter took them
        from another member's makers. Trading between its own meters moves nothing between
        members; trades of another member's meter it relayed are that member's."""
        if self._org(accounts, taker) != member:
            return 0
        return sum(t.quantity_wh for t in trades if self._org(accounts, t.maker) != member)

    def _org(self, accounts: LedgerAccounts, name: str) -> str:
        """The organisation of account `name` ("" if it is none)."""
        account = self._ledger.genesis.membership.account(name, accounts)
        return account.org if account is not None else ""

    def _sync(self, state: StateOverlay, order_id: str, now: int) -> None:
        """Make the cached order equal to the ledger's record (or absent if not open)."""
        record = view.load_order(state, order_id)
        if record is None:
            return
        book = self._books.get(record.slot_start)
        if book is not None and order_id in book:
            book.cancel(order_id)
        open_wh = record.remaining_wh - self._held.get(order_id, 0)
        if open_wh > 0 and self._open(record, now):
            order = view.to_book_order(record)
            order.remaining = open_wh
            self._books.rest(order)

    def _crosses_held(self, order: Order) -> bool:
        """Would `order` resting cross a maker that an option holds?"""
        for option_id in self._slot_holds.get(order.slot, ()):
            hold = self._holds[option_id]
            if hold.maker_side is not order.side.opposite:
                continue
            if order.side is Side.BUY and min(hold.prices) <= order.price:
                return True
            if order.side is Side.SELL and max(hold.prices) >= order.price:
                return True
        return False

    def _release(self, option_id: str) -> list[str]:
        """End an option's hold; the makers it held (to be re-read from the ledger)."""
        hold = self._holds.pop(option_id, None)
        if hold is None:
            return []
        self._count_held(hold, -hold.wh)
        in_slot = self._slot_holds[hold.slot]
        in_slot.discard(option_id)
        if not in_slot:
            del self._slot_holds[hold.slot]
        for maker_id, quantity in hold.takes:
            left = self._held.get(maker_id, 0) - quantity
            if left > 0:
                self._held[maker_id] = left
            else:
                self._held.pop(maker_id, None)
            on_maker = self._maker_holds.get(maker_id)
            if on_maker is not None:
                on_maker.discard(option_id)
                if not on_maker:
                    del self._maker_holds[maker_id]
        HELD_OPTIONS.set(len(self._holds))
        return [maker_id for maker_id, _ in hold.takes]

    def _expire(self, now: int, state: StateOverlay | None = None) -> None:
        """End the holds of options that can no longer be placed: a block's time is past
        their expiry (block times never go back): a lapse; or this clock is past it by more
        than block times trail it while rounds go well (an idle chain): the energy is free
        again, the lapse pending until a block's time passes the expiry (a locked pre-block
        re-proposed after round changes keeps its older time and may still place it: then
        it counts as traded). Then settle what blocks have passed. Makers are re-read from
        `state` (a block's, while one is applied), else from the ledger as it is now."""
        clock = int(self._clock())
        while self._expiries and (self._expiries[0][0] < self._block_time
                                  or self._expiries[0][0] + HOLD_GRACE_SECONDS < clock):
            _, option_id = heapq.heappop(self._expiries)
            for maker_id in self._end_unplaced(option_id, charge=True):
                state = state or StateOverlay(self._ledger.store)
                self._sync(state, maker_id, now)
        pending = self._unsettled_expiries
        while pending and (pending[0][0] < self._block_time
                           or len(self._unsettled) > MAX_UNSETTLED):
            _, option_id = heapq.heappop(pending)
            unsettled = self._unsettled.pop(option_id, None)
            if unsettled is not None:
                self._count_pending(unsettled, -1)
                if unsettled.charge:
                    self._conduct.lapsed(unsettled.member, unsettled.wh, now)

    def _end_unplaced(self, option_id: str, charge: bool) -> list[str]:
        """End a hold whose option was not placed (nothing if already ended); it awaits a
        block past its expiry, charged then if `charge`. Returns the makers to re-read."""
        hold = self._holds.get(option_id)
        if hold is None:
            return []
        unsettled = _Unsettled(hold.member, hold.wh, hold.expires_at, charge)
        self._unsettled[option_id] = unsettled
        self._count_pending(unsettled, +1)
        heapq.heappush(self._unsettled_expiries, (hold.expires_at, option_id))
        return self._release(option_id)

    def _voided_in_turns(self, accounts: LedgerAccounts, hold: _Hold, maker_member: str,
                         responsible: set[str], now: int) -> bool:
        """Count a void of `hold` by other members (`responsible`, the doers' members) of the
        maker of member `maker_member`, when the option also held a third member's energy
        (neither the holder's, nor the doers', nor the voided maker's); True once more than
        VOID_BUDGET of the holder's options were so voided within the window. Members
        taking turns (one's option takes another's small order with a third member's
        energy; that one cancels it, or a colluder fills one lot of it through another
        endorser, before the option lapses) would else keep the third member's energy held
        with nobody charged; the holder is the one the turns serve, so the holder is
        charged. A fill racing this endorser's option for the one maker it holds is not
        counted (it holds nobody else's energy)."""
        doers = responsible - {hold.member}
        if not doers:
            return False
        left = {self._org(accounts, owner) for owner in hold.owners} - doers - {
            hold.member, maker_member}
        if not left:
            return False
        charged = self._conduct.voided(hold.member, now) > VOID_BUDGET
        VOIDED.labels("yes" if charged else "no").inc()
        return charged

    def _count_pending(self, unsettled: _Unsettled, sign: int) -> None:
        if not unsettled.charge:
            return
        left = self._pending_lapse.get(unsettled.member, 0) + sign * unsettled.wh
        if left:
            self._pending_lapse[unsettled.member] = left
        else:
            self._pending_lapse.pop(unsettled.member, None)

    def _end_holds_on(self, state: StateOverlay, accounts: LedgerAccounts, maker_id: str,
                      doers: set[str], now: int, removed_after: int = 0) -> list[str]:
        """A block filled, cancelled or (at gate closure) expired the resting order
        `maker_id`. The options holding more of it than the ledger has left can no longer
        be placed (a place_order trades all it proposes or nothing): their holds end now,
        the earliest to expire kept while what is left covers them. One is charged as
        lapsed, if no block places it, when `doers` (who cancelled it, or filled it through
        another endorser) include an account of its own member: else voiding its own option
        would wash its lapses; another member's doing costs it nothing, unless more than
        VOID_BUDGET of its options holding a third member's energy were so voided within the
        window (`_voided_in_turns`). `removed_after`: what blocks after this one (read
        together with it) took from the order, added back to the state's remainder.
        Returns the makers to re-read."""
        holding_ids = self._maker_holds.get(maker_id)
        record = view.load_order(state, maker_id) if holding_ids else None
        if record is None or not holding_ids:
            return []
        # The ledger's after this block: 0 once cancelled or expired at closure.
        left = record.remaining_wh + removed_after
        holding = sorted((self._holds[option_id].expires_at, option_id)
                         for option_id in holding_ids)
        responsible = {self._org(accounts, name) for name in doers} - {""}
        maker_member = self._org(accounts, record.owner)
        makers: list[str] = []
        for _, option_id in holding:
            hold = self._holds[option_id]
            wh = sum(q for m, q in hold.takes if m == maker_id)
            if wh <= left:
                left -= wh
                continue
            charge = hold.member in responsible or self._voided_in_turns(
                accounts, hold, maker_member, responsible, now)
            HOLDS_ENDED_EARLY.labels("yes" if charge else "no").inc()
            makers += self._end_unplaced(option_id, charge)
        return makers
