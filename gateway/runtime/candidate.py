"""A candidate site judged beside the enforced one: what it would have done, never acting.

A site may name a candidate (``commissioning: {candidate: PATH}``; see docs/commissioning.md,
"Candidate beside the enforced envelope"). The running gateway then keeps a second
:class:`~gateway.supervisor.core.Supervisor`, built from the candidate site, and after each
cycle's write has been issued it lets that supervisor judge the same cycle: the same snapshot,
the same proposal (the AI's, or an external controller's latest command), the same time.
Before each judgement the candidate is put in the enforced side's situation as the cycle found
it: what the devices held (the enforced side's applied values, including an operator's
write-through) and since when, the AI's own trajectory, the mode, the latch, the bypasses and
the tripped detectors. So each cycle is judged as it really happened, not as the candidate's
own (never applied) choices would have made it.

What is recorded, per cycle:

- ``proposal``: the candidate envelope's verdict on the proposal (each violated constraint
  under its policy: clamp, reject, trip; a clamp with the values it would have moved);
- ``applied``: the candidate envelope's check of the command the enforced side actually wrote
  (the fallback's output, the AI's, an operator's setpoint ramp), against what the devices
  held before it (skipped when the enforced side wrote safe values: moves to the safe state
  are never limited);
- ``detector``: each detector the candidate would have tripped;
- ``mode``: the mode the candidate would have moved to, when it differs from the enforced one.

A *disagreement* is a cycle where the candidate's outcome differs from the enforced side's: a
different verdict on the proposal, a written command the candidate would not have let through,
a trip the enforced side did not make, or another mode. A candidate equal to the enforced site
has none.

Nothing here can act or stop the cycle: the candidate's supervisor has no southbound side, its
decision is dropped, and any exception it raises is caught, counted, logged once, recorded in
the audit chain, and switches the candidate off for the rest of the run. Its cost per cycle is
measured (:attr:`CandidateJudge.cost_s`).

The audit chain gets ``candidate`` records at a bounded rate: the first disagreement of each
constraint or detector per minute (``verdict``), a summary (the whole report) at most once a
minute while it changes and at close (``summary``), and the switch-off (``off``). The last
summary is the report after a restart (:func:`last_summary`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from gateway.commissioning.prove import Tally
from gateway.envelope.compiled import Action
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Source
from gateway.supervisor.events import EventKind

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.adapters.base import WriteOutcome
    from gateway.audit.log import AuditSink
    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64
    from gateway.envelope.engine import Envelope, Verdict
    from gateway.envelope.wire import WireCodec
    from gateway.supervisor.decision import Decision, Proposal, Snapshot

__all__ = ["AUDIT_KIND", "GAUGE_PREFIX", "REPORT_REQUEST", "CandidateJudge", "last_summary",
           "report_outcome", "start_candidate"]

log = logging.getLogger("gateway.runtime")

AUDIT_KIND: Final = "candidate"
GAUGE_PREFIX: Final = "candidate."
# At most this many per-constraint/detector gauges (the mirror's gauge block is bounded).
MAX_NAMED_GAUGES: Final = 32
# The first disagreement of each constraint or detector per this many seconds is recorded.
RECORD_EVERY_S: Final = 60.0
_ACTIONS: Final = {Action.CLAMP: "clamp", Action.REJECT: "reject", Action.TRIP: "trip"}
# The gauges always present, in this order (values: counts, a UTC time, a flag).
_FIXED: Final = ("judged", "disagreements", "clamp", "reject", "trip", "mode", "errors",
                 "last_disagreement_utc")


class CandidateJudge:
    """The candidate's supervisor and its tallies. Call :meth:`before` just before the
    enforced supervisor's step and :meth:`judge` after its command was written."""

    def __init__(self, candidate: Site, envelope: Envelope, initial: F64, start_s: float,
                 codec: WireCodec | None, audit: Callable[[], AuditSink | None],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.site = candidate
        self.path: Path | None = candidate.source
        self.supervisor = Supervisor(candidate, envelope, np.array(initial, dtype=np.float64),
                                     start_s, codec=codec)
        self.envelope = envelope
        self.names = tuple(t.name for t in candidate.actuators)
        # Each constraint's own policy (a verdict carries only the most severe one).
        policy: dict[str, Action] = {}
        for name, p in zip(envelope.constraint_names,
                           envelope.compiled.slot_policy.tolist(), strict=True):
            policy[name] = max(policy.get(name, Action.OK), Action(int(p)))
        self.policy = policy
        self._audit = audit
        self._wall = wall_clock
        self.on = True
        self.error: str | None = None
        self.errors = 0
        self.judged = 0
        self.writes_judged = 0  # operators' write-throughs (between cycles)
        self.disagreements = 0
        self.last_disagreement: tuple[float, float, str] | None = None  # (at_s, utc, what)
        self.totals = {"clamp": 0, "reject": 0, "trip": 0, "mode": 0}
        self.tallies: dict[tuple[str, str], Tally] = {}
        self.cost_s = 0.0  # seconds spent judging, all cycles together
        self.started_utc = wall_clock()
        self._before: tuple[Any, ...] | None = None
        self._enforced_latches: tuple[frozenset[str], frozenset[str]] = (frozenset(),
                                                                         frozenset())
        self._recorded: dict[str, float] = {}  # key -> when its last verdict was recorded
        self._summary_due_s = -math.inf
        self._dirty = False
        self._named: list[str] = []  # per-constraint/detector gauges, in order of appearance
        self.gauge_names: tuple[str, ...] = tuple(GAUGE_PREFIX + n for n in _FIXED)
        self.gauge_limits: tuple[float, ...] = (math.nan,) * len(_FIXED)
        self._joined: tuple[tuple[Any, ...], tuple[tuple[str, ...], tuple[float, ...]]
                            ] | None = None

    # ------------------------------------------------------------------ the cycle's hooks

    def before(self, enforced: Supervisor) -> None:
        """Note the enforced side's situation as this cycle finds it (references only, cheap
        on the write's path: the supervisor replaces these arrays rather than changing them,
        and :meth:`judge` copies them before the candidate uses them)."""
        if not self.on:
            return
        try:
            modes = enforced.modes
            self._before = (enforced.previous, enforced.written_at_s, enforced.ai_previous,
                            modes.mode, modes.latch, modes.shadow_clean_since_s,
                            dict(modes.bypasses), enforced.latches)
        except Exception as exc:  # the candidate must never reach the cycle
            self.switch_off(exc)

    def judge(self, snapshot: Snapshot, proposal: Proposal | None, decision: Decision) -> None:
        """Judge this cycle as the candidate (see the module docstring). Never raises: an
        exception switches the candidate off (:attr:`on`) and is counted in :attr:`errors`."""
        if not self.on or self._before is None:
            return
        t0 = time.perf_counter()
        try:
            self._judge(snapshot, proposal, decision)
        except Exception as exc:  # the candidate must never reach the cycle
            self.switch_off(exc)
        finally:
            self.cost_s += time.perf_counter() - t0

    def judge_write(self, held: F64, written: F64, sensors: F64, dt_s: float, at_s: float
                    ) -> None:
        """Judge an operator's write-through as the candidate: ``written`` (what the devices
        hold now) against ``held`` (what they held before), with the sensors and ``dt_s`` the
        enforced side checked it with, at ``at_s`` (the core's clock). The enforced side
        accepted it, so any violation is a disagreement. Never raises (see :meth:`judge`)."""
        if not self.on:
            return
        t0 = time.perf_counter()
        try:
            self.writes_judged += 1
            sensors = np.array(sensors, dtype=np.float64)  # a copy: the caller's is left alone
            verdict = self.envelope.check(written, held, sensors, dt_s)
            if verdict.action != Action.OK:
                moved = (_moved(written, verdict.clamped) if verdict.clamped is not None
                         else math.nan)
                clamped = verdict.clamped

                def detail() -> str:
                    return "operator write-through: " + self._values(written, clamped)
                for name in verdict.violations:
                    action = _ACTIONS[self.policy.get(name, verdict.action)]
                    self._count("write", name, action, at_s, moved, detail)
                self._disagree(at_s, f"operator write-through: would "
                                     f"{_ACTIONS[verdict.action]} "
                                     f"({', '.join(verdict.violations)})")
        except Exception as exc:  # the candidate must never reach the write-through
            self.switch_off(exc)
        finally:
            self.cost_s += time.perf_counter() - t0

    def _disagree(self, at_s: float, what: str) -> None:
        self.disagreements += 1
        self.last_disagreement = (at_s, self._wall(), what)

    def switch_off(self, exc: BaseException) -> None:
        """Stop judging for the rest of the run, because of ``exc``; said once in the log and
        the audit chain."""
        self.on = False
        self.errors += 1
        self.error = f"{type(exc).__name__}: {exc}"
        log.error("candidate %s switched off after an error: %s", self.path, self.error,
                  exc_info=exc)
        self._record({"type": "off", "error": self.error, "judged": self.judged})

    # ------------------------------------------------------------------ judging

    def _judge(self, snapshot: Snapshot, proposal: Proposal | None, decision: Decision
               ) -> None:
        assert self._before is not None
        (previous, written_at_s, ai_previous, mode, latch, clean_since, bypasses,
         latches) = self._before
        sup = self.supervisor
        # The enforced side's situation, as the cycle found it.
        if any(self._enforced_latches) and not any(latches):
            # The enforced side was reset: its detectors that judge the AI started afresh.
            sup.divergence.reset()
            sup.violations.reset()
            sup.controller.reset()
        self._enforced_latches = latches
        # Copies: nothing the candidate does may touch the enforced side's arrays.
        previous = previous.copy()
        sup.previous = previous.copy()
        sup.written_at_s = written_at_s
        sup.ai_previous = ai_previous.copy()
        sup.modes.replay_from(mode, clean_since)
        sup.modes.replay_latch(*latch)
        sup.replay_latches(*latches)
        # The operator's bypasses hold for the candidate too (a copy: the enforced side's
        # own dict is never shared). The machine offers no setter but a restart's.
        sup.modes._bypasses = bypasses
        now_s = decision.at_s
        mine = sup.step(snapshot, proposal, now_s)
        # Its fallbacks follow what was really written (bumpless, like the enforced ones).
        sup.record_write(decision.command)
        self.judged += 1
        disagree: list[str] = []
        self._proposal(now_s, decision.verdict, mine.verdict, proposal, disagree)
        if Source.SAFE not in decision.sources:
            self._applied(now_s, decision, previous, mine, disagree)
        enforced_trips = {e.name for e in decision.events if e.kind is EventKind.TRIP}
        for event in mine.events:
            if event.kind is EventKind.TRIP:
                self._count("detector", event.name, "trip", now_s, math.nan,
                            _text(event.reason))
                if event.name not in enforced_trips:
                    disagree.append(f"would trip {event.name}: {event.reason}")
        if mine.mode is not decision.mode:
            self.totals["mode"] += 1
            self._count("mode", f"to {mine.mode.value}", "mode", now_s, math.nan,
                        _text(f"enforced mode {decision.mode.value}"))
            disagree.append(f"would be in {mine.mode.value}, enforced {decision.mode.value}")
        if disagree:
            self._disagree(now_s, "; ".join(disagree))
        if self._dirty and now_s >= self._summary_due_s:
            self._summary_due_s = now_s + RECORD_EVERY_S
            self._dirty = False
            self._record({"type": "summary", "report": self.report(now_s)})

    def _proposal(self, now_s: float, enforced: Verdict | None, verdict: Verdict | None,
                  proposal: Proposal | None, disagree: list[str]) -> None:
        if verdict is None:
            return
        if verdict.action != Action.OK:
            values = proposal.values if proposal is not None else None
            moved = (_moved(values, verdict.clamped)
                     if verdict.clamped is not None and isinstance(values, np.ndarray)
                     and values.shape == verdict.clamped.shape else math.nan)
            clamped = verdict.clamped

            def detail() -> str:
                return self._values(values, clamped)
            for name in verdict.violations:
                action = _ACTIONS[self.policy.get(name, verdict.action)]
                self._count("proposal", name, action, now_s, moved, detail)
        theirs = (None if enforced is None
                  else (int(enforced.action), enforced.violations))
        if theirs != (int(verdict.action), verdict.violations):
            said = ("nothing" if enforced is None else
                    f"{_ACTIONS.get(enforced.action, 'ok')}"
                    + (f" ({', '.join(enforced.violations)})" if enforced.violations else ""))
            disagree.append(f"proposal: {_ACTIONS.get(verdict.action, 'ok')}"
                            + (f" ({', '.join(verdict.violations)})" if verdict.violations
                               else "") + f", enforced {said}")

    def _applied(self, now_s: float, decision: Decision, previous: F64, mine: Decision,
                 disagree: list[str]) -> None:
        command = np.array(decision.command, dtype=np.float64)  # a copy, contiguous
        verdict = self.envelope.check(command, previous, mine.sensors, mine.dt_s)
        if verdict.action == Action.OK:
            return
        moved = (_moved(command, verdict.clamped) if verdict.clamped is not None
                 else math.nan)
        clamped = verdict.clamped

        def detail() -> str:
            return f"source {decision.source.value}: " + self._values(command, clamped)
        for name in verdict.violations:
            action = _ACTIONS[self.policy.get(name, verdict.action)]
            self._count("applied", name, action, now_s, moved, detail)
        disagree.append(f"written command: would {_ACTIONS[verdict.action]} "
                        f"({', '.join(verdict.violations)})")

    def _values(self, values: object, clamped: F64 | None) -> str:
        if not isinstance(values, np.ndarray) or values.shape != (len(self.names),):
            return "no usable values"
        out = []
        for i, name in enumerate(self.names):
            v = float(values[i])
            if clamped is None:
                out.append(f"{name}={v:.6g}")
            else:
                c = float(clamped[i])
                out.append(f"{name}={v:.6g}" + (f" -> {c:.6g}" if c != v else ""))
        return ", ".join(out) + ("" if clamped is not None else " (refused)")

    def _count(self, kind: str, name: str, action: str, now_s: float, magnitude: float,
               detail: Callable[[], str]) -> None:
        """Count one would-``action`` of constraint or detector ``name`` (``kind``: what was
        judged). ``detail`` is built only when it is kept: among the worst cases, or recorded
        (most cycles of a lasting disagreement need neither)."""
        key = (kind, name)
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = Tally(name, kind, action)
            gauge = f"{action}.{name}"
            if gauge not in self._named and len(self._named) < MAX_NAMED_GAUGES:
                self._named.append(gauge)
                self.gauge_names = tuple(GAUGE_PREFIX + n for n in (*_FIXED, *self._named))
                self.gauge_limits = (math.nan,) * len(self.gauge_names)
        worst = tally.worst
        keep = len(worst) < 5 or (magnitude == magnitude and magnitude > worst[-1][1])
        text = detail() if keep else ""
        if keep:
            tally.add(now_s, magnitude, text)
        else:  # what Tally.add does for a case that is not among its worst
            tally.count += 1
            tally.last_s = now_s
        if action in self.totals and kind != "mode":
            self.totals[action] += 1
        self._dirty = True
        rec_key = f"{kind}:{name}"
        if now_s >= self._recorded.get(rec_key, -math.inf):
            self._recorded[rec_key] = now_s + RECORD_EVERY_S
            self._record({"type": "verdict", "kind": kind, "name": name, "action": action,
                          "at_s": now_s, "at_utc": self._wall(),
                          "detail": text or detail()})

    def _record(self, payload: dict[str, Any]) -> None:
        sink = self._audit()
        if sink is None:
            return
        payload = {"candidate": str(self.path), **payload}
        try:
            sink.append(AUDIT_KIND, payload)
        except (ValueError, TypeError) as exc:  # a bad payload: a bug here, never the cycle's
            log.error("candidate: audit record refused: %s", exc)

    # ------------------------------------------------------------------ what others read

    def gauges(self, names: tuple[str, ...], limits: tuple[float, ...]
               ) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """``names`` and ``limits`` (the detectors' gauges) followed by the candidate's, as
        the same tuples from one cycle to the next while nothing changed (the mirror copies
        names and limits only when it is handed other tuples)."""
        key = (names, limits, self.gauge_names)
        cached = self._joined
        if cached is None or any(a is not b for a, b in zip(cached[0], key, strict=True)):
            cached = self._joined = (key, (names + self.gauge_names,
                                           limits + self.gauge_limits))
        return cached[1]

    def gauge_values(self) -> tuple[float, ...]:
        """The gauges' values, in :attr:`gauge_names` order (as many). Never raises: an
        error switches the candidate off and gives NaN for each gauge."""
        try:
            return self._gauge_values()
        except Exception as exc:  # the view must go out whatever the candidate does
            self.switch_off(exc)
            return (math.nan,) * len(self.gauge_names)

    def _gauge_values(self) -> tuple[float, ...]:
        last = self.last_disagreement
        t = self.totals
        named = []
        for gauge in self._named:
            action, _, name = gauge.partition(".")
            count = sum(tally.count for (kind, n), tally in self.tallies.items()
                        if n == name and tally.action == action)
            named.append(float(count))
        return (float(self.judged), float(self.disagreements), float(t["clamp"]),
                float(t["reject"]), float(t["trip"]), float(t["mode"]), float(self.errors),
                last[1] if last is not None else math.nan, *named)

    def report(self, now_s: float) -> dict[str, Any]:
        """The report so far, JSON-ready, in the shape of ``prove``'s (tallies per constraint
        and detector, worst cases with times: the core's clock, ``at_s``, and UTC)."""
        offset = self._wall() - now_s  # core clock -> UTC seconds
        tallies = []
        for tally in sorted(self.tallies.values(), key=lambda t: (t.kind, t.name)):
            j = tally.json()
            for w in j["worst"]:
                w["at_utc"] = w["at_s"] + offset
            tallies.append(j)
        last = self.last_disagreement
        return {"candidate": str(self.path), "on": self.on, "error": self.error,
                "errors": self.errors, "started_utc": self.started_utc,
                "cycles_judged": self.judged, "writes_judged": self.writes_judged,
                "disagreements": self.disagreements,
                "last_disagreement": (None if last is None else
                                      {"at_s": last[0], "at_utc": last[1], "what": last[2]}),
                "clamps": self.totals["clamp"], "refusals": self.totals["reject"],
                "trips": self.totals["trip"], "mode_changes": self.totals["mode"],
                "cost_us_per_cycle": (1e6 * self.cost_s / self.judged if self.judged
                                      else None),
                "tallies": tallies}

    def close(self, now_s: float) -> None:
        """Record the final summary (the report that outlives the run). Never raises (the
        gateway's close goes on: an error is logged)."""
        try:
            self._record({"type": "summary", "final": True, "report": self.report(now_s)})
        except Exception:  # the shutdown record and the rest of close come after this
            log.exception("candidate %s: the final summary could not be recorded", self.path)


def _text(text: str) -> Callable[[], str]:
    return lambda: text


def _moved(values: F64, clamped: F64) -> float:
    """How far the projection moved the command (the largest move; actuators the command
    leaves NaN, those the AI does not drive, do not count)."""
    moved = np.abs(clamped - values)
    moved = moved[np.isfinite(moved)]
    return float(moved.max()) if moved.size else math.nan


REPORT_REQUEST: Final = "candidate_report"
"""The request kind that asks the core for the candidate's report (OPC UA CandidateReport)."""


def report_outcome(judge: CandidateJudge | None, now_s: float) -> WriteOutcome:
    """The answer to :data:`REPORT_REQUEST`: accepted with the report as one JSON object (no
    NaN: JSON's own), or refused when the site names no candidate. Read only: it changes
    nothing and is not audited."""
    from gateway.adapters.base import WriteOutcome

    if judge is None:
        return WriteOutcome(False, 4, "this site names no candidate (commissioning.candidate)")
    return WriteOutcome(True, 0, json.dumps(judge.report(now_s), allow_nan=False))


def start_candidate(candidate: Site, engine: str, initial: F64, start_s: float,
                    codec: WireCodec | None, audit: Callable[[], AuditSink | None],
                    wall_clock: Callable[[], float] = time.time) -> CandidateJudge | None:
    """The judge for ``candidate`` (its envelope compiled with the enforced side's ``engine``),
    or None, logged, if it cannot be built: a candidate never stops the gateway."""
    import gateway.envelope

    try:
        envelope = gateway.envelope.compile(candidate, engine)
        judge = CandidateJudge(candidate, envelope, initial, start_s, codec, audit, wall_clock)
    except Exception as exc:  # whatever it is, the enforced side runs on without it
        log.error("candidate %s not started: %s: %s", candidate.source, type(exc).__name__,
                  exc)
        return None
    log.info("candidate %s judges beside the enforced site (engine %s)", candidate.source,
             envelope.engine)
    return judge


def last_summary(audit_db: Path) -> dict[str, Any] | None:
    """The newest candidate summary in the audit database at ``audit_db`` (the report as the
    last run left it), or None when there is none."""
    from gateway.audit.store import read_records

    found: dict[str, Any] | None = None
    for record in read_records(audit_db, kinds=(AUDIT_KIND,)):
        data = record.data()
        if isinstance(data, dict) and data.get("type") == "summary":
            found = data
    return found
