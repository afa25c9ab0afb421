"""Shared fixtures: the example sites and short clean simulated histories (fast: about 0.3 s
per simulated hour of the water tank at 1 s steps)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.commissioning.simday import simulate_day
from gateway.config import load_config

if TYPE_CHECKING:
    from gateway.config.schema import Site

ROOT = Path(__file__).resolve().parents[2]
WATER = ROOT / "configs" / "water_tank.yaml"
BOILER = ROOT / "configs" / "boiler.yaml"


@pytest.fixture(scope="session")
def water_site() -> Site:
    return load_config(WATER)


@pytest.fixture(scope="session")
def water_day(tmp_path_factory: pytest.TempPathFactory, water_site: Site) -> Path:
    """Two clean simulated hours of the water tank (seed 0), one row per second."""
    out = tmp_path_factory.mktemp("history") / "water_day.csv"
    simulate_day(water_site, "water_tank", out, duration_s=7200.0, hold_s=600.0, seed=0)
    return out


@pytest.fixture(scope="session")
def water_day2(tmp_path_factory: pytest.TempPathFactory, water_site: Site) -> Path:
    """Another clean two hours of the water tank (seed 1)."""
    out = tmp_path_factory.mktemp("history") / "water_day2.csv"
    simulate_day(water_site, "water_tank", out, duration_s=7200.0, hold_s=600.0, seed=1)
    return out


@pytest.fixture(scope="session")
def water_ai_day(tmp_path_factory: pytest.TempPathFactory, water_site: Site) -> Path:
    """A thousand clean seconds of the water tank run by the zoo's nominal model in AUTO, one row
    per 0.1 s cycle (as in the clean drills)."""
    out = tmp_path_factory.mktemp("history") / "water_ai_day.csv"
    simulate_day(water_site, "water_tank", out, duration_s=1000.0, step_s=0.1, seed=0,
                 controller="ai")
    return out
