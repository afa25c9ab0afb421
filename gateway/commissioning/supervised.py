"""A history replayed through the live gateway's full supervisor
(:class:`gateway.supervisor.core.Supervisor`: input health, the AI-judging detectors, the mode
machine), with the history's own times as its clock, to find what would have tripped.

How the history is fed, row by row, in time order:

* **Readings**: each sensor's latest reading, its age since it was read (a missing cell is no
  new reading: the last one stands and ages) and good quality: the snapshot the supervisor
  would have been given. Every sensor of the site must have a column (a sensor never read is
  of bad quality, and the plant would sit in SAFE_STOP); :func:`gateway.commissioning.prove.prove`
  falls back to the input detectors alone when one lacks it.
* **Commands** (:class:`CommandsAs`): with ``AI``, each row's command (the last written one,
  held) is the AI's proposal, judged in AUTO, the mode an AI-run site runs in, so that the
  envelope, the violation rate, gross violations and divergence from the fallback's reference
  judge it as live; with ``WRITTEN``, the commands are an operator's (MANUAL, each actuator
  held at the written value), and only the input detectors and the mode machine are judged;
  with ``RECORDED`` (a flight recording, which holds them), the AI's own proposals, in the mode
  each cycle was judged in (AUTO or SHADOW: the AI judged; MANUAL: the written commands held
  as an operator's; SAFE_STOP: the mode prove had stays, its own detectors decide). A trip in
  the recording is not copied: prove's supervisor trips or not by itself, and follows the
  recorded mode from the next cycle.
  Either way what the history wrote is what the devices held
  (:meth:`Supervisor.record_write`): the next row's rate and step limits are measured from it.
* **Trips** latch as live. So that the rest of the history is still judged, prove then acts as
  an operator at once: the next rows reset the trip (refused, as live, while sensing is
  unhealthy), take the plant to MANUAL with the history's command as the operator's setpoint
  (so that the AI's trial starts where the plant is), then SHADOW, then AUTO. The site's
  clean-shadow wait is shortened to a microsecond for this: the history goes on whatever the
  gateway would have done, and waiting would leave part of it unjudged. Each re-arm is counted.

Only the supervisor's public interface is used; nothing here changes how it judges.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.commissioning.sources import History
    from gateway.config.schema import Site
    from gateway.envelope.engine import Envelope

__all__ = ["CommandsAs", "SupervisedRun", "supervise"]

# The clean-shadow wait of the replayed site (the config requires a positive value).
_SHADOW_WAIT_S = 1e-6


class CommandsAs(StrEnum):
    """Whose commands a history holds, for the supervisor's judgement."""

    AI = "ai"  # the AI's proposals, judged in AUTO
    WRITTEN = "written"  # an operator's or the fallback's writes, in MANUAL
    RECORDED = "recorded"  # a flight recording's own proposals, in the mode it recorded


def recorded_proposals(site: Site, history: History) -> np.ndarray | None:
    """The recording's proposals in ``site``'s actuator order (shape (n, actuators), NaN rows
    where there was none), or None when ``history`` holds none or lacks one of the site's
    actuators."""
    rec = history.recorded
    if rec is None:
        return None
    idx = {n: i for i, n in enumerate(rec.actuators)}
    if any(t.name not in idx for t in site.actuators):
        return None
    # A fresh float64 array: the supervisor refuses a proposal whose dtype is not numpy's own
    # float64 (by identity), and an array decoded from a file may carry an equal but distinct
    # dtype object.
    out = np.empty((rec.proposals.shape[0], len(site.actuators)), dtype=np.float64)
    out[:] = rec.proposals[:, [idx[t.name] for t in site.actuators]]
    return out


@dataclass
class SupervisedRun:
    """What the supervisor pass found besides its trips (which go to the caller's tally).

    ``judged``: every detector name the site's supervisor can raise that this pass judged;
    ``not_judged``: (detector, why) for the others; ``time_in_mode_s``: seconds of history
    spent in each mode (the time from a row to the next, in the mode the row ended in);
    ``rearms``: how many times prove reset a trip and returned the AI to AUTO."""

    judged: tuple[str, ...]
    not_judged: tuple[tuple[str, str], ...]
    time_in_mode_s: dict[str, float] = field(default_factory=dict)
    rearms: int = 0


