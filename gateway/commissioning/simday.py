"""A clean simulated day: a simulator plant run offline under the fallback controllers, written
as a historian CSV (the format of :func:`gateway.commissioning.sources.read_csv`).

No sockets and no clock: the plant (``simulators.plants``) is stepped in simulated time and the
site's own :class:`gateway.supervisor.core.Supervisor` runs in MANUAL (fallback control, every
command through the gate), as a plant under its ordinary control would. So that the day holds
more than one steady state, an operator moves each continuous actuator that the fallback holds
at a fixed value to a new setpoint every ``hold_s`` seconds (drawn uniformly within
``spread`` of its range around the fixed value, from a seeded generator); the disturbances
(the tank's demand, the boiler's steam load) vary by themselves.

Each row is one step: the time in seconds from 0, each sensor's reading as the gateway would
read it (decoded from the tag's wire type: a ``uint16`` of scale 0.001 reads in steps of
0.001, a ``float32`` with float32's precision) and each actuator's written command.
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Site, Tag

__all__ = ["simulate_day"]


def simulate_day(site: Site, plant_name: str, out: Path, duration_s: float = 86_400.0,
                 step_s: float = 1.0, seed: int = 0, hold_s: float = 1_200.0,
                 spread: float = 0.15) -> int:
    """Run ``plant_name`` under ``site``'s fallback control for ``duration_s`` of simulated
    time in steps of ``step_s`` and write the CSV at ``out``; returns the number of rows.
    KeyError for an unknown plant; ValueError for a site whose tags the plant lacks."""
    import gateway.envelope
    from gateway.config.schema import FallbackKind
    from gateway.supervisor.core import Supervisor
    from gateway.supervisor.decision import Snapshot
    from simulators.plants import STEADY_STATE, make_plant

    plant = make_plant(plant_name, seed=seed)
    steady = STEADY_STATE[plant_name]
    actuators = [t.name for t in site.actuators]
    sensors = [t.name for t in site.sensors]
    readings = plant.sensors()
    missing = [n for n in sensors if n not in readings] + [
        n for n in actuators if n not in steady]
    if missing:
        raise ValueError(f"plant {plant_name!r} has no tag(s) {', '.join(missing)}")
    initial = np.array([steady[n] for n in actuators], dtype=np.float64)
    sup = Supervisor(site, gateway.envelope.compile(site), initial, 0.0)
    limits = {lim.actuator: lim for lim in site.envelope.limits}
    fallback = {f.actuator: f for f in site.fallback}
    moved = [(i, n) for i, n in enumerate(actuators)
             if n in fallback and fallback[n].kind is FallbackKind.FIXED
             and limits[n].allowed is None and fallback[n].value is not None]
    rng = np.random.default_rng([seed, 7])
    n_s = len(sensors)
    good = np.ones(n_s, dtype=bool)
    age = np.zeros(n_s)
    steps = int(duration_s / step_s)
    next_move = hold_s
    with out.open("w", encoding="utf-8", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["time", *sensors, *actuators])
        for k in range(steps + 1):
            now = k * step_s
            if now >= next_move:
                next_move += hold_s
                for i, name in moved:
                    lim = limits[name]
                    span = lim.max - lim.min
                    centre = fallback[name].value
                    assert centre is not None
                    value = float(np.clip(centre + rng.uniform(-spread, spread) * span,
                                          lim.min, lim.max))
                    sup.set_operator_setpoint(i, value)
            readings = plant.sensors()
            values = np.array([_as_read(tag, readings[tag.name]) for tag in site.sensors],
                              dtype=np.float64)
            decision = sup.step(Snapshot(values, good, age), None, now)
            command = decision.command
            writer.writerow([repr(now), *(repr(float(v)) for v in values),
                             *(repr(float(v)) for v in command)])
            for i, name in enumerate(actuators):
                plant.set_actuator(name, float(command[i]))
            plant.step(step_s)
    return steps + 1


def _as_read(tag: Tag, value: float) -> float:
    """``value`` as the gateway reads it over the tag's wire type (what a historian records)."""
    from gateway.config.schema import WireType

    if tag.wire_type is WireType.FLOAT32:
        return float(np.float32((value - tag.offset) / tag.scale)) * tag.scale + tag.offset
    if tag.wire_type.is_integer or tag.wire_type is WireType.BOOL:
        low, high = tag.wire_type.integer_range
        raw = min(max(round((value - tag.offset) / tag.scale), low), high)
        return raw * tag.scale + tag.offset
    return value
