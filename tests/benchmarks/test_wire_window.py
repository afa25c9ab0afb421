"""The wire bench takes the cycle figures of its read-load window only."""

from __future__ import annotations

import pytest

from benchmarks.wire import _window


def stats(at_s: list[float], lateness_ms: list[float]) -> dict[str, object]:
    return {"period_ms": 10.0, "timeline": {"at_s": at_s, "lateness_ms": lateness_ms}}


def test_only_the_cycles_inside_the_window_count() -> None:
    at = [0.01 * k for k in range(300)]
    late = [9.0] * 100 + [0.5] * 100 + [9.0] * 100  # heavy load before and after the window
    got = _window(stats(at, late), 1.0, 1.99)
    assert got["cycles"] == 100
    assert got["cycle_lateness_ms_p99"] == 0.5
    assert got["cycle_lateness_ms_max"] == 0.5
    assert got["cycles_skipped"] == 0


def test_missing_cycles_in_the_window_are_counted_as_skipped() -> None:
    at = [0.01 * k for k in range(100) if not 40 <= k < 50]
    got = _window(stats(at, [1.0] * len(at)), 0.0, 0.99)
    assert got["cycles"] == 90
    assert got["cycles_skipped"] == 9  # 99 periods in the window, 90 cycles seen


def test_a_window_without_cycles_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no cycle"):
        _window(stats([0.0, 0.01], [1.0, 1.0]), 5.0, 6.0)
