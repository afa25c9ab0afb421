from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.runtime.external import ExternalCommands
from gateway.runtime.schedule import CycleSchedule


def test_schedule_is_absolute():
    s = CycleSchedule(0.1, 10.0)
    assert s.deadline_s == 10.0
    assert s.advance(10.03) == pytest.approx(10.1)  # jitter does not shift the next deadline
    assert s.advance(10.1) == pytest.approx(10.2)
    assert s.lateness_s(10.25) == pytest.approx(0.05)
    assert s.lateness_s(10.15) == 0.0


def test_overrun_skips_missed_cycles_instead_of_bursting():
    s = CycleSchedule(0.1, 0.0)
    # Cycle 0 ended at 0.35 s: cycles 1 (0.1) and 2 (0.2) are more than a period late and
    # are skipped; cycle 3 (0.3) runs at once, 0.05 s late, instead of a burst of three.
    nxt = s.advance(0.35)
    assert nxt == pytest.approx(0.3)
    assert s.skipped == 2
    assert s.lateness_s(0.35) == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_period(bad):
    with pytest.raises(ValueError, match="period_s"):
        CycleSchedule(bad, 0.0)


def test_external_commands():
    ext = ExternalCommands(("a", "b", "c"))
    applied = np.array([1.0, 2.0, 3.0])
    assert ext.proposal(applied) is None
    ext.write({"b": 20.0}, 5.0)
    p = ext.proposal(applied)
    assert p is not None
    np.testing.assert_array_equal(p.values, [1.0, 20.0, 3.0])  # unwritten ones hold
    assert p.produced_at_s == 5.0
    ext.write({"a": 10.0}, 6.0)
    p = ext.proposal(applied)
    assert p is not None
    np.testing.assert_array_equal(p.values, [10.0, 20.0, 3.0])
    assert p.produced_at_s == 6.0
    with pytest.raises(KeyError):
        ext.write({"nope": 1.0}, 7.0)
