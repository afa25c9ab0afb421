"""What the core shows the northbound side after each cycle: one immutable view of the plant.

The safety core builds it; publishers carry it to whoever shows it: the shared-memory mirror
that the communications process reads (``gateway.link``), or the servers themselves in this
process (``gateway.comms.servers``; tests and drills). Nothing in it lets the reader act on the
core.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.config.schema import ControllerKind
from gateway.supervisor.changepoint import Cusum, PageHinkley
from gateway.supervisor.modes import Mode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from gateway.control.proposal import Proposal
    from gateway.supervisor.core import Supervisor


@dataclass(frozen=True, slots=True)
class PlantView:
    """Sensors (value, good, read time: the core's clock), applied actuator values with their
    source and the AI's latest proposal (NaN: none), and the status: mode, latch and its
    reason, the newest open incident ("" when none), the heartbeat counter, the bypasses in
    force with their UTC expiry (and the seconds left until the first ends), and when this
    view was made (``at_s``: the core's clock; ``at_wall_s``: UTC seconds). ``counters`` is
    the core's counter block as bytes (``gateway.link.counters``; b"": not counted).
    ``detector_names``, ``detector_values`` and ``detector_limits`` are the detectors'
    statistics against their thresholds, one per name (see :class:`DetectorGauges`; NaN: not
    known yet)."""

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
    detector_names: tuple[str, ...] = ()
    detector_values: tuple[float, ...] = ()
    detector_limits: tuple[float, ...] = ()


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


_JUDGED = frozenset({Mode.SHADOW, Mode.AUTO})  # where the AI's silence trips


class DetectorGauges:
    """Each detector's statistic against its threshold, for the people on shift: the core
    fills it once per view with a few attribute reads (no allocation beyond the values'
    tuple). A detector trips when its statistic goes *above* its threshold.

    The gauges, in this order (the first ones matter most when the mirror has room for fewer):
    ``violation_rate`` (proposals clamped or rejected in the window, against the most allowed),
    ``deadline`` (controller deadlines missed in a row), ``ai_silent`` (seconds since the AI's
    last proposal, against the silence timeout; only with an AI controller, and NaN outside
    SHADOW and AUTO, where silence is not judged), ``canary`` (the
    largest deviation on the golden inputs at the last canary run, against the tolerance; only
    with canary cases), ``divergence.<actuator>`` (the CUSUM or Page-Hinkley statistic, the
    larger of its two sides, against its threshold), then per sensor ``input.stale.<sensor>``
    (the reading's age in seconds, against the sensor's limit) and ``input.range.<sensor>``
    (how far the reading lies outside its declared range widened by the input range margin,
    in the sensor's units, against 0: negative is the room left inside). Frozen and
    implausible readings, the gross violation and the envelope itself are not gauges: they
    have no statistic that builds up (the margins show how close the envelope is).
    """

    def __init__(self, supervisor: Supervisor) -> None:
        sup = supervisor
        canary = sup.canary.cases
        self.supervisor = sup
        # Both change detectors keep their two one-sided statistics and their threshold.
        self._divergence = [(name, detector) for _, name, _, detector in sup.divergence.watch
                            if isinstance(detector, Cusum | PageHinkley)]
        self._has_ai = sup.site.controller.kind is not ControllerKind.NONE
        self._canary = canary
        names = ["violation_rate", "deadline"]
        limits = [float(sup.violations.max), float(sup.controller.max_misses)]
        if self._has_ai:
            names.append("ai_silent")
            limits.append(sup.silence_s)
        if canary is not None:
            names.append("canary")
            limits.append(canary.tolerance)
        for name, detector in self._divergence:
            names.append(f"divergence.{name}")
            limits.append(float(detector.config.threshold))
        inputs = sup.inputs
        for sensor, stale_s in zip(inputs.names, inputs.stale_s, strict=True):
            names += (f"input.stale.{sensor}", f"input.range.{sensor}")
            limits += (stale_s, 0.0)
        self._ranges = tuple(zip(inputs.lo, inputs.hi, strict=True))
        self.names: tuple[str, ...] = tuple(names)
        self.limits: tuple[float, ...] = tuple(limits)
        self._heard_s = math.nan  # when the AI last proposed (its own time, if it says)
        self._canary_deviation = math.nan

    def values(self, now_s: float, proposal: Proposal | None, sensor_values: Sequence[float],
               sensor_at_s: Sequence[float]) -> tuple[float, ...]:
        """The statistics now (``proposal``: this cycle's, None when the AI proposed nothing;
        ``sensor_values`` and ``sensor_at_s``: each sensor's reading and its read time on the
        core's clock, in sensor order). A value that cannot be known is NaN."""
        sup = self.supervisor
        out = [float(sup.violations.window.count), float(sup.controller.misses)]
        if self._has_ai:
            if proposal is not None:
                at = proposal.produced_at_s
                self._heard_s = now_s if at is None else at
            # NaN until the AI was heard once, and while its silence is not judged.
            out.append(now_s - self._heard_s if sup.modes.mode in _JUDGED else math.nan)
        cases = self._canary
        if cases is not None:
            outputs = None if proposal is None else proposal.canary
            if outputs is not None:  # only on the cycles the canary ran
                self._canary_deviation = (
                    float(abs(outputs - cases.outputs).max())
                    if outputs.shape == cases.outputs.shape and cases.outputs.size else math.inf)
            out.append(self._canary_deviation)
        for _, detector in self._divergence:
            out.append(max(detector.g_pos, detector.g_neg))
        for at, x, (lo, hi) in zip(sensor_at_s, sensor_values, self._ranges, strict=True):
            out.append(now_s - at)
            out.append(max(lo - x, x - hi))  # NaN for a NaN reading
        return tuple(out)
