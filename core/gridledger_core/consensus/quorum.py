"""Membership arithmetic: the only place where f and the quorum size are derived from n."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Quorum:
    """Sizes for a cluster of n = 3f + 1 orderers.

    Any other n is refused rather than rounded: with n = 3f + 2 or 3f + 3 the extra nodes add
    no fault tolerance but raise the quorum, which only hurts liveness, and silently accepting
    a mistyped orderer list is worse than failing at startup.
    """

    n: int

    def __post_init__(self) -> None:
        if self.n < 4 or (self.n - 1) % 3 != 0:
            raise ValueError(f"orderer count must be 3f+1 with f >= 1, got {self.n}")

    @classmethod
    def of(cls, orderers: Iterable[str]) -> Quorum:
        ids = list(orderers)
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate orderer id")
        return cls(len(ids))

    @property
    def f(self) -> int:
        """Byzantine orderers tolerated."""
        return (self.n - 1) // 3

    @property
    def q(self) -> int:
        """Certificate size: any two quorums share at least f + 1 orderers, one of them honest."""
        return 2 * self.f + 1

    @property
    def weak(self) -> int:
        """f + 1: enough reports that at least one comes from an honest orderer."""
        return self.f + 1
