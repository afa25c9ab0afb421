"""Tests for gateway.supervisor.window (virtual time only)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.supervisor.window import (
    FAULT_NOW_NOT_FINITE,
    FAULT_TIME_WENT_BACKWARDS,
    RateWindow,
)


def test_catches_burst():
    window = RateWindow(window_s=10.0, max_events=3)
    assert [window.record(t, flagged=True) for t in (0.0, 1.0, 2.0)] == [False] * 3
    assert window.record(3.0, flagged=True) is True  # 4 > 3
    assert window.count == 4
    assert window.exceeded


def test_max_events_zero_alarms_on_first_flag():
    window = RateWindow(window_s=1.0, max_events=0)
    assert window.record(0.0, flagged=False) is False
    assert window.record(0.1, flagged=True) is True


def test_no_catch_when_events_are_spread_out():
    # One flagged cycle every 4 s, plus unflagged cycles every 0.5 s: a 10 s window never
    # holds more than 3 flags (at t, t-4, t-8).
    window = RateWindow(window_s=10.0, max_events=3)
    for i in range(2000):
        t = 0.5 * i
        assert window.record(t, flagged=(i % 8 == 0)) is False
        assert window.count <= 3


def test_window_expiry_is_half_open():
    window = RateWindow(window_s=10.0, max_events=3)
    for t in (0.0, 1.0, 2.0, 3.0):
        window.record(t, flagged=True)
    assert window.exceeded
    # Window (0, 10]: the flag at exactly t=0 has left, those at 1, 2, 3 remain.
    assert window.record(10.0, flagged=False) is False
    assert (window.count, window.total) == (3, 4)
    # Window (3.5, 13.5]: no flag left, two unflagged cycles (t=10 and this one).
    assert window.record(13.5, flagged=False) is False
    assert (window.count, window.total) == (0, 2)
    assert window.fraction == 0.0


def test_fraction_of_cycles_flagged():
    window = RateWindow(window_s=100.0, max_events=50)
    for i in range(10):
        window.record(float(i), flagged=i in (2, 5, 7))
    assert window.count == 3
    assert window.total == 10
    assert window.fraction == pytest.approx(0.3)


def test_fraction_is_zero_when_empty():
    window = RateWindow(window_s=1.0, max_events=1)
    assert (window.count, window.total, window.fraction) == (0, 0, 0.0)


def test_time_going_backwards_is_clamped_and_reported():
    window = RateWindow(window_s=10.0, max_events=5)
    window.record(5.0, flagged=False)
    assert window.last_fault is None
    window.record(3.0, flagged=True)  # clock stepped back: counted at t=5
    assert window.last_fault == FAULT_TIME_WENT_BACKWARDS
    assert window.count == 1
    window.record(6.0, flagged=False)
    assert window.last_fault is None
    # Had it been stored at t=3 it would be gone by 13.0; stored at 5, it stays until 15.
    window.record(14.9, flagged=False)
    assert window.count == 1
    window.record(15.0, flagged=False)
    assert window.count == 0


def test_non_finite_time_uses_last_time():
    window = RateWindow(window_s=10.0, max_events=5)
    window.record(math.nan, flagged=True)  # nothing to clamp to yet: not recorded
    assert window.last_fault == FAULT_NOW_NOT_FINITE
    assert window.total == 0
    window.record(2.0, flagged=False)
    window.record(math.inf, flagged=True)  # counted at t=2
    assert window.last_fault == FAULT_NOW_NOT_FINITE
    assert (window.count, window.total) == (1, 2)
    window.record(12.0, flagged=False)
    assert (window.count, window.total) == (0, 1)


def test_memory_bounded_by_window():
    window = RateWindow(window_s=1.0, max_events=1000)
    for i in range(100_000):  # 100 Hz for 1000 s
        window.record(i * 0.01, flagged=(i % 3 == 0))
    assert window.n_entries <= 101
    assert window.total <= 101


def test_stalled_clock_costs_one_entry():
    window = RateWindow(window_s=1.0, max_events=10)
    for _ in range(10_000):
        window.record(7.0, flagged=True)
    assert window.n_entries == 1
    assert (window.count, window.total) == (10_000, 10_000)


def test_large_clock_small_window_keeps_current_cycle():
    # 1e20 - 1e-3 rounds to 1e20; the cycle just recorded must still count.
    window = RateWindow(window_s=1e-3, max_events=0)
    assert window.record(1e20, flagged=True) is True
    assert window.count == 1


def test_reset():
    window = RateWindow(window_s=10.0, max_events=0)
    window.record(5.0, flagged=True)
    window.record(4.0, flagged=True)
    window.reset()
    assert (window.count, window.total, window.n_entries, window.last_fault) == (0, 0, 0, None)
    assert window.record(1.0, flagged=False) is False  # earlier than before reset: no fault
    assert window.last_fault is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window_s": 0.0, "max_events": 1}, "window_s"),
        ({"window_s": -1.0, "max_events": 1}, "window_s"),
        ({"window_s": math.nan, "max_events": 1}, "window_s"),
        ({"window_s": math.inf, "max_events": 1}, "window_s"),
        ({"window_s": "10", "max_events": 1}, "window_s"),
        ({"window_s": 10.0, "max_events": -1}, "max_events"),
        ({"window_s": 10.0, "max_events": 1.5}, "max_events"),
        ({"window_s": 10.0, "max_events": True}, "max_events"),
    ],
)
def test_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        RateWindow(**kwargs)


@given(
    window_s=st.floats(min_value=0.01, max_value=100.0),
    max_events=st.integers(min_value=0, max_value=20),
    cycles=st.lists(
        st.tuples(st.floats(min_value=-5.0, max_value=50.0), st.booleans()),
        max_size=80,
    ),
)
def test_matches_brute_force_count(window_s, max_events, cycles):
    window = RateWindow(window_s=window_s, max_events=max_events)
    history: list[tuple[float, bool]] = []
    last = None
    for now_s, flagged in cycles:
        effective = now_s if last is None or now_s >= last else last
        last = effective
        history.append((effective, flagged))
        result = window.record(now_s, flagged)
        inside = [f for t, f in history if effective - t < window_s]
        assert window.total == len(inside)
        assert window.count == sum(inside)
        assert result == (sum(inside) > max_events)
        assert 0.0 <= window.fraction <= 1.0
