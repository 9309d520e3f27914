"""One conformance suite, run against every storage backend."""

import math
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from gridledger_core import node_config
from gridledger_core.ledger import schema
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.storage import KeyValueStore, LmdbStore, MemoryStore, StoreFull, WriteBatch
from gridledger_core.storage.metrics import MAP_BYTES, USED_BYTES, export_store_size


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValueStore]:
    s: KeyValueStore = MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "db")
    yield s
    s.close()


def put_all(store: KeyValueStore, items: dict[bytes, bytes]) -> None:
    batch = WriteBatch()
    for k, v in items.items():
        batch.put(k, v)
    store.commit(batch)


def test_get_missing_is_none(store: KeyValueStore) -> None:
    assert store.get(b"nope") is None


def test_batch_applies_puts_and_deletes_together(store: KeyValueStore) -> None:
    put_all(store, {b"a": b"1", b"b": b"2"})
    batch = WriteBatch()
    batch.delete(b"a")
    batch.put(b"c", b"3")
    batch.put(b"b", b"22")
    store.commit(batch)
    assert (store.get(b"a"), store.get(b"b"), store.get(b"c")) == (None, b"22", b"3")


def test_later_operation_on_same_key_wins(store: KeyValueStore) -> None:
    batch = WriteBatch()
    batch.put(b"k", b"1")
    batch.delete(b"k")
    batch.put(b"j", b"1")
    batch.put(b"j", b"2")
    store.commit(batch)
    assert store.get(b"k") is None and store.get(b"j") == b"2"


def test_scan_prefix_order_start_limit_reverse(store: KeyValueStore) -> None:
    put_all(store, {b"p/1": b"a", b"p/2": b"b", b"p/3": b"c", b"q/1": b"x", b"o/9": b"y"})
    assert [k for k, _ in store.scan(b"p/")] == [b"p/1", b"p/2", b"p/3"]
    assert [k for k, _ in store.scan(b"p/", start=b"p/2")] == [b"p/2", b"p/3"]
    assert [k for k, _ in store.scan(b"p/", limit=2)] == [b"p/1", b"p/2"]
    assert [k for k, _ in store.scan(b"p/", reverse=True)] == [b"p/3", b"p/2", b"p/1"]
    assert [k for k, _ in store.scan(b"p/", start=b"p/2", reverse=True)] == [b"p/2", b"p/1"]
    assert [k for k, _ in store.scan(b"p/", reverse=True, limit=1)] == [b"p/3"]
    assert list(store.scan(b"z/")) == []


def test_scan_prefix_of_ff_bytes(store: KeyValueStore) -> None:
    put_all(store, {b"\xff\xff": b"1", b"\xff\xff\x01": b"2", b"\xfe": b"3"})
    assert [k for k, _ in store.scan(b"\xff\xff")] == [b"\xff\xff", b"\xff\xff\x01"]
    assert [k for k, _ in store.scan(b"\xff\xff", reverse=True)] == [b"\xff\xff\x01", b"\xff\xff"]


keys = st.binary(min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.lists(st.tuples(keys, st.one_of(st.none(), st.binary(max_size=8))),
                             max_size=8), max_size=6),
       prefix=st.binary(max_size=2))
def test_backends_agree_with_a_dict(tmp_path_factory: pytest.TempPathFactory,
                                    ops: list[list[tuple[bytes, bytes | None]]],
                                    prefix: bytes) -> None:
    model: dict[bytes, bytes] = {}
    stores: list[KeyValueStore] = [MemoryStore(), LmdbStore(tmp_path_factory.mktemp("db"))]
    try:
        for batch_ops in ops:
            for s in stores:
                batch = WriteBatch()
                for k, v in batch_ops:
                    batch.delete(k) if v is None else batch.put(k, v)
                s.commit(batch)
            for k, v in batch_ops:
                model.pop(k, None) if v is None else model.__setitem__(k, v)
        expected = sorted((k, v) for k, v in model.items() if k.startswith(prefix))
        for s in stores:
            assert list(s.scan(prefix)) == expected
            assert list(s.scan(prefix, reverse=True)) == expected[::-1]
            for k, v in model.items():
                assert s.get(k) == v
            probe = [*model, prefix + b"\x00absent", *list(model)[:2]]
            assert s.get_many(probe) == [model.get(k) for k in probe]
            assert s.get_many([]) == []
    finally:
        for s in stores:
            s.close()


def test_a_full_store_is_a_node_fault_and_keeps_what_it_had(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "db", map_size=256 * 1024)
    try:
        written = 0
        with pytest.raises(StoreFull, match="is full"):
            for i in range(100):
                put_all(s, {f"k{i}/{j}".encode(): b"x" * 4000 for j in range(10)})
                written = i + 1
        assert written > 0
        assert s.get(f"k{written - 1}/9".encode()) == b"x" * 4000
        assert list(s.scan(f"k{written}/".encode())) == []  # the failed batch wrote nothing
    finally:
        s.close()


@pytest.mark.timeout(120)  # the old growth could also hang the writer
def test_readers_in_other_threads_never_fail_while_the_store_grows(tmp_path: Path) -> None:
    # Found by the benchmark: a replica's commit outgrew the map while the endorser answered
    # a trade request, whose read failed ("Attempt to operate on closed/deleted/dropped
    # object"): LMDB allows no transaction in the process while the map is resized.
    s = LmdbStore(tmp_path / "db", sync=False)
    put_all(s, {b"a/0": b"1"})
    failures: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                assert s.get(b"a/0") == b"1"
                assert s.get_many([b"a/0", b"b"]) == [b"1", None]
                assert next(iter(s.scan(b"a/")))[0] == b"a/0"
                reads += 1
            except BaseException as exc:  # what the test looks for: the first is enough
                failures.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for i in range(80):  # 80 MiB: past the 64 MiB at which the old map doubled
            put_all(s, {f"k{i:02}/{j}".encode(): b"x" * 4096 for j in range(256)})
    finally:
        stop.set()
        for reader in readers:
            reader.join()
        s.close()
    assert reads > 0
    assert failures == []


