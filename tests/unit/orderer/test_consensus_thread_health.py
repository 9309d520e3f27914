"""The orderer's consensus thread never dies silently behind SERVING: failing iterations
(storage, a bug) turn health NOT_SERVING until one works again, and a thread that ends for
any reason but stop() leaves health NOT_SERVING."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from orderer_helpers import Orderer

from gridledger_core.consensus.actions import Persist, SetTimer
from gridledger_core.genesis import Genesis
from gridledger_orderer import node as node_module
from gridledger_orderer.node import OrdererNode


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


def _failing_writes(node: OrdererNode) -> list[bool]:
    """Make the node's store fail its writes (and its write probes) while the returned
    switch holds True."""
    failing = [True]
    apply, probe = node._store.apply, node._store.probe_write

    def maybe_failing(write: Callable[..., object]) -> Callable[..., object]:
        def written(*args: object, **kwargs: object) -> object:
            if failing[0]:
                raise OSError(5, "Input/output error")
            return write(*args, **kwargs)
        return written

    node._store.apply = maybe_failing(apply)  # type: ignore[method-assign]
    node._store.probe_write = maybe_failing(probe)  # type: ignore[method-assign]
    return failing


def _run_steps(node: OrdererNode, steps: list[Callable[[], object]]
               ) -> list[tuple[bool, int]]:
    """Run the consensus loop over `steps` (one per iteration; the last stops it): health
    as told, with how many iterations had run."""
    done = 0
    health: list[tuple[bool, int]] = []
    node.on_health = lambda serving: health.append((serving, done))

    def iterate() -> None:
        nonlocal done
        try:
            steps[done]()
        finally:
            done += 1
    node._iterate = iterate  # type: ignore[method-assign]
    thread = threading.Thread(target=node._run)
    thread.start()
    thread.join(timeout=30)
    return health


def test_a_failed_write_keeps_the_timers_it_came_with(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    """The replica notes a timer's deadline when it asks for it and arms it again only when
    none is noted: a timer lost with a failed write left the replica waiting, idle, for
    peers to move the height or round."""
    orderer = Orderer(consortium_dir, genesis, tmp_path)
    node = orderer.node
    _failing_writes(node)
    with pytest.raises(OSError):
        node._execute([Persist("votes", b"x"), SetTimer("round", 1.0)])
    orderer.store.close()
    assert [name for _, name in node._timers] == ["round"]


def test_health_stays_off_while_the_store_fails_however_idle_the_loop(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path) -> None:
    """An idle iteration writes nothing, so it does not show that storage works again:
    health went back to SERVING between failed writes, flapping while the disk failed."""
    orderer = Orderer(consortium_dir, genesis, tmp_path)
    node = orderer.node
    failing = _failing_writes(node)
    health = _run_steps(node, [
        lambda: node._execute([Persist("votes", b"x")]),  # fails
        lambda: None,  # idle: the probe fails too
        lambda: None,  # idle
        lambda: failing.__setitem__(0, False) or node._execute([Persist("votes", b"x")]),
        node._stop.set,
    ])
    orderer.store.close()
    assert health == [(False, 1), (True, 4)]  # back only after the write that worked


def test_an_idle_orderer_learns_that_its_store_works_again(
        consortium_dir: Path, genesis: Genesis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing to write, health after a failed write waited for traffic that, NOT_SERVING,
    it no longer got, until its liveness probe restarted it: an idle loop tries a small
    write (at most every STORE_PROBE_S) and is SERVING again once one works."""
    monkeypatch.setattr(node_module, "STORE_PROBE_S", 0.0)
    orderer = Orderer(consortium_dir, genesis, tmp_path)
    node = orderer.node
    failing = _failing_writes(node)
    health = _run_steps(node, [
        lambda: node._execute([Persist("votes", b"x")]),  # fails
        lambda: failing.__setitem__(0, False),  # storage back; nothing to write
        lambda: None,
        node._stop.set,
    ])
    orderer.store.close()
    assert health == [(False, 1), (True, 2)]
