"""Client backoff: never earlier than the server's hint, jittered above it, exponential
without one, capped; the hint read from a failed call's trailers. No clock: the random draw
is injected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.rpc.backoff import Backoff, retry_after_ms


class Failed:
    def __init__(self, trailers: object) -> None:
        self._trailers = trailers

    def trailing_metadata(self) -> object:
        if isinstance(self._trailers, Exception):
            raise self._trailers
        return self._trailers


def test_the_hint_is_read_from_the_trailers() -> None:
    assert retry_after_ms(Failed((("other", "1"), ("retry-after-ms", "250")))) == 250
    assert retry_after_ms(Failed(())) == 0
    assert retry_after_ms(Failed(None)) == 0
    assert retry_after_ms(Failed((("retry-after-ms", "soon"),))) == 0
    assert retry_after_ms(Failed(RuntimeError("no call"))) == 0
    assert retry_after_ms(object()) == 0


def test_delays_without_a_hint_double_and_are_capped() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0, draw=lambda: 0.0)
    assert [b.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_the_hint_is_a_floor_and_jitter_spreads_above_it() -> None:
    low, high = Backoff(base_s=0.01, draw=lambda: 0.0), Backoff(base_s=0.01, draw=lambda: 0.999)
    assert low.delay(0, hint_ms=300) == pytest.approx(0.3)
    assert high.delay(0, hint_ms=300) == pytest.approx(0.5997)


@given(st.integers(0, 100), st.integers(0, 100_000), st.floats(0, 0.999999))
def test_delay_bounds(attempt: int, hint_ms: int, draw: float) -> None:
    b = Backoff(base_s=0.05, cap_s=5.0, jitter=1.0, draw=lambda: draw)
    delay = b.delay(attempt, hint_ms)
    assert min(5.0, hint_ms / 1000) <= delay + 1e-9
    assert delay <= 10.0
