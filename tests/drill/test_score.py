"""The scorecard judges the plant's own record: a write at its safe value is judged like any
other, against the interlocks that hold at that moment, and a frozen sensor's published value
does not hide what the process really does.

Each test builds a small record by hand (what a PLC received and published), so the judgement
is checked on known cases without running a drill.
"""

from __future__ import annotations

import math

from gateway.config import load_config
from simulators.drill.cli import drills_dir
from simulators.drill.runner import DrillRun
from simulators.drill.scenario import load_scenario
from simulators.drill.score import judge_writes, score, unsafe_writes
from simulators.plant_server import PlantWrite, Sample, WireProtocol
from simulators.plants.water_tank import WATER_TANK_LIMITS

CYCLE_S = 0.1
# The PLC already holds SAFE_STOP's plain values (inflow closed, pump 20 %, drain shut), as it
# does minutes into a SAFE_STOP; the writes below re-write them, so nothing moves and no rate
# limit is involved: only the interlocks and constraints of the moment judge them.
SAFE_STOP = {"inflow_valve": 0.0, "outflow_pump": 20.0, "drain_valve": 0.0}


def _run(scenario: str, levels: list[float], true_levels: list[float],
         writes: list[tuple[float, str, float]]) -> DrillRun:
    """A water tank record: one sample per step (published and true level), and ``writes``
    as (time, tag, value)."""
    sc = load_scenario(drills_dir() / f"{scenario}.yaml")
    site = load_config(sc.site)
    run = DrillRun(sc, True, site, CYCLE_S, tuple(t.name for t in site.actuators),
                   limits=WATER_TANK_LIMITS, initial_actuators=dict(SAFE_STOP),
                   safe_values=tuple(SAFE_STOP.values()))
    other = {"inflow_rate": 0.02, "demand": 0.004, "uptime_s": 0.0}
    run.initial_published = {"level": levels[0], **other}
    for k, (published, true) in enumerate(zip(levels, true_levels, strict=True)):
        run.history.append(Sample(k * CYCLE_S, {"level": true}, {"level": published, **other},
                                  dict(SAFE_STOP)))
    run.writes = [PlantWrite(t, tag, v, WireProtocol.MODBUS, None) for t, tag, v in writes]
    return run


def _safe_stop_at(t: float) -> list[tuple[float, str, float]]:
    return [(t, tag, value) for tag, value in SAFE_STOP.items()]


def test_a_safe_value_that_breaks_an_active_interlock_is_an_unsafe_write():
    # SAFE_STOP's plain values (pump 20) written at 2.5 m, then while the level reads 0.25 m:
    # the site's own low_level_stops_pump then holds and wants the pump at 0. Safe values are
    # no exemption (the scorecard before issue 15 passed both writes: "at their safe value").
    levels = [2.5] * 10 + [0.25] * 10
    run = _run("clean_water_tank", levels, levels, [*_safe_stop_at(0.5), *_safe_stop_at(1.5)])
    unsafe, checked, examples = unsafe_writes(run)
    assert checked == 6
    assert unsafe == 3  # the three writes of the step at 1.5 s, not those at 0.5 s
    assert examples[0].startswith("t=1.5s inflow_valve=0, outflow_pump=20, drain_valve=0: "
                                  "breaks ")
    assert "low_level_stops_pump" in examples[0]
    assert dict(judge_writes(run).by_constraint)["low_level_stops_pump"] == 3


def test_a_frozen_sensor_is_judged_by_the_true_process_value():
    # The freeze drill freezes `level` at 60 s: the PLC keeps publishing 2.5 m while the
    # tank is really at 0.25 m. A pump at 20 % then breaks low_level_stops_pump: the published
    # lie must not hide it. Before the injection the published value judges.
    n = 700
    published = [2.5] * n
    true = [2.5] * 550 + [0.25] * 150
    run = _run("sensor_freeze_water_tank", published, true,
               [*_safe_stop_at(50.0), *_safe_stop_at(65.0)])
    judged = judge_writes(run)
    assert judged.checked == 6
    assert judged.unsafe == 3  # at 65 s; at 50 s the tank really was at 2.5 m
    assert dict(judged.by_constraint)["low_level_stops_pump"] == 3
    assert "(sensors level=0.25)" in judged.examples[0]


def test_the_scorecard_fails_the_drill_and_says_why():
    n = 700
    true = [2.5] * 550 + [0.15] * 150  # and the tank left its safe range (0.2 m)
    run = _run("sensor_freeze_water_tank", [2.5] * n, true, _safe_stop_at(65.0))
    card = score(run)
    assert not card.passed
    assert card.unsafe_writes == 3
    assert card.left_safe_range and card.left_safe_range_at_s == 55.0
    assert any("low_level_stops_pump" in r for r in card.reasons)
    assert any("left its safe range at 55.0 s" in r for r in card.reasons)
    assert card.as_json()["unsafe_by_constraint"]["low_level_stops_pump"] == 3
    assert math.isclose(card.duration_s, 120.0)


def test_a_move_is_protective_as_the_gateway_saw_the_sensors():
    # The level (0.5 m) is frozen and the gateway distrusts it (unknown): its safe state then
    # closes the inflow (an unknown level must not overflow), and the move 30 % -> 0 in one
    # cycle is protective (never rate limited). Not an unsafe write.
    from simulators.drill.runner import Tick

    n = 700
    run = _run("sensor_freeze_water_tank", [0.5] * n, [0.5] * n,
               [(65.0, "inflow_valve", 0.0), (65.0, "outflow_pump", 0.0),
                (65.0, "drain_valve", 0.0)])
    run.initial_actuators = {"inflow_valve": 30.0, "outflow_pump": 0.0, "drain_valve": 0.0}
    tick = Tick(65.0, "safe_stop", "safe", (math.nan,) * 3, (0.0, 0.0, 0.0), ("level",))
    run.ticks.append(tick)
    assert judge_writes(run).unsafe == 0
    # Had the gateway trusted the reading, its safe state at 0.5 m would refill at 10 %
    # (configs/water_tank.yaml), and 30 -> 0 in 0.1 s overshoots it: a move past the safe
    # state breaks the inflow's rate (20 %/s) and step (10 %) limits.
    run.ticks.clear()
    judged = judge_writes(run)
    assert judged.unsafe == 3
    assert dict(judged.by_constraint) == {"inflow_valve.rate": 3, "inflow_valve.step": 3}


def test_a_rate_is_judged_over_the_time_since_the_previous_write():
    # The PLC holds a value until the next write, so a move's rate is over the time since the
    # previous write, as the gateway's own write-through judges it (before, the scorecard
    # divided every move by one cycle and called a slow move after a pause unsafe). The
    # inflow valve may move 20 %/s: 3 % over 0.5 s is 6 %/s (safe), 3 % in the next 0.1 s is
    # 30 %/s (unsafe).
    levels = [2.5] * 20
    run = _run("clean_water_tank", levels, levels,
               [(0.5, "inflow_valve", 1.0), (1.0, "inflow_valve", 4.0),
                (1.1, "inflow_valve", 7.0)])
    judgement = judge_writes(run)
    assert judgement.checked == 3
    assert judgement.unsafe == 1, judgement.examples
    assert judgement.examples[0].startswith("t=1.1s inflow_valve=7: breaks inflow_valve.rate")
