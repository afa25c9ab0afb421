"""All fallback controllers of a site, run together every cycle in hot standby.

Each actuator has one deterministic controller (PID, fixed value, hold, rules; hold when the
site names none). :meth:`FallbackBank.update` computes every output each cycle whatever the mode,
and :meth:`FallbackBank.track` tells each controller what was actually applied, so that a
takeover starts from the applied output with no jump (bumpless transfer).

A closed-loop (PID) actuator has a second, *reference* PID with the same tuning. It tracks the
applied output only while the fallback is in control; while the AI is, it runs free, so its
output is the fallback's own opinion of what the actuator should do now. The divergence detector
compares the AI with that opinion: comparing it with the tracking PID would only compare the
two controllers' moves of one cycle, which a slow, stealthy bias never makes large.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gateway.config.schema import FallbackKind, FallbackSpec
from gateway.control.pid import Pid, PidConfig
from gateway.control.rules import Rules
from gateway.control.simple import FixedValue, HoldLast

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.config.schema import Site
    from gateway.control.base import ActuatorController
    from gateway.envelope.compiled import F64


class FallbackBank:
    """Fallback controllers for every actuator of ``site``, in the site's actuator order.

    ``initial`` is the output each controller starts from (normally the actuators' read-back,
    or their safe values).
    """

    def __init__(self, site: Site, initial: F64) -> None:
        actuators = site.actuators
        if initial.shape != (len(actuators),):
            raise ValueError(f"initial must have length {len(actuators)}")
        sensor_index = {t.name: i for i, t in enumerate(site.sensors)}
        limits = {lim.actuator: lim for lim in site.envelope.limits}
        specs = {spec.actuator: spec for spec in site.fallback}
        self.kinds: tuple[FallbackKind, ...] = tuple(
            specs[t.name].kind if t.name in specs else FallbackKind.HOLD for t in actuators)
        # Per actuator: ("pid", controller, sensor index) | ("rules", Rules, -1) | (kind, ctl, -1)
        self._loops: list[tuple[ActuatorController | None, Rules | None, int]] = []
        for i, tag in enumerate(actuators):
            spec = specs.get(tag.name)
            start = float(initial[i])
            if spec is None or spec.kind is FallbackKind.HOLD:
                self._loops.append((HoldLast(start), None, -1))
            elif spec.kind is FallbackKind.FIXED:
                assert spec.value is not None
                self._loops.append((FixedValue(spec.value), None, -1))
            elif spec.kind is FallbackKind.RULES:
                assert spec.value is not None
                assert tag.safe_value is not None
                self._loops.append((None, Rules(spec.rules, sensor_index, spec.value,
                                                tag.safe_value), -1))
            else:
                self._loops.append((_pid(spec, limits[tag.name].min, limits[tag.name].max,
                                         start), None, sensor_index[_need(spec.measurement)]))
        self._reference: list[tuple[int, Pid, int]] = []
        for i, (ctl, _, j) in enumerate(self._loops):
            if isinstance(ctl, Pid):
                twin = Pid(ctl.config, initial_output=ctl.output)
                self._reference.append((i, twin, j))
        # The reference PIDs' outputs (the standby outputs where there is no reference PID).
        self.reference: list[float] = [float(x) for x in initial]
        # Operator setpoints (actuator index -> value) that replace the fallback's output.
        self.overrides: dict[int, float] = {}
        # The per-cycle calls, bound once (this runs every cycle; a fixed value tracks
        # nothing): (update, sensor index or -1, takes the whole sensor vector).
        self._updates: list[tuple[Callable[..., float], int, bool]] = [
            (rules.update, -1, True) if rules is not None
            else (_ctl(ctl).update, j, False) for ctl, rules, j in self._loops]
        self._tracks: list[tuple[int, Callable[[float], None]]] = [
            (i, ctl.track) for i, (ctl, _, _) in enumerate(self._loops)
            if ctl is not None and not isinstance(ctl, FixedValue)]
        self._reference_tracks = [(i, twin.track) for i, twin, _ in self._reference]

    def update(self, sensors: Sequence[float], dt_s: float) -> F64:
        """Every controller's output for this cycle (a new array, actuator order)."""
        out = [update(sensors) if whole else update(sensors[j] if j >= 0 else 0.0, dt_s)
               for update, j, whole in self._updates]
        ref = list(out)
        for i, twin, j in self._reference:
            ref[i] = twin.update(sensors[j], dt_s)
        self.reference = ref
        for i, value in self.overrides.items():
            out[i] = value
        return np.array(out, dtype=np.float64)

    def track(self, applied: Sequence[float], ai_in_control: bool) -> None:
        """Tell every controller what was applied this cycle (bumpless transfer); the
        reference PIDs follow only while the AI is not in control."""
        for i, track in self._tracks:
            track(applied[i])
        if not ai_in_control:
            for i, track in self._reference_tracks:
                track(applied[i])

    def pids(self) -> tuple[tuple[str, int, Pid], ...]:
        """Every PID of the bank, for a forensic checkpoint: ("loop" | "reference", actuator
        index, controller), in a fixed order."""
        loops = tuple(("loop", i, ctl) for i, (ctl, _, _) in enumerate(self._loops)
                      if isinstance(ctl, Pid))
        return loops + tuple(("reference", i, twin) for i, twin, _ in self._reference)

    def faults(self) -> list[tuple[int, str]]:
        """(actuator index, reason) for each controller that held its output this cycle."""
        found = []
        for i, (ctl, rules, _) in enumerate(self._loops):
            fault = rules.last_fault if rules is not None else (
                ctl.last_fault if ctl is not None else None)
            if fault is not None:
                found.append((i, fault))
        return found


def _ctl(ctl: ActuatorController | None) -> ActuatorController:
    assert ctl is not None  # every loop has a controller or rules
    return ctl


def _need(value: str | None) -> str:
    if value is None:
        raise ValueError("a pid fallback needs a measurement")
    return value


def _pid(spec: FallbackSpec, lo: float, hi: float, start: float) -> Pid:
    assert spec.setpoint is not None
    config = PidConfig(kp=spec.kp, ki=spec.ki_per_s, kd=spec.kd_s, setpoint=spec.setpoint,
                       output_min=lo, output_max=hi, reverse=spec.reverse)
    return Pid(config, initial_output=min(max(start, lo), hi))
