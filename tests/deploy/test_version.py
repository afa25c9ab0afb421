"""``safety-gateway --version`` prints the installed package's version (pyproject's) and exits 0,
without needing a subcommand."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys):
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr()
    assert out.out == f"safety-gateway {expected}\n"
    assert out.err == ""
