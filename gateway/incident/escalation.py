"""What the escalation plan and the reporting clocks ask for now: pure functions of an incident
and the wall clock.

The manager (:meth:`gateway.incident.manager.IncidentManager.tick`) calls them off the control
path, records what they return in the incident and hands the notifications to the notifier.
Because each answer depends only on the incident's records and ``now_wall_s``, a restarted
gateway picks up where the last one stopped: a step already recorded is not repeated, a step
that fell due while the gateway was down fires at the next tick.

Escalation: the steps of the incident's *current* severity, measured from when it reached that
severity. A step at 0 fires at once; a later step fires only while no one has acknowledged the
incident. Each (severity, step, contact) fires once; raising the severity starts the new
severity's steps (the people told before are told again, at the new severity).

Reporting clocks: for each obligation whose severity the incident reached, a ``reminder`` at
the deadline minus the lead time and an ``overdue`` notice once it has passed, each once, unless
the report was recorded as made. They run for resolved incidents too: resolving an incident
does not discharge a duty to report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.incident.model import Incident
    from gateway.incident.people import Contact, Obligation, Severity

__all__ = ["DueEscalation", "DueNotice", "due_escalations", "due_notices"]


@dataclass(frozen=True, slots=True)
class DueEscalation:
    severity: Severity
    step: int
    after_s: float
    contact: Contact
    reason: str


@dataclass(frozen=True, slots=True)
class DueNotice:
    obligation: Obligation
    notice: str  # "reminder" or "overdue"
    due_wall_s: float


def due_escalations(incident: Incident, now_wall_s: float) -> list[DueEscalation]:
    """The contacts to notify now by the escalation plan (see the module docstring)."""
    severity = incident.severity
    since = incident.severity_since()
    if not incident.is_open or severity is None or since is None:
        return []
    plan = incident.people
    done = {(e.severity, e.step, e.contact) for e in incident.escalations}
    acknowledged = incident.acknowledged_at() is not None
    out: list[DueEscalation] = []
    for k, step in enumerate(plan.escalation.get(severity, ())):
        if now_wall_s < since + step.after_s:
            continue
        if step.after_s > 0 and acknowledged:
            continue
        reason = (f"severity {severity}: at once" if step.after_s == 0 else
                  f"severity {severity}: not acknowledged within {step.after_s / 60:g} min")
        for name in step.contacts:
            contact = plan.contacts.get(name)
            if contact is not None and (severity, k, name) not in done:
                out.append(DueEscalation(severity, k, step.after_s, contact, reason))
    return out


def due_notices(incident: Incident, now_wall_s: float) -> list[DueNotice]:
    """The reporting reminders and overdue notices to send now."""
    sent = {(n.obligation, n.notice) for n in incident.deadline_notices}
    by_name = {o.name: o for o in incident.people.obligations}
    out: list[DueNotice] = []
    for d in incident.deadlines():
        if d.report is not None:
            continue
        ob = by_name[d.obligation]
        if now_wall_s >= d.due_wall_s:
            if (d.obligation, "overdue") not in sent:
                out.append(DueNotice(ob, "overdue", d.due_wall_s))
        elif now_wall_s >= d.remind_wall_s and (d.obligation, "reminder") not in sent:
            out.append(DueNotice(ob, "reminder", d.due_wall_s))
    return out
