"""StateOverlay against a reference model of its contract: the plain dict overlay it replaced
(a savepoint copied every write; a scan filtered every write). Any sequence of puts, deletes,
savepoints, rollbacks, reads and prefix scans must see the same state and the same changes,
whether the overlay asks its store every time or keeps what a snapshot answered."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.ledger import schema
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.storage import MemoryStore
from gridledger_core.storage.base import WriteBatch

KEYS = st.sampled_from(["a", "a/", "a/1", "a/10", "a/2", "ab", "b/1", "b/1/x", "b/2", "c"])
PREFIXES = st.sampled_from(["", "a", "a/", "a/1", "b/", "b/1", "c", "d"])


class ModelOverlay:
    """The previous implementation, kept as the definition."""

    def __init__(self, committed: dict[str, bytes]) -> None:
        self.committed = committed
        self.writes: dict[str, bytes | None] = {}
        self.saved: dict[str, bytes | None] | None = None

    def get(self, key: str) -> bytes | None:
        return self.writes[key] if key in self.writes else self.committed.get(key)

    def scan(self, prefix: str, limit: int | None) -> Iterator[tuple[str, bytes]]:
        merged: dict[str, bytes | None] = {k: v for k, v in self.committed.items()
                                           if k.startswith(prefix)}
        merged.update({k: v for k, v in self.writes.items() if k.startswith(prefix)})
        live = [(k, v) for k, v in sorted(merged.items()) if v is not None]
        return iter(live if limit is None else live[:limit])


OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, st.binary(min_size=1, max_size=2)),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("savepoint")),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("scan"), PREFIXES, st.none() | st.integers(min_value=1, max_value=4)),
    st.tuples(st.just("get"), KEYS),
    st.tuples(st.just("get_many"), st.lists(KEYS, max_size=4)),
), max_size=40)


def _store(committed: dict[str, bytes]) -> MemoryStore:
    store = MemoryStore()
    batch = WriteBatch()
    for key, value in committed.items():
        batch.put(schema.state_key(key), value)
    store.commit(batch)
    return store


@pytest.mark.parametrize("snapshot", [False, True], ids=["live store", "snapshot"])
@given(committed=st.dictionaries(KEYS, st.binary(min_size=1, max_size=2)), ops=OPS)
def test_overlay_matches_the_reference_model(snapshot: bool, committed: dict[str, bytes],
                                             ops: list) -> None:
    state = StateOverlay(_store(committed), snapshot=snapshot)
    model = ModelOverlay(dict(committed))
    for op in ops:
        if op[0] == "put":
            state.put(op[1], op[2])
            model.writes[op[1]] = op[2]
        elif op[0] == "delete":
            state.delete(op[1])
            model.writes[op[1]] = None
        elif op[0] == "savepoint":
            state.savepoint()
            model.saved = dict(model.writes)
        elif op[0] == "rollback":
            if model.saved is None:
                continue  # the contract: rollback only after a savepoint
            state.rollback()
            model.writes, model.saved = model.saved, None
        elif op[0] == "get":
            assert state.get(op[1]) == model.get(op[1])
        elif op[0] == "get_many":
            assert state.get_many(op[1]) == [model.get(key) for key in op[1]]
        else:
            assert list(state.scan(op[1], op[2])) == list(model.scan(op[1], op[2]))
        assert state.changes() == sorted(model.writes.items())
    for key in ["a", "a/1", "b/1/x", "c", "zz"]:
        assert state.get(key) == model.get(key)
    assert state.get_many(["c", "a/1", "zz"]) == [model.get("c"), model.get("a/1"), None]


def test_rollback_forgets_keys_first_written_after_the_savepoint() -> None:
    state = StateOverlay(MemoryStore())
    state.put("kept", b"1")
    state.savepoint()
    state.put("kept", b"2")
    state.put("new/1", b"3")
    state.delete("new/2")
    state.rollback()
    assert state.changes() == [("kept", b"1")]
    assert list(state.scan("new/")) == []


class CountingStore(MemoryStore):
    """Counts the keys it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        self.asked.append(key)
        return super().get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.asked.extend(keys)
        return super().get_many(keys)


def test_a_snapshot_is_asked_once_per_key_and_writes_still_win() -> None:
    store = CountingStore()
    batch = WriteBatch()
    batch.put(schema.state_key("revoked/x"), b"r")
    store.commit(batch)
    state = StateOverlay(store, snapshot=True)
    for _ in range(3):
        assert state.get_many(["revoked/x", "revoked/y"]) == [b"r", None]
        assert state.get("revoked/y") is None  # an absent key is kept as absent
    assert sorted(store.asked) == [schema.state_key("revoked/x"), schema.state_key("revoked/y")]
    # A write in the block answers before what the snapshot said, and a rollback of it
    # brings the snapshot's answer back.
    state.savepoint()
    state.put("revoked/y", b"now")
    assert state.get_many(["revoked/y"]) == [b"now"]
    state.rollback()
    assert state.get("revoked/y") is None
    assert len(store.asked) == 2
    # Over a live store every read is asked again (a query's overlay sees new blocks).
    live = StateOverlay(store)
    live.get("revoked/x")
    live.get("revoked/x")
    assert len(store.asked) == 4
