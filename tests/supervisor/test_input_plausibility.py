"""Frozen and implausible sensor readings (``detection.frozen_after_s``, ``max_rate_per_s``).

Drills inject a sensor freeze (the PLC keeps publishing one value with good quality) and
sensor spoofing (the tank level reading jumps 2.5 m -> 0.4 m in one cycle). Each detector has
a case it must catch and normal cases it must not flag. The supervisor tests run on both
envelope engines; the detector's own edge cases (time, gaps) are tested on ``InputHealth``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize

import gateway
import gateway.envelope
from gateway.config.schema import Detection, FieldError
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Decision, Proposal, Snapshot, Source
from gateway.supervisor.detectors import InputHealth
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, RequestKind
from tests.supervisor.plant import TANK, Loop, good_policy
from tests.supervisor.test_supervisor_stateful import SupervisorMachine

# m/s: the tank's level moves at most ~0.012 m/s; the rest is the noise allowance (0.005 m per
# 0.1 s cycle is 7 sigma of the difference of two readings)
LEVEL_RATE = 0.05
LEVEL = 0  # the level's index among the site's sensors
NOISE_M = 0.0005  # the level transmitter's measurement noise (1 sigma): 0.5 mm


def trips(loop: Loop) -> list[str]:
    return [e.name for d in loop.decisions for e in d.events if e.kind is EventKind.TRIP]


def trip_events(loop: Loop, name: str) -> list[object]:
    return [e for d in loop.decisions for e in d.events
            if e.kind is EventKind.TRIP and e.name == name]


class Sensed(Loop):
    """The tank loop with a live level transmitter (noisy readings) and faults to inject:
    ``frozen`` holds the reading at one value, ``reading`` overrides it, ``age_s`` and
    ``good`` make it stale or bad."""

    def __init__(self, engine: str, **detection: object) -> None:
        super().__init__(engine)
        site = self.sup.site
        site = replace(site, detection=replace(site.detection, **detection))  # type: ignore[arg-type]
        self.sup = Supervisor(site, gateway.envelope.compile(site, engine),
                              np.array([30.0, 30.0, 0.0]), 0.0)
        self.rng = np.random.default_rng(11)
        self.frozen: float | None = None
        self.reading: float | None = None
        self.age_s = 0.05
        self.good = True

    def sensed(self) -> Snapshot:
        """The plant's snapshot, with the level reading replaced."""
        level = self.tank.level_m + self.rng.normal(0.0, NOISE_M)
        if self.frozen is not None:
            level = self.frozen
        if self.reading is not None:
            level = self.reading
        snap = self.tank.snapshot()
        sensors, good, age = snap.sensors.copy(), snap.good.copy(), snap.age_s.copy()
        sensors[LEVEL], good[LEVEL], age[LEVEL] = level, self.good, self.age_s
        return Snapshot(sensors, good, age)

    def step(self, ai: np.ndarray | None = None, proposal: Proposal | None = None,
             snapshot: Snapshot | None = None) -> Decision:
        return super().step(ai, proposal, snapshot or self.sensed())


def assert_safe_stop(loop: Loop, d: Decision) -> None:
    assert d.mode is Mode.SAFE_STOP
    # The effective safe state of the trusted sensors: a masked level is NaN, so the level
    # interlocks hold and the pump stops (a frozen level must not keep it running).
    np.testing.assert_array_equal(d.command, loop.sup.gate.safe_state(d.sensors))
    if math.isnan(d.sensors[0]):
        assert d.command[1] == 0.0
    assert d.sources == (Source.SAFE,) * len(d.command)


# --------------------------------------------------------------------- frozen


