"""The simulated plants: tag maps, physics, determinism, and the example sites around them
(fallback control holds the plant; the sites' prediction models bound the real physics)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pytest

import gateway
from gateway.control.bank import FallbackBank
from simulators.plants import (
    BOILER_STEADY_STATE,
    PLANTS,
    STEADY_STATE,
    WATER_TANK_STEADY_STATE,
    Boiler,
    WaterTank,
    make_plant,
)
from simulators.plants.base import PlantTag, TagKind
from simulators.plants.boiler import (
    NOMINAL_TEMPERATURE_C,
    saturation_pressure_bar,
    saturation_temperature_c,
)
from simulators.plants.water_tank import (
    DEMAND_MAX_M3_S,
    DEMAND_MIN_M3_S,
    TANK_AREA_M2,
    inflow_m3_s,
)

if TYPE_CHECKING:
    from gateway.config.schema import Site
    from simulators.plants.base import Plant

SITES = {"water_tank": "configs/water_tank.yaml", "boiler": "configs/boiler.yaml"}
S, A, H = TagKind.SENSOR, TagKind.ACTUATOR, TagKind.HEARTBEAT


def _tank(**kwargs: float) -> WaterTank:
    return WaterTank(0, **kwargs)


# ----------------------------------------------------------------------------------------------
# Tags and limits


def test_water_tank_tag_map() -> None:
    ir, hr = "input_register", "holding_register"
    assert WaterTank.tags == (
        PlantTag("level", S, "m", ir, 0, "float32", "Tank.Level", "Double", 1.0),
        PlantTag("inflow_rate", S, "m3/s", ir, 2, "uint16", "Tank.InflowRate", "Double", 0.001),
        PlantTag("demand", S, "m3/s", ir, 3, "uint16", "Tank.Demand", "Double", 0.0001),
        PlantTag("uptime_s", S, "s", ir, 4, "uint32", "Tank.Uptime", "UInt32", 1.0),
        PlantTag("inflow_valve", A, "%", hr, 0, "uint16", "Tank.InflowValve", "Double", 0.01),
        PlantTag("outflow_pump", A, "%", hr, 1, "uint16", "Tank.OutflowPump", "Double", 0.01),
        PlantTag("drain_valve", A, "open", "coil", 0, "bool", "Tank.DrainValve", "Boolean", 1.0),
        PlantTag("heartbeat", H, "", hr, 100, "uint16", "Tank.Heartbeat", "UInt32", 1.0),
    )
    (limit,) = WaterTank.limits
    assert (limit.tag, limit.nominal, limit.safe_min, limit.safe_max, limit.danger_min,
            limit.danger_max) == ("level", 2.5, 0.2, 4.8, 0.0, 5.0)


def test_boiler_tag_map() -> None:
    ir, hr = "input_register", "holding_register"
    assert Boiler.tags == (
        PlantTag("pressure", S, "bar", ir, 0, "float32", "Boiler.Pressure", "Double"),
        PlantTag("temperature", S, "degC", ir, 2, "float32", "Boiler.Temperature", "Double"),
        PlantTag("uptime_s", S, "s", ir, 4, "uint32", "Boiler.Uptime", "UInt32"),
        PlantTag("heater", A, "%", hr, 0, "float32", "Boiler.Heater", "Double"),
        PlantTag("relief_valve", A, "%", hr, 2, "float32", "Boiler.ReliefValve", "Double"),
        PlantTag("burner_stage", A, "stage", hr, 4, "uint16", "Boiler.Stage", "Int32"),
        PlantTag("heartbeat", H, "", hr, 100, "uint16", "Boiler.Heartbeat", "UInt32"),
    )
    (limit,) = Boiler.limits
    assert (limit.tag, limit.nominal, limit.safe_min, limit.safe_max, limit.danger_min,
            limit.danger_max) == ("pressure", 8.0, 1.0, 15.0, 0.0, 16.0)


@pytest.mark.parametrize("name", list(PLANTS))
def test_tags_match_the_site(name: str) -> None:
    """Every sensor and actuator of the example site is a plant tag with the same address
    (Modbus site) or node (OPC UA site), type and scale."""
    site = gateway.load_config(SITES[name])
    plant = make_plant(name)
    tags = {t.name: t for t in plant.tags}
    for tag in site.tags:
        ours = tags[tag.name]
        assert ours.kind.value == tag.kind.value
        ref = tag.ref
        if hasattr(ref, "address"):
            assert ours.modbus_address == ref.address
            assert ours.modbus_type == tag.wire_type.value
            assert ours.modbus_scale == pytest.approx(tag.scale)
        else:
            assert ref.node == f"ns=2;s={ours.opcua_name}"
    heartbeats = [t for t in plant.tags if t.kind is H]
    assert len(heartbeats) == 1
    assert set(plant.sensors()) == {t.name for t in plant.tags if t.kind is S}
    assert set(plant.actuators()) == {t.name for t in plant.tags if t.kind is A}
    assert set(plant.process()) >= {lim.tag for lim in plant.limits}


def test_make_plant_and_steady_state_table() -> None:
    assert isinstance(make_plant("water_tank", 3, level=1.0), WaterTank)
    assert isinstance(make_plant("boiler"), Boiler)
    with pytest.raises(KeyError):
        make_plant("reactor")
    with pytest.raises(TypeError):
        make_plant("water_tank", 0, pressure=3.0)
    assert STEADY_STATE == {"water_tank": WATER_TANK_STEADY_STATE, "boiler": BOILER_STEADY_STATE}
    assert WATER_TANK_STEADY_STATE["inflow_valve"] == pytest.approx(40.0555, abs=1e-3)
    assert BOILER_STEADY_STATE["heater"] == pytest.approx(33.349, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# Water tank physics


def test_tank_starts_at_rest() -> None:
    tank = _tank()
    assert tank.actuators() == WATER_TANK_STEADY_STATE
    tank.set_disturbance("demand", 0.004)  # the pattern's value at t = 0, held
    for _ in range(600):
        tank.step(0.1)
    assert tank.process()["level"] == pytest.approx(2.5, abs=1e-6)


@pytest.mark.parametrize(("valve", "pump", "drain", "demand"), [
    (0.0, 0.0, 0.0, 0.005),     # consumers only
    (0.0, 40.0, 0.0, 0.0),      # pump only
    (100.0, 0.0, 0.0, 0.0),     # inflow only
    (0.0, 0.0, 1.0, 0.0),       # drain only
    (60.0, 20.0, 1.0, 0.003),   # all at once
])
def test_tank_mass_balance(valve: float, pump: float, drain: float, demand: float) -> None:
    """Over one second the volume changes by the flows the docstring states."""
    tank = _tank(level=2.5, inflow_valve=valve, outflow_pump=pump, drain_valve=drain)
    tank.set_disturbance("demand", demand)
    tank.step(1.0)
    h = 2.5
    flows = (inflow_m3_s(valve, h) - 0.05 * pump / 100.0 - 0.01 * drain - demand)
    assert (tank.process()["level"] - h) * TANK_AREA_M2 == pytest.approx(flows, rel=1e-3,
                                                                          abs=1e-9)


def test_inflow_law() -> None:
    assert inflow_m3_s(100.0, 0.0) == pytest.approx(0.05)
    assert inflow_m3_s(100.0, 2.5) == pytest.approx(0.05 * math.sqrt(0.9))
    assert inflow_m3_s(50.0, 25.0) == 0.0


def test_tank_overflow_is_clipped_at_the_rim() -> None:
    tank = _tank(inflow_valve=100.0, outflow_pump=0.0)
    for _ in range(60):
        tank.step(10.0)
    assert tank.process()["level"] == 5.0
    assert tank.sensors()["level"] == pytest.approx(5.0, abs=0.02)


def test_tank_pump_runs_dry_and_consumers_empty_it() -> None:
    tank = _tank(level=0.5, inflow_valve=0.0, outflow_pump=100.0)
    tank.set_disturbance("demand", 0.0)
    for _ in range(100):
        tank.step(1.0)
    # The pump stops drawing at 5 cm (loses suction).
    assert tank.process()["level"] == pytest.approx(0.05, abs=0.002)
    tank.set_disturbance("demand", 0.005)
    for _ in range(100):
        tank.step(1.0)
    assert tank.process()["level"] == 0.0


def test_demand_is_smooth_bounded_and_seeded() -> None:
    for seed in range(3):
        tank = WaterTank(seed)
        demand = []
        for _ in range(3600):
            tank.step(1.0)
            demand.append(tank.demand_m3_s())
        values = np.array(demand)
        assert values.min() >= DEMAND_MIN_M3_S
        assert values.max() <= DEMAND_MAX_M3_S
        assert values.max() - values.min() > 0.002  # the daily pattern shows
        assert np.abs(np.diff(values)).max() < 5e-4  # no jumps (per second)
    assert WaterTank(1).demand_m3_s() == WaterTank(2).demand_m3_s() == 0.004


def test_demand_can_be_forced_and_released() -> None:
    tank = _tank()
    tank.set_disturbance("demand", 0.012)
    assert tank.sensors()["demand"] == pytest.approx(0.012, abs=2e-4)  # shows at once
    tank.step(1.0)
    assert tank.demand_m3_s() == 0.012
    tank.set_disturbance("demand", math.nan)
    assert tank.demand_m3_s() < DEMAND_MAX_M3_S
    with pytest.raises(KeyError):
        tank.set_disturbance("rain", 1.0)


def test_tank_actuators_are_clipped() -> None:
    tank = _tank()
    tank.set_actuator("inflow_valve", 150.0)
    tank.set_actuator("outflow_pump", -3.0)
    tank.set_actuator("drain_valve", 0.7)
    assert tank.actuators() == {"inflow_valve": 100.0, "outflow_pump": 0.0, "drain_valve": 1.0}
    with pytest.raises(KeyError):
        tank.set_actuator("level", 1.0)
    with pytest.raises(ValueError, match="finite"):
        tank.set_actuator("inflow_valve", math.nan)
    assert tank.actuators()["inflow_valve"] == 100.0
    with pytest.raises(ValueError, match="dt_s"):
        tank.step(0.0)
    with pytest.raises(ValueError, match="uptime_s"):
        WaterTank(uptime_s=-1.0)


# ----------------------------------------------------------------------------------------------
# Both plants: noise, determinism, uptime, substeps


@pytest.mark.parametrize("name", list(PLANTS))
def test_sensors_are_noisy_and_alive(name: str) -> None:
    """A real reading always moves, the truth has no noise; sensors() is stable between steps."""
    plant = make_plant(name, 5)
    first = plant.sensors()
    assert plant.sensors() == first
    readings = []
    for _ in range(50):
        plant.step(0.1)
        readings.append(plant.sensors())
    for tag in plant.limits:
        values = [r[tag.tag] for r in readings]
        assert len(set(values)) == len(values)
        assert np.std(values) > 0.0
        assert abs(values[-1] - plant.process()[tag.tag]) < 0.1


@pytest.mark.parametrize("name", list(PLANTS))
def test_deterministic_for_a_seed(name: str) -> None:
    def run(seed: int) -> list[dict[str, float]]:
        plant = make_plant(name, seed)
        out = []
        for k in range(300):
            plant.set_actuator("inflow_valve" if name == "water_tank" else "heater",
                               30.0 + k % 7)
            plant.step(0.1)
            out.append(plant.sensors() | plant.process())
        return out

    assert run(4) == run(4)
    assert run(4) != run(5)


@pytest.mark.parametrize("name", list(PLANTS))
def test_uptime_counts_whole_seconds_from_its_start(name: str) -> None:
    plant = make_plant(name, 0, uptime_s=990.5)
    assert plant.sensors()["uptime_s"] == 990.0
    for _ in range(100):
        plant.step(0.1)
    assert plant.sensors()["uptime_s"] == 1000.0


@pytest.mark.parametrize("name", list(PLANTS))
def test_substeps_do_not_depend_much_on_dt(name: str) -> None:
    coarse, fine = make_plant(name, 1), make_plant(name, 1)
    for plant in (coarse, fine):
        plant.set_actuator("inflow_valve" if name == "water_tank" else "heater", 70.0)
    for _ in range(30):
        coarse.step(2.0)
        for _ in range(20):
            fine.step(0.1)
    (tag,) = (lim.tag for lim in coarse.limits)
    assert coarse.process()[tag] == pytest.approx(fine.process()[tag], rel=2e-3)


# ----------------------------------------------------------------------------------------------
# Boiler physics


def test_saturation_curve_matches_iapws_if97() -> None:
    # IAPWS-IF97 verification values (tables 35 and 36).
    assert saturation_pressure_bar(300.0 - 273.15) == pytest.approx(0.0353658941, rel=1e-8)
    assert saturation_pressure_bar(500.0 - 273.15) == pytest.approx(26.3889776, rel=1e-8)
    assert saturation_temperature_c(1.0) + 273.15 == pytest.approx(372.755919, rel=1e-8)
    assert saturation_temperature_c(10.0) + 273.15 == pytest.approx(453.035632, rel=1e-8)
    assert saturation_pressure_bar(NOMINAL_TEMPERATURE_C) == pytest.approx(8.0)


def test_boiler_starts_at_rest() -> None:
    boiler = Boiler()
    assert boiler.actuators() == BOILER_STEADY_STATE
    boiler.set_disturbance("load", 0.02)
    for _ in range(600):
        boiler.step(0.1)
    assert boiler.process()["pressure"] == pytest.approx(8.0, abs=1e-6)


def _seconds_until(boiler: Boiler, predicate: object, limit_s: float) -> float:
    t = 0.0
    while t < limit_s:
        if predicate(boiler.process()["pressure"]):  # type: ignore[operator]
            return t
        boiler.step(0.5)
        t += 0.5
    return math.inf


def test_full_heat_with_valve_closed_passes_design_pressure_in_minutes() -> None:
    boiler = Boiler(heater=100.0)
    t = _seconds_until(boiler, lambda p: p > 16.0, 600.0)
    assert 60.0 <= t <= 180.0


def test_relief_valve_brings_the_pressure_down_even_with_full_heat() -> None:
    boiler = Boiler(pressure=15.5, heater=100.0, relief_valve=100.0)
    t = _seconds_until(boiler, lambda p: p < 10.0, 600.0)
    assert t < 60.0


def test_heater_off_cools_slowly() -> None:
    """Losses and the steam load cool the boiler over minutes, not seconds."""
    boiler = Boiler(heater=0.0)
    boiler.set_disturbance("load", 0.02)
    trace = []
    for _ in range(600):
        boiler.step(1.0)
        trace.append(boiler.process()["pressure"])
    assert np.all(np.diff(trace) < 0.0)
    assert 6.5 < trace[59] < 7.9
    assert 1.0 < trace[-1] < 3.0
    idle = Boiler(heater=0.0)
    idle.set_disturbance("load", 0.0)  # losses alone
    for _ in range(600):
        idle.step(1.0)
    assert 2.0 < idle.process()["pressure"] < 3.0


def test_a_shut_down_boiler_cools_to_atmospheric_pressure_not_below() -> None:
    """Heat off and the relief valve open (the safe state) for 30 minutes: the boiler vents
    down to the atmosphere and keeps cooling below 100 degC, and the vacuum breaker holds the
    pressure at 1 atm (without it: under 1 bar after about 300 s)."""
    boiler = Boiler(seed=3, heater=0.0, relief_valve=100.0)
    lowest = math.inf
    for _ in range(1800):
        boiler.step(1.0)
        lowest = min(lowest, boiler.process()["pressure"])
    assert boiler.process()["temperature"] < 90.0  # the steam has long condensed
    assert lowest == pytest.approx(1.01325)
    # Heating again: the pressure follows the saturation line up from the atmosphere.
    boiler.set_actuator("heater", 100.0)
    boiler.set_actuator("relief_valve", 0.0)
    for _ in range(600):
        boiler.step(1.0)
    assert boiler.process()["pressure"] > 2.0


def test_burner_stages_add_heat() -> None:
    base, staged = Boiler(), Boiler(burner_stage=2)
    for plant in (base, staged):
        plant.set_disturbance("load", 0.02)
        for _ in range(60):
            plant.step(1.0)
    assert staged.process()["pressure"] > base.process()["pressure"] + 0.5


def test_boiler_disturbances() -> None:
    boiler = Boiler()
    boiler.set_disturbance("temperature", 120.5)  # a spoofed transmitter
    assert boiler.sensors()["temperature"] == pytest.approx(120.5, abs=0.3)
    boiler.step(1.0)
    assert boiler.sensors()["temperature"] == pytest.approx(120.5, abs=0.3)
    assert boiler.process()["temperature"] == pytest.approx(NOMINAL_TEMPERATURE_C, abs=0.1)
    boiler.set_disturbance("temperature", math.nan)
    assert boiler.sensors()["temperature"] == pytest.approx(NOMINAL_TEMPERATURE_C, abs=0.3)
    heavy = Boiler()
    heavy.set_disturbance("load", 0.1)
    assert heavy.load_kg_s() == 0.1
    for _ in range(60):
        heavy.step(1.0)
    assert heavy.process()["pressure"] < 7.0
    with pytest.raises(KeyError):
        heavy.set_disturbance("demand", 1.0)


def test_boiler_actuators_are_clipped() -> None:
    boiler = Boiler()
    boiler.set_actuator("heater", 120.0)
    boiler.set_actuator("relief_valve", -1.0)
    boiler.set_actuator("burner_stage", 7.0)
    assert boiler.actuators() == {"heater": 100.0, "relief_valve": 0.0, "burner_stage": 3.0}
    boiler.set_actuator("burner_stage", 1.4)
    assert boiler.actuators()["burner_stage"] == 1.0
    with pytest.raises(KeyError):
        boiler.set_actuator("pressure", 1.0)
    with pytest.raises(ValueError, match="pressure"):
        Boiler(pressure=0.0)


# ----------------------------------------------------------------------------------------------
# The example sites around the plants


def _closed_loop_fallback(site: Site, plant: Plant, seconds: float) -> list[float]:
    """The site's fallback controllers drive the plant (0.1 s cycle, no AI)."""
    sensors = [t.name for t in site.sensors]
    actuators = [t.name for t in site.actuators]
    applied = plant.actuators()
    bank = FallbackBank(site, np.array([applied[a] for a in actuators]))
    (tag,) = (lim.tag for lim in plant.limits)
    trace = []
    for _ in range(round(seconds / 0.1)):
        readings = plant.sensors()
        out = bank.update([readings[s] for s in sensors], 0.1)
        bank.track(out.tolist(), ai_in_control=False)
        for name, value in zip(actuators, out, strict=True):
            plant.set_actuator(name, float(value))
        plant.step(0.1)
        trace.append(plant.process()[tag])
    return trace


