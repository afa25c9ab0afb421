"""The gate: what it writes is always admissible, and it repairs as little as it can."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import schema as s
from gateway.envelope.engine import Envelope
from gateway.envelope.gate import Gate
from tests.envelope.builders import build, interlock, lim, linear


def v(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


def tank_gate(engine: str) -> Gate:
    compiled = build(
        [lim("inflow", 0, 100, max_rate_per_s=20.0), lim("pump", 0, 100, max_rate_per_s=25.0),
         lim("drain", 0, 1, allowed=(0.0, 1.0), policy=s.Policy.REJECT)],
        sensors=("level",),
        constraints=(linear("total", {"inflow": 1, "pump": 1, "drain": 40}, 160),),
        interlocks=(interlock("dry", {"level": 1}, "<", 0.3, [("pump", True, 0.0),
                                                              ("drain", True, 0.0)],
                              s.Policy.TRIP),),
        safe_values=(0.0, 20.0, 0.0),
    )
    return Gate(Envelope(compiled, engine))


def test_passing_command_is_written_as_is(engine):
    gate = tank_gate(engine)
    out = gate.admit(v(31, 30, 0), v(30, 30, 0), v(2.5), 0.1)
    np.testing.assert_array_equal(out.command, [31, 30, 0])
    assert out.safe == (False, False, False)
    assert not out.clamped


def test_clampable_command_is_clamped(engine):
    gate = tank_gate(engine)
    out = gate.admit(v(50, 30, 0), v(30, 30, 0), v(2.5), 0.1)
    np.testing.assert_array_equal(out.command, [32, 30, 0])
    assert out.clamped
    assert out.violations == ("inflow.rate",)


def test_a_tripping_interlock_stops_the_pump_at_once_and_keeps_the_others_in_control(engine):
    # Level below 0.3 m: the dry interlock forbids pumping. Stopping the pump is a move toward
    # the safe state, which no rate limit restrains: it stops in this write (before, its rate
    # limit refused the stop and it was sent to its plain safe value, 20 %, against the very
    # interlock). Inflow is clamped to its rate window, not sent to its safe value as well.
    gate = tank_gate(engine)
    out = gate.admit(v(100, 30, 0), v(30, 30, 0), v(0.25), 0.1)
    assert out.safe == (False, False, False)
    np.testing.assert_array_equal(out.command, [32, 0, 0])
    assert gate.admissible(out.command, v(30, 30, 0), v(0.25), 0.1)


def test_the_safe_state_the_gate_falls_back_to_obeys_the_interlocks(engine):
    # A NaN proposal leaves no repair: every actuator it touches takes the safe state, and
    # under the dry interlock that is pump 0, not its plain safe value 20.
    gate = tank_gate(engine)
    out = gate.admit(v(math.nan, math.nan, math.nan), v(30, 30, 0), v(0.25), 0.1)
    np.testing.assert_array_equal(out.command, [0, 0, 0])
    assert out.safe == (True, True, True)
    out = gate.admit(v(math.nan, math.nan, math.nan), v(30, 30, 0), v(2.5), 0.1)
    np.testing.assert_array_equal(out.command, [0, 20, 0])


def test_nan_command_gets_safe_values_only_where_nan(engine):
    gate = tank_gate(engine)
    out = gate.admit(v(math.nan, 30, 0), v(30, 30, 0), v(2.5), 0.1)
    assert out.safe == (True, False, False)
    assert out.command[1] == 30


def test_all_safe_is_the_last_resort(engine):
    gate = tank_gate(engine)
    out = gate.admit(v(math.nan, math.nan, math.nan), v(30, 30, 0), v(2.5), 0.1)
    np.testing.assert_array_equal(out.command, gate.safe_values)
    assert out.safe == (True, True, True)


def test_admissible_refuses_a_violation_on_a_non_safe_actuator(engine):
    gate = tank_gate(engine)
    assert not gate.admissible(v(100, 30, 0), v(30, 30, 0), v(2.5), 0.1)
    assert gate.admissible(v(0, 20, 0), v(100, 100, 1), v(2.5), 0.1)  # all safe


finite = st.floats(-1e3, 1e3)
anything = finite | st.sampled_from([math.nan, math.inf, -math.inf, 1e308])


@settings(max_examples=400, deadline=None)
@given(st.lists(anything, min_size=3, max_size=3), st.lists(finite, min_size=3, max_size=3),
       st.floats(-1, 6) | st.just(math.nan), st.floats(0.001, 2.0))
def test_whatever_is_chosen_the_gate_writes_an_admissible_command(chosen, prev, level, dt):
    for engine in ("cython", "python"):
        gate = tank_gate(engine)
        out = gate.admit(np.array(chosen), np.array(prev), v(level), dt)
        assert gate.admissible(out.command, np.array(prev), v(level), dt)
        for i, is_safe in enumerate(out.safe):
            if is_safe:
                assert out.command[i] == gate.safe_state(v(level))[i]
