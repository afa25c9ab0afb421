"""Drill runs shared by the tests that read them: the default drill's report, the long
drills (each fault held for 25 simulated minutes on both plants), and the own-model drill."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

# The long drills, slowest first (an AI-silent run writes the fallback's command every cycle,
# about twice the wall time of a SAFE_STOP run), so that two workers finish together.
LONG = ("ai_silent_boiler", "ai_silent_water_tank", "sensor_freeze_boiler",
        "plc_disconnect_boiler", "sensor_freeze_water_tank", "plc_disconnect_water_tank")
HELD_S = 25 * 60.0
INJECTED_AT_S = 60.0
LONG_DURATION_S = INJECTED_AT_S + HELD_S


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


@pytest.fixture(scope="session")
def long_cards() -> dict[str, dict]:
    """The scorecards of the long drills: one ``safety-gateway drill ... --duration-s``
    call, two worker processes. A long run is its short drill (same seed, same timeline)
    followed by 24 more minutes, so the short drills' tests read these cards too instead of
    running the same first two minutes again."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "drill", *LONG, "--duration-s",
         f"{LONG_DURATION_S:g}", "--jobs", "2", "--json"],
        capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    return {c["scenario"]: c for c in json.loads(result.stdout)["scenarios"]}


@pytest.fixture(scope="session")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """The shipped own-model drill (50 simulated s, two injections), run in this process and
    scored: (run, scorecard, its audit database)."""
    import asyncio

    from simulators.drill.cli import drills_dir
    from simulators.drill.runner import run_drill
    from simulators.drill.scenario import load_scenario
    from simulators.drill.score import score

    work = tmp_path_factory.mktemp("own")
    sc = load_scenario(drills_dir() / "own_model_water_tank.yaml")
    run = asyncio.run(run_drill(sc, work, audit_db=work / "audit.db"))
    return run, score(run), work / "audit.db"
