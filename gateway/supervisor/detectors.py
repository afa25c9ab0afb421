"""Anomaly detectors. Each turns evidence into :class:`Finding` s that name a mode to fall to.

All are pure and cheap (plain floats in the per-cycle path); time comes in as ``now_s``.
Sensing problems (stale, bad quality, implausible) demand SAFE_STOP, because the fallback
controllers read the same sensors; problems of the AI demand MANUAL (fallback control).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gateway.config.schema import DivergenceMethod, FallbackKind
from gateway.supervisor.changepoint import Cusum, CusumConfig, PageHinkley, PageHinkleyConfig
from gateway.supervisor.decision import ProposalAnomaly
from gateway.supervisor.modes import Mode
from gateway.supervisor.window import RateWindow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64
    from gateway.envelope.engine import Envelope
    from gateway.supervisor.changepoint import ChangeDetector


@dataclass(frozen=True, slots=True)
class Finding:
    """A detector's demand: fall to ``target`` because of ``reason``."""

    detector: str
    target: Mode
    reason: str
    evidence: tuple[tuple[str, float | str], ...] = ()


class _Watch:
    """The plausibility state of one sensor with ``frozen_after_s`` or ``max_rate_per_s``.

    ``value`` and ``at_s`` are the last plausible reading and its timestamp (NaN: no baseline
    yet, or since a gap); ``since_s`` is the timestamp from which ``value`` has repeated;
    ``suspect`` tells whether the last judged reading raised a finding.
    """

    __slots__ = ("at_s", "frozen_s", "index", "max_rate", "name", "since_s", "suspect", "value")

    def __init__(self, index: int, name: str, frozen_s: float, max_rate: float) -> None:
        self.index = index
        self.name = name
        self.frozen_s = frozen_s
        self.max_rate = max_rate
        self.value = math.nan
        self.at_s = math.nan
        self.since_s = math.nan
        self.suspect = False