def test_frozen_sensor_trips_once_and_latches(engine):
    loop = Sensed(engine, frozen_after_s=(("level", 30.0),))
    loop.to_auto(good_policy)
    for _ in range(100):
        loop.step(good_policy(loop))
    assert loop.sup.mode is Mode.AUTO
    loop.frozen = 2.5123  # the transmitter sticks; quality stays good
    for _ in range(299):  # the frozen value's first reading, then 29.8 s of repeats
        d = loop.step(good_policy(loop))
    assert d.mode is Mode.AUTO
    for _ in range(3):  # 30 s of repeats is reached in one of these (float time)
        d = loop.step(good_policy(loop))
        if d.mode is not Mode.AUTO:
            break
    assert_safe_stop(loop, d)  # in the step that sees it
    assert math.isnan(d.sensors[LEVEL])
    (event,) = trip_events(loop, "input.frozen.level")
    evidence = dict(event.evidence)  # type: ignore[attr-defined]
    assert evidence["value"] == 2.5123
    assert 29.9 < evidence["frozen_s"] < 30.2
    for _ in range(100):  # still frozen: reported once per latch
        loop.step(good_policy(loop))
    loop.frozen = None
    for _ in range(100):  # live again: the trip stays latched
        d = loop.step(good_policy(loop))
    assert_safe_stop(loop, d)
    assert len(trip_events(loop, "input.frozen.level")) == 1
    assert [n for n in trips(loop) if n.startswith("input.")] == ["input.frozen.level"]


def test_noisy_sensor_is_never_frozen_in_ten_minutes(engine):
    # The other sensors hold one value all along (plant.Tank), but only the level is configured.
    loop = Sensed(engine, frozen_after_s=(("level", 2.0),))
    loop.to_auto(good_policy)
    for _ in range(6000):
        loop.step(good_policy(loop))
    assert loop.sup.mode is Mode.AUTO
    assert trips(loop) == []


def test_sensor_not_configured_is_never_frozen(engine):
    loop = Sensed(engine, frozen_after_s=(("inflow_rate", 1e6),))
    loop.to_auto(good_policy)
    loop.frozen = 2.5
    for _ in range(6000):
        loop.step(good_policy(loop))
    assert loop.sup.mode is Mode.AUTO
    assert trips(loop) == []


# --------------------------------------------------------------------- rate


def test_ramp_just_under_the_rate_limit_is_not_flagged(engine):
    loop = Sensed(engine, max_rate_per_s=(("level", LEVEL_RATE),))
    for k in range(600):  # one minute at 99 % of the limit: 1.0 m -> 3.97 m
        loop.reading = 1.0 + 0.99 * LEVEL_RATE * 0.1 * k
        loop.step(None)
    assert loop.sup.mode is Mode.MANUAL
    assert trips(loop) == []


def test_spoofed_jump_goes_to_safe_stop_in_the_same_step(engine):
    loop = Sensed(engine, max_rate_per_s=(("level", LEVEL_RATE),))
    loop.to_auto(good_policy)
    for _ in range(600):  # a noisy, live reading for a minute: no false trip
        d = loop.step(good_policy(loop))
    assert d.mode is Mode.AUTO
    assert trips(loop) == []
    before = float(d.sensors[LEVEL])
    loop.reading = 0.4  # spoofed: the level "falls" ~2.1 m in one cycle
    d = loop.step(good_policy(loop))
    assert_safe_stop(loop, d)  # zero cycles of acting on the spoofed value
    assert math.isnan(d.sensors[LEVEL])
    (event,) = trip_events(loop, "input.rate.level")
    evidence = dict(event.evidence)  # type: ignore[attr-defined]
    assert evidence["value"] == 0.4
    assert evidence["previous"] == before
    assert evidence["rate_per_s"] == pytest.approx((before - 0.4) / 0.1, rel=1e-6)
    assert evidence["limit_per_s"] == LEVEL_RATE
    for _ in range(100):  # the spoof holds, then the reading comes back: latched, once
        d = loop.step(good_policy(loop))
    loop.reading = None
    for _ in range(100):
        d = loop.step(good_policy(loop))
    assert_safe_stop(loop, d)
    assert len(trip_events(loop, "input.rate.level")) == 1


@pytest.mark.parametrize("gap", ["stale", "quality"])
def test_change_across_a_gap_is_a_new_baseline(engine, gap):
    loop = Sensed(engine, max_rate_per_s=(("level", LEVEL_RATE),))
    for _ in range(50):
        loop.step(None)
    for _ in range(30):  # 3 s without a usable reading (the limit allows 0.15 m in 3 s)...
        loop.age_s, loop.good = (5.0, True) if gap == "stale" else (0.05, False)
        loop.step(None)
    loop.age_s, loop.good = 0.05, True
    loop.tank.level_m -= 0.5  # ...during which the level really fell 0.5 m
    for _ in range(50):
        loop.step(None)
    assert trips(loop) == [f"input.{gap}.level"]  # the gap itself, nothing for the change
    loop.request(RequestKind.RESET_TRIP)
    loop.request(RequestKind.TO_MANUAL)
    for _ in range(50):
        d = loop.step(None)
    assert d.mode is Mode.MANUAL
    assert trips(loop) == [f"input.{gap}.level"]


