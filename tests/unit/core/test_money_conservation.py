"""Money is conserved and escrow is exact after every block of random sequences of funding,
transfers, orders, cancels, gate-closure expiry and settlement (issue 14), on two replicas
that must agree on every state root; a replay reproduces the whole ledger; a second
settlement of the slot is refused and changes nothing.

`Net.commit` checks after every block: sum(balance + reserved) over all accounts == supply
== genesis allocations + funded; every account's reserved == what its orders hold; every
order holds exactly its open quantity's escrow plus its unsettled trades' values (buys) or
its collateral (sells), and nothing once its slot is settled."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from market_helpers import BUY, SELL
from settlement_helpers import CONFLICT, DEADLINE, GATE, SLOT, VALID, Net, new_net, tx_id

from gridledger.common.v1 import envelope_pb2
from gridledger_core.genesis import Genesis

ACCOUNTS = ["meter-1", "meter-2", "meter-3"]
prices = st.integers(15, 40).map(lambda p: p * 10_000)
quantities = st.integers(1, 20).map(lambda q: q * 100)


@st.composite
def step(draw: st.DrawFn, net: Net, placed: list[tuple[str, str]]
         ) -> envelope_pb2.SignedEnvelope:
    kind = draw(st.sampled_from(["fund", "transfer", "drain", "sell", "buy", "buy",
                                 "cancel"]))
    if kind == "fund":
        return net.fund(draw(st.sampled_from([*ACCOUNTS, net.settler])),
                        draw(st.integers(1, 10**7)))
    if kind in ("transfer", "drain"):
        payer, payee = draw(st.permutations(ACCOUNTS))[:2]
        balance = net.account(payer).balance_micro
        amount = (max(1, balance - draw(st.integers(0, 2_000_000))) if kind == "drain"
                  else draw(st.integers(1, 2 * balance + 1)))
        return net.transfer(payer, payee, amount)
    if kind == "sell":
        envelope = net.order("meter-1", SELL, draw(prices), draw(quantities))
        placed.append(("meter-1", tx_id(envelope)))
        return envelope
    if kind == "buy":
        meter = draw(st.sampled_from(["meter-2", "meter-3"]))
        envelope = net.order(meter, BUY, draw(prices), draw(quantities))
        placed.append((meter, tx_id(envelope)))
        return envelope
    if placed:
        meter, order_id = draw(st.sampled_from(placed))
        return net.cancel(meter, order_id)
    return net.fund("meter-1", 1)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_money_is_conserved_through_random_market_and_settlement(
        genesis: Genesis, consortium_dir: Path, data: st.DataObject) -> None:
    net = new_net(genesis, consortium_dir, replicas=2, signed=True)
    placed: list[tuple[str, str]] = []
    for _ in range(data.draw(st.integers(1, 10), label="blocks")):
        envelopes = [data.draw(step(net, placed))
                     for _ in range(data.draw(st.integers(1, 3)))]
        for code, message in net.commit(*envelopes, at=net.time + 10):
            assert code == VALID or message, "a refusal always says why"
            if "insufficient_funds" in message:
                event("an order or transfer refused for insufficient funds")
    # Gate closure: some block at or after it expires what is open, on both replicas.
    net.commit(at=GATE + data.draw(st.integers(0, 1800), label="expiry delay"))
    assert list(net.ledger.scan_state(f"order-book/{SLOT:012d}/")) == []
    after_expiry = data.draw(st.lists(st.sampled_from(placed), max_size=2)) if placed else []
    net.commit(*[net.cancel(m, o) for m, o in after_expiry])  # refused: the slot is closed
    readings = []
    for meter in ACCOUNTS:
        produced = data.draw(st.integers(0, 40)) * 100
        consumed = data.draw(st.integers(0, 40)) * 100
        readings += net.readings(meter, produced, consumed)
    net.commit(*readings, at=SLOT + 3600)
    assert net.commit(net.settle(), at=DEADLINE + 1) == [(VALID, "")]
    record = net.settlement()
    assert record is not None
    event(f"trades settled: {min(record.trades, 3)}{'+' if record.trades >= 3 else ''}")
    event(f"imbalance charged: {record.imbalance_charges_micro > 0}")
    before = net.dump()
    [(code, message)] = net.commit(net.settle(), at=DEADLINE + 2)
    assert code == CONFLICT and "already_settled" in message
    assert net.dump() == before
    for meter in ACCOUNTS:
        assert net.account(meter).reserved_micro == 0
    net.check_replay()