@pytest.mark.parametrize(("name", "band"), [("water_tank", 0.1), ("boiler", 0.3)])
def test_fallback_holds_the_nominal_point_for_ten_minutes(name: str, band: float) -> None:
    site = gateway.load_config(SITES[name])
    for seed in (0, 1):
        plant = make_plant(name, seed)
        trace = np.array(_closed_loop_fallback(site, plant, 600.0))
        nominal = plant.limits[0].nominal
        assert np.abs(trace - nominal).max() < band, (seed, trace.min(), trace.max())


def test_fallback_brings_the_boiler_back_from_a_disturbance() -> None:
    site = gateway.load_config(SITES["boiler"])
    plant = Boiler(pressure=11.0, heater=0.0)
    trace = _closed_loop_fallback(site, plant, 600.0)
    assert max(trace) < 15.0
    assert trace[-1] == pytest.approx(8.0, abs=0.3)


def _predict(site: Site, start: dict[str, float], command: dict[str, float]) -> dict[str, float]:
    """The site's prediction model rolled forward over its horizon (explicit Euler), as the
    envelope does."""
    pred = site.envelope.prediction
    assert pred is not None
    y = dict(start)
    for _ in range(pred.horizon_steps):
        values = y | command
        rates = {m.sensor: m.constant + sum(c * values[n] for n, c in m.terms)
                 for m in pred.model}
        y = {k: v + pred.step_s * rates.get(k, 0.0) for k, v in y.items()}
    return y


