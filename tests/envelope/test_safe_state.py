"""The safe state is part of the envelope: conditional rows, interlocks win, protective moves
are never rate limited, and clamping always finds an admissible command."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import schema as s
from gateway.envelope.compiled import Action
from gateway.envelope.engine import Envelope
from tests.envelope.builders import build, interlock, lim, safe_case

NAN = math.nan


def v(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


def tank(engine: str, *, conditional: bool = False) -> Envelope:
    """The water tank's shape: inflow (safe 0), pump (safe 20), drain (safe 0); the dry
    interlock stops pump and drain under 0.3 m; the high one closes the inflow over 4.5 m."""
    cases = (safe_case("pump", {"level": 1}, "<", 0.5, 5.0),) if conditional else ()
    return Envelope(build(
        [lim("inflow", 0, 100, max_rate_per_s=20.0, max_step=10.0),
         lim("pump", 0, 100, max_rate_per_s=25.0),
         lim("drain", 0, 1, allowed=(0.0, 1.0), policy=s.Policy.REJECT)],
        sensors=("level",),
        interlocks=(
            interlock("high", {"level": 1}, ">", 4.5, [("inflow", True, 0.0)]),
            interlock("dry", {"level": 1}, "<", 0.3, [("pump", True, 0.0), ("drain", True, 0.0)],
                      s.Policy.TRIP),
        ),
        safe_values=(0.0, 20.0, 0.0), safe_cases=cases), engine)


def test_plain_safe_values_where_no_interlock_holds(engine):
    np.testing.assert_array_equal(tank(engine).safe_state(v(2.5)), [0, 20, 0])


def test_an_interlock_bound_wins_over_a_safe_value_that_breaks_it(engine):
    # 0.25 m: the plain safe pump value (20 %) would run the pump dry.
    np.testing.assert_array_equal(tank(engine).safe_state(v(0.25)), [0, 0, 0])


def test_an_unknown_sensor_counts_as_the_dangerous_side(engine):
    # A frozen or stale level is NaN by the time it reaches the envelope: every interlock on
    # it holds, so the safe state stops the pump.
    np.testing.assert_array_equal(tank(engine).safe_state(v(NAN)), [0, 0, 0])


def test_conditional_rows_first_match_wins_and_nan_holds(engine):
    env = tank(engine, conditional=True)
    np.testing.assert_array_equal(env.safe_state(v(2.5)), [0, 20, 0])
    np.testing.assert_array_equal(env.safe_state(v(0.4)), [0, 5, 0])
    np.testing.assert_array_equal(env.safe_state(v(0.2)), [0, 0, 0])  # the interlock wins
    np.testing.assert_array_equal(env.safe_state(v(NAN)), [0, 0, 0])


def test_a_move_toward_the_safe_state_is_not_rate_limited(engine):
    env = tank(engine)
    # Pump from 60 % to its safe 20 % in one 0.1 s cycle (limit 2.5 per cycle): protective.
    assert env.check(v(0, 20, 0), v(0, 60, 0), v(2.5), 0.1).action == Action.OK
    # Part of the way there is protective too, from either side.
    assert env.check(v(0, 35, 0), v(0, 60, 0), v(2.5), 0.1).action == Action.OK
    assert env.check(v(0, 15, 0), v(0, 10, 0), v(2.5), 0.1).action == Action.OK
    # Past the safe value, or away from it, is limited as before.
    verdict = env.check(v(0, 19, 0), v(0, 60, 0), v(2.5), 0.1)
    assert verdict.violations == ("pump.rate",)
    np.testing.assert_array_equal(verdict.clamped, [0, 20, 0])
    assert env.check(v(0, 63, 0), v(0, 60, 0), v(2.5), 0.1).violations == ("pump.rate",)
    # Inflow: its step limit (10) does not hold back closing it.
    assert env.check(v(0, 20, 0), v(90, 20, 0), v(2.5), 0.1).action == Action.OK


def test_the_issue_deadlock_pump_at_20_under_the_dry_interlock(engine):
    # Seen in the field: pump at 20 %, level under 0.3 m; [0, 0, 0] was refused
    # (outflow_pump.rate, envelope.clamp_infeasible) and the verdict fell back to the safe
    # values, which broke the interlock. Now the stop is simply admissible.
    env = tank(engine)
    verdict = env.check(v(0, 0, 0), v(0, 20, 0), v(0.25), 0.1)
    assert verdict.action == Action.OK, verdict.violations
    # A proposal that keeps pumping is clamped onto the interlock at once, not infeasible.
    verdict = env.check(v(0, 20, 0), v(0, 20, 0), v(0.25), 0.1)
    assert verdict.action == Action.TRIP
    assert "envelope.clamp_infeasible" not in verdict.violations


def test_from_an_unknown_position_only_the_safe_state_is_reachable(engine):
    env = tank(engine)
    assert env.check(v(0, 20, 0), v(NAN, NAN, 0), v(2.5), 0.1).action == Action.OK
    verdict = env.check(v(5, 20, 0), v(NAN, NAN, 0), v(2.5), 0.1)
    assert verdict.violations == ("inflow.rate", "inflow.step")
    np.testing.assert_array_equal(verdict.clamped, [0, 20, 0])


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 100), st.floats(0, 100), st.floats(0, 100), st.floats(0, 100),
       st.sampled_from([0.0, 1.0]), st.floats(-1, 6) | st.just(NAN),
       st.floats(0.001, 2.0))
def test_clamping_a_finite_proposal_is_never_infeasible_and_never_breaks_an_interlock(
        pi: float, pp: float, ui: float, up: float, drain: float, level: float,
        dt: float) -> None:
    for engine in ("python", "cython"):
        env = tank(engine)
        prev = v(pi, pp, 0.0)
        verdict = env.check(v(ui, up, drain), prev, v(level), dt)
        assert "envelope.clamp_infeasible" not in verdict.violations
        out = np.empty(3)
        feasible = np.zeros(3, dtype=np.uint8)
        assert env.project_into(v(ui, up, drain), prev, v(level), dt, out, feasible) == 0
        # The projection satisfies every holding interlock.
        if not level >= 0.3:
            assert out[1] <= 0 and out[2] <= 0
        if not level <= 4.5:
            assert out[0] <= 0


@pytest.mark.parametrize("level", [0.25, 2.5, 4.7, NAN])
def test_the_safe_state_always_passes_the_interlocks_from_anywhere(engine, level):
    env = tank(engine)
    safe = env.safe_state(v(level))
    for prev in (v(100, 100, 1), v(0, 0, 0), v(NAN, NAN, NAN)):
        verdict = env.check(safe, prev, v(level), 0.1)
        assert verdict.action == Action.OK, (prev, verdict.violations)
