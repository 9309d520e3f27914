"""The event loops a process may run its gRPC calls on (core rpc/event_loops.py)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gridledger_core.rpc import event_loops


def test_uvloop_is_the_default_and_pythons_own_loop_the_fallback() -> None:
    assert event_loops.DEFAULT == "uvloop"
    default = event_loops.new_event_loop()
    fallback = event_loops.new_event_loop("asyncio")
    try:
        assert isinstance(default, uvloop.Loop)
        assert not isinstance(fallback, uvloop.Loop)
        assert isinstance(fallback, asyncio.BaseEventLoop)
    finally:
        default.close()
        fallback.close()


def test_an_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'trio' is not one of uvloop, asyncio"):
        event_loops.new_event_loop("trio")


@pytest.mark.parametrize("kind", event_loops.CHOICES)
def test_a_loop_of_each_kind_runs_a_coroutine_to_its_value(kind: str) -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        seen.append(asyncio.get_running_loop())
        await asyncio.sleep(0.001)
        return 42

    with asyncio.Runner(loop_factory=lambda: event_loops.new_event_loop(kind)) as runner:
        assert runner.run(main()) == 42
    assert isinstance(seen[0], uvloop.Loop) == (kind == "uvloop")
    assert seen[0].is_closed()
