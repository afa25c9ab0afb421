"""A tiny water-tank plant for supervisor tests (the real simulators live in simulators/)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

import gateway
import gateway.envelope
from gateway.supervisor.core import Supervisor
from gateway.supervisor.decision import Decision, Proposal, Snapshot
from gateway.supervisor.modes import OperatorRequest, RequestKind

if TYPE_CHECKING:
    from gateway.supervisor.events import Event

TANK = "configs/water_tank.yaml"


@dataclass
class Tank:
    """level' = 0.0001 * inflow - 0.0001 * outflow - 0.002 * drain (m/s), as the site models."""

    level_m: float = 2.5
    demand: float = 0.0  # extra draw, m/s
    history: list[float] = field(default_factory=list)

    def advance(self, command: np.ndarray, dt_s: float) -> None:
        inflow, outflow, drain = (float(x) for x in command)
        rate = 0.0001 * inflow - 0.0001 * outflow - 0.002 * drain - self.demand
        self.level_m = min(max(self.level_m + rate * dt_s, 0.0), 5.0)
        self.history.append(self.level_m)

    def snapshot(self, age_s: float = 0.05, good: bool = True) -> Snapshot:
        # The site's sensors: level, inflow_rate, demand, uptime_s (only the level is faulted).
        return Snapshot(np.array([self.level_m, 0.01, 0.004, 1000.0]),
                        np.array([good, True, True, True]), np.array([age_s] * 4))


def tank_supervisor(engine: str, start_s: float = 0.0, clean_shadow_s: float = 5.0,
                    gross_violation: float | None = None, plausibility: bool = False,
                    **kwargs: object) -> Supervisor:
    """The example water-tank site; the clean shadow period is shortened for tests.
    ``gross_violation`` overrides the site's (0 turns that detector off). The site's frozen
    and rate checks on the level are off unless ``plausibility``: this tank's readings have no
    measurement noise, and a steady noiseless level is exactly what a frozen sensor looks
    like (tests/supervisor/test_input_plausibility.py tests those checks with noise)."""
    site = gateway.load_config(TANK)
    site = replace(site, operation=replace(site.operation, clean_shadow_s=clean_shadow_s))
    if not plausibility:
        site = replace(site, detection=replace(site.detection, frozen_after_s=(),
                                               max_rate_per_s=()))
    if gross_violation is not None:
        site = replace(site, detection=replace(site.detection, gross_violation=gross_violation))
    env = gateway.envelope.compile(site, engine)
    initial = np.array([30.0, 30.0, 0.0])
    return Supervisor(site, env, initial, start_s, **kwargs)  # type: ignore[arg-type]


class Loop:
    """Drives a supervisor and a tank at the site's 100 ms cycle."""

    def __init__(self, engine: str, **kwargs: object) -> None:
        self.sup = tank_supervisor(engine, **kwargs)
        self.tank = Tank()
        self.now_s = 0.0
        self.decisions: list[Decision] = []

    def step(self, ai: np.ndarray | None = None, proposal: Proposal | None = None,
             snapshot: Snapshot | None = None) -> Decision:
        if proposal is None and ai is not None:
            proposal = Proposal(np.asarray(ai, dtype=np.float64), produced_at_s=self.now_s)
        decision = self.sup.step(snapshot or self.tank.snapshot(), proposal, self.now_s)
        self.tank.advance(decision.command, 0.1)
        self.decisions.append(decision)
        self.now_s += 0.1
        return decision

    def request(self, kind: RequestKind, who: str = "op", authorised: bool = True,
                **kw: object) -> list[Event]:
        req = OperatorRequest(kind, who, authorised, **kw)  # type: ignore[arg-type]
        return self.sup.apply_request(req)

    def to_auto(self, ai_policy: object) -> None:
        """Operator path MANUAL -> SHADOW -> (clean period) -> AUTO with a given AI policy."""
        self.request(RequestKind.TO_SHADOW)
        clean = self.sup.site.operation.clean_shadow_s
        steps = int(clean / 0.1) + 2
        for _ in range(steps):
            self.step(ai_policy(self))  # type: ignore[operator]
        self.request(RequestKind.TO_AUTO)
        self.step(ai_policy(self))  # type: ignore[operator]


def good_policy(loop: Loop) -> np.ndarray:
    """A well-behaved AI: proportional level control around 2.5 m, within every limit."""
    level = loop.tank.level_m
    inflow = min(max(30.0 + 40.0 * (2.5 - level), 0.0), 100.0)
    prev = loop.sup.previous
    inflow = min(max(inflow, prev[0] - 1.0), prev[0] + 1.0)  # gentle: 10 %/s
    return np.array([inflow, 30.0, 0.0])