class InputHealth:
    """Sensor readings that are stale, of bad quality, non-finite or outside their declared
    range (widened by ``input_range_margin`` of the range) are replaced by NaN for everything
    downstream, and each demands SAFE_STOP. Stale means older than the sensor's own limit
    (``Site.stale_after_ms``: its device's, else the site's).

    So are, for the sensors named in ``detection.frozen_after_s`` and
    ``detection.max_rate_per_s`` (see :class:`gateway.config.schema.Detection`), readings that
    are frozen (bit-for-bit the same value for ``frozen_after_s`` seconds) or implausible
    (further from the last plausible reading than ``max_rate_per_s`` times the time between
    the two, that time being at least one cycle). A reading's timestamp is ``now_s - age``.
    A faulty reading (bad, stale, out of range, NaN) breaks the history: the next good one is
    a new baseline, judged for neither, and its frozen count starts again. An implausible
    reading does not move the baseline, so a value that jumped stays implausible until the
    time since the last plausible reading would have allowed the jump; each finding repeats
    while its condition holds (the supervisor reports a detector once per latch).

    A device that serves two or more sensors and whose every sensor is of bad quality or stale
    in the same check is lost as a whole (its connection is down: the adapters mark all its
    tags bad at once): a ``device.<name>`` finding, listed before its sensors' own, names it.
    It demands what they demand (SAFE_STOP) in the same check: it classifies the trip, it
    neither delays nor adds one. A device with one sensor cannot be told from its sensor, and
    is left to the sensor's finding.
    """

    def __init__(self, site: Site) -> None:
        det = site.detection
        margin = det.input_range_margin
        self.names = tuple(t.name for t in site.sensors)
        # Per device serving two sensors or more: its sensors' indices (a lost device).
        served: dict[str, list[int]] = {}
        for i, t in enumerate(site.sensors):
            served.setdefault(t.device, []).append(i)
        self.devices = tuple((name, tuple(ix)) for name, ix in served.items() if len(ix) >= 2)
        self.lo: list[float] = []
        self.hi: list[float] = []
        for t in site.sensors:
            assert t.range_min is not None
            assert t.range_max is not None
            span = t.range_max - t.range_min
            self.lo.append(t.range_min - margin * span)
            self.hi.append(t.range_max + margin * span)
        # Per sensor: a tag is stale when older than its own device allows (the device's
        # stale_after_ms, else detection.stale_after_ms; the loader refuses a limit shorter
        # than the device's update period plus its timeout, which a healthy device meets).
        self.stale_s = [site.stale_after_ms(t) / 1000.0 for t in site.sensors]
        # Readings that arrive within one cycle of each other (poll jitter, a reading seen by
        # two steps) are judged as one cycle apart: measurement noise over a vanishing dt
        # would otherwise look like an impossible rate.
        self.min_dt_s = site.site.cycle_ms / 1000.0
        frozen = dict(det.frozen_after_s)
        rates = dict(det.max_rate_per_s)
        for key, named in (("frozen_after_s", frozen), ("max_rate_per_s", rates)):
            for name in named:
                if name not in self.names:
                    raise ValueError(f"detection.{key}: {name!r} is not a sensor")
        # Only the configured sensors, in sensor order; empty (the default) costs nothing.
        self.watches = [
            _Watch(i, name, frozen.get(name, math.inf), rates.get(name, math.inf))
            for i, name in enumerate(self.names) if name in frozen or name in rates
        ]

    def check(
        self, sensors: Sequence[float], good: Sequence[bool], age_s: Sequence[float],
        now_s: float | None = None,
    ) -> tuple[list[float], list[Finding]]:
        """The readings with every untrustworthy one replaced by NaN, and the findings.

        ``now_s`` is the step's time; the supervisor passes it every cycle, and only then are
        frozen and implausible readings judged (and the history moved on). Without it (a
        check between steps, e.g. for an operator's write), the history is left alone and
        the sensors under a frozen or implausibility finding at the last step stay masked,
        without a finding.
        """
        masked = list(sensors)
        findings: list[Finding] = []
        lost: set[int] = set()  # bad quality or stale: what a lost device shows
        for i, value in enumerate(sensors):
            if not good[i]:
                why, name = "bad quality", "input.quality"
                lost.add(i)
            elif not (age_s[i] <= self.stale_s[i]):
                why, name = (f"stale: {age_s[i]:.3f} s old (limit {self.stale_s[i]} s)",
                             "input.stale")
                lost.add(i)
            elif not (self.lo[i] <= value <= self.hi[i]):
                why, name = (
                    f"reading {value} outside its range [{self.lo[i]}, {self.hi[i]}]",
                    "input.range",
                )
            else:
                continue
            masked[i] = math.nan
            findings.append(
                Finding(
                    f"{name}.{self.names[i]}",
                    Mode.SAFE_STOP,
                    f"{self.names[i]}: {why}",
                    (("value", value), ("age_s", age_s[i])),
                )
            )
        if len(lost) >= 2:
            findings[:0] = self._lost_devices(lost, good)
        if self.watches:
            if now_s is None:
                for w in self.watches:
                    if w.suspect:
                        masked[w.index] = math.nan
            else:
                self._plausibility(masked, age_s, now_s, findings)
        return masked, findings

    def _lost_devices(self, lost: set[int], good: Sequence[bool]) -> list[Finding]:
        """A ``device.<name>`` finding for each device whose every sensor is in ``lost``."""
        out: list[Finding] = []
        for device, indices in self.devices:
            if lost.issuperset(indices):
                bad = sum(1 for i in indices if not good[i])
                sensors = ", ".join(self.names[i] for i in indices)
                out.append(Finding(
                    f"device.{device}", Mode.SAFE_STOP,
                    f"device {device}: all its {len(indices)} sensor tags bad or stale at "
                    f"once ({bad} bad quality, {len(indices) - bad} stale): the device or its "
                    "connection is lost",
                    (("device", device), ("sensors", sensors))))
        return out

    def _plausibility(self, masked: list[float], age_s: Sequence[float], now_s: float,
                      findings: list[Finding]) -> None:
        """Judge the configured sensors' readings that passed the other checks (in place)."""
        for w in self.watches:
            i = w.index
            x = masked[i]
            at = now_s - age_s[i]
            if x != x or not math.isfinite(at):
                # A faulty reading (reported above) or no usable timestamp: no judgement
                # across the gap; the next good reading is a new baseline.
                w.value = math.nan
                w.suspect = False
                continue
            previous = w.value
            if previous != previous:
                w.value, w.at_s, w.since_s, w.suspect = x, at, at, False
                continue
            if x == previous:
                w.at_s = at
                frozen_s = at - w.since_s
                w.suspect = frozen_s >= w.frozen_s
                if w.suspect:
                    masked[i] = math.nan
                    findings.append(Finding(
                        f"input.frozen.{w.name}", Mode.SAFE_STOP,
                        f"{w.name}: frozen at {x} for {frozen_s:.1f} s "
                        f"(limit {w.frozen_s} s)",
                        (("value", x), ("frozen_s", frozen_s), ("limit_s", w.frozen_s)),
                    ))
                continue
            dt = at - w.at_s
            if not dt > self.min_dt_s:
                dt = self.min_dt_s
            rate = abs(x - previous) / dt
            w.suspect = rate > w.max_rate
            if w.suspect:
                masked[i] = math.nan  # the baseline stays the last plausible reading
                findings.append(Finding(
                    f"input.rate.{w.name}", Mode.SAFE_STOP,
                    f"{w.name}: changed from {previous} to {x} in {dt:.3f} s, "
                    f"{rate:.6g} per s (limit {w.max_rate} per s)",
                    (("value", x), ("previous", previous), ("dt_s", dt),
                     ("rate_per_s", rate), ("limit_per_s", w.max_rate)),
                ))
            else:
                w.value, w.at_s, w.since_s = x, at, at


