"""The supervisor: the decision module of the Simplex architecture, pure and sans-IO.

``Supervisor.step(snapshot, proposal, now_s)`` judges the AI's proposal against the envelope,
runs the detectors, moves the mode machine, chooses the output and passes it through the gate
of the one invariant. It performs no I/O and reads no clock, so the same code runs live, in
drills at accelerated time, in tests and in forensic replay.

Operator requests are applied between steps, at once (:meth:`Supervisor.apply_request`), so
that the requester learns the real outcome; their events go out with the next step's decision.

One step, in order:

1. Expire bypasses (``tick``).
2. Input health: bad, stale or implausible sensors become NaN for everything downstream
   (the envelope then fails safe on them) and demand SAFE_STOP.
3. Every fallback controller computes (hot standby), whatever the mode.
4. The proposal: unusable or late → controller findings; otherwise the envelope's verdict and
   the canary comparison, and, in AUTO and SHADOW only (where the AI is in control or on
   trial), the violation-rate window, gross violations and the divergence detectors.
5. Findings move the mode toward safety only, and latch (unless their detector is bypassed).
   Findings that judge the AI (controller health, silence, envelope trips of its proposal,
   canary, and those of step 4) latch only while the AI is in control or on trial (AUTO,
   SHADOW); in MANUAL and SAFE_STOP they are recorded once as ANOMALY events, so that an AI
   that is already out can never lock the operator out again after a reset.
6. The output: AUTO takes the AI's command when the envelope passed or clamped it, else the
   fallback; SHADOW and MANUAL take the fallback; SAFE_STOP takes the safe values.
7. The gate admits it (envelope check of the chosen command; clamp; safe values for offending
   actuators; all safe values as the last resort).
8. The fallback controllers track what was applied (bumpless transfer).

Failover therefore happens in the step that sees the anomaly: no cycle of unsafe output.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from gateway.config.schema import ControllerKind
from gateway.control.bank import FallbackBank
from gateway.envelope.compiled import Action
from gateway.envelope.gate import Gate
from gateway.envelope.wire import WireGate
from gateway.supervisor.decision import Decision, ProposalAnomaly, Source
from gateway.supervisor.detectors import (
    Canary,
    ControllerHealth,
    Divergence,
    Finding,
    GrossViolation,
    InputHealth,
    ViolationRate,
)
from gateway.supervisor.events import Event, EventKind
from gateway.supervisor.modes import Mode, ModeConfig, ModeMachine

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64
    from gateway.envelope.engine import Envelope, Verdict
    from gateway.envelope.wire import WireCodec
    from gateway.supervisor.decision import Proposal, Snapshot
    from gateway.supervisor.detectors import CanaryCases
    from gateway.supervisor.modes import OperatorRequest

_F64 = np.dtype(np.float64)
_OK = Action.OK
_new = tuple.__new__
# Smallest step used for rate limits when the clock does not advance between two steps.
_MIN_DT_S = 1e-6


class Supervisor:
    """Supervises one site.

    ``initial_command`` is what the actuators hold now (their read-back, or the safe values):
    the rate limits of the first step are measured from it and the fallbacks start from it.
    ``canary`` holds the current model's golden cases, if it has any. With a ``codec`` (the
    runtime's, and replay's: ``gateway.adapters.codec``) each step's command is the one the
    devices will hold after encoding, checked again as such (:class:`WireGate`): the decision
    is the last word on what is written. Without one (tests of the logic alone) it is the
    envelope's command as computed.
    """

    def __init__(self, site: Site, envelope: Envelope, initial_command: F64, start_s: float,
                 canary: CanaryCases | None = None, codec: WireCodec | None = None) -> None:
        n_a = envelope.n_actuators
        if initial_command.shape != (n_a,):
            raise ValueError(f"initial_command must have length {n_a}")
        self.site = site
        self.envelope = envelope
        self.gate = Gate(envelope)
        self.safe_values = self.gate.safe_values  # plain; the effective state: safe_state()
        self.wire = None if codec is None else WireGate(site.actuators, self.gate, codec)
        self.bank = FallbackBank(site, initial_command)
        self.inputs = InputHealth(site)
        names = [t.name for t in site.actuators]
        driven = set(site.controller.outputs) if site.controller.outputs else set(names)
        # Actuators the AI does not drive take the fallback's value inside the proposal.
        self._not_driven = [i for i, n in enumerate(names) if n not in driven]
        self.divergence = Divergence(site, self.bank.kinds,
                                     [n in driven for n in names])
        self.detector_names = _detector_names(self.inputs, self.divergence)
        op = site.operation
        self.modes = ModeMachine(ModeConfig(start_mode=Mode(op.start_mode.value),
                                            clean_shadow_s=op.clean_shadow_s,
                                            bypass_max_s=op.bypass_max_s,
                                            detectors=frozenset(self.detector_names),
                                            bypass_max_concurrent=op.bypass_max_concurrent,
                                            bypass_second_approval_s=(
                                                op.bypass_second_approval_s)))
        self.violations = ViolationRate(site)
        self.gross = GrossViolation(site, envelope)
        self._gross_findings: list[Finding] = []
        self._ai_in_control = False  # the last step's command came from the AI
        # Containment by rate limiting (a playbook step): every actuator's rate limit scaled
        # by rate_factor for what is applied, AI or fallback; safe values are never slowed.
        limits = {lim.actuator: lim for lim in site.envelope.limits}
        self._max_rates = np.array(
            [(limits[t.name].max_rate_per_s if t.name in limits
              and limits[t.name].max_rate_per_s is not None else np.inf)
             for t in site.actuators], dtype=np.float64)
        self.rate_factor = 1.0
        self.controller = ControllerHealth(site)
        self.canary = Canary(canary, site.detection.canary_period_s, start_s)
        self.silence_s = site.controller.silence_timeout_ms / 1000.0
        # Since when no proposal at all has come (None: one came this step). A site with an AI
        # must not reach SHADOW or AUTO on an AI that never spoke: its silence counts too.
        self._has_ai = site.controller.kind is not ControllerKind.NONE
        self._no_proposal_since: float | None = start_s
        self.previous = np.array(initial_command, dtype=np.float64)
        # The AI's own last command: while it is not in control it is judged as if it were,
        # on its own trajectory; judging it against the fallback's output would clamp every
        # disagreement with the fallback's position and no shadow period would ever be clean.
        self.ai_previous = self.previous.copy()
        self.last_s = start_s - site.site.cycle_ms / 1000.0
        # When what `previous` holds was last written (a cycle's command or a write-through):
        # rate and step limits are measured from it, so that two writers' moves never add up.
        self.written_at_s = self.last_s
        self._pending: list[Event] = []
        # The latest step's input-health findings: the causes of a trip that persist, which a
        # reset or a move out of SAFE_STOP must wait for.
        self._sensing: tuple[Finding, ...] = ()
        # Detectors that tripped in the current latch: reported once, re-asserted if needed.
        self._tripped: set[str] = set()
        # Detectors judging the AI that fired while it was out of control: recorded once.
        self._observed: set[str] = set()
        self._n_a = n_a
        # Per-actuator sources when the gate made no actuator safe (nearly every cycle).
        self._uniform_sources = {src: (src,) * n_a for src in Source}

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    def apply_request(self, req: OperatorRequest) -> list[Event]:
        """Apply an operator request now and return its events: what changed, or one
        REQUEST_REFUSED event with the reason. The events also go out with the next step's
        decision (for the audit log and the incident manager).

        It is judged at the time of the latest step (the supervisor's clock: no time passes
        for it between steps) and against that step's sensing, so that forensic replay,
        which applies recorded requests just before the next step, reproduces it exactly.
        A reset that is granted also resets the detectors that judge the AI; the AI's
        trial in SHADOW starts with them fresh.
        """
        now_s = self.last_s
        faults = tuple(f"{f.detector}: {f.reason}" for f in self._sensing
                       if not self.modes.is_bypassed(f.detector, now_s))
        events = self.modes.request(now_s, req, faults)
        for event in events:
            if event.kind is EventKind.RESET:
                self._reset_detectors()
            elif (event.kind is EventKind.MODE_CHANGE
                  and dict(event.evidence).get("to") == Mode.SHADOW.value):
                self.controller.reset()
                self._observed.clear()
        if self.bank.overrides and self.modes.mode is not Mode.MANUAL:
            self.bank.overrides.clear()
        self._pending += events
        return events

    def set_operator_setpoint(self, actuator: int, value: float | None) -> None:
        """Hold ``actuator`` at an operator's setpoint instead of its fallback output (None
        releases it). Honoured while the mode is MANUAL; leaving MANUAL releases every one."""
        if value is None:
            self.bank.overrides.pop(actuator, None)
        else:
            self.bank.overrides[actuator] = value

    def set_rate_factor(self, factor: float) -> None:
        """Scale every actuator's rate limit by ``factor`` (0 < factor <= 1; 1 lifts it) for
        the commands applied from the next step. ValueError for anything else."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"rate factor must be in (0, 1], not {factor!r}")
        self.rate_factor = float(factor)

    def record_write(self, command: F64, at_s: float | None = None) -> None:
        """A command written instead of the last step's (an operator's validated
        write-through at ``at_s``, or the wire gate's adjustment of the step's own command,
        ``at_s`` None): rate and step limits of the next step are measured from it and from
        when it was written, and the fallbacks track it."""
        # The AI's own trajectory is left alone: what was written says nothing about it. The
        # reference PIDs follow only if the AI is not in control: the wire gate adjusts the
        # AI's command (rounding to the register's resolution) nearly every cycle, and a
        # reference that followed those writes would follow the AI itself, blinding the
        # divergence detector to a slow, stealthy bias.
        self.previous = np.array(command, dtype=np.float64)
        if at_s is not None and at_s > self.written_at_s:
            self.written_at_s = float(at_s)
        self.bank.track(self.previous.tolist(), self._ai_in_control)

    @property
    def latches(self) -> tuple[frozenset[str], frozenset[str]]:
        """The detectors that tripped in the current latch, and those judging the AI that
        fired while it was out of control (for a forensic checkpoint)."""
        return frozenset(self._tripped), frozenset(self._observed)

    def replay_latches(self, tripped: Iterable[str], observed: Iterable[str]) -> None:
        """Set what :attr:`latches` returned. For forensic replay only; a live gateway never
        calls it."""
        self._tripped = set(tripped)
        self._observed = set(observed)

    def step(self, snapshot: Snapshot, proposal: Proposal | None, now_s: float) -> Decision:
        """One control cycle. Never raises for anything the plant, the AI or an operator does."""
        dt = now_s - self.last_s
        if not dt > _MIN_DT_S:
            dt = _MIN_DT_S
        # The time the write window spans: since the last write, whoever made it (a
        # write-through between two cycles shortens it). Controllers keep the cycle's dt.
        dt_write = now_s - self.written_at_s
        if not dt_write > _MIN_DT_S:
            dt_write = _MIN_DT_S
        self.last_s = max(now_s, self.last_s)
        events = self._pending
        self._pending = []
        events += self.modes.tick(now_s)
        if self.bank.overrides and self.modes.mode is not Mode.MANUAL:
            self.bank.overrides.clear()

        sensors, findings = self.inputs.check(snapshot.sensors.tolist(), snapshot.good.tolist(),
                                              snapshot.age_s.tolist(), now_s)
        self._sensing = tuple(findings) if findings else ()
        sensor_vec = np.array(sensors, dtype=np.float64)  # a copy, NaN where masked
        fallback = self.bank.update(sensors, dt)

        mode = self.modes.mode
        # Whether the AI is in control or on trial this step: only then may a finding about
        # the AI latch. In MANUAL and SAFE_STOP the AI is out already; a detector judging it
        # there (an external AI that wrote once and went silent) would latch again straight
        # after every reset and lock the operator out.
        judged = mode is Mode.AUTO or mode is Mode.SHADOW
        verdict, ai, anomaly = self._judge(proposal, now_s, sensor_vec, dt, dt_write, fallback)
        ai_findings = self.controller.update(anomaly)
        if verdict is not None:
            assert ai is not None
            action = verdict.action
            if action == Action.TRIP:
                ai_findings.append(_envelope_finding(verdict))
            # The AI's behaviour is judged (clamp rate, divergence) only where it is in
            # control or on trial: AUTO and SHADOW. In MANUAL and SAFE_STOP it is checked
            # against the fallback's trajectory, and disagreeing with the fallback would latch
            # a trip again straight after every reset, so that SHADOW could never begin.
            if judged:
                ai_findings += self.violations.update(now_s, action != _OK)
                if self._gross_findings:
                    ai_findings += self._gross_findings
                    self._gross_findings = []
                if self.divergence.watch:
                    ai_findings += self.divergence.update(ai.tolist(), self.bank.reference)
                if action != _OK and mode is Mode.SHADOW:
                    self.modes.anomaly(now_s)
        if proposal is not None and proposal.canary is not None:
            ai_findings += self.canary.update(proposal.canary)
        for finding in findings:
            events += self._apply(finding, now_s)
        for finding in ai_findings:
            events += (self._apply(finding, now_s) if judged
                       else self._observe(finding, now_s, mode))

        mode = self.modes.mode
        if mode is Mode.AUTO and verdict is not None and verdict.clamped is not None:
            chosen, source = verdict.clamped, Source.AI
        elif mode is Mode.SAFE_STOP:
            # The effective safe state: conditional rows and holding interlocks applied to
            # the trusted sensors (an untrusted one is NaN here, and NaN makes conditions hold).
            chosen, source = self.gate.safe_state(sensor_vec), Source.SAFE
        else:
            chosen, source = fallback, Source.FALLBACK
        if self.rate_factor < 1.0 and source is not Source.SAFE:
            step_max = self._max_rates * (self.rate_factor * dt_write)
            chosen = np.clip(chosen, self.previous - step_max, self.previous + step_max)
        admitted = self.gate.admit(chosen, self.previous, sensor_vec, dt_write)
        command = admitted.command
        safe = admitted.safe
        if self.wire is not None:
            # The invariant after encoding: what the devices will hold, checked as such.
            written = self.wire.admit(command, self.previous, sensor_vec, dt_write)
            command = written.values
            if True in written.safe:
                safe = written.safe
        sources = (tuple(Source.SAFE if s else source for s in safe) if True in safe
                   else self._uniform_sources[source])
        self._ai_in_control = source is Source.AI
        self.bank.track(command.tolist(), self._ai_in_control)
        self.previous = command
        self.written_at_s = max(now_s, self.written_at_s)
        if source is Source.AI or mode is Mode.MANUAL or mode is Mode.SAFE_STOP:
            # In AUTO the AI's trajectory is what was applied; outside SHADOW it restarts from
            # the applied output, so that SHADOW begins where the plant is.
            self.ai_previous = command
        clamped = admitted.clamped or (source is Source.AI and verdict is not None
                                       and verdict.action == Action.CLAMP)
        # tuple.__new__ skips the NamedTuple's Python-level __new__: built every cycle.
        return _new(Decision, (now_s, mode, command, source, sources, verdict, fallback,
                               clamped, tuple(events), self.canary.due(now_s), sensor_vec,
                               dt_write))

    # -------------------------------------------------------------------------------------

    def _judge(self, proposal: Proposal | None, now_s: float, sensors: F64, dt: float,
               dt_write: float, fallback: F64
               ) -> tuple[Verdict | None, F64 | None, ProposalAnomaly | None]:
        """The envelope's verdict on the proposal, or the anomaly that stands in for it."""
        if proposal is None:
            if self._no_proposal_since is None:
                self._no_proposal_since = now_s
            if (self._has_ai and self.modes.mode in (Mode.SHADOW, Mode.AUTO)
                    and not now_s - self._no_proposal_since <= self.silence_s):
                return None, None, ProposalAnomaly.SILENT
            return None, None, None
        self._no_proposal_since = None
        if proposal.anomaly is not None:
            return None, None, proposal.anomaly
        values = proposal.values
        if (proposal.produced_at_s is not None
                and not now_s - proposal.produced_at_s <= self.silence_s):
            return None, None, ProposalAnomaly.SILENT
        if not (isinstance(values, np.ndarray) and values.dtype is _F64
                and values.shape == (self._n_a,)):
            return None, None, ProposalAnomaly.WRONG_OUTPUT_SHAPE
        if self._not_driven:
            values = np.array(values)  # a copy: the caller's array is never changed
            for i in self._not_driven:
                values[i] = fallback[i]
        elif not values.flags.c_contiguous:
            values = np.ascontiguousarray(values)
        mode = self.modes.mode
        in_control = mode is Mode.AUTO
        # In control, the AI moves what was last written (and when); on trial, its own
        # trajectory, one cycle on.
        previous = self.previous if in_control else self.ai_previous
        dt = dt_write if in_control else dt
        verdict = self.envelope.check(values, previous, sensors, dt)
        # Only on the AI's own trajectory (AUTO, SHADOW): while it is quarantined it is judged
        # against what the fallback applied, and disagreeing with the fallback is no attack.
        if verdict.action != _OK and (in_control or mode is Mode.SHADOW):
            self._gross_findings = self.gross.update(values, previous, sensors, dt)
        if verdict.clamped is not None:
            self.ai_previous = verdict.clamped
        return verdict, values, None

    def _apply(self, finding: Finding, now_s: float) -> list[Event]:
        """Move the mode for ``finding``; report a detector once per latch."""
        mode = self.modes.mode
        tightens = finding.target.safety_rank > mode.safety_rank
        if finding.detector in self._tripped and not tightens:
            return []
        events = self.modes.trip(now_s, finding.detector, finding.reason, finding.target)
        if any(e.kind is EventKind.TRIP for e in events):
            self._tripped.add(finding.detector)
            if finding.evidence:
                events = [Event(e.at_s, e.kind, e.name, e.reason, e.requester,
                                e.evidence + finding.evidence)
                          if e.kind is EventKind.TRIP else e for e in events]
        return events

    def _observe(self, finding: Finding, now_s: float, mode: Mode) -> list[Event]:
        """Record (once until a reset or a new trial) a finding about an AI that is out of
        control: an ANOMALY event, no latch, no mode change."""
        if finding.detector in self._observed:
            return []
        self._observed.add(finding.detector)
        return [Event(self.modes.last_now_s if self.modes.last_now_s is not None else now_s,
                      EventKind.ANOMALY, finding.detector,
                      f"not latched, the AI is not in control or on trial (mode {mode}): "
                      f"{finding.reason}", None, (("mode", mode.value), *finding.evidence))]

    def _reset_detectors(self) -> None:
        self._tripped.clear()
        self._observed.clear()
        self.divergence.reset()
        self.violations.reset()
        self.controller.reset()


def _detector_names(inputs: InputHealth, divergence: Divergence) -> tuple[str, ...]:
    """Every detector name a finding of this site can carry (what a bypass may name), sorted.
    Kept beside the detectors' own naming: a test checks each finding's name is listed."""
    names = {"violation_rate", "envelope", "envelope.gross", "canary", *ControllerHealth.names()}
    names |= {f"device.{device}" for device, _ in inputs.devices}
    for sensor in inputs.names:
        names |= {f"input.quality.{sensor}", f"input.stale.{sensor}", f"input.range.{sensor}"}
    for w in inputs.watches:
        if math.isfinite(w.frozen_s):
            names.add(f"input.frozen.{w.name}")
        if math.isfinite(w.max_rate):
            names.add(f"input.rate.{w.name}")
    names |= {f"divergence.{name}" for _, name, _, _ in divergence.watch}
    return tuple(sorted(names))


def _envelope_finding(verdict: Verdict) -> Finding:
    names = ", ".join(verdict.violations)
    return Finding("envelope", Mode.MANUAL, f"trip constraint violated: {names}",
                   (("violations", names),))