def test_both_on_one_sensor_no_false_trip_in_ten_minutes(engine):
    loop = Sensed(engine, max_rate_per_s=(("level", LEVEL_RATE),),
                  frozen_after_s=(("level", 2.0),))
    loop.to_auto(good_policy)
    for k in range(6000):
        loop.tank.demand = 0.002 * math.sin(k / 600.0)  # the level wanders
        loop.step(good_policy(loop))
    assert loop.sup.mode is Mode.AUTO
    assert trips(loop) == []


# --------------------------------------------------------------------- InputHealth itself


def health(**detection: object) -> InputHealth:
    site = gateway.load_config(TANK)
    return InputHealth(replace(site, detection=replace(site.detection, **detection)))  # type: ignore[arg-type]


def readings(h: InputHealth, level: float) -> list[float]:
    """``level`` for the level, the middle of its range for every other sensor."""
    values = [(lo + hi) / 2 for lo, hi in zip(h.lo, h.hi, strict=True)]
    values[LEVEL] = level
    return values


def judge(h: InputHealth, level: float, now_s: float | None, age_s: float = 0.05,
          good: bool = True) -> list[str]:
    """The detectors that find fault with this step's readings (only the level changes)."""
    n = len(h.names)
    ages = [0.05] * n
    ages[LEVEL] = age_s
    goods = [True] * n
    goods[LEVEL] = good
    sensors = readings(h, level)
    masked, findings = h.check(sensors, goods, ages, now_s)
    assert math.isnan(masked[LEVEL]) == any(f.detector.endswith(".level") for f in findings)
    assert masked[:LEVEL] + masked[LEVEL + 1:] == sensors[:LEVEL] + sensors[LEVEL + 1:]
    return [f.detector for f in findings]


def test_gaps_restart_the_frozen_count():
    # Decision: only an unbroken run of good identical readings is frozen time. Each kind of
    # gap (bad quality, stale, out of range) is a fault reported on its own, so nothing escapes.
    for gap in ({"good": False}, {"age_s": 5.0}, {"level": 9.0}):
        h = health(frozen_after_s=(("level", 30.0),))
        t = 0.0
        for _ in range(200):  # 20 s frozen
            assert judge(h, 2.5, t) == []
            t += 0.1
        assert judge(h, **{"level": 2.5, "now_s": t, **gap}) != []  # type: ignore[arg-type]
        t += 0.1
        for _ in range(299):  # 29.9 s frozen again: 49.9 s in all, but not in one run
            assert judge(h, 2.5, t) == []
            t += 0.1
        found = [judge(h, 2.5, t + 0.1 * k) for k in range(3)]
        assert ["input.frozen.level"] in found


def test_timestamps_come_from_the_ages():
    # A slow poll: a new reading every 0.5 s, seen by five 0.1 s steps. Between two readings
    # the level moves 0.5 s worth at 90 % of the limit: judged over the readings' 0.5 s, it
    # passes; the same move judged over one step (0.1 s) would be 4.5 times the limit.
    h = health(max_rate_per_s=(("level", LEVEL_RATE),))
    t = 0.0
    level = 2.0
    for k in range(200):
        if k % 5 == 0 and k:
            level += 0.9 * LEVEL_RATE * 0.5
        age = 0.05 + 0.1 * (k % 5)
        assert judge(h, level, t, age_s=age) == []
        t += 0.1


def test_tiny_or_negative_dt_is_judged_as_one_cycle():
    h = health(max_rate_per_s=(("level", LEVEL_RATE),))
    assert judge(h, 2.0, 10.0) == []
    # Same timestamp, a noise-sized change: judged over one cycle (0.1 s), not over 0 s.
    assert judge(h, 2.0 + 0.9 * LEVEL_RATE * 0.1, 10.0) == []
    # A reading stamped before the baseline (clock skew): likewise one cycle.
    assert judge(h, 2.0, 10.0, age_s=0.5) == []
    # Zero dt never hides a jump.
    assert judge(h, 3.0, 10.0) == ["input.rate.level"]


