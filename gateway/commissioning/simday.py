"""A clean simulated day: a simulator plant run offline under the site's control, written as a
historian CSV (the format of :func:`gateway.commissioning.sources.read_csv`).

No sockets and no clock: the plant (``simulators.plants``) is stepped in simulated time and the
site's own :class:`gateway.supervisor.core.Supervisor` decides every command (through the
gate), as a plant under its ordinary control would. Two kinds of day:

* ``controller="fallback"``: MANUAL, the fallback controllers in control. So that the day
  holds more than one steady state, an operator moves each continuous actuator that the
  fallback holds at a fixed value to a new setpoint every ``hold_s`` seconds (drawn uniformly
  within ``spread`` of its range around the fixed value, from a seeded generator).
* ``controller="ai"``: the zoo's nominal ONNX policy for the plant (``simulators.zoo``, the
  model the clean drills run) in AUTO after a short shadow period, stepped at the site's
  cycle (``site.cycle_ms``) and written every ``step_s``: the history of a site run by its AI.

The disturbances (the tank's demand, the boiler's steam load) vary by themselves.

Each row is one step: the time in seconds from 0, each sensor's reading as the gateway would
read it (decoded from the tag's wire type: a ``uint16`` of scale 0.001 reads in steps of
0.001, a ``float32`` with float32's precision) and each actuator's written command.
"""

from __future__ import annotations

import csv
import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gateway.config.schema import Site, Tag
    from simulators.plants import Plant

__all__ = ["simulate_day"]


def simulate_day(site: Site, plant_name: str, out: Path, duration_s: float = 86_400.0,
                 step_s: float = 1.0, seed: int = 0, hold_s: float = 1_200.0,
                 spread: float = 0.15, controller: str = "fallback") -> int:
    """Run ``plant_name`` under ``site``'s control for ``duration_s`` of simulated time and
    write one CSV row every ``step_s`` at ``out``; returns the number of rows. KeyError for an
    unknown plant; ValueError for a site whose tags the plant lacks or an unknown
    ``controller`` (``fallback`` or ``ai``)."""
    if controller not in ("fallback", "ai"):
        raise ValueError(f"controller must be 'fallback' or 'ai', not {controller!r}")
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
    if controller == "ai":
        with tempfile.TemporaryDirectory(prefix="simday-") as folder:
            return _run(_ai_site(site, plant_name, Path(folder)), plant_name, plant, out,
                        duration_s, step_s, seed, hold_s, spread, ai=True)
    return _run(site, plant_name, plant, out, duration_s, step_s, seed, hold_s, spread, ai=False)


def _ai_site(site: Site, plant_name: str, folder: Path) -> Site:
    """``site`` run by the zoo's nominal model for the plant (written in ``folder``)."""
    from gateway.config.schema import ControllerKind
    from simulators.zoo import policies
    from simulators.zoo.graphs import sha256_hex

    data = policies.build(plant_name, "nominal")
    model = folder / f"{plant_name}_nominal.onnx"
    model.write_bytes(data)
    iface = policies.INTERFACES[plant_name]
    spec = dataclasses.replace(
        site.controller, kind=ControllerKind.ONNX, model=model, sha256=sha256_hex(data),
        inputs=iface.inputs, outputs=iface.outputs, input_offset=iface.input_offset,
        input_scale=iface.input_scale, output_offset=iface.output_offset,
        output_scale=iface.output_scale,
        # Inference is real, the clock is not: a stall of the shared machine must not count.
        deadline_ms=max(site.controller.deadline_ms, 1_000.0))
    return dataclasses.replace(site, controller=spec, operation=dataclasses.replace(
        site.operation, clean_shadow_s=5.0))


def _run(site: Site, plant_name: str, plant: Plant, out: Path, duration_s: float,
         step_s: float, seed: int, hold_s: float, spread: float, ai: bool) -> int:
    import gateway.envelope
    from gateway.config.schema import FallbackKind
    from gateway.control.ai import AiWiring, onnx_policy_config
    from gateway.control.onnx_policy import load_policy
    from gateway.supervisor.core import Supervisor
    from gateway.supervisor.decision import Snapshot
    from gateway.supervisor.modes import OperatorRequest, RequestKind
    from simulators.plants import STEADY_STATE

    steady = STEADY_STATE[plant_name]
    actuators = [t.name for t in site.actuators]
    sensors = [t.name for t in site.sensors]
    initial = np.array([steady[n] for n in actuators], dtype=np.float64)
    sup = Supervisor(site, gateway.envelope.compile(site), initial, 0.0)
    limits = {lim.actuator: lim for lim in site.envelope.limits}
    fallback = {f.actuator: f for f in site.fallback}
    moved = [] if ai else [
        (i, n) for i, n in enumerate(actuators)
        if n in fallback and fallback[n].kind is FallbackKind.FIXED
        and limits[n].allowed is None and fallback[n].value is not None]
    rng = np.random.default_rng([seed, 7])
    n_s = len(sensors)
    good = np.ones(n_s, dtype=bool)
    age = np.zeros(n_s)
    # With the AI, every cycle is stepped (its moves are per cycle) and every step_s written.
    cycle_s = site.site.cycle_ms / 1000.0 if ai else step_s
    per_row = max(1, round(step_s / cycle_s))
    cycles = round(duration_s / cycle_s)
    next_move = hold_s
    wiring = AiWiring(site) if ai else None
    policy = load_policy(onnx_policy_config(site)) if ai else None
    applied = initial
    rows = 0
    try:
        with out.open("w", encoding="utf-8", newline="") as dst:
            writer = csv.writer(dst)
            writer.writerow(["time", *sensors, *actuators])
            for k in range(cycles + 1):
                now = k * cycle_s
                if ai and k in (1, int(6.0 / cycle_s) + 1):
                    sup.apply_request(OperatorRequest(
                        RequestKind.TO_SHADOW if k == 1 else RequestKind.TO_AUTO, "simday",
                        True))
                if now >= next_move and moved:
                    next_move += hold_s
                    for i, name in moved:
                        lim = limits[name]
                        centre = fallback[name].value
                        assert centre is not None
                        value = float(np.clip(
                            centre + rng.uniform(-spread, spread) * (lim.max - lim.min),
                            lim.min, lim.max))
                        sup.set_operator_setpoint(i, value)
                readings = plant.sensors()
                values = np.array([_as_read(tag, readings[tag.name]) for tag in site.sensors],
                                  dtype=np.float64)
                proposal = None
                if wiring is not None and policy is not None:
                    x = wiring.inputs(values, applied)
                    proposal = wiring.proposal(policy.infer_sync(x), now)
                decision = sup.step(Snapshot(values, good, age), proposal, now)
                applied = decision.command
                if k % per_row == 0:
                    writer.writerow([repr(round(now, 6)), *(repr(float(v)) for v in values),
                                     *(repr(float(v)) for v in applied)])
                    rows += 1
                for i, name in enumerate(actuators):
                    plant.set_actuator(name, float(applied[i]))
                plant.step(cycle_s)
    finally:
        if policy is not None:
            policy.close()
    return rows


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
