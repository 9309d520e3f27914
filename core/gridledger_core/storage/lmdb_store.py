"""LMDB backend.

Settings and why:
- `sync=True, metasync=True`: a commit returns only after the data and meta pages are on disk,
  so an acknowledged block survives power loss; LMDB's copy-on-write B+tree means a crash at
  any instant leaves either the previous or the new transaction, never half of one.
- `map_size` (64 GiB unless a node's `--lmdb-map-gib` says otherwise) is reserved once, at
  open, and never changed. It is address space, not
  memory or disk: the file grows with what is written (a fresh ledger is a few hundred KiB).
  Growing the map later is not safe in a node: LMDB allows no transaction in the process
  while `mdb_env_set_mapsize` runs, and a node reads from other threads while its one writer
  commits (an endorser's trade requests while its replica commits a block). The doubling
  this replaced failed those reads ("Attempt to operate on closed/deleted/dropped object";
  the benchmark found it) and could hang the writer. A full map is a node fault
  (`StoreFull`), like a full disk; nodes export how full it is (`storage/metrics.py`).
- `max_readers` is raised for gRPC's thread pools; every read uses its own short transaction.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import lmdb

from gridledger_core.storage.base import WriteBatch, prefix_end

DEFAULT_MAP_SIZE = 64 * 1024 * 1024 * 1024


READER_CHECK_EVERY = 256  # commits between two looks for dead processes' reader slots


def _identity(path: Path) -> tuple[tuple[int, int], ...]:
    """Which files these are: a lock file made anew splits the readers' table as surely as
    a data file swapped."""
    stats = [(path / name).stat() for name in ("data.mdb", "lock.mdb")]
    return tuple((stat.st_dev, stat.st_ino) for stat in stats)


def _group_writable(lock: Path) -> None:
    """Add group write to the lock file (what the process umask took away). An endorser
    beside its committer runs as its own user in the committer's group, so that neither can
    read the other's keys through /proc (docs/operations.md, "Endorser"); it needs to write
    this file. A file this process cannot change is left as it is: the endorser then refuses
    to start and says why."""
    mode = lock.stat().st_mode
    if not mode & stat.S_IWGRP:
        with contextlib.suppress(OSError):
            os.chmod(lock, stat.S_IMODE(mode) | stat.S_IWGRP)


class StoreFull(lmdb.MapFullError):
    """The store reached its map size: a node fault (like a full disk), never a verdict."""


class LmdbStore:
    def __init__(self, path: Path, *, map_size: int = DEFAULT_MAP_SIZE, sync: bool = True,
                 readonly: bool = False, group_readers: bool = False) -> None:
        """`readonly`: another process writes these files (an endorser reading its
        committer's ledger); `map_size` 0 then takes the writer's. `group_readers` (the
        writer): such readers may run as another user of this process's group, so the lock
        file, where LMDB's readers register, is made group-writable."""
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._env = lmdb.open(str(path), map_size=map_size, sync=sync, metasync=sync,
                              max_readers=512, max_dbs=0, readonly=readonly, lock=True)
        if group_readers and not readonly:
            _group_writable(path / "lock.mdb")
        self._files = _identity(path)  # after the open: the files it opened, or newer
        self._commits = 0
        # Free the reader slots of processes that died holding one (an endorser killed while
        # reading its committer's files, or the committer killed while the endorser kept the
        # lock file open): a stale slot pins old pages, and the file would grow instead of
        # reusing them. Again every READER_CHECK_EVERY commits, for readers that die later.
        self._env.reader_check()

    def replaced(self) -> bool:
        """Whether the files at this path are no longer the ones opened (a ledger directory
        emptied or swapped under a reader: it would go on reading the old ones)."""
        try:
            return _identity(self.path) != self._files
        except OSError:
            return True

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin(buffers=False) as txn:
            return txn.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        # One read transaction for all: a consistent snapshot, and one begin instead of many.
        with self._env.begin(buffers=False) as txn:
            return [txn.get(key) for key in keys]

    def scan(self, prefix: bytes, start: bytes | None = None, limit: int | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        # Materialise the page before yielding, so no read transaction outlives this call.
        with self._env.begin() as txn:
            items = _scan(txn, prefix, start, limit, reverse)
        yield from items

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[LmdbSnapshot]:
        """A read-only view of one committed state (one LMDB read transaction) while a live
        node keeps committing: `gridctl ledger verify` on a running committer compares the
        chain and the state of the same moment."""
        with self._env.begin(buffers=False) as txn:
            yield LmdbSnapshot(txn)

    def commit(self, batch: WriteBatch) -> None:
        self._commits += 1
        if self._commits % READER_CHECK_EVERY == 0:
            self._env.reader_check()
        try:
            with self._env.begin(write=True) as txn:
                for key, value in batch.operations.items():
                    if value is None:
                        txn.delete(key)
                    else:
                        txn.put(key, value)
        except lmdb.MapFullError as exc:  # nothing of the batch was written
            raise StoreFull(f"the LMDB store at {self.path} is full: its map of "
                            f"{self._env.info()['map_size']} bytes is used up") from exc

    def size_bytes(self) -> int:
        info = self._env.info()
        stat = self._env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def map_size_bytes(self) -> int:
        """The map reserved at open: the most the store can hold (StoreFull beyond)."""
        return int(self._env.info()["map_size"])

    def copy_to(self, destination: Path) -> None:
        """A consistent copy of the live environment (LMDB's own hot backup, compacted)."""
        destination.mkdir(parents=True, exist_ok=True)
        self._env.copy(str(destination), compact=True)

    def close(self) -> None:
        self._env.close()


class LmdbSnapshot:
    """The reads of a KeyValueStore, all from one read transaction; writes are refused."""

    def __init__(self, txn: lmdb.Transaction) -> None:
        self._txn = txn

    def get(self, key: bytes) -> bytes | None:
        return self._txn.get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self._txn.get(key) for key in keys]

    def scan(self, prefix: bytes, start: bytes | None = None, limit: int | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        yield from _scan(self._txn, prefix, start, limit, reverse)

    def commit(self, batch: WriteBatch) -> None:
        raise TypeError("a snapshot is read-only")

    def close(self) -> None:
        """The snapshot ends with the `with` block of `LmdbStore.snapshot`."""


def _scan(txn: lmdb.Transaction, prefix: bytes, start: bytes | None, limit: int | None,
          reverse: bool) -> list[tuple[bytes, bytes]]:
    items: list[tuple[bytes, bytes]] = []
    cursor = txn.cursor()
    if reverse:
        if start is not None:
            positioned = cursor.set_range(start)
            if not positioned:
                positioned = cursor.last()
            elif cursor.key() != start:
                positioned = cursor.prev()
        elif cursor.set_range(prefix_end(prefix)):
            positioned = cursor.prev()
        else:
            positioned = cursor.last()
        step = cursor.prev
    else:
        positioned = cursor.set_range(start if start is not None else prefix)
        step = cursor.next
    while positioned:
        key = cursor.key()
        if not key.startswith(prefix):
            break
        items.append((key, cursor.value()))
        if limit is not None and len(items) >= limit:
            break
        positioned = step()
    return items
