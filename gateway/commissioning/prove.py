"""Prove a site against history: replay every historical command and reading offline through the
live gateway's own code, with the history's times as the clock, and count what it would have
done: the envelope (:func:`gateway.envelope.compile`, the engine the gateway runs) per
constraint, and the full supervisor (:class:`gateway.supervisor.core.Supervisor`: input
health, the violation rate, gross violations, divergence from the fallback, the mode machine)
per detector.

1. **Constraints.** A row with a command (any actuator's cell present; missing ones hold the
   last command) is checked against the envelope with the previous historical command as what
   the device held and the time since it as ``dt``: each historical write judged as it
   happened, whatever the envelope would have done to the ones before, in whatever mode.
   Its violations are counted per constraint, under the constraint's policy (clamp, reject,
   trip); the worst clamps are those the projection moved furthest. The sensors it is judged
   with are those the input detectors trust (untrusted ones NaN: the envelope fails safe).
2. **Detectors.** The history runs through the supervisor
   (:mod:`gateway.commissioning.supervised`): with a flight recording's own proposals in the
   modes it recorded (:attr:`CommandsAs.RECORDED`, the default for one), the commands as the
   AI's proposals in AUTO (``AI``, the default for other sources and a site with an AI
   controller) or as an operator's writes in MANUAL (``WRITTEN``). Every trip the supervisor
   latches is counted under its detector (``input.rate.level``, ``violation_rate``,
   ``divergence.inflow_valve``, ``device.plc``, ...), and prove re-arms it as an operator
   would so that the rest of the history is judged. Detectors the history cannot exercise
   (the canary; the deadline and silence without a recording) are listed with the reason.
   When a sensor of the site has no column in the history the supervisor cannot run (that
   sensor would be of bad quality throughout): the input detectors alone judge the readings,
   as before, and the result says so.

The first command has no previous one and is not judged. A proof "passes" when nothing would
have tripped; clamps and refusals are reported, not failures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.commissioning.supervised import CommandsAs

if TYPE_CHECKING:
    from gateway.commissioning.sources import History
    from gateway.config.schema import Site

__all__ = ["CommandsAs", "ProofResult", "Tally", "prove"]

_ACTIONS = {0: "ok", 1: "clamp", 2: "reject", 3: "trip"}
_KEEP_WORST = 5


@dataclass
class Tally:
    """What one constraint or detector would have done over the history. ``worst``: up to
    five (time, magnitude, detail), largest magnitude first (for a clamp, how far the
    projection moved the command; for the rest, in time order with magnitude NaN)."""

    name: str
    kind: str  # "constraint" or "detector"
    action: str  # "clamp", "reject" or "trip"
    count: int = 0
    first_s: float = math.nan
    last_s: float = math.nan
    worst: list[tuple[float, float, str]] = field(default_factory=list)

    def add(self, at_s: float, magnitude: float, detail: str) -> None:
        self.count += 1
        if self.count == 1:
            self.first_s = at_s
        self.last_s = at_s
        if math.isnan(magnitude):
            if len(self.worst) < _KEEP_WORST:
                self.worst.append((at_s, magnitude, detail))
            return
        self.worst.append((at_s, magnitude, detail))
        self.worst.sort(key=lambda w: -w[1])
        del self.worst[_KEEP_WORST:]

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "action": self.action,
                "count": self.count, "first_s": _f(self.first_s), "last_s": _f(self.last_s),
                "worst": [{"at_s": t, "magnitude": _f(m), "detail": d}
                          for t, m, d in self.worst]}


def _f(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass
class ProofResult:
    """The outcome of :func:`prove` over one stretch of history.

    ``not_judged``: tags without a column in the history. ``supervisor``: whether the full
    supervisor judged the detectors (False: the input detectors alone, see ``notes``);
    ``commands_as``: how the history's commands were judged (``ai`` or ``written``);
    ``detectors_judged``: every detector the site can raise that was judged (those without a
    tally never tripped); ``detectors_not_judged``: (detector, why) for the others;
    ``time_in_mode_s``: seconds of history in each mode; ``rearms``: trips after which prove
    returned the AI to AUTO; ``notes``: what else a reader must know."""

    label: str
    n_rows: int
    n_commands: int
    t_first_s: float
    t_last_s: float
    tallies: dict[str, Tally]
    not_judged: tuple[str, ...] = ()
    supervisor: bool = False
    commands_as: str = ""
    detectors_judged: tuple[str, ...] = ()
    detectors_not_judged: tuple[tuple[str, str], ...] = ()
    time_in_mode_s: dict[str, float] = field(default_factory=dict)
    rearms: int = 0
    notes: tuple[str, ...] = ()

    @property
    def trips(self) -> int:
        return sum(t.count for t in self.tallies.values() if t.action == "trip")

    def count(self, action: str) -> int:
        return sum(t.count for t in self.tallies.values() if t.action == action)

    def json(self) -> dict[str, Any]:
        return {"label": self.label, "rows": self.n_rows, "commands_judged": self.n_commands,
                "t_first_s": _f(self.t_first_s), "t_last_s": _f(self.t_last_s),
                "trips": self.trips, "clamps": self.count("clamp"),
                "refusals": self.count("reject"), "passed": self.trips == 0,
                "not_judged": list(self.not_judged),
                "supervisor": self.supervisor, "commands_as": self.commands_as,
                "detectors_judged": list(self.detectors_judged),
                "detectors_not_judged": [{"detector": d, "why": w}
                                         for d, w in self.detectors_not_judged],
                "time_in_mode_s": dict(self.time_in_mode_s), "rearms": self.rearms,
                "notes": list(self.notes),
                "tallies": [t.json() for t in sorted(self.tallies.values(),
                                                     key=lambda t: (t.kind, t.name))]}


def prove(site: Site, history: History, label: str = "all",
          engine: str | None = None, commands: CommandsAs | None = None) -> ProofResult:
    """Replay ``history`` through ``site``'s envelope and supervisor (see the module
    docstring). ``engine``: the envelope engine (default: the one the gateway runs);
    ``commands``: how the history's commands are judged (default: a flight recording's own
    proposals in its recorded modes; else as the AI's proposals when the site has an AI
    controller, else as written). ValueError for ``RECORDED`` without recorded proposals."""
    import gateway.envelope
    from gateway.commissioning.supervised import recorded_proposals, supervise
    from gateway.config.schema import ControllerKind
    from gateway.supervisor.detectors import InputHealth

    if commands is CommandsAs.RECORDED and recorded_proposals(site, history) is None:
        raise ValueError("--commands recorded needs a flight recording (a single one) that "
                         "holds every actuator of the site; this history has no recorded "
                         "proposals")
    if commands is None:
        commands = (CommandsAs.RECORDED if recorded_proposals(site, history) is not None
                    else CommandsAs.WRITTEN if site.controller.kind is ControllerKind.NONE
                    else CommandsAs.AI)
    env = gateway.envelope.compile(site, engine)
    inputs = InputHealth(site)
    cols = {n: i for i, n in enumerate(history.names)}
    s_names = [t.name for t in site.sensors]
    a_names = [t.name for t in site.actuators]
    not_judged = tuple(n for n in (*s_names, *a_names) if n not in cols)
    s_idx = [cols.get(n, -1) for n in s_names]
    a_idx = [cols.get(n, -1) for n in a_names]
    n_s, n_a = len(s_names), len(a_names)
    values = history.values
    times = history.time_s
    slot_policy = [int(p) for p in env.compiled.slot_policy]
    slot_names = env.constraint_names
    tallies: dict[str, Tally] = {}
    unjudged_sensors = {n for n in not_judged if n in s_names}
    # The full supervisor needs every sensor; without one, the input detectors alone.
    full = not unjudged_sensors and history.n_samples > 0

    def tally(name: str, kind: str, action: str) -> Tally:
        t = tallies.get(name)
        if t is None:
            t = tallies[name] = Tally(name, kind, action)
        return t

    last_s = np.full(n_s, np.nan)
    seen_at = np.full(n_s, -np.inf)
    good = np.zeros(n_s, dtype=bool)
    command = np.full(n_a, np.nan)
    previous: np.ndarray | None = None
    prev_t = math.nan
    out = np.empty(n_a)
    viol = np.zeros(env.n_slots, dtype=np.uint8)
    n_commands = 0
    for r in range(history.n_samples):
        now = float(times[r])
        row = values[r]
        for j, c in enumerate(s_idx):
            if c >= 0:
                v = row[c]
                if v == v:  # not NaN: a new reading
                    last_s[j] = v
                    seen_at[j] = now
                    good[j] = True
        age = now - seen_at
        sensors, findings = inputs.check(last_s.tolist(), good.tolist(), age.tolist(), now)
        for finding in findings if not full else ():
            if finding.detector.startswith("device."):
                # A lost device classifies its sensors' own findings (each tallied below),
                # adds no trip; and a device whose columns the history lacks is not lost.
                continue
            sensor = finding.detector.rsplit(".", 1)[-1]
            if sensor in unjudged_sensors:
                continue
            tally(finding.detector, "detector", "trip").add(now, math.nan, finding.reason)
        new = False
        for i, c in enumerate(a_idx):
            if c >= 0:
                v = row[c]
                if v == v:
                    command[i] = v
                    new = True
        if not new or bool(np.isnan(command).any()):
            continue
        cmd = np.ascontiguousarray(command, dtype=np.float64)
        if previous is None:
            previous, prev_t = cmd.copy(), now
            continue
        dt = now - prev_t
        sens = np.array(sensors, dtype=np.float64)
        code = env.check_into(cmd, previous, sens, dt, out, viol)
        n_commands += 1
        if code:
            moved = float(np.max(np.abs(out - cmd))) if code == 1 else math.nan
            for k in np.flatnonzero(viol).tolist():
                action = _ACTIONS[slot_policy[k]]
                detail = _detail(a_names, cmd, previous, out if code == 1 else None, dt)
                tally(slot_names[k], "constraint", action).add(
                    now, moved if action == "clamp" else math.nan, detail)
        previous, prev_t = cmd.copy(), now
    result = ProofResult(label, history.n_samples, n_commands,
                         float(times[0]) if history.n_samples else math.nan,
                         float(times[-1]) if history.n_samples else math.nan, tallies,
                         not_judged, commands_as=commands.value)
    if full:
        def on_trip(at_s: float, detector: str, reason: str) -> None:
            tally(detector, "detector", "trip").add(at_s, math.nan, reason)

        run = supervise(site, env, history, commands, on_trip)
        result.supervisor = True
        result.detectors_judged = run.judged
        result.detectors_not_judged = run.not_judged
        result.time_in_mode_s = run.time_in_mode_s
        result.rearms = run.rearms
    elif history.n_samples:
        result.notes = (
            f"the full supervisor did not run: the history has no column for sensor(s) "
            f"{', '.join(sorted(unjudged_sensors))} (it would read as bad quality throughout); "
            "the readings were judged by the input detectors alone (lost devices not "
            "judged), and the detectors that judge the AI and the mode machine not at all",)
    return result


def _detail(names: list[str], cmd: np.ndarray, previous: np.ndarray, out: np.ndarray | None,
            dt: float) -> str:
    parts = [f"{n}={c:.6g} (was {p:.6g}" + (f", to {o:.6g})" if out is not None and o != c
                                              else ")")
             for n, c, p, o in zip(names, cmd.tolist(), previous.tolist(),
                                   (out if out is not None else cmd).tolist(), strict=True)]
    return f"dt {dt:.3g} s: " + ", ".join(parts)