class Divergence:
    """Divergence of the AI from the fallback, per closed-loop (PID) actuator.

    The residual is ``(ai - reference) / (max - min)``, the reference being the fallback PID's
    own opinion (see :mod:`gateway.control.bank`: it does not follow the AI while the AI is in
    control). CUSUM or Page-Hinkley accumulates it, so a brief disagreement (a transient, a
    different but sensible move) passes and a sustained one trips. Fixed, hold and rule
    fallbacks have no model of the process to disagree with, so their actuators are not judged
    here (the envelope still is).
    """

    def __init__(self, site: Site, kinds: Sequence[FallbackKind], driven: Sequence[bool]
                 ) -> None:
        det = site.detection
        limits = {lim.actuator: lim for lim in site.envelope.limits}
        self.watch: list[tuple[int, str, float, ChangeDetector]] = []
        if not det.divergence:
            return
        for i, tag in enumerate(site.actuators):
            if kinds[i] is not FallbackKind.PID or not driven[i]:
                continue
            lim = limits[tag.name]
            span = lim.max - lim.min if lim.max > lim.min else 1.0
            detector: ChangeDetector
            if det.divergence_method is DivergenceMethod.PAGE_HINKLEY:
                detector = PageHinkley(
                    PageHinkleyConfig(
                        delta=det.divergence_drift, threshold=det.divergence_threshold
                    )
                )
            else:
                detector = Cusum(
                    CusumConfig(drift=det.divergence_drift, threshold=det.divergence_threshold)
                )
            self.watch.append((i, tag.name, 1.0 / span, detector))

    def update(self, ai: Sequence[float], fallback: Sequence[float]) -> list[Finding]:
        findings = []
        for i, name, inv_span, detector in self.watch:
            if detector.alarm:
                continue  # latched; reported once
            if detector.update((ai[i] - fallback[i]) * inv_span):
                evidence = tuple((k, v) for k, v in detector.evidence().items())
                findings.append(
                    Finding(
                        f"divergence.{name}",
                        Mode.MANUAL,
                        f"AI diverges from the fallback on {name}",
                        evidence,
                    )
                )
        return findings

    def reset(self) -> None:
        for *_, detector in self.watch:
            detector.reset()


class ViolationRate:
    """Too many cycles whose proposal the envelope did not pass as is."""

    def __init__(self, site: Site) -> None:
        det = site.detection
        self.window = RateWindow(det.violation_window_s, det.violation_max)
        self.max = det.violation_max

    def update(self, now_s: float, flagged: bool) -> list[Finding]:
        if self.window.record(now_s, flagged):
            return [
                Finding(
                    "violation_rate",
                    Mode.MANUAL,
                    f"{self.window.count} proposals clamped or rejected within "
                    f"{self.window.window_s} s (limit {self.max})",
                    (("count", self.window.count), ("fraction", self.window.fraction)),
                )
            ]
        return []

    def reset(self) -> None:
        self.window.reset()


class ControllerHealth:
    """Deadline misses in a row, and proposals that are unusable outright."""

    _IMMEDIATE: ClassVar[frozenset[ProposalAnomaly]] = frozenset(
        {
            ProposalAnomaly.NONFINITE_OUTPUT,
            ProposalAnomaly.WRONG_OUTPUT_SHAPE,
            ProposalAnomaly.RUNTIME_ERROR,
            ProposalAnomaly.SILENT,
        }
    )
    _LATE: ClassVar[frozenset[ProposalAnomaly]] = frozenset(
        {ProposalAnomaly.DEADLINE_MISSED, ProposalAnomaly.BUSY}
    )

    def __init__(self, site: Site) -> None:
        self.max_misses = site.detection.deadline_misses_max
        self.misses = 0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every detector name this detector's findings can carry."""
        return ("deadline", *sorted(cls._name(a) for a in cls._IMMEDIATE))

    @staticmethod
    def _name(anomaly: ProposalAnomaly) -> str:
        return "ai_silent" if anomaly is ProposalAnomaly.SILENT else f"controller.{anomaly}"

    def update(self, anomaly: ProposalAnomaly | None) -> list[Finding]:
        if anomaly is None:
            self.misses = 0
            return []
        if anomaly in self._LATE:
            self.misses += 1
            if self.misses > self.max_misses:
                return [
                    Finding(
                        "deadline",
                        Mode.MANUAL,
                        f"{self.misses} controller deadlines missed in a row "
                        f"(limit {self.max_misses})",
                        (("misses", self.misses),),
                    )
                ]
            return []
        if anomaly in self._IMMEDIATE:
            return [Finding(self._name(anomaly), Mode.MANUAL, f"controller: {anomaly}")]
        return []  # NONFINITE_INPUT: the input detectors own that fault

    def reset(self) -> None:
        self.misses = 0


