"""A committer run with --group-readers makes the directory of its volume where its pod's
endorser (another user of its group) keeps its own state: its acknowledgement journal. Before,
that endorser's data directory was the volume's root, which only the committer may write, so
the endorser could keep nothing of its own there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gridledger_committer.main import _endorser_dir


def test_the_endorsers_directory_is_writable_by_the_group_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "endorser"
    _endorser_dir(path)
    mode = path.stat().st_mode
    assert mode & stat.S_IRWXG == stat.S_IRWXG and mode & stat.S_ISGID
    assert not mode & stat.S_IWOTH
    os.chmod(path, 0o700)  # a directory made before, or changed by hand
    _endorser_dir(path)
    mode = path.stat().st_mode
    assert mode & stat.S_IRWXG == stat.S_IRWXG and mode & stat.S_ISGID


def test_a_directory_it_cannot_change_is_left_as_it_is(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Made first by the endorser (its owner, in a pod whose volume the group may write):
    the committer cannot chmod it and starts anyway. Before, it raised and its pod went down
    with it at every start."""
    path = tmp_path / "endorser"
    path.mkdir(mode=0o755)

    def refused(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refused)
    _endorser_dir(path)  # no exception
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
