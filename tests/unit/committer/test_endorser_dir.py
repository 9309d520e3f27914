"""A committer run with --group-readers makes the directory of its volume where its pod's
endorser (another user of its group) keeps its own state: its acknowledgement journal. Before,
that endorser's data directory was the volume's root, which only the committer may write, so
the endorser could keep nothing of its own there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gridledger_committer.main import _endorser_dir


def test_the_endorsers_directory_is_writable_by_the_group_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "endorser"
    _endorser_dir(path)
    mode = path.stat().st_mode
    assert mode & stat.S_IRWXG == stat.S_IRWXG and mode & stat.S_ISGID
    assert not mode & stat.S_IWOTH
    os.chmod(path, 0o700)  # a directory made before, or changed by hand
    _endorser_dir(path)
    assert path.stat().st_mode & stat.S_IRWXG == stat.S_IRWXG
