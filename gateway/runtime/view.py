"""What the core shows the northbound side after each cycle: one immutable view of the plant.

The safety core builds it; publishers carry it to whoever shows it: the shared-memory mirror
that the communications process reads (``gateway.link``), or the servers themselves in this
process (``gateway.comms.servers``; tests and drills). Nothing in it lets the reader act on the
core.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable


@dataclass(frozen=True, slots=True)
class PlantView:
    """Sensors (value, good, read time: the core's clock), applied actuator values with their
    source and the AI's latest proposal (NaN: none), and the status: mode, latch and its
    reason, the newest open incident ("" when none), the heartbeat counter, the bypasses in
    force with their UTC expiry (and the seconds left until the first ends), and when this
    view was made (``at_s``: the core's clock; ``at_wall_s``: UTC seconds). ``counters`` is
    the core's counter block as bytes (``gateway.link.counters``; b"": not counted)."""

    at_s: float
    at_wall_s: float
    cycle: int
    sensor_values: tuple[float, ...]
    sensor_good: tuple[bool, ...]
    sensor_at_s: tuple[float, ...]
    applied: tuple[float, ...]
    sources: tuple[str, ...]
    proposal: tuple[float, ...]
    mode: str
    latched: bool
    trip_reason: str
    incident_id: str
    heartbeat: int
    bypasses: tuple[tuple[str, datetime.datetime], ...]
    bypass_left_s: float | None  # until the first bypass expires (None: none in force)
    counters: bytes = b""


class Publisher(Protocol):
    """Something that carries each view northbound (it must not block the core)."""

    def publish(self, view: PlantView) -> Awaitable[None] | None: ...


class BypassClock:
    """Each bypass's expiry as UTC wall time (the supervisor's times are monotonic), computed
    once per bypass so that the mirrored value does not jitter."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, float], datetime.datetime] = {}

    def expiries(self, bypasses: dict[str, float], now_s: float
                 ) -> tuple[tuple[str, datetime.datetime], ...]:
        known = self._known
        for key in [k for k in known if bypasses.get(k[0]) != k[1]]:
            del known[key]
        out = []
        for detector, expiry_s in sorted(bypasses.items(), key=lambda kv: kv[1]):
            wall = known.get((detector, expiry_s))
            if wall is None:
                wall = datetime.datetime.fromtimestamp(
                    round(time.time() + (expiry_s - now_s), 3), datetime.UTC)
                known[(detector, expiry_s)] = wall
            out.append((detector, wall))
        return tuple(out)
