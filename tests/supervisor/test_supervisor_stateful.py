"""The supervisor under random abuse, checked after every step (both envelope engines).

A hypothesis state machine drives the water-tank supervisor and a small plant with random plant
states, good, adversarial, NaN, wrong-shaped, late and silent proposals, sensor faults, clock
jumps and operator requests (authorised or not). After every step:

1. the written command is admissible: it passes the envelope, except actuators at their safe
   value (the invariant of DESIGN.md), judged on sensors masked independently by this test;
2. while a trip is latched the mode is MANUAL or SAFE_STOP, and a latch clears only by an
   authorised reset request;
3. nothing moves away from safety but an authorised operator request (applied at once,
   between steps), and a step never does;
4. SAFE_STOP writes exactly the safe values; every written value is finite.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.supervisor.decision import Proposal, ProposalAnomaly, Snapshot
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind
from tests.supervisor.plant import Tank, tank_supervisor

HOSTILE = [math.nan, math.inf, -math.inf, 1e308, -1e308, -1.0, 0.0, 0.5, 1.0, 20.0, 99.9,
           100.0, 100.0001, 250.0]
value = st.sampled_from(HOSTILE) | st.floats(-50, 150, allow_nan=False)
RECOVERY = {RequestKind.TO_SHADOW, RequestKind.TO_AUTO, RequestKind.TO_MANUAL}


class SupervisorMachine(RuleBasedStateMachine):
    engine = "cython"

    @initialize(clean=st.sampled_from([0.5, 2.0, 5.0]))
    def start(self, clean: float) -> None:
        self.sup = tank_supervisor(self.engine, clean_shadow_s=clean)
        self.tank = Tank()
        self.now_s = 0.0
        self.fault: str | None = None
        self.steps = 0
        self.ranges = [(t.range_min, t.range_max) for t in self.sup.site.sensors]
        self.stale_s = [self.sup.site.stale_after_ms(t) / 1000.0 for t in self.sup.site.sensors]

    # ---------------------------------------------------------------- inputs to the next step

    @rule(fault=st.sampled_from([None, "stale", "quality", "range", "nan", "spoof"]))
    def sensor_fault(self, fault: str | None) -> None:
        self.fault = fault

    @rule(level=st.floats(0.0, 5.0))
    def disturb(self, level: float) -> None:
        self.tank.level_m = level

    @rule(kind=st.sampled_from(list(RequestKind)), authorised=st.booleans(),
          detector=st.sampled_from([None, "ai_silent", "violation_rate", "envelope",
                                    "divergence.inflow_valve", "input.stale.level"]),
          duration=st.sampled_from([None, 0.5, 3.0, 1e9]))
    def operator(self, kind: RequestKind, authorised: bool, detector: str | None,
                 duration: float | None) -> None:
        req = OperatorRequest(kind, "tester", authorised, detector, duration)
        before_mode = self.sup.mode
        before_latched = self.sup.modes.latched
        self.sup.apply_request(req)  # applied at once, between steps
        # Only an authorised recovery request moves away from safety, only an authorised
        # reset clears a latch, and sensing must be healthy for either out of SAFE_STOP.
        if self.sup.mode.safety_rank < before_mode.safety_rank:
            assert authorised and kind in RECOVERY, f"{before_mode} -> {self.sup.mode}"
        if before_latched and not self.sup.modes.latched:
            assert authorised and kind is RequestKind.RESET_TRIP

    @rule()
    def earn_auto(self) -> None:
        """Authorised recovery with a clean shadow period, so that AUTO is really reached."""
        self.fault = None
        for kind in (RequestKind.RESET_TRIP, RequestKind.TO_MANUAL, RequestKind.TO_SHADOW):
            self.operator(kind, True, None, None)
        for _ in range(int(self.sup.site.operation.clean_shadow_s / 0.1) + 2):
            self.step_good(0.1)
        self.operator(RequestKind.TO_AUTO, True, None, None)
        self.step_good(0.1)

    # ---------------------------------------------------------------- steps

    @rule(dt=st.sampled_from([0.1, 0.1, 0.1, 0.001, 1.0, 3.0, -0.05]))
    def step_good(self, dt: float) -> None:
        level = self.tank.level_m
        prev = self.sup.previous
        ai = np.array([min(max(30.0 + 40.0 * (2.5 - level), 0.0), 100.0), 30.0, 0.0])
        ai[0] = min(max(ai[0], prev[0] - 1.0), prev[0] + 1.0)  # within the rate limit
        self._step(Proposal(ai, produced_at_s=self.now_s + dt), dt)

    @rule(values=st.lists(value, min_size=3, max_size=3), dt=st.sampled_from([0.1, 0.5]))
    def step_adversarial(self, values: list[float], dt: float) -> None:
        self._step(Proposal(np.array(values), produced_at_s=self.now_s + dt), dt)

    @rule(anomaly=st.sampled_from(list(ProposalAnomaly)))
    def step_anomaly(self, anomaly: ProposalAnomaly) -> None:
        self._step(Proposal(None, anomaly), 0.1)

    @rule(shape=st.sampled_from([0, 2, 4]))
    def step_wrong_shape(self, shape: int) -> None:
        self._step(Proposal(np.full(shape, 10.0), produced_at_s=self.now_s), 0.1)

    @rule(age=st.sampled_from([0.5, 1.5, 30.0]))
    def step_old_proposal(self, age: float) -> None:
        self._step(Proposal(np.array([30.0, 30.0, 0.0]), produced_at_s=self.now_s - age), 0.1)

    @rule()
    def step_none(self) -> None:
        self._step(None, 0.1)

    # ---------------------------------------------------------------- the checks

    def _snapshot(self) -> tuple[Snapshot, np.ndarray]:
        level = self.tank.level_m
        sensors = np.array([level, 0.01, 0.004, 1000.0])  # level, inflow, demand, uptime
        good = np.array([True] * 4)
        age = np.array([0.05] * 4)
        if self.fault == "stale":
            age[0] = 10.0
        elif self.fault == "quality":
            good[0] = False
        elif self.fault == "range":
            sensors[0] = 9.0
        elif self.fault == "nan":
            sensors[0] = math.nan
        elif self.fault == "spoof":
            sensors[0] = 2.5  # plausible but false: only the envelope and the process know
        known = sensors.copy()
        for i in range(len(sensors)):
            lo, hi = self.ranges[i]
            if not (good[i] and age[i] <= self.stale_s[i] and lo <= sensors[i] <= hi):
                known[i] = math.nan
        return Snapshot(sensors, good, age), known

    def _step(self, proposal: Proposal | None, dt: float) -> None:
        before_mode = self.sup.mode
        before_latched = self.sup.modes.latched
        previous = self.sup.previous.copy()
        self.now_s += dt
        used_dt = self.now_s - self.sup.last_s
        used_dt = used_dt if used_dt > 1e-6 else 1e-6
        snapshot, known = self._snapshot()
        decision = self.sup.step(snapshot, proposal, self.now_s)
        self.steps += 1

        command = decision.command
        assert np.isfinite(command).all(), command
        # A bypass may name every detector that trips (one list, the supervisor's).
        for e in decision.events:
            if e.kind is EventKind.TRIP or (e.kind is EventKind.ANOMALY and e.requester is None):
                assert e.name in self.sup.detector_names, e
        # The supervisor may distrust more than this harness models (a frozen or jumping
        # reading), never less; what it distrusts is unknown to the envelope, safe state
        # included.
        assert np.isnan(decision.sensors[np.isnan(known)]).all(), (known, decision.sensors)
        known = decision.sensors
        assert self.sup.gate.admissible(command, previous, known, used_dt), (
            f"inadmissible {command} after {previous} with sensors {known}, dt {used_dt}")
        if decision.mode is Mode.SAFE_STOP:
            np.testing.assert_array_equal(command, self.sup.gate.safe_state(decision.sensors))
        # Requests are applied between steps: a step itself never moves away from safety
        # and never clears a latch.
        assert decision.mode.safety_rank >= before_mode.safety_rank, (
            f"{before_mode} -> {decision.mode} in a step")
        assert self.sup.modes.latched or not before_latched
        self.tank.advance(command, max(dt, 0.0))

    @invariant()
    def latched_means_fallback_or_safe(self) -> None:
        if hasattr(self, "sup") and self.sup.modes.latched:
            assert self.sup.mode in (Mode.MANUAL, Mode.SAFE_STOP)


class PythonEngineMachine(SupervisorMachine):
    engine = "python"


SETTINGS = settings(max_examples=60, stateful_step_count=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TestSupervisorCython = SupervisorMachine.TestCase
TestSupervisorCython.settings = SETTINGS
TestSupervisorPython = PythonEngineMachine.TestCase
TestSupervisorPython.settings = SETTINGS
