"""The Python heap and the control loop: the cycle collector's pauses.

CPython's cycle collector stops the whole interpreter while it runs, and a full (generation 2)
collection walks every tracked object. After start-up those are mostly the modules, classes
and functions of the gateway and its libraries (numpy, onnxruntime, asyncua, pymodbus):
measured on the 2-core machine, a full collection took 30 to 60 ms, several missed cycles at
100 Hz, and under sustained write-through load one came every few seconds.

:func:`freeze_startup_heap` collects once, at start-up, then moves everything still alive into
the permanent generation (``gc.freeze``): later collections walk only what was created since,
and what start-up left behind is never walked again. :class:`GcPauses` times every collection
(``gc.callbacks``) so that the run's statistics show what is left.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["GcPauses", "freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect the garbage of start-up, then freeze what is alive; the number of objects
    frozen. Process-wide: for the gateway process (``safety-gateway run``), not for a
    library user's interpreter."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Times each collection, per generation: count, total and longest pause (milliseconds).

    ``install`` registers the callback, ``uninstall`` removes it; ``clock`` is injected (the
    callback runs inside the collector, so it must be cheap: two clock reads and a few
    additions per collection)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started_s: float | None = None
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_s = self._clock()
            return
        started, self._started_s = self._started_s, None
        if started is None:  # installed in the middle of a collection
            return
        generation = info["generation"]
        pause_ms = 1000.0 * (self._clock() - started)
        self.count[generation] += 1
        self.total_ms[generation] += pause_ms
        if pause_ms > self.max_ms[generation]:
            self.max_ms[generation] = pause_ms

    def stats(self) -> dict[str, Any]:
        """``gc_collections``, ``gc_pause_ms_total`` and ``gc_pause_ms_max``: lists indexed by
        generation; ``gc_frozen``: objects in the permanent generation."""
        return {"gc_collections": list(self.count),
                "gc_pause_ms_total": [round(x, 3) for x in self.total_ms],
                "gc_pause_ms_max": [round(x, 3) for x in self.max_ms],
                "gc_frozen": gc.get_freeze_count()}
