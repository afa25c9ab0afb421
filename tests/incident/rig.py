"""A water tank, its supervisor, a flight recorder, a real audit log and an incident manager,
stepped in lockstep at the site's 100 ms cycle, the way the runtime wires them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gateway.audit.log import AuditLog
from gateway.forensics.recorder import FlightRecorder, RecordingInfo
from gateway.incident.manager import Action, IncidentManager, Request
from gateway.incident.playbook import DEFAULT_PLAYBOOK, Playbook, load_playbook
from gateway.supervisor.decision import Decision, Proposal, Snapshot
from gateway.supervisor.modes import OperatorRequest, RequestKind
from tests.supervisor.plant import Tank, good_policy, tank_supervisor

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.incident.model import Incident, Phase, PhaseChange, RecorderRef

WALL0 = 1_700_000_000.0
MODEL_SHA = "ab" * 32
CONFIG_SHA = "cd" * 32
CYCLE_S = 0.1


class Rig:
    def __init__(self, tmp_path: Path, *, playbook: Playbook | None = None,
                 after_s: float = 2.0, window_s: float = 4.0, audit: bool = True) -> None:
        self.sup = tank_supervisor("python", clean_shadow_s=2.0)
        self.tank = Tank()
        self.now_s = 0.0
        site = self.sup.site
        self.recorder = FlightRecorder(window_s, CYCLE_S, RecordingInfo.of(
            site, 0.0, np.array([30.0, 30.0, 0.0]), model_sha256=MODEL_SHA))
        self.db = tmp_path / "audit.db"
        # Wall clock = supervisor time + a fixed offset, so time windows map between them.
        self.audit = (AuditLog(self.db, clock=self.wall, flush_interval_s=0.01)
                      if audit else None)
        self.playbook = playbook or load_playbook(DEFAULT_PLAYBOOK)
        self.manager = IncidentManager(
            "water_tank", self.playbook, self.audit, model_path="models/nominal.onnx",
            model_sha256=MODEL_SHA, config_sha256=CONFIG_SHA, recorder=self.recorder,
            after_s=after_s, clock=self.wall)
        self.actions: list[Action] = []
        self.decisions: list[Decision] = []

    def wall(self) -> float:
        return WALL0 + self.now_s

    def step(self, ai: np.ndarray | None = None, snapshot: Snapshot | None = None,
             proposal: Proposal | None = None) -> Decision:
        snap = snapshot or self.tank.snapshot()
        if proposal is None and ai is not None:
            proposal = Proposal(np.asarray(ai, dtype=np.float64), produced_at_s=self.now_s)
        decision = self.sup.step(snap, proposal, self.now_s)
        self.recorder.record_cycle(self.now_s, snap, None, proposal, decision)
        actions = self.manager.on_decision(decision)
        self.actions += actions
        for action in actions:
            if isinstance(action, Request):
                req = action.operator_request()
                self.sup.apply_request(req)
                self.recorder.operator.request(req)
        self.tank.advance(decision.command, CYCLE_S)
        self.decisions.append(decision)
        self.now_s = round(self.now_s + CYCLE_S, 9)
        return decision

    def request(self, kind: RequestKind, who: str = "op", **kw: object) -> None:
        req = OperatorRequest(kind, who, True, **kw)  # type: ignore[arg-type]
        self.sup.apply_request(req)
        self.recorder.operator.request(req)

    def good(self, cycles: int) -> Decision:
        d = None
        for _ in range(cycles):
            d = self.step(good_policy(self))  # type: ignore[arg-type]
        assert d is not None
        return d

    def to_auto(self) -> None:
        self.request(RequestKind.TO_SHADOW)
        self.good(25)
        self.request(RequestKind.TO_AUTO)
        self.good(5)

    def hijack(self) -> Decision:
        """A gross violation: inflow to 100 %, the pump stopped, in one cycle."""
        return self.step(np.array([100.0, 0.0, 0.0]))

    def freeze_level(self) -> Decision:
        """A sensor fault: the level reading goes bad (SAFE_STOP)."""
        snap = Snapshot(np.array([self.tank.level_m, 0.01, 0.004, 1000.0]),
                        np.array([False, True, True, True]), np.full(4, 0.05))
        return self.step(good_policy(self), snapshot=snap)  # type: ignore[arg-type]

    def close(self) -> None:
        self.manager.close()
        if self.audit is not None:
            assert self.audit.close()


def recorder_of(incident: Incident) -> RecorderRef:
    assert incident.flight_recorder is not None
    return incident.flight_recorder


def reached(incident: Incident, phase: Phase) -> PhaseChange:
    change = incident.phase_change(phase)
    assert change is not None
    return change