def test_a_snapshot_reads_as_the_store(store: KeyValueStore) -> None:
    put_all(store, {b"p/a": b"1", b"p/b": b"2", b"q": b"3"})
    with store.snapshot() as view:
        assert view.get(b"p/a") == b"1" and view.get(b"x") is None
        assert view.get_many([b"q", b"x", b"p/b"]) == [b"3", None, b"2"]
        assert list(view.scan(b"p/", reverse=True)) == [(b"p/b", b"2"), (b"p/a", b"1")]


def test_an_lmdb_snapshot_keeps_its_moment_while_the_store_commits(tmp_path: Path) -> None:
    """The ledger executes a block over one snapshot: a commit meanwhile (the endorser's
    replica, while a simulation reads) is seen whole or not at all."""
    s = LmdbStore(tmp_path / "db")
    put_all(s, {b"a": b"1"})
    with s.snapshot() as view:
        put_all(s, {b"a": b"2", b"b": b"2"})
        assert view.get_many([b"a", b"b"]) == [b"1", None]
    assert s.get_many([b"a", b"b"]) == [b"2", b"2"]
    s.close()


def test_lmdb_survives_reopen(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "db")
    put_all(s, {b"a": b"1"})
    s.close()
    s = LmdbStore(tmp_path / "db")
    assert s.get(b"a") == b"1"
    s.close()


def test_overlay_get_many_sees_its_own_writes_over_the_store() -> None:
    store = MemoryStore()
    put_all(store, {schema.state_key("a"): b"1", schema.state_key("b"): b"2"})
    overlay = StateOverlay(store)
    overlay.put("b", b"20")
    overlay.delete("a")
    overlay.put("c", b"3")
    keys = ["a", "b", "c", "d", "b"]
    assert overlay.get_many(keys) == [overlay.get(k) for k in keys] == [None, b"20", b"3",
                                                                        None, b"20"]


def test_a_node_exports_how_full_its_store_is(tmp_path: Path) -> None:
    """Used and map bytes as gauges (the GridLedgerStoreFilling alert divides them), for the
    map size the node's --lmdb-map-gib asked for."""
    parser = node_config.base_parser("test")
    args = node_config.parse(parser, ["--name", "n", "--consortium-dir", "/c",
                                      "--data-dir", str(tmp_path), "--lmdb-map-gib", "2"])
    store = LmdbStore(tmp_path / "exported", map_size=node_config.lmdb_map_size(args))
    try:
        export_store_size(store, "exported")
        used = REGISTRY.get_sample_value("gridledger_lmdb_used_bytes", {"store": "exported"})
        assert REGISTRY.get_sample_value("gridledger_lmdb_map_bytes",
                                         {"store": "exported"}) == 2 << 30
        batch = WriteBatch()
        batch.put(b"k", b"v" * 1_000_000)
        store.commit(batch)
        grown = REGISTRY.get_sample_value("gridledger_lmdb_used_bytes", {"store": "exported"})
        assert used is not None and grown is not None and grown >= used + 1_000_000
        store.close()  # as a stopping node does while its endpoint may still be scraped
        closed = REGISTRY.get_sample_value("gridledger_lmdb_used_bytes", {"store": "exported"})
        assert closed is not None and math.isnan(closed)  # no figure, and no failed scrape
    finally:
        USED_BYTES.remove("exported")  # the registry is the process's: leave no dead series
        MAP_BYTES.remove("exported")
        store.close()


def _as_user(uid: int, gid: int, work: Callable[[], str]) -> str:
    """`work()` in a forked child running as `uid`:`gid` (no other groups, the usual umask):
    what it returned, or the exception it raised, as text. (A fork, not a new interpreter:
    the other users cannot read this checkout's virtual environment.) The child can never
    return into the test runner, and dies within a minute whatever it does."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's
                signal.alarm(60)
                os.close(read)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                os.umask(0o022)
                answer = work()
            except BaseException as exc:
                answer = f"{type(exc).__name__}: {exc}"
            os.write(write, answer.encode("utf-8", "replace"))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def test_a_committers_ledger_is_readable_by_another_user_of_its_group() -> None:
    """The endorser beside its committer runs as its own user in the committer's group (so
    neither reads the other's keys through /proc): the committer run with --group-readers
    makes LMDB's lock file, where readers register, group-writable; without that a reader
    of another user cannot open it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the writer and the reader as other users")
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)  # the users below reach their directories through it
        for shared, expected in ((True, "committed"), (False, "Permission denied")):
            path = base / f"ledger-{shared}"
            path.mkdir()
            os.chown(path, 10001, 10001)

            def commit(path: Path = path, shared: bool = shared) -> str:
                store = LmdbStore(path, group_readers=shared)
                put_all(store, {b"k": b"committed"})
                store.close()
                return "ok"

            def read(path: Path = path) -> str:  # registering as a reader in the lock file
                store = LmdbStore(path, map_size=0, readonly=True)
                try:
                    return (store.get(b"k") or b"").decode()
                finally:
                    store.close()

            assert _as_user(10001, 10001, commit) == "ok"  # the committer
            assert bool((path / "lock.mdb").stat().st_mode & stat.S_IWGRP) is shared
            answer = _as_user(10002, 10001, read)  # the endorser: its own user, same group
            assert expected in answer, (shared, answer)
    finally:
        shutil.rmtree(base, ignore_errors=True)
