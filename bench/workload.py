"""What the end-to-end benchmark's meters send: a history, then a mixed stream of jobs.

Half the meters are producers and half consumers; each gets `HISTORY_HOURS` of readings, so
the endorser's forecast (same hour of the previous day) gives producers a surplus to sell
and consumers a deficit to buy in the slots of the next day. During the timed phases they
send, in a fixed interleaving: meter readings for past intervals (walking back from 60 days
ago, so they never touch a forecast), pre-sale orders (sell asks and buy bids on one price
ladder, so bids cross asks and both sides partially fill), and supply contracts with a plant
that announced in the set-up (one per meter, the ledger's limit).

Everything that can be signed before the timed window is (readings, contracts). A trade
request is made here (terms and nonce) but stamped and signed by its submitter process just
before it is sent (`sign_request`): endorsers refuse requests whose `requested_at` is more
than their --request-window (30 s) off their clock, and the jobs of a phase are made well
before its last ones are sent. The pre-sale order is signed after the endorser's option
comes back, as a real meter must. Both signatures count in the load generator's CPU
(`submitter_cpu_ms_per_job`), as a real meter pays them too.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gridctl import loadgen
from gridledger.common.v1 import energy_pb2, envelope_pb2, market_pb2
from gridledger_core.energy.terms import new_terms
from gridledger_core.genesis import Genesis
from gridledger_core.signing_identity import SigningIdentity, envelope_tx_id

HISTORY_HOURS = 26  # covers the previous day's hour for every slot of the next 22 hours
PRODUCER_WH = 30_000  # per reading interval: a large surplus/deficit, so allowances last
CONSUMER_WH = 30_000
BASE_PRICE = 200_000
LADDER = 12  # price levels; asks on the lower 2/3, bids on the upper 2/3, so they overlap
PLANT_PANEL = "pv-bench-1"
# Of every 20 jobs: 13 readings, 7 orders; the contracts are spread over the first jobs.
READINGS_PER_20 = 13

Kind = str  # "reading" | "order" | "contract"


@dataclass(frozen=True)
class Job:
    kind: Kind
    meter: str
    # A signed transaction (reading, contract), or an unsigned, unstamped TradeRequest (order:
    # its submitter signs it when sending, `sign_request`).
    payload: bytes
    tx_id: str  # "" for orders: the place_order transaction is signed after the option


def meter_names(count: int) -> list[str]:
    return [f"meter-{i}" for i in range(1, count + 1)]


def is_producer(meter: str) -> bool:
    return int(meter.rsplit("-", 1)[1]) % 2 == 1


def history(consortium_dir: Path, meters: Sequence[str], interval: int,
            now: int) -> list[envelope_pb2.SignedEnvelope]:
    """`HISTORY_HOURS` of readings per meter, ending at the last whole interval before now."""
    end = now // interval * interval
    count = HISTORY_HOURS * 3600 // interval
    out = []
    for meter in meters:
        identity = SigningIdentity.load(consortium_dir, meter)
        producer = is_producer(meter)
        produced, consumed = (PRODUCER_WH, 0) if producer else (0, CONSUMER_WH)
        out += [loadgen.past_reading(identity, end, k, interval, produced, consumed)
                for k in range(1, count + 1)]
    return out


def plant_announcement(consortium_dir: Path, plant: str) -> envelope_pb2.SignedEnvelope:
    identity = SigningIdentity.load(consortium_dir, plant)
    body = energy_pb2.PlantAnnouncement(
        plant=plant, price_micro_per_kwh=150_000, threshold_w=1_000, remaining_wh=10**9,
        contracted_wh=0, pv_panel_ids=[PLANT_PANEL], coin_value_micro=0)
    return identity.new_transaction("plant_announcement", body)


def open_slots(genesis: Genesis, now: int) -> list[int]:
    """Slots whose market stays open through the run and whose forecast has a day of
    history: from 2 h ahead to 22 h ahead."""
    slot = genesis.market.slot_seconds
    first = (now + genesis.market.gate_closure_seconds + 3600) // slot * slot + slot
    return list(range(first, now // slot * slot + 22 * 3600 + 1, slot))


class JobMaker:
    """Signs jobs for the timed phases; successive calls never repeat an interval or nonce."""

    def __init__(self, consortium_dir: Path, genesis: Genesis, meters: Sequence[str],
                 plant: str, now: int, seed: int = 7) -> None:
        self._genesis = genesis
        self._identities = {m: SigningIdentity.load(consortium_dir, m) for m in meters}
        self._plant = SigningIdentity.load(consortium_dir, plant)
        self._meters = list(meters)
        self._now = now
        self._interval = genesis.reading_interval_seconds
        self._reading_base = loadgen.distant_past(self._interval, now)
        self._next_back = dict.fromkeys(meters, 1)
        self._contracts_left = list(meters)
        self._slots = open_slots(genesis, now)
        self._random = random.Random(seed)
        self._meter_cycle = itertools.cycle(self._meters)

    def jobs(self, count: int) -> list[Job]:
        out: list[Job] = []
        for i in range(count):
            meter = next(self._meter_cycle)
            if self._contracts_left and i % 10 == 5:
                out.append(self._contract(self._contracts_left.pop()))
            elif i % 20 < READINGS_PER_20:
                out.append(self._reading(meter))
            else:
                out.append(self._order(meter))
        return out

    def _reading(self, meter: str) -> Job:
        back = self._next_back[meter]
        self._next_back[meter] = back + 1
        envelope = loadgen.past_reading(self._identities[meter], self._reading_base, back,
                                        self._interval, back % 997, back % 389)
        return Job("reading", meter, envelope.SerializeToString(), envelope_tx_id(envelope))

    def _order(self, meter: str) -> Job:
        market = self._genesis.market
        producer = is_producer(meter)
        level = self._random.randrange(LADDER * 2 // 3)
        price = BASE_PRICE + (level if producer else LADDER - 1 - level) * market.price_tick
        terms = market_pb2.OrderTerms(
            meter=meter, side=market_pb2.ORDER_SIDE_SELL if producer else market_pb2.ORDER_SIDE_BUY,
            slot_start=self._random.choice(self._slots), price=price,
            quantity_wh=self._random.randint(1, 6) * market.lot_wh)
        request = market_pb2.TradeRequest(terms=terms, nonce=os.urandom(16))
        return Job("order", meter, request.SerializeToString(), "")

    def _contract(self, meter: str) -> Job:
        terms = new_terms(meter=meter, plant=self._plant.name, price_micro_per_kwh=150_000,
                          energy_wh=500, pv_panel_id=PLANT_PANEL, plant_remaining_wh=10**9,
                          coins_paid=0, coin_value_micro=0, expires_at=int(time.time()) + 3600,
                          deliver_by=int(time.time()) + 86400)
        signed_terms = self._plant.sign_envelope(terms.SerializeToString())
        envelope = self._identities[meter].new_transaction(
            "supply_contract", energy_pb2.SupplyContract(plant_terms=signed_terms))
        return Job("contract", meter, envelope.SerializeToString(), envelope_tx_id(envelope))


def sign_request(identity: SigningIdentity, payload: bytes,
                 now: int | None = None) -> envelope_pb2.SignedEnvelope:
    """An order job's TradeRequest stamped `now` (default: this second) and signed by its
    meter: called by the submitter right before RequestOptions."""
    request = market_pb2.TradeRequest.FromString(payload)
    request.requested_at = int(time.time()) if now is None else now
    return identity.sign_envelope(request.SerializeToString())


def chunks(jobs: Sequence[Job], parts: int) -> Iterator[list[Job]]:
    """Deal jobs round-robin to `parts` submitters, keeping each one's order."""
    for part in range(parts):
        yield list(jobs[part::parts])
