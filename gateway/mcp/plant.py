"""What an agent may know about the plant: ``read_plant``, ``describe_envelope`` and the dry
run ``check_command``, from the core's latest view (pure: no I/O, no clock of its own).

Every answer is plain JSON data. Names, units and expressions that come from the site file
are values of fields, never sentences addressed to the agent: a tag description cannot pass
itself off as an operator's instruction. Unknown numbers (NaN, no reading) are ``null``,
never a number that looks safe.

The dry run judges the command as the envelope would judge it now, from the values the
equipment holds (the applied command) over one cycle, with the sensors the view shows (a bad
reading unknown). It is advice, not a promise: a real proposal is judged by the next cycle,
with that cycle's sensors, on the AI's own trajectory, and after encoding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.envelope.compiled import Action
from gateway.envelope.gate import Gate
from gateway.ops.margins import margins

if TYPE_CHECKING:
    from gateway.config.schema import Site
    from gateway.envelope.engine import Envelope
    from gateway.runtime.view import PlantView


MAX_POINTS = 50  # per sensor in a trajectory


class BadCommand(ValueError):
    """A command an agent sent that cannot be judged (unknown tag, not a number)."""


def num(x: float | None) -> float | None:
    """A JSON number, or null for NaN, infinities and None."""
    return float(x) if x is not None and math.isfinite(x) else None


class PlantFacts:
    """The site's fixed facts (limits, units) and the judgements made from a view."""

    def __init__(self, site: Site, envelope: Envelope) -> None:
        self.site = site
        self.envelope = envelope
        self.gate = Gate(envelope)
        self.period_s = site.site.cycle_ms / 1000.0
        self.actuators = tuple(t.name for t in site.actuators)
        self.index = {n: i for i, n in enumerate(self.actuators)}
        self.sensors = tuple(t.name for t in site.sensors)
        self.driven = (tuple(site.controller.outputs) if site.controller.outputs
                       else self.actuators)
        self.limits = {lim.actuator: lim for lim in site.envelope.limits}

    # ------------------------------------------------------------------ read_plant

    def read_plant(self, view: PlantView | None, now_s: float, now_wall_s: float
                   ) -> dict[str, Any]:
        """Sensors with units, quality and age; actuators with the applied value and its
        source; mode, latch, trip reason, the open incident, bypasses. ``now_s`` is the
        core's clock: the age of a reading is ``now_s`` less when the core read it (the
        communications process reads the machine's monotonic clock, which the core's
        ``run`` uses too; in the core's process, its own clock)."""
        if view is None:
            return {"available": False, "why": "no_view_yet"}
        sensors = []
        for tag, value, good, read_s in zip(self.site.sensors, view.sensor_values,
                                            view.sensor_good, view.sensor_at_s, strict=True):
            sensors.append({"name": tag.name, "unit": tag.unit, "value": num(value),
                            "good": bool(good),
                            "age_s": num(max(0.0, now_s - read_s))})
        actuators = []
        for tag, value, source, proposed in zip(self.site.actuators, view.applied,
                                                view.sources, view.proposal, strict=True):
            actuators.append({"name": tag.name, "unit": tag.unit, "applied": num(value),
                              "source": source, "ai_proposal": num(proposed),
                              "driven_by_ai": tag.name in self.driven})
        return {"available": True, "cycle": view.cycle, "mode": view.mode,
                "latched": view.latched, "trip_reason": view.trip_reason,
                "incident_id": view.incident_id or None,
                "view_age_s": num(max(0.0, now_wall_s - view.at_wall_s)),
                "sensors": sensors, "actuators": actuators,
                "bypasses": [{"detector": d, "expires_utc": when.isoformat()}
                             for d, when in view.bypasses]}

    # ------------------------------------------------------------------ describe_envelope

    def describe_envelope(self, view: PlantView | None) -> dict[str, Any]:
        """Every limit, rate, constraint, interlock and kept range, as data, with the margin
        left now (null when unknown: no view yet or a term without a reading)."""
        env = self.site.envelope
        left: dict[tuple[str, str], dict[str, Any]] = {}
        if view is not None:
            for m in margins(self.site, view):
                left[(m.kind, m.name)] = {"margin": num(m.margin), "fraction": num(m.fraction)}
        none = {"margin": None, "fraction": None}
        limits = []
        for lim in env.limits:
            tag = self.site.tag(lim.actuator)
            limits.append({"actuator": lim.actuator, "unit": tag.unit, "min": lim.min,
                           "max": lim.max, "max_rate_per_s": lim.max_rate_per_s,
                           "max_step": lim.max_step,
                           "allowed": list(lim.allowed) if lim.allowed is not None else None,
                           "policy": str(lim.policy), "driven_by_ai": lim.actuator in self.driven,
                           **left.get(("limit", lim.actuator), none)})
        constraints = [{"name": c.name, "expression": c.expr, "policy": str(c.policy),
                        **left.get(("constraint", c.name), none)} for c in env.constraints]
        interlocks = [{"name": i.name, "when": i.when, "policy": str(i.policy),
                       "then": [{"actuator": t.actuator, "bound": "max" if t.upper else "min",
                                 "value": t.value} for t in i.then],
                       **left.get(("interlock", i.name), none)} for i in env.interlocks]
        pred = env.prediction
        prediction = None
        if pred is not None:
            prediction = {"step_s": pred.step_s, "horizon_steps": pred.horizon_steps,
                          "policy": str(pred.policy),
                          "keep": [{"sensor": k.sensor, "min": k.min, "max": k.max,
                                    **left.get(("keep", k.sensor), none)} for k in pred.keep]}
        return {"cycle_s": self.period_s, "actuator_limits": limits,
                "constraints": constraints, "interlocks": interlocks,
                "prediction": prediction, "nonfinite_policy": str(env.nonfinite_policy)}

    # ------------------------------------------------------------------ check_command

    def command(self, values: Any) -> dict[str, float]:
        """``values`` checked: known actuators, numbers. Raises :class:`BadCommand`."""
        if not isinstance(values, dict) or not values:
            raise BadCommand("values must map at least one actuator to a number")
        out: dict[str, float] = {}
        for name, value in values.items():
            if name not in self.index:
                raise BadCommand(f"unknown actuator {name!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadCommand(f"{name}: not a number")
            out[name] = float(value)
        return out

    def check_command(self, view: PlantView | None, values: Any) -> dict[str, Any]:
        """The dry run (see the module docstring): would ``values`` pass now; if not, which
        constraints break and the nearest admissible command; the predictive check's
        trajectory of the command as proposed. Raises :class:`BadCommand`."""
        command = self.command(values)
        if view is None:
            return {"available": False, "why": "no_view_yet"}
        applied = np.array(view.applied, dtype=np.float64)
        sensors = np.array([v if g else math.nan for v, g in zip(
            view.sensor_values, view.sensor_good, strict=True)], dtype=np.float64)
        candidate = applied.copy()
        for name, value in command.items():
            candidate[self.index[name]] = value
        verdict = self.envelope.check(candidate, applied, sensors, self.period_s)
        admitted = self.gate.admit(candidate, applied, sensors, self.period_s)
        nearest = {name: num(float(admitted.command[self.index[name]])) for name in command}
        safe = [name for name in command if bool(admitted.safe[self.index[name]])]
        action = Action(verdict.action).name.lower()
        return {"available": True, "cycle": view.cycle, "mode": view.mode,
                "would_pass": verdict.action == Action.OK, "action": action,
                "violations": list(verdict.violations),
                "nearest_admissible": nearest, "nearest_is_safe_state_for": safe,
                "not_driven_by_ai": [n for n in command if n not in self.driven],
                "trajectory": self.trajectory(candidate, sensors)}

    def trajectory(self, command: np.ndarray[Any, Any], sensors: np.ndarray[Any, Any]
                   ) -> dict[str, Any] | None:
        """The prediction's model rolled forward with ``command`` held (explicit Euler, as the
        envelope's check does): each modelled sensor's values at each step, and whether it
        leaves its kept range. None when the site has no prediction."""
        pred = self.site.envelope.prediction
        if pred is None:
            return None
        values: dict[str, float] = dict(zip(self.sensors, sensors.tolist(), strict=True))
        values.update(zip(self.actuators, command.tolist(), strict=True))
        keep = {k.sensor: (k.min, k.max) for k in pred.keep}
        series: dict[str, list[float | None]] = {m.sensor: [] for m in pred.model}
        leaves: dict[str, int | None] = dict.fromkeys(keep)
        # At most MAX_POINTS points per sensor (a long horizon is sampled evenly; the step
        # where a sensor leaves its range is exact).
        stride = max(1, math.ceil(pred.horizon_steps / MAX_POINTS))
        for step in range(pred.horizon_steps):
            nxt = {}
            for m in pred.model:
                d = m.constant + sum(coef * values.get(name, math.nan) for name, coef in m.terms)
                nxt[m.sensor] = values[m.sensor] + pred.step_s * d
            values.update(nxt)
            for sensor, y in nxt.items():
                if (step + 1) % stride == 0 or step + 1 == pred.horizon_steps:
                    series[sensor].append(num(y))
                if sensor in keep and leaves[sensor] is None:
                    lo, hi = keep[sensor]
                    if not lo <= y <= hi:
                        leaves[sensor] = step + 1
        return {"step_s": pred.step_s, "horizon_steps": pred.horizon_steps,
                "points_every_steps": stride, "sensors": series,
                "leaves_keep_range_at_step": {k: v for k, v in leaves.items()}}