def test_tank_prediction_bounds_the_rise() -> None:
    """From 2.5 m up (overflow being the danger) the predicted level is never below the real
    one, whatever the command."""
    site = gateway.load_config(SITES["water_tank"])
    rng = np.random.default_rng(0)
    for _ in range(200):
        level = float(rng.uniform(2.5, 4.9))
        command = {"inflow_valve": float(rng.uniform(0, 100)),
                   "outflow_pump": float(rng.uniform(0, 100)),
                   "drain_valve": float(rng.integers(0, 2))}
        tank = WaterTank(0, level=level, **command)
        start = tank.sensors() | {"level": level}
        predicted = _predict(site, start, command)
        for _ in range(10):
            tank.step(1.0)
        assert tank.process()["level"] <= predicted["level"] + 1e-9


def test_boiler_prediction_bounds_the_rise_near_the_top() -> None:
    """Where it matters the site's linear model is conservative: a trajectory that ends at
    12 bar or more is predicted at least as high, and one that passes 15 bar is predicted to
    pass it (the predictive check would refuse the command)."""
    site = gateway.load_config(SITES["boiler"])
    rng = np.random.default_rng(1)
    high = 0
    for seed in range(300):
        pressure = float(rng.uniform(8.0, 15.0))
        command = {"heater": float(rng.uniform(0, 100)),
                   "relief_valve": float(rng.choice([0.0, rng.uniform(0, 100)])),
                   "burner_stage": float(rng.integers(0, 4))}
        boiler = Boiler(seed, pressure=pressure, **command)
        start = {"pressure": pressure, "temperature": boiler.process()["temperature"],
                 "uptime_s": 0.0}
        predicted = _predict(site, start, command)
        real = []
        for _ in range(20):
            boiler.step(1.0)
            real.append(boiler.process()["pressure"])
        if real[-1] >= 12.0:
            high += 1
            assert real[-1] <= predicted["pressure"]
        if max(real) > 15.0:
            assert predicted["pressure"] > 15.0
    assert high > 50


def test_boiler_prediction_rejects_full_heat_near_the_top() -> None:
    """The predictive check sees 15 bar coming: full heat at 13.5 bar is refused; the nominal
    heat at 8 bar is not."""
    site = gateway.load_config(SITES["boiler"])
    top = _predict(site, {"pressure": 13.5, "temperature": saturation_temperature_c(13.5),
                          "uptime_s": 0.0},
                   {"heater": 100.0, "relief_valve": 0.0, "burner_stage": 0.0})
    assert top["pressure"] > 15.0
    calm = _predict(site, {"pressure": 8.0, "temperature": NOMINAL_TEMPERATURE_C,
                           "uptime_s": 0.0}, BOILER_STEADY_STATE)
    assert 8.0 < calm["pressure"] < 9.0
