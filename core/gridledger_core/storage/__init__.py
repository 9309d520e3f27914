"""Storage as a bytes mapping with atomic batches, backed by LMDB or by memory.

Both backends pass the same conformance suite (tests/unit/core/test_storage.py).
"""

from gridledger_core.storage.base import KeyValueStore, WriteBatch
from gridledger_core.storage.lmdb_store import LmdbStore, StoreFull
from gridledger_core.storage.memory import MemoryStore

__all__ = ["KeyValueStore", "LmdbStore", "MemoryStore", "StoreFull", "WriteBatch"]
