"""When control cycles run: on an absolute schedule, never in bursts.

Deadlines are ``start + k * period``, so jitter in one cycle does not shift the next ones.
After an overrun longer than a period, the missed cycles are skipped (counted, not run back to
back): a burst of catch-up writes is worse for equipment than one late cycle.
"""

from __future__ import annotations

import math


class CycleSchedule:
    """Absolute cycle deadlines in the caller's clock (seconds)."""

    def __init__(self, period_s: float, start_s: float) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be finite and > 0, not {period_s}")
        self.period_s = period_s
        self.start_s = start_s
        self.index = 0
        self.skipped = 0

    @property
    def deadline_s(self) -> float:
        """When the current cycle is due."""
        return self.start_s + self.index * self.period_s

    def lateness_s(self, now_s: float) -> float:
        """How late ``now_s`` is for the current cycle (0 when early or on time)."""
        return max(0.0, now_s - self.deadline_s)

    def advance(self, now_s: float) -> float:
        """Finish the current cycle at ``now_s``; return the next deadline. Cycles whose
        deadline has already passed by a whole period are skipped and counted."""
        self.index += 1
        behind = math.floor((now_s - self.deadline_s) / self.period_s)
        if behind >= 1:
            self.index += behind
            self.skipped += behind
        return self.deadline_s