def test_implausible_value_stays_flagged_until_reachable():
    # The baseline stays at the last plausible reading: a spoofed value that holds is
    # flagged (and masked) until the limit would have allowed the move, then accepted.
    h = health(max_rate_per_s=(("level", 0.5),))
    assert judge(h, 2.5, 0.0) == []
    t = 0.1
    while t < 3.9:  # 2.5 -> 0.5 needs 4 s at 0.5 m/s
        assert judge(h, 0.5, t) == ["input.rate.level"]
        t += 0.1
    assert judge(h, 0.5, 4.2) == []
    assert judge(h, 0.52, 4.3) == []  # the new value is the baseline now


def test_first_reading_and_non_finite_time_are_not_judged():
    h = health(max_rate_per_s=(("level", LEVEL_RATE),), frozen_after_s=(("level", 1.0),))
    assert judge(h, 4.0, 0.0) == []  # the first reading is the baseline
    assert judge(h, 1.0, math.nan) == []  # no usable time: a gap
    assert judge(h, 2.0, 1.0) == []  # a new baseline after it
    assert judge(h, 2.0, math.inf) == []


def test_check_without_now_keeps_suspects_masked_and_changes_nothing():
    # Between steps (an operator's write is judged), a sensor under a plausibility finding
    # stays NaN, without a new finding and without moving the history.
    h = health(max_rate_per_s=(("level", LEVEL_RATE),))
    assert judge(h, 2.5, 0.0) == []
    assert judge(h, 0.4, 0.1) == ["input.rate.level"]
    n = len(h.names)
    masked, findings = h.check(readings(h, 0.4), [True] * n, [0.05] * n)
    assert math.isnan(masked[LEVEL]) and findings == []
    assert judge(h, 2.5 + 0.9 * LEVEL_RATE * 0.1, 0.2) == []  # judged against 2.5 still
    masked, findings = h.check(readings(h, 2.5), [True] * n, [0.05] * n)
    assert masked == readings(h, 2.5) and findings == []


def test_no_configured_sensor_means_no_watch():
    h = health(frozen_after_s=(), max_rate_per_s=())  # the example site configures the level
    assert h.watches == []
    n = len(h.names)
    masked, findings = h.check(readings(h, 2.5), [True] * n, [0.05] * n, 0.0)
    assert masked == readings(h, 2.5) and findings == []


def test_input_health_refuses_a_name_that_is_not_a_sensor():
    with pytest.raises(ValueError, match="max_rate_per_s: 'inflow_valve' is not a sensor"):
        health(max_rate_per_s=(("inflow_valve", 1.0),))


@pytest.mark.parametrize(
    ("key", "pairs", "message"),
    [
        ("frozen_after_s", (("level", 0.0),), "frozen_after_s: level: must be finite and > 0"),
        ("max_rate_per_s", (("level", -1.0),), "max_rate_per_s: level: must be finite and > 0"),
        ("max_rate_per_s", (("level", math.inf),), "must be finite and > 0, not inf"),
        ("frozen_after_s", (("level", math.nan),), "must be finite and > 0, not nan"),
        ("max_rate_per_s", (("level", 1.0), ("level", 2.0)), "'level' is listed twice"),
    ],
)
def test_detection_refuses_bad_per_sensor_values(key, pairs, message):
    with pytest.raises(FieldError, match=message) as info:
        Detection(**{key: pairs})
    assert info.value.key == key


# --------------------------------------------------------------------- under random abuse


class PlausibilityMachine(SupervisorMachine):
    """The supervisor state machine (random plant states, proposals, faults, clock jumps and
    operator requests; every invariant checked after every step) with both detectors on the
    level. Its disturbances are jumps of the level, so this mostly exercises the trip path."""

    @initialize(clean=st.sampled_from([0.5, 2.0, 5.0]))
    def start(self, clean: float) -> None:
        super().start(clean)
        site = self.sup.site
        site = replace(site, detection=replace(site.detection,
                                               frozen_after_s=(("level", 1.0),),
                                               max_rate_per_s=(("level", LEVEL_RATE),)))
        self.sup = Supervisor(site, gateway.envelope.compile(site, self.engine),
                              np.array([30.0, 30.0, 0.0]), 0.0)


TestPlausibilityMachine = PlausibilityMachine.TestCase
TestPlausibilityMachine.settings = settings(max_examples=40, stateful_step_count=80,
                                            deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