class GrossViolation:
    """Trips on a proposal far outside what each actuator may do this cycle.

    Judged only when the envelope did not pass the proposal (so it costs nothing in normal
    operation): the proposal is projected per actuator into its own feasible set this cycle
    (bounds, interlock tightenings, rate and step window, allowed values) and the largest move,
    as a fraction of that actuator's range, is compared with ``detection.gross_violation``.
    """

    def __init__(self, site: Site, envelope: Envelope) -> None:
        self.limit = site.detection.gross_violation
        self.envelope = envelope
        self.names = [t.name for t in site.actuators]
        # Every actuator has limits (min and max; an allowed-values list sets them too); a
        # fixed actuator (max == min) has no range to be far outside of.
        limits = {lim.actuator: lim for lim in site.envelope.limits}
        spans = [limits[name].max - limits[name].min for name in self.names]
        self.inv_span = np.array([1.0 / d if d > 0 else 0.0 for d in spans], dtype=np.float64)
        self._out = np.empty(len(self.names))
        self._feasible = np.zeros(len(self.names), dtype=np.uint8)

    def update(self, values: F64, previous: F64, sensors: F64, dt: float) -> list[Finding]:
        if not self.limit > 0:
            return []
        self.envelope.project_into(values, previous, sensors, dt, self._out, self._feasible)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: handled just below
            gaps = np.abs(values - self._out) * self.inv_span
        # NaN proposals are the non-finite policy's business; an infeasible actuator's gap is
        # unknown (its projection kept the proposal) and is left to the envelope's verdict.
        gaps[~np.isfinite(gaps) | (self._feasible == 0)] = 0.0
        i = int(np.argmax(gaps))
        gap = float(gaps[i])
        if not gap > self.limit:
            return []
        name = self.names[i]
        return [Finding("envelope.gross", Mode.MANUAL,
                        f"{name}: proposal {float(values[i]):g} is {gap:.0%} of its range away "
                        f"from what it may do now ({float(self._out[i]):g}); limit "
                        f"{self.limit:.0%}",
                        (("actuator", name), ("proposal", float(values[i])),
                         ("admissible", float(self._out[i])), ("gap", gap)))]


@dataclass(frozen=True)
class CanaryCases:
    """Golden inputs and the outputs the model gave on them when it was registered."""

    inputs: F64
    outputs: F64
    tolerance: float


class Canary:
    """Periodically asks for the model's outputs on golden inputs; a deviation beyond the
    tolerance (a swapped or tampered model) trips."""

    def __init__(self, cases: CanaryCases | None, period_s: float, start_s: float) -> None:
        self.cases = cases
        self.period_s = period_s
        self.next_due_s = start_s

    def due(self, now_s: float) -> bool:
        if self.cases is None or now_s < self.next_due_s:
            return False
        self.next_due_s = now_s + self.period_s
        return True

    def update(self, outputs: F64 | None) -> list[Finding]:
        if outputs is None or self.cases is None:
            return []
        expected = self.cases.outputs
        if outputs.shape != expected.shape:
            return [
                Finding(
                    "canary",
                    Mode.MANUAL,
                    f"canary outputs have shape {outputs.shape}, expected {expected.shape}",
                )
            ]
        deviation = float(abs(outputs - expected).max()) if expected.size else 0.0
        if not deviation <= self.cases.tolerance:  # NaN deviates
            return [
                Finding(
                    "canary",
                    Mode.MANUAL,
                    f"model output on golden inputs deviates by {deviation:.6g} "
                    f"(tolerance {self.cases.tolerance})",
                    (("deviation", deviation), ("tolerance", self.cases.tolerance)),
                )
            ]
        return []
