"""Every key the ledger stores, in one place. Prefixes carry a version so the layout can
change with a migration instead of silently reinterpreting bytes.

    b1/<number:8 BE>            serialized Block (exact bytes received from the orderers)
    r1/<number:8 BE>            BlockCommitRecord: validation codes, state root
    t1/<tx id ascii>            TxLocation
    s1/<state key utf-8>        state value (serialized protobuf, type named by the state key)
    m1/chain                    ChainState of the tip

State keys (the part after s1/), as accepted by CommitterService.GetState:

    reading/<meter>/<interval start, 12 digits>     MeterReading

Pre-sale market (issue 3; slot = slot start, 12 digits; seq = market sequence, 12 digits):

    order/<order id>                                OrderRecord (every order, with all fills)
    order-book/<slot>/<b|s>/<rank, 15 digits>/<seq> order id, only while the order is open;
                                                    rank = price for sells, 10^15-1-price for
                                                    buys, so key order is price-time priority
    order-meter/<meter>/<slot>/<seq>                order id (a meter's orders, oldest first)
    committed/<meter>/<slot>/<b|s>                  Wh the meter has open or traded on that
                                                    side of the slot (quantity - cancelled of
                                                    its orders), 8 bytes BE
    trade/<slot>/<seq>                              TradeRecord
    trade-meter/<meter>/<slot>/<seq>                "<slot>/<seq>" of the trade's key
    option/<endorser>/<option id>                   tx id of the PlaceOrder that used it
                                                    (ids are the issuing endorser's: another
                                                    endorser reusing one cannot spend it)
    market/sequence                                 last market sequence number, 8 bytes BE

New-energy trading (issue 6):

    plant/<plant>                                   PlantRecord
    contract/<contract id>                          SupplyContractRecord
    open-contract/<meter>                           id of the meter's one open contract
    carbon/<account>                                CarbonAccount (carbon coin balance)
    certificate/<contract id>                       SignedEnvelope over a CarbonCertificate

Readings and delivery evidence (issue 14):

    reading-history/<meter>/<interval start>        b"": the reading at reading/... came as
                                                    onboarding history (HistoryReadings), so
                                                    it counts for forecasts, never for delivery
    plant-attributed/<plant>/<interval start>       Wh of the plant's production in that
                                                    interval already attributed to contracts,
                                                    8 bytes BE
    plant-open-contract/<plant>/<committed at, 12 digits>/<contract id>
                                                    b"" while the contract is open (first
                                                    committed first: attribution order)
    contracted/<meter>                              b"": the meter has had a supply contract
"""

from __future__ import annotations

BLOCK = b"b1/"
COMMIT_RECORD = b"r1/"
TX_INDEX = b"t1/"
STATE = b"s1/"
CHAIN_STATE = b"m1/chain"


def block_key(number: int) -> bytes:
    return BLOCK + number.to_bytes(8, "big")


def commit_record_key(number: int) -> bytes:
    return COMMIT_RECORD + number.to_bytes(8, "big")


def tx_key(tx_id: str) -> bytes:
    return TX_INDEX + tx_id.encode("ascii")


def state_key(key: str) -> bytes:
    return STATE + key.encode("utf-8")


def reading_key(meter: str, interval_start: int) -> str:
    return f"reading/{meter}/{interval_start:012d}"


def reading_prefix(meter: str) -> str:
    return f"reading/{meter}/"


# -- pre-sale market --------------------------------------------------------------------------

PRICE_RANK_MAX = 10**15 - 1
MARKET_SEQUENCE = "market/sequence"


def order_key(order_id: str) -> str:
    return f"order/{order_id}"


def order_book_prefix(slot_start: int, side: str | None = None) -> str:
    """Open orders of a slot (``side``: "b" or "s", or None for both)."""
    return f"order-book/{slot_start:012d}/" + (f"{side}/" if side else "")


def order_book_key(slot_start: int, side: str, price: int, sequence: int) -> str:
    rank = price if side == "s" else PRICE_RANK_MAX - price
    return f"{order_book_prefix(slot_start, side)}{rank:015d}/{sequence:012d}"


