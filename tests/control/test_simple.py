"""Tests for gateway.control.simple."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.control.base import FAULT_APPLIED_NOT_FINITE, ActuatorController
from gateway.control.simple import FixedValue, HoldLast


def test_both_satisfy_actuator_controller_protocol():
    controllers: list[ActuatorController] = [FixedValue(1.0), HoldLast(2.0)]  # mypy checks
    assert [c.last_fault for c in controllers] == [None, None]


# --- FixedValue ----------------------------------------------------------------------------


def test_fixed_value_ignores_everything():
    controller = FixedValue(40.0)
    assert controller.update(12.3, 0.1) == 40.0
    assert controller.update(math.nan, -1.0) == 40.0  # inputs unused, so not a fault
    assert controller.last_fault is None
    controller.track(99.0)
    controller.track(math.nan)
    controller.reset(5.0)
    assert controller.update(0.0, 0.1) == 40.0
    assert controller.last_fault is None
    assert controller.value == 40.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "40", True, None])
def test_fixed_value_rejects_bad_value(bad):
    with pytest.raises(ValueError, match="`value`"):
        FixedValue(bad)


def test_fixed_value_reset_rejects_non_finite():
    with pytest.raises(ValueError, match="`output`"):
        FixedValue(1.0).reset(math.nan)


# --- HoldLast ------------------------------------------------------------------------------


def test_hold_last_starts_at_initial_then_follows_track():
    controller = HoldLast(10.0)
    assert controller.update(5.0, 0.1) == 10.0
    controller.track(12.5)
    assert controller.update(5.0, 0.1) == 12.5
    assert controller.update(math.nan, 0.0) == 12.5  # inputs unused
    assert controller.last_fault is None
    assert controller.held == 12.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_hold_last_ignores_non_finite_track(bad):
    controller = HoldLast(10.0)
    controller.track(11.0)
    controller.track(bad)
    assert controller.last_fault == FAULT_APPLIED_NOT_FINITE
    assert controller.update(0.0, 0.1) == 11.0
    assert controller.last_fault is None  # update clears it


def test_hold_last_reset():
    controller = HoldLast(10.0)
    controller.track(math.nan)
    controller.reset(3.0)
    assert controller.last_fault is None
    assert controller.update(0.0, 0.1) == 3.0
    with pytest.raises(ValueError, match="`output`"):
        controller.reset(math.inf)
    assert controller.held == 3.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1", False])
def test_hold_last_rejects_bad_initial(bad):
    with pytest.raises(ValueError, match="`initial`"):
        HoldLast(bad)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_hold_last_output_is_last_finite_tracked_value(values):
    controller = HoldLast(1.0)
    expected = 1.0
    for value in values:
        controller.track(value)
        if math.isfinite(value):
            expected = value
        out = controller.update(0.0, 0.1)
        assert out == expected
        assert math.isfinite(out)