def not_judged_reasons(detector_names: tuple[str, ...], commands: CommandsAs
                       ) -> dict[str, str]:
    """Why each detector in ``detector_names`` that no history can exercise is not judged."""
    why: dict[str, str] = {}
    ai = commands in (CommandsAs.AI, CommandsAs.RECORDED)
    recorded = commands is CommandsAs.RECORDED
    for name in detector_names:
        if name == "canary":
            why[name] = ("the canary compares the model's outputs on its golden inputs, "
                         "which a history does not hold")
        elif (name == "deadline" or name.startswith("controller.")) and not recorded:
            why[name] = ("a history holds commands, not the AI's inference (its timing and "
                         "errors)")
        elif name == "ai_silent" and not recorded:
            why[name] = ("a history holds no proposal times: a command held across rows is "
                         "taken as repeated")
        elif name == "envelope":
            why[name] = ("its trips are reported per constraint (each trip-policy "
                         "constraint's tally counts every historical command that broke it)")
        elif not ai and (name in ("violation_rate", "envelope.gross")
                         or name.startswith("divergence.")):
            why[name] = ("the history's commands are judged as written by an operator or the "
                         "fallback (MANUAL): this detector judges an AI's proposals")
    return why


def supervise(site: Site, envelope: Envelope, history: History, commands: CommandsAs,
              on_trip: Callable[[float, str, str], None]) -> SupervisedRun:
    """Replay ``history`` through a :class:`Supervisor` of ``site`` (see the module docstring)
    and call ``on_trip(at_s, detector, reason)`` for every trip it latches or reports, but the
    ``envelope`` detector's (reported per constraint by the caller). ValueError if a sensor of
    the site has no column in ``history``."""
    from gateway.config.schema import StartMode
    from gateway.envelope.gate import Gate
    from gateway.supervisor.core import Supervisor
    from gateway.supervisor.decision import Proposal, ProposalAnomaly, Snapshot
    from gateway.supervisor.events import EventKind
    from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

    cols = {n: i for i, n in enumerate(history.names)}
    missing = [t.name for t in site.sensors if t.name not in cols]
    if missing:
        raise ValueError(f"the history has no column for sensor(s) {', '.join(missing)}")
    s_idx = [cols[t.name] for t in site.sensors]
    a_idx = [cols.get(t.name, -1) for t in site.actuators]
    n_s, n_a = len(s_idx), len(a_idx)
    replayed = dataclasses.replace(site, operation=dataclasses.replace(
        site.operation, start_mode=StartMode.MANUAL, clean_shadow_s=_SHADOW_WAIT_S))
    values, times = history.values, history.time_s
    # What the devices held before the history's first command: that command (it is not
    # judged, as in the constraint pass), else the safe values.
    first = np.full(n_a, np.nan)
    for i, c in enumerate(a_idx):
        if c >= 0:
            seen = np.flatnonzero(~np.isnan(values[:, c]))
            if seen.size:
                first[i] = values[seen[0], c]
    start_s = float(times[0]) if history.n_samples else 0.0
    initial = np.where(np.isnan(first), Gate(envelope).safe_values, first)
    sup = Supervisor(replayed, envelope, np.ascontiguousarray(initial, dtype=np.float64),
                     start_s)
    why = not_judged_reasons(sup.detector_names, commands)
    run = SupervisedRun(tuple(n for n in sup.detector_names if n not in why),
                        tuple(sorted(why.items())))
    recorded = recorded_proposals(site, history) if commands is CommandsAs.RECORDED else None
    if commands is CommandsAs.RECORDED and recorded is None:
        raise ValueError("the history holds no recorded proposals for the site's actuators")
    modes_seen = history.recorded.modes if history.recorded is not None else ()
    anomalies = history.recorded.anomalies if history.recorded is not None else ()
    target = Mode.AUTO if commands is CommandsAs.AI else Mode.MANUAL
    operator = "prove"
    last_s = np.full(n_s, np.nan)
    seen_at = np.full(n_s, -np.inf)
    good = np.zeros(n_s, dtype=bool)
    command = np.full(n_a, np.nan)
    have = False
    manual_steps = 0  # MANUAL steps since the last trip: the AI's trial starts after one
    tripped = False
    mode_s = dict.fromkeys((m.value for m in Mode), 0.0)
    prev_t = math.nan
    prev_mode = sup.mode

    def ask(kind: RequestKind) -> bool:
        """Whether the request was granted (a refusal changes nothing; tried again later)."""
        events = sup.apply_request(OperatorRequest(kind, operator, True))
        return not any(e.kind is EventKind.REQUEST_REFUSED for e in events)

    for r in range(history.n_samples):
        now = float(times[r])
        row = values[r]
        if prev_t == prev_t:
            mode_s[prev_mode.value] += now - prev_t
        for j, c in enumerate(s_idx):
            v = row[c]
            if v == v:  # not NaN: a new reading
                last_s[j] = v
                seen_at[j] = now
                good[j] = True
        for i, c in enumerate(a_idx):
            if c >= 0:
                v = row[c]
                if v == v:
                    command[i] = v
        have = have or not bool(np.isnan(command).any())
        if recorded is not None:
            # The mode the recorded cycle was judged in: a move toward the AI was an operator's
            # request, applied before the step (the mode the cycle ended in); a move toward
            # safety was the step's own trip, which prove's supervisor decides anew: it
            # follows from the next cycle. SAFE_STOP is never imposed: prove's own detectors
            # decide it.
            ended = Mode(modes_seen[r])
            before = Mode(modes_seen[r - 1]) if r else ended
            judged_in = ended if ended.safety_rank < before.safety_rank else before
            if judged_in is not Mode.SAFE_STOP:
                target = judged_in
        # Re-arm (or, before the first trip, arm): one step at a time toward the mode the
        # history's commands are judged in.
        if sup.modes.latched:
            ask(RequestKind.RESET_TRIP)
        if sup.mode is Mode.SAFE_STOP:
            ask(RequestKind.TO_MANUAL)
        if target in (Mode.AUTO, Mode.SHADOW) and have and not sup.modes.latched:
            if sup.mode is Mode.MANUAL and manual_steps >= 1:
                ask(RequestKind.TO_SHADOW)
            elif (sup.mode is Mode.SHADOW and target is Mode.AUTO
                  and ask(RequestKind.TO_AUTO) and tripped):
                run.rearms += 1
                tripped = False
        elif target is Mode.MANUAL and sup.mode in (Mode.AUTO, Mode.SHADOW):
            ask(RequestKind.TO_MANUAL)
        was_manual = have and sup.mode is Mode.MANUAL
        if was_manual:
            for i in range(n_a):
                sup.set_operator_setpoint(i, float(command[i]))
        proposal = None
        if recorded is not None:
            if not bool(np.isnan(recorded[r]).any()):
                proposal = Proposal(recorded[r].copy())
            else:
                anomaly = anomalies[r]
                if anomaly is not None:
                    proposal = Proposal(None, ProposalAnomaly(anomaly))
        elif commands is CommandsAs.AI and have:
            proposal = Proposal(command.copy())
        age = now - seen_at
        decision = sup.step(Snapshot(last_s.copy(), good.copy(), age), proposal, now)
        trip_now = False
        for event in decision.events:
            if event.kind is EventKind.TRIP:
                trip_now = True
                if event.name != "envelope":
                    on_trip(event.at_s, event.name, event.reason)
        if trip_now:
            tripped = True
            manual_steps = 0
        elif was_manual and sup.mode is Mode.MANUAL:
            manual_steps += 1  # a step that applied the history's command
        if have:
            sup.record_write(command.copy())
        prev_t, prev_mode = now, sup.mode
    run.time_in_mode_s = {k: v for k, v in mode_s.items() if v > 0.0}
    return run
