"""The control cycle, at the site's period.

Each cycle:

1. snapshot the sensors from the tag store;
2. take the AI's proposal (the ONNX policy under its deadline, or the external AI's latest
   write);
3. ``supervisor.step`` decides (pure), and its command is what the devices will hold after
   encoding, checked as such;
4. record the decision, apply the playbook's actions, note the safety state;
5. write each device's actuators and its heartbeat, concurrently, bounded by the cycle;
6. publish the plant's view northbound (never waiting on a northbound peer), with the core's
   counters (``gateway.link.counters``: a few integer additions per cycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.runtime.schedule import CycleSchedule
from gateway.runtime.view import BypassClock, DetectorGauges, PlantView
from gateway.supervisor.events import EventKind

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.adapters.base import TagStore
    from gateway.incident.manager import IncidentManager
    from gateway.link.counters import CoreCounters
    from gateway.runtime.ai_source import AiSource
    from gateway.runtime.candidate import CandidateJudge
    from gateway.runtime.incidents import PlaybookActions
    from gateway.runtime.records import Records
    from gateway.runtime.refusals import RefusalLog
    from gateway.runtime.safety_state import DurableState
    from gateway.runtime.southbound import Southbound
    from gateway.runtime.view import Publisher
    from gateway.supervisor.core import Supervisor
    from gateway.supervisor.decision import Decision

log = logging.getLogger("gateway.runtime")


class ControlCycle:
    """One site's control cycle and its timing statistics."""

    def __init__(self, supervisor: Supervisor, store: TagStore, sensor_names: tuple[str, ...],
                 ai: AiSource, southbound: Southbound, records: Records,
                 durable: DurableState, playbook: PlaybookActions | None,
                 incidents: IncidentManager | None, evidence: tuple[RefusalLog, ...],
                 publishers: Sequence[Publisher], period_s: float,
                 clock: Callable[[], float], wall_clock: Callable[[], float] = time.time,
                 counters: CoreCounters | None = None,
                 comms_restarts: Callable[[], int] | None = None) -> None:
        self.supervisor = supervisor
        self.store = store
        self.sensor_names = sensor_names
        self.ai = ai
        self.southbound = southbound
        self.records = records
        self.durable = durable
        self.playbook = playbook
        self.incidents = incidents
        self.evidence = evidence
        self.publishers = publishers
        self.period_s = period_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.refresh_period_s = 1.0
        self.next_refresh_s = -float("inf")
        self.count = 0
        self._bypass_clock = BypassClock()
        self._gauges = DetectorGauges(supervisor)
        # The last 100,000 cycles: when each started (self.clock) and how late it was.
        self.lateness_s: deque[float] = deque(maxlen=100_000)
        self.cycle_at_s: deque[float] = deque(maxlen=100_000)
        self.decisions: deque[Decision] = deque(maxlen=1000)  # for tests and dashboards
        self.schedule: CycleSchedule | None = None
        # What the core counts for the metrics (None: nothing); each device's client in the
        # counters' device order, to sample its link state with each view.
        self.counters = counters
        self.comms_restarts = comms_restarts
        self._links = ([southbound.clients.get(d) for d in counters.layout.devices]
                       if counters is not None else [])
        self._audit_due_s = -float("inf")  # when the audit sink's figures are read next
        # A candidate site judging beside the enforced one (gateway.runtime.candidate): it
        # sees each cycle after the write was issued, and can never act.
        self.candidate: CandidateJudge | None = None
        # Called with each decision once its command is written (MCP agents' proposals wait
        # for it: gateway.runtime.proposals); must not block or raise.
        self.on_decision: Callable[[Decision], None] | None = None
        # Called with ``now`` at the top of each step, before anything reads the supervisor:
        # where a reload swaps in a committed site and moves a ramp's bounds
        # (gateway.runtime.reloader); None: nothing to do.
        self.between: Callable[[float], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle at the site's period until ``stop`` is set."""
        schedule = CycleSchedule(self.period_s, self.clock())
        self.schedule = schedule
        counters = self.counters
        while not stop.is_set():
            now = self.clock()
            late_s = schedule.lateness_s(now)
            self.lateness_s.append(late_s)
            self.cycle_at_s.append(now)
            await self.step(now)
            done = self.clock()
            if counters is not None:
                layout = counters.layout
                counters.observe(layout.lateness, late_s)
                counters.observe(layout.duration, done - now)
            nxt = schedule.advance(done)
            delay = nxt - self.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def step(self, now: float) -> Decision:
        """One control cycle (drills step it themselves, with their own clock)."""
        if self.between is not None:
            self.between(now)
        sup = self.supervisor
        south = self.southbound
        snapshot = self.store.snapshot(self.sensor_names, now)
        proposal = self.ai.proposal(snapshot.sensors, south.applied, now)
        candidate = self.candidate
        if candidate is not None:
            candidate.before(sup)
        decision = sup.step(snapshot, proposal, now)
        counters = self.counters
        if counters is not None:
            counters.values[0] += 1  # cycles (slot 0: CounterLayout.cycles)
            verdict = decision.verdict
            if verdict is not None:
                counters.verdict(verdict.action)
                if verdict.violations:
                    counters.violated(verdict.violations)
        self.ai.canary_due = decision.canary_due
        # Recorded before the write-back below: replay re-applies it after this step.
        self.records.cycle(snapshot, self.ai.model_inputs, proposal, decision)
        if self.playbook is not None:
            self.playbook.after(decision)
        if decision.events:  # only events change the safety state
            self.durable.note()
        for log_ in self.evidence:
            log_.tick(now)
        # The decision's command is what the devices will hold after encoding, checked as
        # such (the supervisor's wire gate).
        command = decision.command
        async with south.lock:
            # Report by exception: write what changed, and everything once a second so that
            # a value changed at the PLC (a local panel, a restart) is put right.
            if now >= self.next_refresh_s:
                self.next_refresh_s = now + self.refresh_period_s
                changed = None
            else:
                changed = {i for i, (a, b) in enumerate(zip(command.tolist(),
                                                            south.written.tolist(), strict=True))
                           if a != b}
            confirmed = await south.write(command, heartbeat=True, only=changed)
            south.applied = command.copy()  # the decision stays as decided
            south.last_write_s = now
            # A device still busy with an earlier write was skipped (the write is then not
            # confirmed): it never receives this decision, so the next step's rate and step
            # limits are measured from what it was really sent, or its next write would carry
            # two cycles' moves in one.
            sent = (command if confirmed
                    else np.where(np.isnan(south.sent), command, south.sent))
            if sent is not command and not np.array_equal(sent, command):
                self.records.write(sent)
                sup.record_write(sent)
        if candidate is not None:  # after the write: off its latency path; never raises
            candidate.judge(snapshot, proposal, decision)
        if self.on_decision is not None:
            self.on_decision(decision)
        for event in decision.events:
            if counters is not None and event.kind is EventKind.TRIP:
                counters.trip(event.name)
            log.info("event kind=%s name=%s mode=%s reason=%s requester=%s", event.kind,
                     event.name, decision.mode, event.reason, event.requester)
        self.count += 1
        if self.publishers:
            view = self.view(decision)
            for publisher in self.publishers:
                pending = publisher.publish(view)
                if inspect.isawaitable(pending):
                    await pending
        self.decisions.append(decision)
        self.records.idle()  # last: the audit writer's batch runs while the loop sleeps
        return decision

    def view(self, decision: Decision) -> PlantView:
        """The plant as this decision leaves it: values and the true status (mode, latch and
        its reason, the open incident, the newest if several; the bypasses with expiry)."""
        modes = self.supervisor.modes
        open_incidents = self.incidents.open_incidents if self.incidents is not None else ()
        readings = [self.store.get(n) for n in self.sensor_names]
        sensor_values = tuple(r.value for r in readings)
        sensor_at_s = tuple(r.at_s for r in readings)
        gauges = self._gauges
        names, limits = gauges.names, gauges.limits
        values = gauges.values(decision.at_s, self.ai.last, sensor_values, sensor_at_s)
        candidate = self.candidate
        if candidate is not None:
            names, limits = candidate.gauges(names, limits)
            values += candidate.gauge_values()
        last = self.ai.last
        proposal = (tuple(last.values.tolist()) if last is not None and last.values is not None
                    else (float("nan"),) * len(decision.command))
        return PlantView(
            at_s=decision.at_s, at_wall_s=self.wall_clock(), cycle=self.count,
            sensor_values=sensor_values,
            sensor_good=tuple(r.good for r in readings),
            sensor_at_s=sensor_at_s,
            applied=tuple(self.southbound.applied.tolist()),
            sources=tuple(str(s) for s in decision.sources), proposal=proposal,
            mode=decision.mode.value, latched=modes.latched,
            trip_reason=modes.trip_reason or "",
            incident_id=open_incidents[-1].id if open_incidents else "",
            heartbeat=self.southbound.heartbeat,
            bypasses=self._bypass_clock.expiries(modes.bypasses, decision.at_s),
            bypass_left_s=(min(modes.bypasses.values()) - decision.at_s if modes.bypasses
                           else None),
            counters=self._count_now(decision.at_s),
            detector_names=names, detector_limits=limits, detector_values=values)

    def _count_now(self, now_s: float) -> bytes:
        """The counters with what others keep counted (skipped cycles, link states and
        connections, audit alarms, restarts of the communications process) copied in: a
        handful of attribute reads per view; the restarts, and the audit sink's backlog, losses
        and fault once a second (its backlog takes a lock in the audit writer's client)."""
        counters = self.counters
        if counters is None:
            return b""
        values, layout = counters.values, counters.layout
        values[layout.skipped] = self.skipped
        values[layout.audit_alarms] = self.records.alarms
        for i, client in enumerate(self._links):
            counters.set_link(i, getattr(client, "state", ""), getattr(client, "connects", 0))
        if now_s >= self._audit_due_s:  # what changes rarely or costs more, once a second
            self._audit_due_s = now_s + 1.0
            if self.comms_restarts is not None:
                values[layout.comms_restarts] = self.comms_restarts()
            audit = self.records.audit
            if audit is not None:  # the sinks' own figures (AuditLog, AuditProcess)
                values[layout.audit_pending] = max(0, int(getattr(audit, "pending", 0)))
                values[layout.audit_lost] = max(0, int(getattr(audit, "lost", 0)))
                values[layout.audit_fault] = getattr(audit, "alarm", None) is not None
        return counters.snapshot()

    @property
    def skipped(self) -> int:
        return self.schedule.skipped if self.schedule is not None else 0

    def stats(self) -> dict[str, Any]:
        """Cycle statistics: count, skipped cycles and lateness percentiles (milliseconds) over
        the last 100,000 cycles, and ``timeline``: each of those cycles' start (``at_s``, the
        gateway's clock: monotonic seconds) and lateness, so that a load test can take the
        figures of its own window."""
        late = sorted(self.lateness_s)
        if not late:
            return {"cycles": 0.0}

        def pct(q: float) -> float:
            return 1000.0 * late[min(len(late) - 1, int(q * len(late)))]

        return {"cycles": float(len(late)), "skipped": float(self.skipped),
                "lateness_ms_p50": pct(0.5), "lateness_ms_p99": pct(0.99),
                "lateness_ms_max": 1000.0 * late[-1], "period_ms": 1000.0 * self.period_s,
                "timeline": {"at_s": list(self.cycle_at_s),
                             "lateness_ms": [1000.0 * x for x in self.lateness_s]}}
