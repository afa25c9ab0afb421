"""``drill --live``: the people on shift work the drill's incident while its gateway runs,
and are scored.

Once the scenario's timeline has run, the drill hands its first incident over (its id, the
dashboard's address, the commands that reach the running gateway: :func:`handover_text` and
:func:`live_lines`) and keeps the plant and the gateway stepping at wall pace, on fallback
control after the trip, while people acknowledge it, tick its checklist and resolve it on the
dashboard or with ``safety-gateway incidents ack|check|resolve ... --via ENDPOINT`` (the
gateway holds the audit database meanwhile; ``--db`` reads work, writes wait for it to close).
:class:`LiveWatch` decides, before each step, when the wait is over: the incident resolved, or
acknowledged with every checklist item done, or the timeout. The gateway then closes and the
time to acknowledge and the checklist's completion are scored from the incident's own records.

:func:`wait_for_people` is the same wait over a database no gateway holds (a loop over an
injected clock and sleep, so a test runs it in virtual time).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.incident.model import Incident

__all__ = ["LiveScore", "LiveWatch", "handover_text", "live_lines", "wait_for_people"]


@dataclass(frozen=True)
class LiveScore:
    """How the people worked the incident. Times are wall seconds from the handover
    (``handed_over_wall_s``, UTC seconds); ``opened_to_ack_s`` counts from the incident's
    opening instead (the drill itself runs in seconds)."""

    scenario: str
    incident: str
    handed_over_wall_s: float
    acknowledged_after_s: float | None
    acknowledged_by: str | None
    opened_to_ack_s: float | None
    checklist_done: int
    checklist_items: int
    resolved_after_s: float | None
    timed_out: bool

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        ack = ("not acknowledged" if self.acknowledged_after_s is None else
               f"acknowledged after {self.acknowledged_after_s:.1f} s"
               f" by {self.acknowledged_by}")
        resolved = ("not resolved" if self.resolved_after_s is None else
                    f"resolved after {self.resolved_after_s:.1f} s")
        return (f"live: incident {self.incident}: {ack}; checklist {self.checklist_done} of "
                f"{self.checklist_items} done; {resolved}"
                + ("; timed out" if self.timed_out else ""))


def handover_text(incident: str, db: Path) -> str:
    """What the drill prints for the people on shift."""
    where = f"--db {db}"
    return "\n".join([
        f"live drill: incident {incident} is yours. Work it with:",
        f"  safety-gateway incidents show {incident} {where}",
        f"  safety-gateway incidents ack {incident} {where} --by WHO",
        f"  safety-gateway incidents check {incident} PHASE ITEM {where} --by WHO",
        # resolve requires a post-incident review (and every required checklist item).
        f"  safety-gateway incidents review {incident} {where} --by WHO --root-cause TEXT",
        f"  safety-gateway incidents resolve {incident} {where} --by WHO --summary TEXT",
        "waiting until it is resolved, or acknowledged with every checklist item done",
    ])


def _acknowledged(incident: Incident) -> tuple[float, str | None] | None:
    """(wall time, who) of the first acknowledgement: an acknowledging note, else the move to
    investigating."""
    from gateway.incident.model import Phase

    notes = [n for n in incident.notes if n.acknowledge]
    if notes:
        return notes[0].wall_s, notes[0].who
    change = incident.phase_change(Phase.INVESTIGATING)
    return (change.wall_s, change.by) if change is not None else None


def score_incident(incident: Incident, scenario: str, handed_over_wall_s: float,
                   timed_out: bool) -> LiveScore:
    ack = _acknowledged(incident)
    done = sum(1 for item in incident.checklist if item.done)
    resolved = incident.resolution.wall_s if incident.resolution is not None else None
    return LiveScore(
        scenario=scenario, incident=incident.id, handed_over_wall_s=handed_over_wall_s,
        acknowledged_after_s=None if ack is None else round(ack[0] - handed_over_wall_s, 3),
        acknowledged_by=None if ack is None else ack[1],
        opened_to_ack_s=None if ack is None else round(ack[0] - incident.opened_wall_s, 3),
        checklist_done=done, checklist_items=len(incident.checklist),
        resolved_after_s=None if resolved is None else round(resolved - handed_over_wall_s, 3),
        timed_out=timed_out)


def live_lines(incident: str, dashboard_url: str, via: str, users: tuple[str, ...]) -> list[str]:
    """The handover's lines for a drill whose gateway keeps running: the dashboard, and the
    commands that reach the running gateway (which holds the audit database meanwhile)."""
    def via_args(user: str) -> str:
        return f"--via {via} --user {user} --password-env SG_DRILL_PASSWORD"

    user = users[0] if users else "NAME"
    return [
        "the drill's gateway keeps running and holds the database while you work (--db",
        "writes wait until it has closed): use its dashboard, or go through it with --via:",
        f"  dashboard: {dashboard_url} (log in, acknowledge, tick the checklist)",
        f"  safety-gateway incidents ack {incident} 'on it' {via_args(user)}",
        f"  safety-gateway incidents check {incident} PHASE ITEM {via_args(user)}",
        # resolve requires a post-incident review first (the running gateway records both).
        f"  safety-gateway incidents review {incident} --root-cause TEXT {via_args(user)}",
        f"  safety-gateway incidents resolve {incident} --summary TEXT {via_args(user)}",
        f"  safety-gateway ctl status {via_args(user)}",
    ]


class LiveWatch:
    """``drill --live`` inside the run: the runner calls :meth:`handover` once the timeline
    has run, then :meth:`check` before each further step, and stops stepping (and closes the
    gateway) once it returns a score. ``say`` prints the handover (stderr in the command);
    ``wall`` is UTC seconds, the incident records' own clock."""

    def __init__(self, timeout_s: float, say: Callable[[str], None],
                 text: Callable[[str], str],
                 wall: Callable[[], float] = time.time) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        self.timeout_s = timeout_s
        self.say = say
        self.text = text
        self.wall = wall
        self.start: float | None = None

    def handover(self, incident: str) -> None:
        self.start = self.wall()
        self.say(self.text(incident))

    def no_incident(self) -> None:
        self.say("live drill: the drill opened no incident; nothing to work")

    def check(self, incident: Incident, scenario: str) -> LiveScore | None:
        """The score once the wait is over (worked, or timed out), else None."""
        assert self.start is not None, "handover first"
        if _finished(incident):
            return score_incident(incident, scenario, self.start, timed_out=False)
        if self.wall() - self.start >= self.timeout_s:
            return score_incident(incident, scenario, self.start, timed_out=True)
        return None


def _finished(incident: Incident) -> bool:
    if incident.resolution is not None:
        return True
    return _acknowledged(incident) is not None and all(i.done for i in incident.checklist)


def wait_for_people(db: Path, incident_id: str, scenario: str, *, timeout_s: float,
                    poll_s: float = 0.5,
                    clock: Callable[[], float] = time.time,
                    sleep: Callable[[float], None] = time.sleep) -> LiveScore:
    """Wait until the incident is resolved, or acknowledged with every checklist item done,
    or ``timeout_s`` has passed; return the score. Reads ``db`` only."""
    from gateway.incident.store import load_incident

    start = clock()
    while True:
        incident = load_incident(db, incident_id)
        if _finished(incident):
            return score_incident(incident, scenario, start, timed_out=False)
        if clock() - start >= timeout_s:
            return score_incident(incident, scenario, start, timed_out=True)
        sleep(poll_s)
