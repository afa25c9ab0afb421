"""The clean simulated day: rows, readings as the gateway decodes them, and the AI variant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from gateway.commissioning.simday import simulate_day
from gateway.commissioning.sources import read_csv

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site


def test_fallback_day_moves_the_fixed_actuators_and_decodes_readings(
        tmp_path: Path, water_site: Site) -> None:
    out = tmp_path / "day.csv"
    assert simulate_day(water_site, "water_tank", out, duration_s=120.0, hold_s=50.0) == 121
    h = read_csv(out)
    assert h.names == ("level", "inflow_rate", "demand", "uptime_s", "inflow_valve",
                       "outflow_pump", "drain_valve")
    assert h.time_s.tolist() == [float(k) for k in range(121)]
    # inflow_rate is a uint16 of scale 0.001 on the wire: whole litres per second.
    flow = h.column("inflow_rate")
    assert np.allclose(np.round(flow / 0.001) * 0.001, flow, rtol=0, atol=1e-12)
    # The operator moved the pump (fixed at 30 % by the fallback) at 50 s and 100 s.
    pump = h.column("outflow_pump")
    assert pump[0] == 30.0 and len(set(pump.tolist())) >= 2


def test_ai_day_is_run_by_the_nominal_model(tmp_path: Path, water_site: Site) -> None:
    out = tmp_path / "ai.csv"
    assert simulate_day(water_site, "water_tank", out, duration_s=20.0,
                        controller="ai") == 21
    pump = read_csv(out).column("outflow_pump")
    # Until AUTO (after a 5 s shadow, requested at 6 s) the fallback holds 30 % exactly;
    # then the model's output, which is close to but not exactly 30 %.
    assert pump[0] == 30.0
    assert pump[-1] != 30.0 and pump[-1] == pytest.approx(30.0, abs=1.0)
    with pytest.raises(ValueError, match="controller"):
        simulate_day(water_site, "water_tank", out, controller="pid")
