"""Semantics of the envelope check, one constraint kind at a time, on both engines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.config import schema as s
from gateway.envelope import Action
from tests.envelope.builders import envelope, interlock, lim, linear

NAN = math.nan
INF = math.inf


def v(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


def test_inside_bounds_is_ok_and_returns_a_copy(engine):
    env = envelope(engine, [lim("a", 0, 10), lim("b", -5, 5)])
    cmd = v(3, -2)
    verdict = env.check(cmd, v(3, -2), v(), 0.1)
    assert verdict.ok and verdict.action is Action.OK
    assert verdict.violations == ()
    assert verdict.clamped is not None
    np.testing.assert_array_equal(verdict.clamped, cmd)
    verdict.clamped[0] = 99.0
    assert cmd[0] == 3.0  # the verdict's command is not an alias of the caller's array


@pytest.mark.parametrize(("value", "name"), [(-0.001, "a.min"), (10.001, "a.max")])
def test_bounds_clamp_to_the_limit(engine, value, name):
    env = envelope(engine, [lim("a", 0, 10)])
    verdict = env.check(v(value), v(5), v(), 0.1)
    assert verdict.action is Action.CLAMP
    assert verdict.violations == (name,)
    assert verdict.clamped is not None
    assert verdict.clamped[0] == (0.0 if value < 0 else 10.0)


def test_boundary_values_are_inside(engine):
    env = envelope(engine, [lim("a", 0, 10, max_rate_per_s=2.0, max_step=1.5)])
    assert env.check(v(10.0), v(9.0), v(), 1.0).ok  # step 1.0 <= 1.5, rate 1.0 <= 2.0
    assert env.check(v(0.0), v(1.5), v(), 1.0).ok  # step exactly 1.5
    assert env.check(v(2.0), v(0.0), v(), 1.0).action is Action.CLAMP  # step 2 > 1.5


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nonfinite_command_is_never_ok(engine, bad):
    env = envelope(engine, [lim("a", -1e300, 1e300), lim("b", 0, 1)])
    verdict = env.check(v(bad, 0.5), v(0, 0.5), v(), 0.1)
    assert verdict.action is Action.TRIP
    assert "a.finite" in verdict.violations
    assert verdict.clamped is None


def test_nonfinite_policy_reject(engine):
    env = envelope(engine, [lim("a", 0, 1)], nonfinite_policy=s.Policy.REJECT)
    verdict = env.check(v(NAN), v(0), v(), 0.1)
    assert verdict.action is Action.REJECT
    assert verdict.violations[0] == "a.finite"


def test_rate_limit_clamps_toward_previous(engine):
    env = envelope(engine, [lim("a", 0, 100, max_rate_per_s=20.0)])
    verdict = env.check(v(80), v(50), v(), 0.5)  # at most 10 units in 0.5 s
    assert verdict.violations == ("a.rate",)
    assert verdict.clamped is not None and verdict.clamped[0] == 60.0
    down = env.check(v(0), v(50), v(), 0.5)
    assert down.clamped is not None and down.clamped[0] == 40.0


def test_step_limit_is_per_write_whatever_the_time(engine):
    env = envelope(engine, [lim("a", 0, 100, max_step=5.0)])
    assert env.check(v(55), v(50), v(), 100.0).ok
    verdict = env.check(v(56), v(50), v(), 100.0)
    assert verdict.violations == ("a.step",)
    assert verdict.clamped is not None and verdict.clamped[0] == 55.0


def test_unknown_previous_value_cannot_be_rate_checked(engine):
    env = envelope(engine, [lim("a", 0, 100, max_rate_per_s=20.0), lim("b", 0, 1)])
    verdict = env.check(v(50, 0.5), v(NAN, NAN), v(), 0.1)
    assert "a.rate" in verdict.violations
    assert "b.rate" not in verdict.violations  # b has no rate limit: NaN previous is fine
    assert verdict.action is Action.REJECT  # clamp impossible without a previous value
    assert "envelope.clamp_infeasible" in verdict.violations


def test_allowed_values_snap_to_nearest_within_limits(engine):
    env = envelope(engine, [lim("stage", 0, 3, allowed=(0.0, 1.0, 2.0, 3.0), max_step=1.0)])
    assert env.check(v(2.0), v(1.0), v(), 0.1).ok
    verdict = env.check(v(1.4), v(1.0), v(), 0.1)
    assert verdict.violations == ("stage.allowed",)
    assert verdict.clamped is not None and verdict.clamped[0] == 1.0
    tie = env.check(v(1.5), v(1.0), v(), 0.1)
    assert tie.clamped is not None and tie.clamped[0] == 1.0  # ties go to the lower value
    far = env.check(v(3.0), v(1.0), v(), 0.1)  # step 2 > 1: nearest reachable is 2
    assert far.clamped is not None and far.clamped[0] == 2.0


def test_allowed_values_reject_policy(engine):
    env = envelope(engine, [lim("valve", 0, 1, allowed=(0.0, 1.0), policy=s.Policy.REJECT)])
    verdict = env.check(v(0.5), v(0), v(), 0.1)
    assert verdict.action is Action.REJECT
    assert verdict.clamped is None


def test_linear_constraint_over_actuators_and_sensors(engine):
    env = envelope(engine, [lim("a", 0, 100), lim("b", 0, 100)], sensors=("level",),
                   constraints=(linear("sum", {"a": 1, "b": 1}, 150),
                                linear("dry", {"b": 1, "level": -40}, 12)))
    assert env.check(v(70, 80), v(70, 80), v(3), 0.1).ok
    verdict = env.check(v(80, 80), v(80, 80), v(3), 0.1)
    assert verdict.violations == ("sum",)
    assert verdict.action is Action.REJECT
    dry = env.check(v(10, 30), v(10, 30), v(0.2), 0.1)  # 30 - 8 = 22 > 12
    assert dry.violations == ("dry",)
    exact = env.check(v(75, 75), v(75, 75), v(3), 0.1)  # 150 <= 150
    assert exact.ok


def test_nan_sensor_violates_constraints_that_use_it_only(engine):
    env = envelope(engine, [lim("a", 0, 100), lim("b", 0, 100)], sensors=("level", "temp"),
                   constraints=(linear("uses_level", {"b": 1, "level": -1}, 50),
                                linear("actuators_only", {"a": 1, "b": 1}, 150)))
    verdict = env.check(v(10, 10), v(10, 10), v(NAN, 20), 0.1)
    assert verdict.violations == ("uses_level",)


def test_trip_policy_wins_over_clamp(engine):
    env = envelope(engine, [lim("a", 0, 100), lim("b", 0, 100)],
                   constraints=(linear("hard", {"a": 1, "b": 1}, 100, s.Policy.TRIP),))
    verdict = env.check(v(120, 10), v(100, 10), v(), 0.1)
    assert set(verdict.violations) == {"a.max", "hard"}
    assert verdict.action is Action.TRIP


def test_clamp_that_breaks_a_coupled_constraint_escalates(engine):
    # b below its minimum is clamped up to 60, which pushes a + b over 100.
    env = envelope(engine, [lim("a", 0, 100), lim("b", 60, 100)],
                   constraints=(linear("sum", {"a": 1, "b": 1}, 100),))
    verdict = env.check(v(50, 40), v(50, 60), v(), 0.1)
    assert verdict.action is Action.REJECT
    assert set(verdict.violations) == {"b.min", "sum"}
    assert verdict.clamped is None


def test_interlock_tightens_limits_only_while_its_condition_holds(engine):
    env = envelope(engine, [lim("inflow", 0, 100)], sensors=("level",),
                   interlocks=(interlock("high", {"level": 1}, ">", 4.5,
                                         [("inflow", True, 0.0)]),))
    assert env.check(v(50), v(50), v(4.5), 0.1).ok  # 4.5 is not > 4.5
    verdict = env.check(v(50), v(50), v(4.6), 0.1)
    assert verdict.violations == ("high",)
    assert verdict.clamped is not None and verdict.clamped[0] == 0.0


def test_interlock_with_unknown_sensor_holds(engine):
    env = envelope(engine, [lim("inflow", 0, 100)], sensors=("level",),
                   interlocks=(interlock("high", {"level": 1}, ">", 4.5,
                                         [("inflow", True, 0.0)]),
                               interlock("low", {"level": 1}, "<", 0.5,
                                         [("inflow", False, 10.0)])))
    verdict = env.check(v(50), v(50), v(NAN), 0.1)
    # Both hold on an unknown level: inflow must be <= 0 and >= 10 at once. 50 breaks only
    # "high", but no value satisfies both, so the clamp is infeasible.
    assert set(verdict.violations) == {"high", "envelope.clamp_infeasible"}
    assert verdict.action is Action.REJECT
    assert "envelope.clamp_infeasible" in verdict.violations


@pytest.mark.parametrize(("op", "level", "holds"), [
    ("<", 1.0, False), ("<", 0.999, True), ("<=", 1.0, True), ("<=", 1.001, False),
    (">", 1.0, False), (">", 1.001, True), (">=", 1.0, True), (">=", 0.999, False),
])
def test_interlock_operators(engine, op, level, holds):
    env = envelope(engine, [lim("x", 0, 10)], sensors=("level",),
                   interlocks=(interlock("ilk", {"level": 1}, op, 1.0, [("x", True, 2.0)]),))
    verdict = env.check(v(5), v(5), v(level), 0.1)
    assert (verdict.violations == ("ilk",)) is holds


def test_interlock_trip_policy(engine):
    env = envelope(engine, [lim("pump", 0, 100)], sensors=("level",),
                   interlocks=(interlock("dry", {"level": 1}, "<", 0.3, [("pump", True, 0.0)],
                                         s.Policy.TRIP),))
    verdict = env.check(v(20), v(20), v(0.2), 0.1)
    assert verdict.action is Action.TRIP


def _tank_prediction(policy: s.Policy = s.Policy.REJECT) -> s.Prediction:
    return s.Prediction(
        step_s=1.0, horizon_steps=10,
        model=(s.SensorModel("level", "", (("inflow", 0.01), ("outflow", -0.01)), 0.0),),
        keep=(s.KeepRange("level", 0.5, 4.8),), policy=policy)


def test_prediction_rejects_a_command_that_would_leave_the_keep_range(engine):
    env = envelope(engine, [lim("inflow", 0, 100), lim("outflow", 0, 100)], sensors=("level",),
                   prediction=_tank_prediction())
    # Net +0.2 m/s for 10 s from 2.5 m -> 4.5 m: fine. Net +0.3 m/s -> 5.5 m: over 4.8.
    assert env.check(v(40, 20), v(40, 20), v(2.5), 0.1).ok
    verdict = env.check(v(50, 20), v(50, 20), v(2.5), 0.1)
    assert verdict.violations == ("predict.level",)
    assert verdict.action is Action.REJECT


def test_prediction_allows_recovery_from_outside_the_keep_range(engine):
    env = envelope(engine, [lim("inflow", 0, 100), lim("outflow", 0, 100)], sensors=("level",),
                   prediction=_tank_prediction())
    # Already at 4.9 m (above 4.8): draining is allowed, filling further is not.
    assert env.check(v(0, 30), v(0, 30), v(4.9), 0.1).ok
    verdict = env.check(v(10, 0), v(10, 0), v(4.9), 0.1)
    assert verdict.violations == ("predict.level",)


def test_prediction_with_unknown_sensor_is_violated(engine):
    env = envelope(engine, [lim("inflow", 0, 100), lim("outflow", 0, 100)], sensors=("level",),
                   prediction=_tank_prediction(s.Policy.TRIP))
    verdict = env.check(v(0, 0), v(0, 0), v(NAN), 0.1)
    assert verdict.violations == ("predict.level",)
    assert verdict.action is Action.TRIP


def test_prediction_uses_sensor_dynamics(engine):
    # Temperature relaxes toward 20 (rate -0.1*(T-20)); heater adds 1 degC/s per unit.
    model = s.SensorModel("temp", "", (("heater", 1.0), ("temp", -0.1)), 2.0)
    pred = s.Prediction(step_s=1.0, horizon_steps=50, model=(model,),
                        keep=(s.KeepRange("temp", -math.inf, 60.0),))
    env = envelope(engine, [lim("heater", 0, 10)], sensors=("temp",), prediction=pred)
    # Equilibrium T = 20 + 10*heater: heater 3 -> 50 (ok), heater 5 -> 70 (> 60 within 50 s).
    assert env.check(v(3), v(3), v(20), 0.1).ok
    assert env.check(v(5), v(5), v(20), 0.1).violations == ("predict.temp",)


def test_clamped_command_passes_a_recheck(engine):
    env = envelope(engine, [lim("a", 0, 100, max_rate_per_s=7.3, max_step=3.1),
                            lim("b", -1, 1, allowed=(-1.0, 0.0, 1.0))])
    rng = np.random.default_rng(1)
    for _ in range(500):
        prev = np.array([rng.uniform(0, 100), rng.choice([-1.0, 0.0, 1.0])])
        cmd = prev + rng.normal(0, 20, 2)
        dt = float(rng.uniform(0.01, 2.0))
        verdict = env.check(cmd, prev, v(), dt)
        if verdict.action is Action.CLAMP:
            assert verdict.clamped is not None
            assert env.check(verdict.clamped, prev, v(), dt).ok


@pytest.mark.parametrize(("arg", "value", "message"), [
    ("command", [1.0, 2.0], "numpy array"),
    ("command", np.zeros(2, dtype=np.float32), "float64"),
    ("command", np.zeros(3), "length 2"),
    ("command", np.zeros((2, 1)), "1-D"),
    ("command", np.zeros(4)[::2], "C-contiguous"),
    ("previous", np.zeros(1), "length 2"),
    ("sensors", np.zeros(2), "length 1"),
    ("dt", math.nan, "dt"),
    ("dt", 0.0, "dt"),
    ("dt", -1.0, "dt"),
    ("dt", math.inf, "dt"),
])
def test_bad_arguments_raise_value_error(engine, arg, value, message):
    env = envelope(engine, [lim("a", 0, 1), lim("b", 0, 1)], sensors=("x",))
    args = {"command": v(0, 0), "previous": v(0, 0), "sensors": v(1), "dt": 0.1}
    args[arg] = value
    with pytest.raises(ValueError, match=message):
        env.check(args["command"], args["previous"], args["sensors"], args["dt"])


def test_check_into_matches_check_and_does_not_allocate_results(engine):
    env = envelope(engine, [lim("a", 0, 10, max_rate_per_s=1.0)])
    out = np.empty(1)
    viol = np.zeros(env.n_slots, dtype=np.uint8)
    code = env.check_into(v(20), v(5), v(), 1.0, out, viol)
    assert code == Action.CLAMP
    assert out[0] == 6.0
    assert env.names_of(viol) == ("a.max", "a.rate")


def test_check_into_rejects_bad_output_buffers(engine):
    env = envelope(engine, [lim("a", 0, 10)])
    with pytest.raises(ValueError, match="viol"):
        env.check_into(v(1), v(1), v(), 1.0, np.empty(1), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="out"):
        env.check_into(v(1), v(1), v(), 1.0, np.empty(2), np.zeros(env.n_slots, np.uint8))


def test_batch_carries_the_applied_command_forward(engine):
    env = envelope(engine, [lim("a", 0, 100, max_rate_per_s=10.0)])
    cmds = np.array([[50.0], [50.0], [50.0], [NAN], [50.0]])
    out, actions, counts = env.check_batch(cmds, v(20), np.zeros((5, 0)), 1.0)
    # 20 -> 30 -> 40 -> 50 (clamped, clamped, ok); NaN rejected leaves 50; then 50 ok.
    np.testing.assert_array_equal(out[:3, 0], [30, 40, 50])
    assert actions.tolist() == [Action.CLAMP, Action.CLAMP, Action.OK, Action.TRIP, Action.OK]
    assert counts[env.constraint_names.index("a.rate")] == 2
    assert counts[env.constraint_names.index("a.finite")] == 1


def test_empty_envelope(engine):
    env = envelope(engine, [])
    verdict = env.check(v(), v(), v(), 0.1)
    assert verdict.ok
    _, actions, _ = env.check_batch(np.zeros((3, 0)), v(), np.zeros((3, 0)), 0.1)
    assert actions.tolist() == [0, 0, 0]


def test_keyword_arguments_work_on_both_engines(engine):
    env = envelope(engine, [lim("a", 0, 10)])
    out = np.empty(1)
    viol = np.zeros(env.n_slots, dtype=np.uint8)
    code = env.check_into(command=v(20), previous=v(5), sensors=v(), dt=1.0, out=out, viol=viol)
    assert code == Action.CLAMP
    feasible = np.zeros(1, dtype=np.uint8)
    bad = env.project_into(command=v(20), previous=v(5), sensors=v(), dt=1.0, out=out,
                           feasible=feasible)
    assert bad == 0
    assert out[0] == 10.0
