"""Rate of flagged cycles in a sliding time window, with injected time.

Used for "more than N rejected AI commands in the last T seconds" style rules: each cycle the
supervisor records whether the cycle was flagged; the window answers whether the count of
flagged cycles in the last ``window_s`` seconds exceeds ``max_events``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["FAULT_NOW_NOT_FINITE", "FAULT_TIME_WENT_BACKWARDS", "RateWindow"]

# Values of `RateWindow.last_fault`.
FAULT_TIME_WENT_BACKWARDS: Final = "now_s went backwards"
FAULT_NOW_NOT_FINITE: Final = "now_s not finite"

# Bound once at import: record() runs every cycle.
_isfinite = math.isfinite


class RateWindow:
    """Counts flagged cycles over the half-open time window ``(now_s - window_s, now_s]``.

    ``window_s`` is in seconds (finite, > 0); ``max_events`` (int, >= 0) is the largest count
    that is still acceptable: :meth:`record` returns True when the count *exceeds* it, so
    ``max_events=0`` alarms on the first flagged cycle. Raises ``ValueError`` naming the
    argument otherwise.

    Time is whatever monotonic clock the caller injects, in seconds. If ``now_s`` is earlier
    than the latest time recorded, it is clamped to that time and :attr:`last_fault` says so;
    if it is not finite, the latest recorded time is used in the same way (and with no time
    recorded yet, the cycle is not recorded at all). A cycle recorded exactly at
    ``now_s - window_s`` has already left the window.

    Memory: cycles sharing a timestamp are merged into one entry, and entries older than the
    window are dropped on every call, so the memory held is proportional to the number of
    distinct timestamps within one window (at most cycle rate times ``window_s``), and a
    stalled clock costs one entry, not one per cycle.
    """

    __slots__ = (
        "_flagged",
        "_last_fault",
        "_last_now_s",
        "_max_events",
        "_times_s",
        "_total",
        "_window_flagged",
        "_window_s",
        "_window_total",
    )

    _window_s: float
    _max_events: int
    # Parallel deques, one entry per distinct timestamp: time, cycles, flagged cycles.
    _times_s: deque[float]
    _total: deque[int]
    _flagged: deque[int]
    _window_total: int
    _window_flagged: int
    _last_now_s: float | None
    _last_fault: str | None

    def __init__(self, window_s: float, max_events: int) -> None:
        if isinstance(window_s, bool) or not isinstance(window_s, int | float):
            raise ValueError(f"`window_s` must be a number, got {type(window_s).__name__}")
        if not math.isfinite(window_s) or window_s <= 0.0:
            raise ValueError(f"`window_s` must be finite and > 0, got {window_s!r}")
        if isinstance(max_events, bool) or not isinstance(max_events, int):
            raise ValueError(f"`max_events` must be an int, got {type(max_events).__name__}")
        if max_events < 0:
            raise ValueError(f"`max_events` must be >= 0, got {max_events!r}")
        self._window_s = float(window_s)
        self._max_events = max_events
        self._times_s = deque()
        self._total = deque()
        self._flagged = deque()
        self.reset()

    @property
    def window_s(self) -> float:
        """Length of the window, in seconds."""
        return self._window_s

    @property
    def max_events(self) -> int:
        """Largest acceptable count of flagged cycles in the window."""
        return self._max_events

    @property
    def count(self) -> int:
        """Flagged cycles in the window as of the latest :meth:`record`."""
        return self._window_flagged

    @property
    def total(self) -> int:
        """All cycles (flagged or not) in the window as of the latest :meth:`record`."""
        return self._window_total

    @property
    def fraction(self) -> float:
        """``count / total`` in [0, 1]; 0.0 when no cycle is in the window."""
        total = self._window_total
        return self._window_flagged / total if total else 0.0

    @property
    def exceeded(self) -> bool:
        """True when :attr:`count` exceeds ``max_events`` (what :meth:`record` returned)."""
        return self._window_flagged > self._max_events

    @property
    def n_entries(self) -> int:
        """Timestamp entries held (the memory in use; cycles at one timestamp share one)."""
        return len(self._times_s)

    @property
    def last_fault(self) -> str | None:
        """A ``FAULT_*`` string if the latest :meth:`record` had to fix its ``now_s``, else None."""
        return self._last_fault

    def record(self, now_s: float, flagged: bool) -> bool:
        """Record one cycle at time ``now_s`` (seconds) and return :attr:`exceeded`.

        Never raises; see the class docstring for how a backwards or non-finite ``now_s`` is
        handled.
        """
        last = self._last_now_s
        if not _isfinite(now_s):
            self._last_fault = FAULT_NOW_NOT_FINITE
            if last is None:
                # Nothing to clamp to, and inventing a time (0.0, say) would place the cycle
                # arbitrarily far from the real clock; the caller still sees the fault.
                return self.exceeded
            now_s = last
        elif last is not None and now_s < last:
            self._last_fault = FAULT_TIME_WENT_BACKWARDS
            now_s = last
        else:
            self._last_fault = None

        times = self._times_s
        if times and times[-1] == now_s:
            self._total[-1] += 1
            if flagged:
                self._flagged[-1] += 1
        else:
            times.append(now_s)
            self._total.append(1)
            self._flagged.append(1 if flagged else 0)
        self._window_total += 1
        if flagged:
            self._window_flagged += 1
        self._last_now_s = now_s

        # Window is (now_s - window_s, now_s]: an entry whose age equals window_s is out.
        # Compared by age rather than against now_s - window_s because that difference can
        # round to now_s itself for a large clock and a small window; by age, the entry just
        # recorded (age 0) always stays, so the loop also never empties the deque.
        window_s = self._window_s
        while now_s - times[0] >= window_s:
            times.popleft()
            self._window_total -= self._total.popleft()
            self._window_flagged -= self._flagged.popleft()
        return self._window_flagged > self._max_events

    def state(self) -> dict[str, Any]:
        """The window's contents, for a forensic checkpoint (see :meth:`restore`)."""
        return {"times_s": list(self._times_s), "total": list(self._total),
                "flagged": list(self._flagged), "last_now_s": self._last_now_s,
                "last_fault": self._last_fault}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`state` returned. Forensic replay only: a live window never
        calls it. Raises ``KeyError``/``ValueError``/``TypeError`` on a malformed ``state``."""
        times = [float(t) for t in state["times_s"]]
        total = [int(n) for n in state["total"]]
        flagged = [int(n) for n in state["flagged"]]
        if not len(times) == len(total) == len(flagged):
            raise ValueError("times_s, total and flagged must have the same length")
        last, fault = state["last_now_s"], state["last_fault"]
        if fault is not None and not isinstance(fault, str):
            raise TypeError(f"last_fault must be a string or null, got {fault!r}")
        self._times_s = deque(times)
        self._total = deque(total)
        self._flagged = deque(flagged)
        self._window_total = sum(total)
        self._window_flagged = sum(flagged)
        self._last_now_s = None if last is None else float(last)
        self._last_fault = fault

    def reset(self) -> None:
        """Forget all cycles, the latest time and the fault."""
        self._times_s.clear()
        self._total.clear()
        self._flagged.clear()
        self._window_total = 0
        self._window_flagged = 0
        self._last_now_s = None
        self._last_fault = None
