"""The endorser opening its committer's ledger (`--committer-ledger`): it waits for the
ledger, and for its lock file to become writable (a committer with --group-readers makes it
group-writable just after creating it), and refuses to start, saying why, when it never
does: without it LMDB would not register the endorser's readers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gridledger_core.storage import LmdbStore, WriteBatch
from gridledger_endorser import main as endorser_main


def _ledger(path: Path) -> None:
    store = LmdbStore(path)
    batch = WriteBatch()
    batch.put(b"k", b"committed")
    store.commit(batch)
    store.close()


def test_waits_until_the_lock_file_is_writable_then_reads(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    _ledger(tmp_path / "ledger")
    looks: list[str] = []
    real_access = os.access

    def access(path: str | Path, mode: int) -> bool:  # writable from the fourth look on
        if str(path).endswith("lock.mdb") and mode == os.W_OK:
            looks.append(str(path))
            return len(looks) > 3
        return real_access(path, mode)

    monkeypatch.setattr(endorser_main.os, "access", access)
    monkeypatch.setattr(endorser_main.time, "sleep", lambda _s: None)
    store = endorser_main._committer_store(tmp_path / "ledger")
    try:
        assert store.get(b"k") == b"committed" and len(looks) == 4
    finally:
        store.close()


def test_refuses_to_start_when_the_lock_file_stays_unwritable(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    _ledger(tmp_path / "ledger")
    real_access = os.access
    monkeypatch.setattr(endorser_main.os, "access", lambda path, mode: False if str(
        path).endswith("lock.mdb") and mode == os.W_OK else real_access(path, mode))
    slept: list[float] = []
    monkeypatch.setattr(endorser_main.time, "sleep", slept.append)
    with pytest.raises(SystemExit, match=r"lock\.mdb is not writable by this process.*"
                                         r"--group-readers"):
        endorser_main._committer_store(tmp_path / "ledger")
    assert 55 <= sum(slept) <= 65  # about a minute of looks, then the refusal
