"""The orderers' pool shared by members: past half full, a member adds only within its share
of half the pool (from clients or from peers' forwards), and blocks are cut with the members
taking turns. Tried as a hostile member would: its endorser or its orderer floods the ordering
service with valid transactions."""

from __future__ import annotations

import dataclasses

from consensus_harness import Cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger.common.v1 import block_pb2
from gridledger_core.consensus.pool import TxPool
from gridledger_core.consensus.protocol import Replica

MAX_BYTES = 1_000


def add(pool: TxPool, member: str, n: int, size: int = 10, start: int = 0) -> list[bytes]:
    """Add `n` transactions of `member` while the pool has room for them; the ids added."""
    added = []
    for i in range(start, start + n):
        tx_id = f"{member}-{i}".encode()
        room = pool.room_for(member, count=1, size=size)
        assert pool.add(tx_id, b"x" * size, float(i), member=member) == room  # as forwards
        if not room:
            break
        added.append(tx_id)
    return added


def test_a_flooding_member_fills_half_and_another_member_still_finds_its_share() -> None:
    pool = TxPool(capacity=40, max_bytes=MAX_BYTES)
    assert len(add(pool, "hostile", 100)) == 20  # alone: half the pool, then its share of it
    assert len(add(pool, "honest", 100)) == 10  # half of half: the two members' shares
    assert add(pool, "hostile", 1, start=100) == []
    pool.discard([f"honest-{i}".encode() for i in range(10)])
    assert len(add(pool, "honest", 100, start=100)) == 10  # its share again, at once


def test_shares_hold_in_bytes_too() -> None:
    pool = TxPool(capacity=1_000, max_bytes=MAX_BYTES)
    assert len(add(pool, "hostile", 100, size=50)) == 10  # 500 bytes: half of MAX_BYTES
    assert len(add(pool, "honest", 100, size=50)) == 5  # 250 bytes: its share of that half


def test_blocks_are_cut_with_the_members_taking_turns() -> None:
    pool = TxPool(capacity=10_000, max_bytes=MAX_BYTES)
    for i in range(500):  # the flood arrived first
        pool.add(f"f{i}".encode(), b"x", float(i), member="hostile")
    for i in range(3):
        pool.add(f"h{i}".encode(), b"x", 1000.0 + i, member="honest")
    first = [tx_id for tx_id, _ in zip(pool.in_turns(), range(6), strict=False)]
    assert [tx_id for tx_id, _ in first] == [b"f0", b"h0", b"f1", b"h1", b"f2", b"h2"]
    later = [tx_id for (tx_id, _), _ in zip(pool.in_turns(first=1), range(2), strict=False)]
    assert later == [b"h0", b"f0"]  # the next height starts with the next member
    assert [tx_id for tx_id, _ in pool.items()][:2] == [b"f0", b"f1"]  # arrival order kept


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 30),
                                st.integers(1, 60), st.floats(0, 1)), max_size=30),
       capacity=st.integers(2, 60))
def test_the_bounds_always_hold_and_a_member_below_its_share_enters(
        steps: list[tuple[str, int, int, float]], capacity: int) -> None:
    pool = TxPool(capacity, MAX_BYTES)
    serial = 0
    for member, wanted, size, committed in steps:
        count, held_bytes = pool.held_by(member)
        others = sum(1 for m in "abc" if m != member and pool.held_by(m)[0])
        halves = 2 * (others + 1)
        fits_share = (count + 1) * halves <= capacity and (held_bytes + size) * halves <= MAX_BYTES
        fits_pool = len(pool) + 1 <= capacity and pool.total_bytes + size <= MAX_BYTES
        added = add(pool, member, wanted, size, start=serial)
        serial += wanted
        if wanted and fits_share and fits_pool:
            assert added  # below its share and the pool not full: it enters
        assert len(pool) <= capacity and pool.total_bytes <= MAX_BYTES
        ids = [tx_id for tx_id, _ in pool.items()]
        pool.discard(ids[:int(len(ids) * committed)])
    assert sum(pool.held_by(m)[0] for m in "abc") == len(pool)
    assert sum(pool.held_by(m)[1] for m in "abc") == pool.total_bytes



class MembersCluster(Cluster):
    """Transactions `ok:<member>:<n>`, charged to <member>; blocks of at most 10."""

    def make_replica(self, oid: str, records: dict[str, bytes], blocks: list[block_pb2.Block],
                     seeds: list[bytes]) -> Replica:
        replica = super().make_replica(oid, records, blocks, seeds)
        replica.deps = dataclasses.replace(
            replica.deps, member_of=lambda tx: tx.split(b":")[1].decode())
        return replica


def test_a_members_next_transaction_is_in_the_next_block_whatever_the_floods_backlog() -> None:
    cluster = MembersCluster()
    flood = [f"ok:hostile:{i}".encode() for i in range(30)]
    honest = [b"ok:honest:0", b"ok:honest:1"]
    cluster.submit("o1", flood + honest)  # the flood first; a block holds 10
    cluster.advance(0.2)
    first = list(cluster.nodes["o0"].blocks[0].transactions)
    assert len(first) == 10 and set(honest) <= set(first)  # before: flood 0-9 only
    assert [tx for tx in first if tx in flood] == flood[:8]  # the flood's own order kept
