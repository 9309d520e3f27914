"""Node configuration: flags over environment over file over defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridledger_core import node_config


def _parse(argv: list[str]) -> object:
    parser = node_config.base_parser("test")
    parser.add_argument("--batch", type=int, default=1)
    return node_config.parse(parser, argv)


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"name": "from-file", "consortium_dir": "/c", "data_dir": "/d",
                                  "batch": 7, "listen": "127.0.0.1:1"}))
    args = _parse(["--config", str(config)])
    assert (args.name, args.batch, args.listen) == ("from-file", 7, "127.0.0.1:1")  # type: ignore[attr-defined]
    monkeypatch.setenv("GRIDLEDGER_BATCH", "9")
    monkeypatch.setenv("GRIDLEDGER_NAME", "from-env")
    args = _parse(["--config", str(config)])
    assert (args.name, args.batch) == ("from-env", 9)  # type: ignore[attr-defined]
    args = _parse(["--config", str(config), "--name", "from-flag", "--batch", "3"])
    assert (args.name, args.batch) == ("from-flag", 3)  # type: ignore[attr-defined]
    assert isinstance(args.data_dir, Path)  # type: ignore[attr-defined]


def test_missing_and_unknown_options_are_reported(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["--name", "x"])
    assert "missing required options: --consortium-dir, --data-dir" in capsys.readouterr().err
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"nmae": "typo"}))
    with pytest.raises(SystemExit):
        _parse(["--config", str(config)])
    assert "unknown options in configuration: nmae" in capsys.readouterr().err


def test_parse_peers() -> None:
    assert node_config.parse_peers(["a=1.2.3.4:5,b=h:6", "c=[::1]:7"]) == [
        ("a", "1.2.3.4:5"), ("b", "h:6"), ("c", "[::1]:7")]
    with pytest.raises(SystemExit):
        node_config.parse_peers(["nonsense"])
