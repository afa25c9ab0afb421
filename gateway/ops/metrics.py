"""Prometheus metrics of one site, served by the communications process (never the core).

The safety core counts (``gateway.link.counters``) and publishes its counters with each view of
the plant in the mirror; this module turns the latest :class:`~gateway.runtime.view.PlantView`
into metric families with the official ``prometheus_client``: :class:`GatewayCollector` for a
registry of one's own, :func:`render` for the exposition text of one view (``/metrics``).

Names follow the Prometheus naming guide: a ``safety_gateway_`` prefix, base units in the name
(``_seconds``), ``_total`` on counters. Every series carries the ``site`` label; the other
labels are bounded by the site's configuration (``sensor``, ``actuator``, ``device``,
``detector``: the detectors the site can have, else ``other``) or by the code (``mode``,
``action``, ``reason``, ``state``, ``source``). Sensor and actuator values are in each tag's
engineering units (the site's configuration names them), so those gauges carry no unit suffix.

Counters are the core's own: they survive a restart of the communications process and start
at zero with the core (Prometheus's ``rate()`` takes a core restart as a counter reset).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.link.counters import ACTIONS, LINK_STATES, REFUSALS, decode
from gateway.ops.panels import candidate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from gateway.link.counters import CounterLayout, Histogram
    from gateway.runtime.view import PlantView

__all__ = ["CONTENT_TYPE_LATEST", "PREFIX", "GatewayCollector", "render"]

PREFIX = "safety_gateway_"
# The mirror's mode codes (gateway.supervisor.modes.Mode's values) and sources of an applied
# value (gateway.link.mirror.Source, lower case): fixed here so that the label sets stay the
# same whatever the core publishes (an unknown one is shown as no mode / "none").
MODES = ("auto", "shadow", "manual", "safe_stop")
SOURCES = ("none", "ai", "fallback", "operator", "safe")


def _buckets(layout: CounterLayout, slots: Sequence[int], h: Histogram
             ) -> tuple[list[tuple[str, float]], float]:
    counts, sum_ns = layout.histogram(tuple(slots), h)
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*h.bounds_s, math.inf), counts, strict=True):
        total += count
        out.append(("+Inf" if math.isinf(bound) else repr(bound), float(total)))
    return out, sum_ns / 1e9


class GatewayCollector(Collector):
    """Yields the site's metric families from ``latest()`` (None: the core has published
    nothing yet; then only ``safety_gateway_core_published`` 0). ``clock`` is the monotonic
    clock the core's sensor read times are in (the same in every process of the host)."""

    def __init__(self, site: str, layout: CounterLayout,
                 latest: Callable[[], PlantView | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site = site
        self.layout = layout
        self.latest = latest
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        view = self.latest()
        site = self.site
        published = GaugeMetricFamily(
            PREFIX + "core_published", "1 once the safety core has published a view of the "
            "plant, else 0", labels=["site"])
        published.add_metric([site], 0.0 if view is None else 1.0)
        yield published
        if view is None:
            return
        yield from self._status(view)
        yield from self._counters(view)
        yield from self._tags(view)
        yield from self._candidate(view)

    def _gauge(self, name: str, doc: str, value: float, labels: Sequence[str] = (),
               values: Sequence[str] = ()) -> GaugeMetricFamily:
        g = GaugeMetricFamily(PREFIX + name, doc, labels=["site", *labels])
        g.add_metric([self.site, *values], value)
        return g

    def _status(self, view: PlantView) -> Iterator[Metric]:
        site = self.site
        mode = GaugeMetricFamily(PREFIX + "mode", "The operating mode: 1 for the current one, "
                                 "0 for the others", labels=["site", "mode"])
        for m in MODES:
            mode.add_metric([site, m], 1.0 if view.mode == m else 0.0)
        yield mode
        yield self._gauge("latched", "1 while a trip is latched (the AI stays out until an "
                          "authorised reset), else 0", float(view.latched))
        yield self._gauge("incident_open", "1 while an incident is open, else 0",
                          float(bool(view.incident_id)))
        yield self._gauge("bypasses", "Detector bypasses in force", float(len(view.bypasses)))
        yield self._gauge("heartbeat", "The heartbeat counter the core writes to each device",
                          float(view.heartbeat))
        yield self._gauge("core_cycle", "The core's cycle number of this view",
                          float(view.cycle))
        yield self._gauge("core_publish_timestamp_seconds", "When the core made this view "
                          "(UTC seconds since the epoch)", view.at_wall_s)

    def _candidate(self, view: PlantView) -> Iterator[Metric]:
        """The candidate site's verdicts (``gateway.ops.panels.candidate``), when it has one:
        the ``rule`` label is one of its constraints or detectors (at most 32 of them: the
        core's bound on the candidate's named gauges)."""
        c = candidate(view)
        if c is None:
            return
        site = self.site
        for name, key, doc in (
                ("candidate_cycles_judged_total", "judged", "Cycles the candidate judged"),
                ("candidate_disagreements_total", "disagreements",
                 "Cycles where the candidate's outcome differed from the enforced site's"),
                ("candidate_errors_total", "errors",
                 "Errors of the candidate (it is switched off at the first)")):
            family = CounterMetricFamily(PREFIX + name, doc, labels=["site"])
            family.add_metric([site], float(c[key] or 0))
            yield family
        verdicts = CounterMetricFamily(
            PREFIX + "candidate_verdicts_total", "What the candidate would have done (clamp, "
            "reject, trip, mode), by constraint or detector (rule)",
            labels=["site", "action", "rule"])
        for v in c["verdicts"]:
            verdicts.add_metric([site, v["action"], v["name"]], float(v["count"] or 0))
        yield verdicts

    def _counters(self, view: PlantView) -> Iterator[Metric]:
        lay = self.layout
        slots = decode(lay, view.counters)
        site = self.site

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            c = CounterMetricFamily(PREFIX + name, doc, labels=["site"])
            c.add_metric([site], float(value))
            return c

        yield counter("cycles", "Control cycles run by the safety core", slots[lay.cycles])
        yield counter("cycles_skipped", "Cycles skipped after an overrun longer than a period "
                      "(never run back to back)", slots[lay.skipped])
        yield counter("comms_restarts", "Restarts of the communications process by the core",
                      slots[lay.comms_restarts])
        yield counter("audit_alarms", "Alarm records the core appended to the audit log",
                      slots[lay.audit_alarms])
        yield counter("audit_lost_records", "Audit records lost (the writer's queue full, or "
                      "its process gone), as the audit sink counts them; read once a second",
                      slots[lay.audit_lost])
        yield self._gauge("audit_pending_records", "Audit records not yet committed (the "
                          "backlog); read once a second", float(slots[lay.audit_pending]))
        yield self._gauge("audit_fault", "1 while the audit sink reports a fault, else 0; "
                          "read once a second", float(slots[lay.audit_fault]))
        for name, doc, h in (
                ("cycle_lateness_seconds", "How late each cycle started against its schedule",
                 lay.lateness),
                ("cycle_duration_seconds", "How long each cycle took", lay.duration),
                ("write_through_latency_seconds", "From an operator setpoint's arrival at the "
                 "core to its answer (written through to the device, or refused)",
                 lay.write_through)):
            hist = HistogramMetricFamily(PREFIX + name, doc, labels=["site"])
            buckets, sum_s = _buckets(lay, slots, h)
            hist.add_metric([site], buckets, sum_s)
            yield hist
        verdicts = CounterMetricFamily(PREFIX + "envelope_verdicts",
                                       "The envelope's verdicts on the AI's proposals, by action",
                                       labels=["site", "action"])
        for i, action in enumerate(ACTIONS):
            verdicts.add_metric([site, action], float(slots[lay.verdicts + i]))
        yield verdicts
        violations = CounterMetricFamily(PREFIX + "envelope_violations",
                                         "Constraints the AI's proposals violated, by "
                                         "constraint (a verdict can name several)",
                                         labels=["site", "constraint"])
        for i, constraint in enumerate(lay.violation_names):
            violations.add_metric([site, constraint], float(slots[lay.violations + i]))
        yield violations
        refused = CounterMetricFamily(PREFIX + "refused_writes",
                                      "Northbound writes refused, by reason",
                                      labels=["site", "reason"])
        for i, reason in enumerate(REFUSALS):
            refused.add_metric([site, reason], float(slots[lay.refusals + i]))
        yield refused
        trips = CounterMetricFamily(PREFIX + "trips", "Trips latched, by detector",
                                    labels=["site", "detector"])
        for i, detector in enumerate(lay.detectors):
            trips.add_metric([site, detector], float(slots[lay.trips + i]))
        yield trips
        state = GaugeMetricFamily(PREFIX + "device_link_state", "Each device link's state: 1 "
                                  "for the current one, 0 for the others",
                                  labels=["site", "device", "state"])
        connects = CounterMetricFamily(PREFIX + "device_connects", "Sessions opened to each "
                                       "device (the first connect and every reconnect)",
                                       labels=["site", "device"])
        for i, device in enumerate(lay.devices):
            code = slots[lay.link_state + i]
            for j, name in enumerate(LINK_STATES):
                state.add_metric([site, device, name], 1.0 if code == j else 0.0)
            connects.add_metric([site, device], float(slots[lay.connects + i]))
        yield state
        yield connects

    def _tags(self, view: PlantView) -> Iterator[Metric]:
        lay, site = self.layout, self.site
        value = GaugeMetricFamily(PREFIX + "sensor_value", "Each sensor's value (its "
                                  "engineering units)", labels=["site", "sensor"])
        good = GaugeMetricFamily(PREFIX + "sensor_good", "1 while a sensor's reading is good "
                                 "quality, else 0", labels=["site", "sensor"])
        age = GaugeMetricFamily(PREFIX + "sensor_age_seconds", "How old each sensor's reading "
                                "is", labels=["site", "sensor"])
        now_s = self.clock()
        for name, v, g, at in zip(lay.sensors, view.sensor_values, view.sensor_good,
                                  view.sensor_at_s, strict=True):
            value.add_metric([site, name], v)
            good.add_metric([site, name], float(g))
            age.add_metric([site, name], max(0.0, now_s - at) if math.isfinite(at) else math.inf)
        yield value
        yield good
        yield age
        applied = GaugeMetricFamily(PREFIX + "actuator_applied", "Each actuator's applied "
                                    "command (its engineering units)",
                                    labels=["site", "actuator"])
        proposal = GaugeMetricFamily(PREFIX + "actuator_proposal", "The AI's latest proposal "
                                     "for each actuator (its engineering units; absent when "
                                     "it proposed nothing)", labels=["site", "actuator"])
        source = GaugeMetricFamily(PREFIX + "actuator_source", "Where each applied command "
                                   "came from: 1 for the current source, 0 for the others",
                                   labels=["site", "actuator", "source"])
        for name, a, p, s in zip(lay.actuators, view.applied, view.proposal, view.sources,
                                 strict=True):
            applied.add_metric([site, name], a)
            if not math.isnan(p):
                proposal.add_metric([site, name], p)
            for src in SOURCES:
                source.add_metric([site, name, src], 1.0 if s == src else 0.0)
        yield applied
        yield proposal
        yield source


def render(view: PlantView | None, site: str, layout: CounterLayout,
           clock: Callable[[], float] = time.monotonic) -> bytes:
    """The exposition text (``CONTENT_TYPE_LATEST``) of ``view`` for the site named ``site``
    with counter layout ``layout`` (``MirrorLayout.for_site(site).counters``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(site, layout, lambda: view, clock))
    return generate_latest(registry)
