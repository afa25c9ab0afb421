"""The margin left to each limit, constraint, interlock and kept range (gateway.ops.margins)."""

from __future__ import annotations

import math

import gateway
from gateway.ops.margins import margins
from gateway.runtime.view import PlantView

SITE = gateway.load_config("configs/water_tank.yaml")


def view(level: float = 2.5, inflow: float = 30.0, pump: float = 30.0, drain: float = 0.0,
         level_good: bool = True) -> PlantView:
    """A water-tank view: sensors level, inflow_rate, demand, uptime_s; actuators
    inflow_valve, outflow_pump, drain_valve."""
    return PlantView(
        at_s=10.0, at_wall_s=1e9, cycle=1,
        sensor_values=(level, 0.01, 0.005, 100.0), sensor_good=(level_good, True, True, True),
        sensor_at_s=(9.9, 9.9, 9.9, 9.9), applied=(inflow, pump, drain),
        sources=("fallback",) * 3, proposal=(math.nan,) * 3, mode="MANUAL", latched=False,
        trip_reason="", incident_id="", heartbeat=1, bypasses=(), bypass_left_s=None)


def by_name(v: PlantView) -> dict[str, tuple[float | None, float | None]]:
    return {m.name: (m.margin, m.fraction) for m in margins(SITE, v)}


def test_every_limit_constraint_interlock_and_kept_range_in_file_order() -> None:
    names = [(m.kind, m.name) for m in margins(SITE, view())]
    assert names == [
        ("limit", "inflow_valve"), ("limit", "outflow_pump"), ("limit", "drain_valve"),
        ("constraint", "total_flow"), ("constraint", "pump_dry_run"),
        ("interlock", "high_level_closes_inflow"), ("interlock", "low_level_stops_pump"),
        ("keep", "keep.level")]


def test_values_of_a_quiet_plant() -> None:
    m = by_name(view(level=2.5, inflow=30.0, pump=30.0))
    assert m["inflow_valve"] == (30.0, 0.3)  # nearer to min (0) than max (100)
    assert m["total_flow"][0] == 160 - 60  # inflow + pump + 40*drain <= 160
    assert m["pump_dry_run"][0] == 12 - (30 - 40 * 2.5)  # pump - 40*level <= 12
    assert m["high_level_closes_inflow"][0] == 4.5 - 2.5  # level > 4.5
    assert m["low_level_stops_pump"][0] == 2.5 - 0.3  # level < 0.3
    margin, fraction = m["keep.level"]
    assert margin is not None and fraction is not None
    assert math.isclose(margin, 2.3) and math.isclose(fraction, 2.3 / 4.6)


def test_a_drift_shrinks_the_margin_then_turns_it_negative() -> None:
    """The stealthy drift the dashboard is for: the level creeps up toward the interlock."""
    seen = [by_name(view(level=x))["high_level_closes_inflow"][0] for x in (4.0, 4.4, 4.6)]
    assert seen[0] is not None and seen[1] is not None and seen[2] is not None
    assert seen[0] > seen[1] > 0 > seen[2]
    # A constraint over actuators goes negative when their sum is over its bound.
    assert by_name(view(inflow=100.0, pump=70.0))["total_flow"][0] == -10.0


def test_an_unknown_reading_gives_an_unknown_margin_not_a_safe_looking_one() -> None:
    m = by_name(view(level=math.nan))
    assert m["pump_dry_run"] == (None, None)
    assert m["high_level_closes_inflow"] == (None, None)
    assert m["keep.level"] == (None, None)
    # A reading the core marks bad counts as unknown, whatever number it carries.
    m = by_name(view(level=2.5, level_good=False))
    assert m["low_level_stops_pump"] == (None, None)
    # Terms that are all known still give their margin.
    assert m["total_flow"] == (100.0, None)
