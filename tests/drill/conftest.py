"""The default drill's report, run once and shared by the tests that read it."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="session")
def default_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``safety-gateway drill --report DIR``: what a new user runs first."""
    report = tmp_path_factory.mktemp("default-drill")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "drill", "--report",
                             str(report)], capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (report / "stdout.txt").write_text(result.stdout)
    return report
