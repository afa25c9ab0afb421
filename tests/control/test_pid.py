"""Tests for gateway.control.pid.

Golden values are worked out by hand in each test from the discrete formulas
(e = s*(sp - pv), P = kp*e, I += ki*e*dt, D = -s*kd*rate), never by calling the code.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.control.base import (
    FAULT_APPLIED_NOT_FINITE,
    FAULT_DT_NOT_FINITE,
    FAULT_DT_NOT_POSITIVE,
    FAULT_MEASUREMENT_NOT_FINITE,
    FAULT_OVERFLOW,
    ActuatorController,
)
from gateway.control.pid import Pid, PidConfig

if TYPE_CHECKING:
    from collections.abc import Callable

DT = 0.1


def make(
    kp: float = 0.0,
    ki: float = 0.0,
    kd: float = 0.0,
    setpoint: float = 10.0,
    output_min: float = -100.0,
    output_max: float = 100.0,
    reverse: bool = False,
    derivative_filter_s: float = 0.0,
    initial_output: float = 0.0,
) -> Pid:
    config = PidConfig(
        kp=kp,
        ki=ki,
        kd=kd,
        setpoint=setpoint,
        output_min=output_min,
        output_max=output_max,
        reverse=reverse,
        derivative_filter_s=derivative_filter_s,
    )
    return Pid(config, initial_output=initial_output)


def test_satisfies_actuator_controller_protocol():
    controller: ActuatorController = make(kp=1.0)  # checked statically by mypy
    assert controller.last_fault is None


# --- golden values -----------------------------------------------------------------------


def test_p_only_golden():
    pid = make(kp=2.0)
    # e = 10 - 7 = 3 -> P = 2*3
    assert pid.update(7.0, DT) == pytest.approx(6.0, abs=1e-12)
    # e = 10 - 9 = 1 -> P = 2*1
    assert pid.update(9.0, DT) == pytest.approx(2.0, abs=1e-12)
    # e = 10 - 12 = -2 -> P = -4
    assert pid.update(12.0, DT) == pytest.approx(-4.0, abs=1e-12)


def test_p_only_reverse_action_golden():
    pid = make(kp=2.0, reverse=True)
    # reverse: e = pv - sp = 13 - 10 = 3 -> output rises when the level is above setpoint
    assert pid.update(13.0, DT) == pytest.approx(6.0, abs=1e-12)
    # e = 8 - 10 = -2 -> -4
    assert pid.update(8.0, DT) == pytest.approx(-4.0, abs=1e-12)


def test_initial_output_seeds_the_integral():
    pid = make(kp=2.0, initial_output=20.0)
    # I = 20 (seed), P = 2*(10 - 7) = 6
    assert pid.update(7.0, DT) == pytest.approx(26.0, abs=1e-12)


def test_pi_golden():
    pid = make(kp=2.0, ki=0.5)
    # e=3: I = 0 + 0.5*3*0.1 = 0.15; out = 2*3 + 0.15
    assert pid.update(7.0, DT) == pytest.approx(6.15, abs=1e-12)
    # e=2: I = 0.15 + 0.5*2*0.1 = 0.25; out = 4 + 0.25
    assert pid.update(8.0, DT) == pytest.approx(4.25, abs=1e-12)
    # e=-1: I = 0.25 - 0.5*1*0.1 = 0.20; out = -2 + 0.20
    assert pid.update(11.0, DT) == pytest.approx(-1.8, abs=1e-12)
    assert pid.integral == pytest.approx(0.20, abs=1e-12)


def test_pid_golden():
    pid = make(kp=2.0, ki=0.5, kd=0.4)
    # step 1: e=3, I=0.15, no history -> rate 0, D=0; out = 6 + 0.15
    assert pid.update(7.0, DT) == pytest.approx(6.15, abs=1e-12)
    # step 2: e=2, I=0.25, rate=(8-7)/0.1=10, D=-0.4*10=-4; out = 4 + 0.25 - 4
    assert pid.update(8.0, DT) == pytest.approx(0.25, abs=1e-12)
    # step 3: e=1.5, I=0.25+0.5*1.5*0.1=0.325, rate=(8.5-8)/0.1=5, D=-2; out = 3 + 0.325 - 2
    assert pid.update(8.5, DT) == pytest.approx(1.325, abs=1e-12)


def test_pid_filtered_derivative_golden():
    # Tf = 0.3 s, dt = 0.1 s -> filter coefficient a = dt/(Tf+dt) = 0.25
    pid = make(kp=2.0, ki=0.5, kd=0.4, derivative_filter_s=0.3)
    assert pid.update(7.0, DT) == pytest.approx(6.15, abs=1e-12)
    # raw rate 10; filtered = 0 + 0.25*(10 - 0) = 2.5; D = -0.4*2.5 = -1.0; out = 4 + 0.25 - 1
    assert pid.update(8.0, DT) == pytest.approx(3.25, abs=1e-12)
    # raw rate 5; filtered = 2.5 + 0.25*(5 - 2.5) = 3.125; D = -1.25; out = 3 + 0.325 - 1.25
    assert pid.update(8.5, DT) == pytest.approx(2.075, abs=1e-12)


def test_pid_reverse_golden():
    pid = make(kp=2.0, ki=0.5, kd=0.4, reverse=True)
    # e = 13 - 10 = 3: I = 0.15; out = 6.15
    assert pid.update(13.0, DT) == pytest.approx(6.15, abs=1e-12)
    # e = 2: I = 0.25; rate = (12-13)/0.1 = -10; D = -s*kd*rate = -(-1)*0.4*(-10) = -4
    # out = 4 + 0.25 - 4: the level falling towards setpoint backs the pump off
    assert pid.update(12.0, DT) == pytest.approx(0.25, abs=1e-12)


def test_output_clamped_to_limits():
    pid = make(kp=10.0, output_min=0.0, output_max=50.0)
    assert pid.update(0.0, DT) == 50.0  # P = 100
    assert pid.update(20.0, DT) == 0.0  # P = -100


# --- closed loop ---------------------------------------------------------------------------


def test_step_response_settles_on_first_order_plant():
    # Plant: tau * dy/dt = -y + gain * u, tau = 5 s, gain = 2, explicit Euler at dt = 0.1 s.
    tau_s, gain = 5.0, 2.0
    pid = make(
        kp=0.8,
        ki=0.25,
        kd=0.5,
        derivative_filter_s=0.5,
        setpoint=50.0,
        output_min=0.0,
        output_max=100.0,
    )
    y = 20.0
    trace = []
    for _ in range(int(120.0 / DT)):
        u = pid.update(y, DT)
        assert 0.0 <= u <= 100.0
        y += DT / tau_s * (-y + gain * u)
        trace.append(y)
    assert max(trace) < 50.0 * 1.05  # overshoot under 5 %
    settled = trace[int(40.0 / DT) :]  # within 1 % from 40 s on
    assert all(abs(v - 50.0) < 0.5 for v in settled)
    assert trace[-1] == pytest.approx(50.0, abs=1e-6)  # integral action: no offset


def test_reverse_action_holds_tank_level():
    # Tank: area * dh/dt = inflow - pump_gain * u; the outflow pump must run faster when the
    # level is above setpoint, i.e. reverse action.
    area_m2, pump_gain, inflow = 2.0, 0.05, 1.5
    pid = make(kp=5.0, ki=0.5, setpoint=3.0, output_min=0.0, output_max=100.0, reverse=True)
    level_m = 4.0
    for _ in range(int(300.0 / DT)):
        u = pid.update(level_m, DT)
        level_m += DT / area_m2 * (inflow - pump_gain * u)
    assert level_m == pytest.approx(3.0, abs=1e-3)
    assert pid.output == pytest.approx(inflow / pump_gain, abs=1e-2)


# --- anti-windup ---------------------------------------------------------------------------


def naive_pi(
    kp: float, ki: float, setpoint: float, lo: float, hi: float
) -> Callable[[float, float], float]:
    """A PI with an unconditionally integrating integrator, for comparison."""
    integral = 0.0

    def step(pv: float, dt: float) -> float:
        nonlocal integral
        e = setpoint - pv
        integral += ki * e * dt
        return min(max(kp * e + integral, lo), hi)

    return step


@pytest.mark.parametrize("reverse", [False, True])
def test_anti_windup_leaves_saturation_quickly(reverse):
    kp, ki, sp, lo, hi = 0.1, 0.2, 50.0, 0.0, 10.0
    pid = make(kp=kp, ki=ki, setpoint=sp, output_min=lo, output_max=hi, reverse=reverse)
    s = -1.0 if reverse else 1.0
    naive = naive_pi(s * kp, s * ki, sp, lo, hi)  # negated gains = reverse action
    # 100 s with the measurement stuck 50 units on the "more output" side: P = 5 and the
    # integral reach the limit within a few seconds, then the output stays saturated.
    stuck = sp - s * 50.0
    outputs = [(pid.update(stuck, DT), naive(stuck, DT)) for _ in range(1000)]
    assert all(pair == (hi, hi) for pair in outputs[100:])
    # Conditional integration stopped the integrator near where the output hit the limit.
    assert pid.integral <= hi
    # Error changes sign (5 units on the other side): count cycles until each leaves `hi`.
    over = sp + s * 5.0

    def cycles_to_leave(step: Callable[[float, float], float]) -> float:
        for n in range(1, 100_000):
            if step(over, DT) < hi:
                return n
        return math.inf

    assert cycles_to_leave(lambda pv, dt: pid.update(pv, dt)) <= 2
    # The naive integrator wound up to ~0.2*50*0.1*1000 = 1000 and needs ~10,000 cycles.
    assert cycles_to_leave(naive) > 1000


def test_integrator_still_moves_out_of_saturation():
    # Saturated high by P alone, error positive but falling: integration that would deepen
    # the saturation is skipped, so the integral does not grow.
    pid = make(kp=10.0, ki=1.0, setpoint=10.0, output_min=0.0, output_max=20.0)
    for _ in range(100):
        pid.update(0.0, DT)
    assert pid.integral == 0.0
    # Negative error while still saturated by the previous integral: integration proceeds.
    pid.reset(20.0)
    # e = -1: P = -10, I = 20 - 0.1 = 19.9, out = 9.9
    assert pid.update(11.0, DT) == pytest.approx(9.9, abs=1e-12)


# --- bumpless transfer ---------------------------------------------------------------------


def test_bumpless_takeover_after_tracking():
    pid = make(
        kp=2.0,
        ki=0.1,
        kd=0.3,
        derivative_filter_s=0.2,
        setpoint=45.0,
        output_min=0.0,
        output_max=100.0,
    )
    untracked = make(
        kp=2.0,
        ki=0.1,
        kd=0.3,
        derivative_filter_s=0.2,
        setpoint=45.0,
        output_min=0.0,
        output_max=100.0,
    )

    def pv(k: int) -> float:
        return 45.0 + 2.0 * math.sin(0.002 * k)  # moves at most 0.004 per cycle

    # Hot standby: the AI is in control and 37.0 is what reaches the actuator every cycle.
    for k in range(2000):
        pid.update(pv(k), DT)
        pid.track(37.0)
        untracked.update(pv(k), DT)
    assert pid.output == 37.0
    # Takeover: the first controlled output starts from 37.0. The allowed difference is one
    # cycle's P change (2*0.004) + one integration step (0.1*2*0.1) + a D change (tiny).
    first = pid.update(pv(2000), DT)
    assert first == pytest.approx(37.0, abs=0.05)
    assert pid.last_fault is None
    # Without tracking, the standby output is somewhere else entirely: tracking mattered.
    assert abs(untracked.update(pv(2000), DT) - 37.0) > 5.0


def test_bumpless_contract_exact():
    # kd = 0 so the contract reduces to: out = a + kp*(e_new - e_old) + ki*e_new*dt.
    pid = make(kp=2.0, ki=0.5, setpoint=10.0)
    pid.update(8.0, DT)  # e_old = 2
    pid.track(37.0)
    # e_new = 10 - 8.5 = 1.5: 37 + 2*(1.5 - 2) + 0.5*1.5*0.1 = 36.075
    assert pid.update(8.5, DT) == pytest.approx(36.075, abs=1e-12)


def test_track_with_own_output_changes_nothing():
    pid = make(kp=2.0, ki=0.5, kd=0.4, setpoint=10.0)
    reference = make(kp=2.0, ki=0.5, kd=0.4, setpoint=10.0)
    for pv in (7.0, 8.0, 8.5, 9.0, 9.7, 10.1, 10.0):
        out = pid.update(pv, DT)
        pid.track(out)
        assert out == pytest.approx(reference.update(pv, DT), abs=1e-9)


def test_track_clamps_applied_to_limits():
    pid = make(kp=1.0, setpoint=10.0, output_min=0.0, output_max=50.0)
    pid.update(10.0, DT)
    pid.track(80.0)  # the AI applied more than this controller may ever output
    assert pid.output == 50.0
    assert pid.update(10.0, DT) == 50.0  # e = 0: starts from the nearest limit


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_track_rejects_non_finite(bad):
    pid = make(kp=1.0, ki=1.0)
    pid.update(9.0, DT)
    integral, output = pid.integral, pid.output
    pid.track(bad)
    assert pid.last_fault == FAULT_APPLIED_NOT_FINITE
    assert (pid.integral, pid.output) == (integral, output)
    pid.update(9.0, DT)
    assert pid.last_fault is None


# --- setpoint, reset -----------------------------------------------------------------------


def test_setpoint_step_causes_no_derivative_kick():
    pid = make(kp=1.0, kd=5.0, setpoint=10.0)
    for _ in range(5):
        assert pid.update(10.0, DT) == 0.0
    pid.set_setpoint(20.0)
    assert pid.setpoint == 20.0
    # Only P moves: 1*(20 - 10) = 10. Derivative on error would add 5*(10/0.1) = 500.
    assert pid.update(10.0, DT) == pytest.approx(10.0, abs=1e-12)


def test_set_setpoint_rejects_non_finite():
    pid = make(kp=1.0)
    with pytest.raises(ValueError, match="value"):
        pid.set_setpoint(math.nan)
    assert pid.setpoint == 10.0


def test_reset_restarts_from_output():
    pid = make(kp=2.0, ki=0.5, kd=0.4)
    for pv in (1.0, 3.0, 2.0):
        pid.update(pv, DT)
    pid.update(math.nan, DT)
    pid.reset(30.0)
    assert (pid.integral, pid.output, pid.last_fault) == (30.0, 30.0, None)
    # No derivative history after reset: e=3, I=30.15, D=0 -> 6 + 30.15
    assert pid.update(7.0, DT) == pytest.approx(36.15, abs=1e-12)


def test_reset_clamps_and_validates():
    pid = make(kp=1.0, output_min=0.0, output_max=10.0)
    pid.reset(99.0)
    assert pid.output == 10.0
    with pytest.raises(ValueError, match="output"):
        pid.reset(math.inf)
    with pytest.raises(ValueError, match="`initial_output`"):
        make(kp=1.0, initial_output=math.nan)


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_measurement_holds_output(bad):
    pid = make(kp=2.0, ki=0.5)
    held = pid.update(7.0, DT)
    integral = pid.integral
    assert pid.update(bad, DT) == held
    assert pid.last_fault == FAULT_MEASUREMENT_NOT_FINITE
    assert pid.integral == integral
    assert math.isfinite(pid.integral)
    pid.update(7.0, DT)
    assert pid.last_fault is None


@pytest.mark.parametrize(
    ("dt_s", "reason"),
    [
        (0.0, FAULT_DT_NOT_POSITIVE),
        (-0.1, FAULT_DT_NOT_POSITIVE),
        (math.nan, FAULT_DT_NOT_FINITE),
        (math.inf, FAULT_DT_NOT_FINITE),
    ],
)
def test_bad_dt_holds_output(dt_s, reason):
    pid = make(kp=2.0, ki=0.5, kd=0.4)
    held = pid.update(7.0, DT)
    integral = pid.integral
    assert pid.update(9.0, dt_s) == held
    assert pid.last_fault == reason
    assert pid.integral == integral


def test_no_derivative_spike_after_fault():
    pid = make(kp=1.0, kd=1.0, setpoint=10.0)
    pid.update(10.0, DT)
    pid.update(10.0, DT)  # rate 0
    pid.update(math.nan, DT)
    # Differencing 20 against 10 over one dt would give D = -1*100 = -100. The history is
    # stale after the fault, so the last rate (0) is reused: out = P = 1*(10 - 20) = -10.
    assert pid.update(20.0, DT) == pytest.approx(-10.0, abs=1e-12)


def test_overflow_holds_output():
    pid = make(kp=1e300, setpoint=0.0)
    held = pid.update(0.0, DT)
    assert pid.update(-1e10, DT) == held  # P = 1e310 overflows
    assert pid.last_fault == FAULT_OVERFLOW
    assert math.isfinite(pid.integral)


def test_large_rate_ignored_when_kd_is_zero():
    # (1 - 0) / 1e-320 overflows, but without a D term that must not be a fault.
    pid = make(kp=1.0, setpoint=0.0)
    pid.update(0.0, DT)
    assert pid.update(1.0, 1e-320) == pytest.approx(-1.0)
    assert pid.last_fault is None


# --- configuration -------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "kp": 1.0,
    "ki": 0.1,
    "kd": 0.0,
    "setpoint": 5.0,
    "output_min": 0.0,
    "output_max": 100.0,
    "reverse": False,
    "derivative_filter_s": 0.0,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kp", math.nan),
        ("ki", math.inf),
        ("kd", -math.inf),
        ("setpoint", math.nan),
        ("output_min", -math.inf),
        ("output_max", math.inf),
        ("derivative_filter_s", math.nan),
        ("kp", -1.0),
        ("ki", -0.1),
        ("kd", -0.5),
        ("derivative_filter_s", -1.0),
        ("output_min", 101.0),
        ("kp", "1.0"),
        ("kp", True),
        ("reverse", "yes"),
        ("reverse", 1),
    ],
)
def test_config_rejects_bad_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        PidConfig(**{**GOOD, field: value})


def test_config_accepts_equal_limits_and_is_frozen():
    config = PidConfig(**{**GOOD, "output_min": 7.0, "output_max": 7.0})
    assert Pid(config).update(0.0, DT) == 7.0
    with pytest.raises(AttributeError):
        config.kp = 2.0  # type: ignore[misc]


# --- properties ----------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
gain = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@st.composite
def configs(draw):
    a = draw(finite)
    b = draw(finite)
    return PidConfig(
        kp=draw(gain),
        ki=draw(gain),
        kd=draw(gain),
        setpoint=draw(finite),
        output_min=min(a, b),
        output_max=max(a, b),
        reverse=draw(st.booleans()),
        derivative_filter_s=draw(st.floats(min_value=0.0, max_value=100.0)),
    )


@settings(max_examples=300)
@given(
    config=configs(),
    steps=st.lists(
        st.tuples(finite, st.floats(min_value=1e-6, max_value=10.0), st.none() | finite),
        max_size=30,
    ),
)
def test_output_always_finite_and_within_limits(config, steps):
    pid = Pid(config)
    for measurement, dt_s, applied in steps:
        out = pid.update(measurement, dt_s)
        assert math.isfinite(out)
        assert config.output_min <= out <= config.output_max
        assert math.isfinite(pid.integral)
        if applied is not None:
            pid.track(applied)
            assert math.isfinite(pid.integral)


any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300)
@given(config=configs(), steps=st.lists(st.tuples(any_float, any_float, any_float), max_size=30))
def test_never_raises_on_any_input(config, steps):
    pid = Pid(config)
    for measurement, dt_s, applied in steps:
        out = pid.update(measurement, dt_s)
        assert config.output_min <= out <= config.output_max
        pid.track(applied)
        assert math.isfinite(pid.integral)
