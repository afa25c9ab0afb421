"""The wire gate: the values the device will hold pass the envelope, after encoding."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway
import gateway.envelope
from gateway.adapters import codec
from gateway.envelope.gate import Gate
from gateway.envelope.wire import WireGate

TANK = "configs/water_tank.yaml"


@functools.cache
def wire_gate(engine: str, inflow_max: float = 100.0) -> WireGate:
    site = gateway.load_config(TANK)
    limits = tuple(replace(lim, max=inflow_max) if lim.actuator == "inflow_valve" else lim
                   for lim in site.envelope.limits)
    site = replace(site, envelope=replace(site.envelope, limits=limits))
    env = gateway.envelope.compile(site, engine)
    gate = Gate(env)
    return WireGate(site.actuators, gate, codec)


SENSORS = np.array([2.5, 0.01, 0.004, 1000.0])  # level, inflow_rate, demand, uptime_s


def test_representable_command_is_written_as_is(engine):
    wg = wire_gate(engine)
    out = wg.admit(np.array([31.0, 30.0, 0.0]), np.array([30.0, 30.0, 0.0]), SENSORS, 0.1)
    np.testing.assert_array_equal(out.values, [31.0, 30.0, 0.0])
    assert out.safe == (False, False, False)


def test_rounding_over_a_limit_takes_the_neighbour_below(engine):
    # uint16, scale 0.01: 99.995 rounds to raw 10000 = 100.00 %, over a 99.995 % limit.
    wg = wire_gate(engine, inflow_max=99.995)
    command = np.array([99.995, 30.0, 0.0])
    assert codec.wire_value(wg.tags[0], 99.995) > 99.995
    out = wg.admit(command, np.array([99.0, 30.0, 0.0]), SENSORS, 1.0)
    assert out.values[0] == codec.wire_value(wg.tags[0], 99.99)
    assert out.values[0] <= 99.995
    assert out.adjusted == (True, False, False)
    assert out.safe == (False, False, False)


def test_unencodable_command_writes_safe_values(engine):
    wg = wire_gate(engine)
    out = wg.admit(np.array([700.0, 30.0, 0.0]), np.array([30.0, 30.0, 0.0]), SENSORS, 0.1)
    np.testing.assert_array_equal(out.values, wg.gate.safe_state(SENSORS))
    assert out.safe == (True, True, True)


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 100.0), st.floats(0.0, 100.0), st.floats(0.0, 100.0),
       st.floats(0.0, 100.0), st.sampled_from([95.0, 99.995, 99.999, 100.0]))
def test_whatever_is_written_is_admissible_and_representable(inflow, pump, prev_in, prev_pump,
                                                             inflow_max):
    for engine in ("cython", "python"):
        wg = wire_gate(engine, inflow_max=inflow_max)
        previous = np.array([prev_in, prev_pump, 0.0])
        admitted = wg.gate.admit(np.array([inflow, pump, 0.0]), previous, SENSORS, 0.5)
        out = wg.admit(admitted.command, previous, SENSORS, 0.5)
        assert wg.gate.admissible(out.values, previous, SENSORS, 0.5)
        for tag, value in zip(wg.tags, out.values, strict=True):
            assert codec.wire_value(tag, float(value)) == value


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 12.345, 99.995, 100.0, 655.36, -1.0]),
                          st.sampled_from([0.0, 20.0, 33.333, 101.0]),
                          st.sampled_from([0.0, 1.0, 0.5])), min_size=1, max_size=12))
def test_a_gate_that_remembers_answers_as_a_fresh_one(commands):
    """The per-actuator memory of the last encoding changes nothing: a long-lived gate gives,
    command after command, what a new gate (nothing remembered) gives."""
    site = gateway.load_config(TANK)
    env = gateway.envelope.compile(site, "python")
    gate = Gate(env)
    kept = WireGate(site.actuators, gate, codec)
    previous = np.array([30.0, 30.0, 0.0])
    for command in commands:
        c = np.array(command)
        got = kept.admit(c, previous, SENSORS, 10.0)
        want = WireGate(site.actuators, gate, codec).admit(c, previous, SENSORS, 10.0)
        np.testing.assert_array_equal(got.values, want.values)
        assert (got.safe, got.adjusted) == (want.safe, want.adjusted)


def test_the_supervisors_step_returns_the_command_as_written(engine):
    # The supervisor's decision is the last word on what is written: with the runtime's codec
    # its command is the value after encoding, checked again as such.
    from gateway.supervisor.core import Supervisor
    from gateway.supervisor.decision import Snapshot
    from gateway.supervisor.modes import Mode

    base = gateway.load_config(TANK)
    limits = tuple(replace(lim, max=99.995) if lim.actuator == "inflow_valve" else lim
                   for lim in base.envelope.limits)
    site = replace(base, envelope=replace(base.envelope, limits=limits))
    env = gateway.envelope.compile(site, engine)
    initial = np.array([99.0, 30.0, 0.0])
    snapshot = Snapshot(SENSORS, np.ones(4, dtype=np.bool_), np.zeros(4))

    def first_command(with_codec: bool) -> float:
        sup = Supervisor(site, env, initial, 0.0, codec=codec if with_codec else None)
        assert sup.mode is Mode.MANUAL
        sup.set_operator_setpoint(0, 99.995)
        return float(sup.step(snapshot, None, 10.0).command[0])

    assert first_command(False) == 99.995  # the envelope's own answer: on its limit
    written = first_command(True)
    assert written == codec.wire_value(site.actuators[0], 99.99)  # what the register holds
    assert codec.wire_value(site.actuators[0], written) == written <= 99.995
