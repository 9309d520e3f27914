"""Every key the ledger stores, in one place. Prefixes carry a version so the layout can
change with a migration instead of silently reinterpreting bytes.

    b1/<number:8 BE>            serialized Block (exact bytes received from the orderers)
    r1/<number:8 BE>            BlockCommitRecord: validation codes, state root
    t1/<tx id ascii>            TxLocation
    s1/<state key utf-8>        state value (serialized protobuf, type named by the state key)
    m1/chain                    ChainState of the tip

State keys (the part after s1/), as accepted by CommitterService.GetState:

    reading/<meter>/<interval start, 12 digits>     MeterReading
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
