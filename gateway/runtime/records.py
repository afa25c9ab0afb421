"""What the running gateway writes down: the audit log and the flight recorder.

The audit log (SQLite, hash-chained, written off the control path) gets every decision that
differs from nominal and one nominal cycle in ``audit.sample_every_n``; every operator action
(who, from where, what, the result); every refused write, aggregated per client and reason
(``gateway.runtime.refusals``); every mode change and detector event; the config and model
loads with their hashes; the safety state whenever it changes, the start (what was restored)
and the shutdown, and an unclean end of the previous run (``gateway.runtime.durable``).
The flight recorder keeps the last ``audit.recorder_before_s`` of full-rate cycles in memory
for incidents and forensic replay.

Nothing here waits on disk: :meth:`gateway.audit.AuditLog.append` queues, a writer thread
commits. The payloads are built from fresh lists, never from arrays the control loop reuses
(the writer serialises them later).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from gateway.forensics.recorder import FlightRecorder, RecordingInfo
from gateway.supervisor.decision import Source
from gateway.supervisor.events import EventKind

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.audit.log import AuditSink
    from gateway.config.schema import Site
    from gateway.envelope.compiled import F64
    from gateway.forensics.recorder import Frame
    from gateway.supervisor.decision import Decision, Proposal, Snapshot
    from gateway.supervisor.detectors import CanaryCases
    from gateway.supervisor.modes import OperatorRequest

__all__ = ["Records", "file_sha256"]

log = logging.getLogger("gateway.runtime")


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file's bytes, or None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


class Records:
    """The audit log (optional) and the flight recorder of one gateway."""

    def __init__(self, site: Site, audit: AuditSink | None) -> None:
        self.site = site
        self.audit = audit
        self.sample_every_n = site.audit.sample_every_n
        self.recorder: FlightRecorder | None = None
        self.sensor_names = [t.name for t in site.sensors]
        self.actuator_names = [t.name for t in site.actuators]
        self._nominal_count = 0
        self.alarms = 0  # alarm records appended (the core's metrics)

    # ------------------------------------------------------------------ start-up

    def start(self, start_s: float, initial: F64, canary: CanaryCases | None,
              model_sha256: str | None,
              checkpoint: Callable[[], dict[str, Any]] | None = None) -> None:
        """The supervisor was built: start the flight recorder with what replay needs
        (``checkpoint``: the supervisor's accumulated state, kept every few frames so that
        replay of a window that starts mid-run can restore it; see
        :mod:`gateway.forensics.checkpoint`)."""
        cycle_s = self.site.site.cycle_ms / 1000.0
        info = RecordingInfo.of(self.site, start_s, initial, canary, model_sha256)
        self.recorder = FlightRecorder(self.site.audit.recorder_before_s, cycle_s, info,
                                       checkpoint=checkpoint)

    def config_loaded(self, engine: str) -> None:
        path = self.site.source
        self._append("config_load", {"site": self.site.site.name, "file": str(path),
                                     "sha256": file_sha256(path), "engine": engine})
        if not self.site.audit.required:
            # The chain itself says that this site chose to control on without it.
            self.alarm("audit.required is false: this gateway goes on controlling when its "
                       "audit log is unusable (its records are then lost)")

    def model_loaded(self, path: Path | None, sha256: str | None, accepted: bool,
                     reason: str = "") -> None:
        self._append("model_load", {"path": str(path), "sha256": sha256,
                                    "accepted": accepted, "reason": reason})

    def rollout(self, step: dict[str, Any]) -> None:
        """One step of a fleet model rollout (``gateway.runtime.model_swap``)."""
        self._append("rollout", step, actor="fleet", source="fleet")

    # ------------------------------------------------------------------ operators

    def request(self, req: OperatorRequest, source: str, result: str) -> None:
        if self.recorder is not None:
            self.recorder.operator.request(req)
        self._append("operator", {"action": str(req.kind), "detector": req.detector,
                                  "duration_s": req.duration_s, "authorised": req.authorised,
                                  "result": result}, actor=req.requester, source=source)

    def operator_write(self, who: str, source: str, values: dict[str, float],
                       result: str) -> None:
        self._append("operator", {"action": "write", "values": dict(values), "result": result},
                     actor=who, source=source)

    def refused_writes(self, window: dict[str, Any]) -> None:
        """One client's refused writes for one reason over (at most) a second: the count,
        the first and last values tried, and the span (``gateway.runtime.refusals``)."""
        who = window.get("user") or window.get("client") or "?"
        self._append("refused_write", window, actor=str(who),
                     source=f"{window.get('protocol')}:{window.get('client')}")

    def security(self, window: dict[str, Any]) -> None:
        """Refused connections, channels or certificates, or failed logins, at a northbound
        server: one client's, for one event and reason, over (at most) a second
        (``gateway.runtime.refusals``; the event is the window's role)."""
        self._append("security", {
            "event": window.get("role"), "user": window.get("user"),
            "reason": window.get("reason"), "count": window.get("count"),
            "first_at_s": window.get("first", {}).get("at_s"),
            "last_at_s": window.get("last", {}).get("at_s"), "span_s": window.get("span_s"),
            "addresses": window.get("addresses"), "n_addresses": window.get("n_addresses")},
            actor=window.get("user") or "", source=f"{window.get('protocol')}:"
                                                   f"{window.get('client')}")

    def agent_calls(self, window: dict[str, Any]) -> None:
        """MCP tool calls of one agent, tool and outcome over (at most) a window, aggregated
        by the communications process (``gateway.mcp.calls``): the count, the first and last
        arguments and outcomes, the span."""
        self._append("agent_call", window, actor=str(window.get("agent") or "?"),
                     source=f"mcp:{window.get('address') or ''}")

    def setpoint(self, actuator: int, value: float | None) -> None:
        if self.recorder is not None:
            self.recorder.operator.setpoint(actuator, value)

    def write(self, command: F64) -> None:
        if self.recorder is not None:
            self.recorder.operator.write(command)

    # ------------------------------------------------------------------ every cycle

    def cycle(self, snapshot: Snapshot, model_inputs: F64 | None, proposal: Proposal | None,
              decision: Decision) -> Frame | None:
        """Record one cycle (call right after ``Supervisor.step``, before any write-back)."""
        frame = None
        if self.recorder is not None:
            frame = self.recorder.record_cycle(decision.at_s, snapshot, model_inputs, proposal,
                                               decision)
        if self.audit is None:
            return frame
        verdict = decision.verdict
        nominal = (not decision.events and not decision.clamped
                   and (verdict is None or verdict.ok)
                   and Source.SAFE not in decision.sources)
        if nominal:
            self._nominal_count += 1
            if self.sample_every_n == 0 or self._nominal_count % self.sample_every_n:
                return frame
        self._append("decision", self._decision_payload(snapshot, proposal, decision,
                                                         nominal))
        for event in decision.events:
            kind = "mode" if event.kind is EventKind.MODE_CHANGE else "event"
            self._append(kind, {"kind": str(event.kind), "name": event.name,
                                "reason": event.reason, "at_s": event.at_s,
                                "evidence": {k: v for k, v in event.evidence}},
                         actor=event.requester or "gateway")
        return frame

    def _decision_payload(self, snapshot: Snapshot, proposal: Proposal | None,
                          decision: Decision, nominal: bool) -> dict[str, Any]:
        verdict = decision.verdict
        values = proposal.values if proposal is not None else None
        return {
            "at_s": decision.at_s, "nominal": nominal, "mode": str(decision.mode),
            "source": str(decision.source), "sources": [str(s) for s in decision.sources],
            "command": dict(zip(self.actuator_names, _floats(decision.command), strict=True)),
            "proposal": (None if values is None else
                         dict(zip(self.actuator_names, _floats(values), strict=True))),
            "anomaly": None if proposal is None or proposal.anomaly is None
            else str(proposal.anomaly),
            "verdict": None if verdict is None else {
                "action": int(verdict.action), "violations": list(verdict.violations)},
            "clamped": bool(decision.clamped),
            "sensors": dict(zip(self.sensor_names, _floats(snapshot.sensors), strict=True)),
            "good": [bool(g) for g in snapshot.good],
            "events": [f"{e.kind}:{e.name}" for e in decision.events],
        }

    # ------------------------------------------------------------------ plumbing

    def shutdown(self, left: dict[str, tuple[str, float]], cause: str | None,
                 state: dict[str, Any]) -> None:
        """What each actuator was left at when the gateway stopped: ``name -> (policy,
        value)``; the policy is ``safe`` (the safe value was written) or ``hold``. ``cause``
        names what stopped it (a signal's name, or None), ``state`` is the safety state it
        leaves for the next start (:class:`gateway.runtime.durable.SafetyState`). The last
        record of a clean run."""
        self._append("shutdown", {"actuators": {name: {"policy": policy, "value": value}
                                                for name, (policy, value) in left.items()},
                                  "signal": cause, "state": state})

    # ------------------------------------------------------------------ restarts

    def state(self, state: dict[str, Any]) -> None:
        """The safety state changed (mode, latch, bypasses, quarantine, open incidents):
        recorded, and sent to the audit writer at once rather than at the end of the cycle,
        so that it reaches the disk even if the gateway dies right after."""
        self._append("state", {"state": state})
        if self.audit is not None:
            self.audit.idle()

    def unclean_end(self, window: dict[str, Any]) -> None:
        """The previous run ended without its shutdown record; ``window`` says which
        records may be missing (``gateway.runtime.durable.Previous.unclean_window``)."""
        self._append("unclean_end", window)

    def run_start(self, info: dict[str, Any]) -> None:
        """This run started: what it restored from the chain (``restored``), the state it
        starts with (``state``) and how the previous run ended (``previous``)."""
        self._append("start", info)
        if self.audit is not None:
            self.audit.idle()

    def idle(self) -> None:
        """The cycle is over: the audit writer may do its batch while the loop sleeps."""
        if self.audit is not None:
            self.audit.idle()

    def comms(self, event: dict[str, Any]) -> None:
        """The communications process started, was lost (why, its exit code) or stopped:
        while it is away nobody outside sees the plant or reaches the core, so each loss is
        evidence (``gateway.comms.supervisor``)."""
        self._append("comms", event)

    def reload(self, payload: dict[str, Any], actor: str) -> None:
        """A reload's stage, commit, refusal, failure, swap or ramp end
        (:mod:`gateway.runtime.reloader`), by ``actor`` (a user, or ``signal:SIGHUP``)."""
        self._append("reload", payload, actor=actor)

    def alarm(self, message: str) -> None:
        self.alarms += 1
        self._append("alarm", {"message": message})

    def _append(self, kind: str, payload: dict[str, Any], actor: str = "gateway",
                source: str = "") -> None:
        if self.audit is not None:
            self.audit.append(kind, payload, actor=actor, source=source)

    def close(self) -> None:
        if self.audit is not None and not self.audit.close():
            log.error("audit log: some records could not be written (see its alarm)")
