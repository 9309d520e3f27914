"""StateOverlay.scan with a limit reads only limit + (this overlay's writes under the prefix)
committed entries, and still yields exactly the first `limit` entries of the full merge."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gridledger_core.ledger import schema
from gridledger_core.ledger.state import StateOverlay
from gridledger_core.storage import MemoryStore
from gridledger_core.storage.base import WriteBatch

KEYS = st.sampled_from([f"p/{i:02d}" for i in range(12)] + ["q/00", "o/99"])


@given(committed=st.sets(KEYS), writes=st.dictionaries(KEYS, st.booleans()),
       limit=st.integers(min_value=1, max_value=14))
def test_limited_scan_is_the_prefix_of_the_full_merge(committed: set[str],
                                                     writes: dict[str, bool],
                                                     limit: int) -> None:
    store = MemoryStore()
    batch = WriteBatch()
    for key in committed:
        batch.put(schema.state_key(key), key.encode())
    store.commit(batch)
    state = StateOverlay(store)
    for key, keep in writes.items():
        if keep:
            state.put(key, b"new")
        else:
            state.delete(key)
    assert list(state.scan("p/", limit=limit)) == list(state.scan("p/"))[:limit]
