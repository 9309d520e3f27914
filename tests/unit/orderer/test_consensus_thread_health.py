"""The orderer's consensus thread never dies silently behind SERVING: failing iterations
(storage, a bug) turn health NOT_SERVING until one works again, and a thread that ends for
any reason but stop() leaves health NOT_SERVING."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from orderer_helpers import Orderer

from gridledger_core.genesis import Genesis


def test_failing_iterations_turn_health_off_until_one_works(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    orderer = Orderer(consortium_dir, genesis, tmp_path)
    node = orderer.node
    health: list[bool] = []
    node.on_health = health.append
    calls = 0

    def iterate() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError("LMDB write failed")
        node._stop.set()  # third iteration works, then the node is stopped

    node._iterate = iterate  # type: ignore[method-assign]
    thread = threading.Thread(target=node._run)
    thread.start()
    thread.join(timeout=30)
    orderer.store.close()
    assert calls == 3  # the thread went on after each failure
    assert health == [False, True]


def test_a_thread_that_ends_unexpectedly_leaves_health_off(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    orderer = Orderer(consortium_dir, genesis, tmp_path)
    node = orderer.node
    health: list[bool] = []
    node.on_health = health.append

    def iterate() -> None:
        raise SystemExit("the thread is ending")  # not an Exception: escapes the loop

    node._iterate = iterate  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        node._run()
    orderer.store.close()
    assert health == [False]
