"""Seed chain and primary ranking.

Block h carries its primary's VRF proof over ``alpha(previous_seed, h)``; the VRF output is
block h's seed. The ranking for (h, r) depends only on the previous seed, so everyone can
recompute who may propose, and the seed itself cannot be chosen: the VRF output is unique
for (key, alpha) and alpha excludes the round, the timestamp and the batch.

The round r rotates the base ranking of height h by r positions: consecutive rounds always
have different primaries and any n consecutive rounds try every orderer once, so at most f
rounds in a row can have a faulty primary.

Known limit (shared by every leader-based lottery): a primary that withholds its block lets
the next-ranked orderer's VRF output become the seed instead, so a faulty orderer can choose
between at most f + 1 seeds by staying silent, never forge one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

from gridledger.common.v1 import block_pb2
from gridledger_core.consensus import vrf

_ALPHA_DOMAIN = b"gridledger/lottery/alpha/v1\x00"
_RANK_DOMAIN = b"gridledger/lottery/rank/v1\x00"
_GENESIS_DOMAIN = b"gridledger/lottery/genesis/v1\x00"

SEED_LEN = 64

VrfVerify = Callable[[bytes, bytes, bytes], bytes | None]  # (public key, proof, alpha) -> beta


def genesis_seed(genesis_config_hash: bytes) -> bytes:
    """Seed that precedes the first ordered block, bound to the genesis configuration."""
    return hashlib.sha512(_GENESIS_DOMAIN + genesis_config_hash).digest()


def alpha(previous_seed: bytes, height: int) -> bytes:
    """VRF input for the primary of block ``height``: domain || previous seed || height (8 BE)."""
    return _ALPHA_DOMAIN + previous_seed + height.to_bytes(8, "big")


def base_ranking(orderers: Iterable[str], previous_seed: bytes, height: int) -> list[str]:
    """All orderers sorted by SHA-256(domain || previous seed || height || id)."""
    prefix = _RANK_DOMAIN + previous_seed + height.to_bytes(8, "big")
    return sorted(
        set(orderers), key=lambda oid: (hashlib.sha256(prefix + oid.encode()).digest(), oid)
    )


def ranking(orderers: Iterable[str], previous_seed: bytes, height: int, round_: int) -> list[str]:
    """Ranking for (height, round): index 0 is the primary, the rest are the auxiliaries."""
    base = base_ranking(orderers, previous_seed, height)
    shift = round_ % len(base)
    return base[shift:] + base[:shift]


def primary(orderers: Iterable[str], previous_seed: bytes, height: int, round_: int) -> str:
    return ranking(orderers, previous_seed, height, round_)[0]


def is_entitled(
    orderer: str, orderers: Iterable[str], previous_seed: bytes, height: int, round_: int
) -> bool:
    """True when ``orderer`` is the primary for (height, round)."""
    return primary(orderers, previous_seed, height, round_) == orderer


def verify_header_vrf(
    header: block_pb2.BlockHeader,
    proposer_public_key: bytes,
    previous_seed: bytes,
    vrf_verify: VrfVerify = vrf.verify,
) -> bytes | None:
    """The block's seed if its VRF proof is valid for the proposer's key, else None."""
    return vrf_verify(proposer_public_key, header.vrf_proof, alpha(previous_seed, header.number))


def primary_of_header(
    header: block_pb2.BlockHeader, orderers: Mapping[str, bytes], previous_seed: bytes
) -> str:
    return primary(orderers, previous_seed, header.number, header.round)