def order_meter_prefix(meter: str, slot_start: int | None = None) -> str:
    return f"order-meter/{meter}/" + (f"{slot_start:012d}/" if slot_start is not None else "")


def committed_key(meter: str, slot_start: int, side_letter: str) -> str:
    return f"committed/{meter}/{slot_start:012d}/{side_letter}"


def order_meter_key(meter: str, slot_start: int, sequence: int) -> str:
    return f"{order_meter_prefix(meter, slot_start)}{sequence:012d}"


def trade_prefix(slot_start: int | None = None) -> str:
    return "trade/" + (f"{slot_start:012d}/" if slot_start is not None else "")


def trade_key(slot_start: int, sequence: int) -> str:
    return f"{trade_prefix(slot_start)}{sequence:012d}"


def trade_meter_prefix(meter: str, slot_start: int | None = None) -> str:
    return f"trade-meter/{meter}/" + (f"{slot_start:012d}/" if slot_start is not None else "")


def trade_meter_key(meter: str, slot_start: int, sequence: int) -> str:
    return f"{trade_meter_prefix(meter, slot_start)}{sequence:012d}"


def option_key(endorser: str, option_id: str) -> str:
    # Account names hold no "/" (rules/identity.py), so the key is unambiguous.
    return f"option/{endorser}/{option_id}"


# -- new-energy trading (issue 6) -------------------------------------------------------------

CONTRACT_PREFIX = "contract/"


def plant_key(plant: str) -> str:
    return f"plant/{plant}"


def contract_key(contract_id: str) -> str:
    return f"{CONTRACT_PREFIX}{contract_id}"


def open_contract_key(meter: str) -> str:
    return f"open-contract/{meter}"


def carbon_key(account: str) -> str:
    return f"carbon/{account}"


def certificate_key(contract_id: str) -> str:
    return f"certificate/{contract_id}"


def reading_history_key(meter: str, interval_start: int) -> str:
    return f"reading-history/{meter}/{interval_start:012d}"


def plant_attributed_key(plant: str, interval_start: int) -> str:
    return f"plant-attributed/{plant}/{interval_start:012d}"


def plant_open_contract_prefix(plant: str) -> str:
    return f"plant-open-contract/{plant}/"


def plant_open_contract_key(plant: str, committed_at: int, contract_id: str) -> str:
    return f"{plant_open_contract_prefix(plant)}{committed_at:012d}/{contract_id}"


def contracted_key(meter: str) -> str:
    return f"contracted/{meter}"


# -- settlement (issue 14) --------------------------------------------------------------------
#
#   money/<account>                                 MoneyAccount (balance, reserved)
#   money-entry/<account>/<seq, 12 digits>          MoneyEntry (the account's history)
#   money-supply                                    total money in existence, 8 bytes BE
#                                                   (absent: the genesis allocations' sum)
#   settlement/<slot>                               SlotSettlement
#   statement/<slot>/<meter>                        MeterStatement
#   statement-meter/<meter>/<slot>                  b"" (index of a meter's statements)

MONEY_SUPPLY = "money-supply"


def money_key(account: str) -> str:
    return f"money/{account}"


def money_entry_prefix(account: str) -> str:
    return f"money-entry/{account}/"


def money_entry_key(account: str, sequence: int) -> str:
    return f"{money_entry_prefix(account)}{sequence:012d}"


def settlement_key(slot_start: int) -> str:
    return f"settlement/{slot_start:012d}"


def statement_prefix(slot_start: int) -> str:
    return f"statement/{slot_start:012d}/"


def statement_key(slot_start: int, meter: str) -> str:
    return f"{statement_prefix(slot_start)}{meter}"


def statement_meter_prefix(meter: str) -> str:
    return f"statement-meter/{meter}/"


def statement_meter_key(meter: str, slot_start: int) -> str:
    return f"{statement_meter_prefix(meter)}{slot_start:012d}"
