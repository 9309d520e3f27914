"""Quorum arithmetic and the VRF lottery ranking."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridledger_core.consensus import lottery, vrf
from gridledger_core.consensus.quorum import Quorum

IDS7 = [f"o{i}" for i in range(7)]


@pytest.mark.parametrize(("n", "f", "q"), [(4, 1, 3), (7, 2, 5), (10, 3, 7)])
def test_quorum_sizes(n: int, f: int, q: int) -> None:
    quorum = Quorum(n)
    assert (quorum.f, quorum.q, quorum.weak) == (f, q, f + 1)
    # Two quorums always share an honest orderer.
    assert 2 * quorum.q - n >= quorum.f + 1


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 6, 8])
def test_quorum_rejects_sizes_not_3f_plus_1(n: int) -> None:
    with pytest.raises(ValueError):
        Quorum(n)


def test_quorum_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError):
        Quorum.of(["a", "b", "c", "a"])
    assert Quorum.of(["a", "b", "c", "d"]).q == 3


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=64, max_size=64), height=st.integers(0, 2**40), r=st.integers(0, 50))
def test_ranking_is_a_permutation(seed: bytes, height: int, r: int) -> None:
    ranking = lottery.ranking(IDS7, seed, height, r)
    assert sorted(ranking) == sorted(IDS7)
    assert ranking[0] == lottery.primary(IDS7, seed, height, r)
    assert lottery.is_entitled(ranking[0], IDS7, seed, height, r)
    assert not any(lottery.is_entitled(o, IDS7, seed, height, r) for o in ranking[1:])


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(min_size=64, max_size=64), height=st.integers(0, 2**40))
def test_consecutive_rounds_try_every_orderer(seed: bytes, height: int) -> None:
    primaries = [lottery.primary(IDS7, seed, height, r) for r in range(7)]
    assert sorted(primaries) == sorted(IDS7)  # n consecutive rounds: n different primaries
    assert lottery.primary(IDS7, seed, height, 7) == primaries[0]


def test_every_orderer_is_primary_over_many_seeds() -> None:
    counts = Counter(
        lottery.primary(IDS7, hashlib.sha512(i.to_bytes(4, "big")).digest(), 5, 0)
        for i in range(1400)
    )
    assert set(counts) == set(IDS7)
    assert min(counts.values()) > 120  # 200 expected each


def test_ranking_ignores_input_order() -> None:
    seed = lottery.genesis_seed(b"cfg")
    assert lottery.ranking(IDS7, seed, 3, 1) == lottery.ranking(IDS7[::-1], seed, 3, 1)


def test_seed_chain_depends_on_the_previous_seed_and_height() -> None:
    key = bytes(32)
    pk = vrf.public_key(key)
    genesis = lottery.genesis_seed(b"config hash")
    assert genesis != lottery.genesis_seed(b"other config")
    proof = vrf.prove(key, lottery.alpha(genesis, 0))
    seed1 = vrf.verify(pk, proof, lottery.alpha(genesis, 0))
    assert seed1 is not None and len(seed1) == lottery.SEED_LEN
    # The same proof is worthless for another height or another previous seed.
    assert vrf.verify(pk, proof, lottery.alpha(genesis, 1)) is None
    assert vrf.verify(pk, proof, lottery.alpha(seed1, 0)) is None
