"""Counter-based deterministic noise: the value for (seed, stream, index) never depends on
which other indices were asked for or in which order, so a meter that restarts, or that is
queried for overlapping intervals, sees exactly the same profile.

The generator is SplitMix64 (Steele, Lea & Flood, 2014) applied to a key mixed from the
seed, a stream name and the index; vectorised over numpy uint64 arrays (wrapping
arithmetic is exactly what the mixer needs).
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_53 = float(1 << 53)


def _stream_key(seed: int, stream: str) -> np.uint64:
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "big"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, stream: str, indices: np.ndarray) -> np.ndarray:
    """Uniform floats in the open interval (0, 1), one per index."""
    key = _stream_key(seed, stream)
    with np.errstate(over="ignore"):
        x = (indices.astype(np.int64).view(np.uint64) * _GOLDEN) ^ key
    bits = _splitmix64(x) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) / _TWO_POW_53


def normals(seed: int, stream: str, indices: np.ndarray) -> np.ndarray:
    """Standard normal deviates (Box-Muller on two independent uniform streams)."""
    u1 = uniforms(seed, stream + "/a", indices)
    u2 = uniforms(seed, stream + "/b", indices)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def mean_one_lognormal(seed: int, stream: str, indices: np.ndarray, sigma: float) -> np.ndarray:
    """Multiplicative noise with expectation 1, so long-run sums keep their scale."""
    return np.exp(sigma * normals(seed, stream, indices) - 0.5 * sigma * sigma)
