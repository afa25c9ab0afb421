"""Incidents: what one is, and how its audit records build it.

An incident is never stored as a row that is updated: every change is one audit record of kind
``incident`` (hash-chained with everything else), and an :class:`Incident` is the fold of its
records in sequence order (:func:`fold`). The manager applies the very same fold to the payloads
it appends, so what a running gateway holds in memory and what ``safety-gateway incidents``
reads back from the database are equal by construction.

Payloads (canonical JSON; every one has ``"incident": ID`` and ``"action"``; ``wall_s`` is the
manager's wall clock, UTC seconds since the epoch; ``at_s`` the supervisor's monotonic time of
the cycle concerned, null when there is none, e.g. for an operator's note before any cycle):

``open``
    ``site, wall_s, at_s, trigger {detector, reason, at_s, target, evidence [[k, v], ...]},
    mode_at_trip, mode_after_trip, model {path, sha256}, config_sha256,
    playbook {name, source, sha256, rule}, checklist {phase: [item, ...]}, notify [hook, ...],
    flight_recorder {trigger_s, start_s, end_s} | null, people {...} | absent,
    resolve_requires {checklist: [phase, ...], review: bool} | absent,
    plant_safety TEXT | absent, cause CAUSE | absent`` (``cause``: what the trip names as
    the incident's cause, :mod:`gateway.incident.causes`; an older record without it is given
    its trigger detector's cause by the same mapping; ``plant_safety``: how the gateway's
    actions relate to the plant's own safety instrumented system, as the playbook states
    it; ``people``: the playbook's contacts, severity rules, escalation and reporting
    obligations,
    :meth:`gateway.incident.people.PeoplePlan.to_json`; ``resolve_requires`` absent means
    every checklist item and a review).
``phase``
    ``phase, wall_s, at_s, by, reason``: the incident moved forward to ``phase``.
``event``
    ``wall_s, at_s, kind, name, reason, requester, evidence, mode, repeated`` (a supervisor
    event while the incident is open; a further trip has ``kind: "trip"``, ``joined: true`` and
    the playbook ``rule`` it matched; ``repeated`` counts identical events folded into this one).
``note``
    ``wall_s, at_s, who, source, text, acknowledge``.
``containment``
    ``wall_s, at_s, step, status, detail`` (+ ``factor`` for rate_limit). Status is one of
    :class:`ContainmentStatus`.
``notify``
    ``wall_s, hook, kind, target, status ("sent" | "failed"), detail, duration_s``.
``checklist``
    ``wall_s, phase, index, item, who, source`` (an item done), or ``wall_s, added
    {phase: [item, ...]}, rule`` (items added by a further trip's playbook rule).
``resolve``
    ``wall_s, at_s, who, source, summary`` and, when it was forced while required items were
    open, ``forced: true, force_reason, open [what was open, ...]``.
``severity``
    ``wall_s, level, previous, by, source, reason, rule``: the incident's severity became
    ``level`` (``by`` null and ``rule`` the severity rule when the playbook classified it; an
    operator's name and reason when raised by hand).
``consequence``
    ``wall_s, min_margin, sensor, value, frames``: how close the process came to a danger limit
    in the flight-recorder window (see :class:`~gateway.incident.people.Consequence`).
``escalate``
    ``wall_s, severity, step, after_s, contact, role, hooks, reason``: a contact was notified
    by the escalation plan (step ``step`` of the severity's steps).
``deadline``
    ``wall_s, obligation, notice ("reminder" | "overdue"), due_wall_s, contacts``: the contacts of
    a reporting obligation were told its deadline is near, or has passed.
``reported``
    ``wall_s, obligation, who, source, ref``: the report an obligation asks for was made.
``review``
    ``wall_s, who, source, root_cause, factors [..], went_well [..], went_badly [..],
    actions [{text, owner, due: "YYYY-MM-DD"}, ...]``: the post-incident review (a later one
    revises it and adds its action items, numbered on from the earlier ones).
``action_done``
    ``wall_s, number, who, source, note``: action item ``number`` was closed.
``draft_approved``
    ``wall_s, audience, who, source, sha256, text``: a person approved this text of the
    communication to ``audience`` (regulator, customers, board, internal) for sending.
``flight_recorder``
    ``wall_s, part, parts, frames, total_frames, trigger_s, start_s, end_s, header, frames_jsonl``:
    part ``part`` (from 0, in frame order, contiguous) of the frozen window, written once the
    window is complete; ``parts`` is the number of parts on the last part and 0 on the others;
    ``frames`` the frames in this part, ``total_frames`` the frames up to and including this
    part (the window's total on the last part); ``header`` is the recorder's JSONL header line
    (part 0 only; null without recording info); ``frames_jsonl`` the frames' lines, exactly as
    :func:`gateway.forensics.recorder.write_jsonl` writes them (each ending in a newline), so
    that ``header + "\\n" + the parts' text`` is the window's JSONL file.

Evidence is ``[[key, value], ...]`` with text or numbers; a non-finite number is written
``{"$f": "nan"}`` (or ``"inf"``, ``"-inf"``), as the flight recorder writes it: canonical JSON
would write the text ``"nan"``, which could not be told apart from evidence that is text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from gateway.incident.causes import Cause, cause_of
from gateway.incident.people import Consequence, PeoplePlan, Severity
from gateway.incident.review import ActionItem, Review, parse_due

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "BadRequest",
    "ChecklistItem",
    "ChecklistPhase",
    "ContainmentRecord",
    "ContainmentStatus",
    "Deadline",
    "DeadlineNotice",
    "DraftApproval",
    "EntryKind",
    "Escalation",
    "Incident",
    "IncidentError",
    "ModelIdentity",
    "Note",
    "NotificationRecord",
    "OpenItems",
    "Phase",
    "PhaseChange",
    "PlaybookRef",
    "RecorderRef",
    "ReportMade",
    "Resolution",
    "ResolveRequirements",
    "SeverityChange",
    "TimelineEntry",
    "Trigger",
    "finite_json",
    "fold",
    "fold_record",
    "utc_text",
]

KIND: Final = "incident"


class IncidentError(Exception):
    """An incident request that cannot be done: an unknown id, a resolved incident, a missing
    summary, an unauthorised resolve, an unknown checklist item."""


class BadRequest(IncidentError):
    """The request itself is malformed: an empty name, text or summary, an unknown checklist
    phase."""


class OpenItems(IncidentError):
    """Resolve refused: required checklist items or the review are still open (``open``
    lists them)."""

    def __init__(self, message: str, open_items: tuple[str, ...]) -> None:
        super().__init__(message)
        self.open = open_items


class UnknownIncident(IncidentError, KeyError):
    """No incident has this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown incident"


class Phase(StrEnum):
    """Where an incident stands. Phases only move forward (a phase may be skipped, e.g. an
    operator's note before the output left the AI goes straight to ``investigating``)."""

    DETECTED = "detected"            # a detector tripped
    CONTAINED = "contained"          # the applied output no longer comes from the AI
    INVESTIGATING = "investigating"  # an operator acknowledged, noted or checked something
    RESOLVED = "resolved"            # an authorised operator resolved it, with a summary

    @property
    def rank(self) -> int:
        return _PHASE_RANK[self]


_PHASE_RANK: Final = {p: i for i, p in enumerate(Phase)}


class ChecklistPhase(StrEnum):
    """The five phases of incident response, under which a playbook lists its checklist."""

    DETECTION = "detection"
    CONTAINMENT = "containment"
    INVESTIGATION = "investigation"
    FORENSICS = "forensics"
    RECOVERY = "recovery"


_CHECKLIST_ORDER: Final = {p: i for i, p in enumerate(ChecklistPhase)}


class ContainmentStatus(StrEnum):
    REQUESTED = "requested"      # the manager handed the action to the runtime
    APPLIED = "applied"          # the runtime (or the supervisor) applied it
    ALREADY = "already"          # nothing to do: the supervisor's trip already did it
    REFUSED = "refused"          # the supervisor refused the request
    UNSUPPORTED = "unsupported"  # the runtime cannot apply this step
    FAILED = "failed"            # applying it failed


class EntryKind(StrEnum):
    OPENED = "opened"
    EVENT = "event"
    PHASE = "phase"
    NOTE = "note"
    CONTAINMENT = "containment"
    NOTIFY = "notify"
    CHECKLIST = "checklist"
    RESOLVED = "resolved"
    FLIGHT_RECORDER = "flight_recorder"
    SEVERITY = "severity"
    CONSEQUENCE = "consequence"
    ESCALATION = "escalation"
    DEADLINE = "deadline"
    REPORTED = "reported"
    DRAFT_APPROVED = "draft_approved"
    REVIEW = "review"
    ACTION = "action"


Evidence = tuple[tuple[str, float | str], ...]


@dataclass(frozen=True, slots=True)
class Trigger:
    """A trip: the detector, its reason and evidence, the supervisor time, the mode it
    demanded (``target``: manual or safe_stop)."""

    detector: str
    reason: str
    at_s: float | None
    evidence: Evidence = ()
    target: str | None = None


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    path: str | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class PlaybookRef:
    """The playbook in force when the incident opened, and the rule its trigger matched
    (None when no rule matched)."""

    name: str
    source: str | None
    sha256: str | None
    rule: str | None


@dataclass(frozen=True, slots=True)
class PhaseChange:
    phase: Phase
    wall_s: float
    at_s: float | None
    by: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ContainmentRecord:
    step: str
    status: ContainmentStatus
    detail: str
    wall_s: float
    at_s: float | None
    factor: float | None = None


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    hook: str
    kind: str
    target: str
    ok: bool
    detail: str
    wall_s: float
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class ChecklistItem:
    phase: ChecklistPhase
    text: str
    done: bool = False
    by: str | None = None
    wall_s: float | None = None


@dataclass(frozen=True, slots=True)
class Note:
    who: str
    source: str
    text: str
    wall_s: float
    at_s: float | None
    acknowledge: bool = False


@dataclass(frozen=True, slots=True)
class Resolution:
    """Who resolved it, with what summary; ``forced`` (with ``force_reason`` and what was
    still ``open``) when required items were open."""

    who: str
    source: str
    summary: str
    wall_s: float
    forced: bool = False
    force_reason: str = ""
    open: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResolveRequirements:
    """What must be closed before the incident can be resolved without force: every
    checklist item of the ``checklist`` phases, and a review when ``review``."""

    checklist: tuple[ChecklistPhase, ...] = tuple(ChecklistPhase)
    review: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"checklist": [p.value for p in self.checklist], "review": self.review}

    @classmethod
    def from_json(cls, obj: Any) -> ResolveRequirements:
        """Absent (records written before it existed): everything is required."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict) or not isinstance(obj.get("checklist", []), list):
            raise ValueError("resolve_requires must be {checklist: [phase, ...], review: bool}")
        return cls(tuple(ChecklistPhase(p) for p in obj.get("checklist", [])),
                   bool(obj.get("review", True)))


@dataclass(frozen=True, slots=True)
class RecorderRef:
    """The incident's flight-recorder window (supervisor times). ``parts_stored`` of
    ``parts`` records hold it; it is complete in the database when they are equal and
    ``parts`` > 0 (``parts`` is 0 until the window is complete in the recorder)."""

    trigger_s: float
    start_s: float
    end_s: float
    frames: int = 0
    parts: int = 0
    parts_stored: int = 0

    @property
    def stored(self) -> bool:
        return self.parts > 0 and self.parts_stored == self.parts


@dataclass(frozen=True, slots=True)
class SeverityChange:
    """The severity became ``level`` at ``wall_s``: by the playbook (``by`` None, ``rule``
    the severity rule, None for the default) or raised by an operator (``by``, ``reason``)."""

    level: Severity
    previous: Severity | None
    wall_s: float
    by: str | None
    reason: str
    rule: str | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class Escalation:
    """A contact notified by the escalation plan."""

    severity: Severity
    step: int
    after_s: float
    contact: str
    role: str
    hooks: tuple[str, ...]
    reason: str
    wall_s: float


@dataclass(frozen=True, slots=True)
class DeadlineNotice:
    """The contacts of ``obligation`` were told its deadline is near (``notice``
    "reminder") or has passed ("overdue")."""

    obligation: str
    notice: str
    due_wall_s: float
    contacts: tuple[str, ...]
    wall_s: float


@dataclass(frozen=True, slots=True)
class ReportMade:
    """The report ``obligation`` asks for was made (``ref``: where, or its reference)."""

    obligation: str
    who: str
    source: str
    ref: str
    wall_s: float


@dataclass(frozen=True, slots=True)
class DraftApproval:
    """``who`` approved ``text`` (whose UTF-8 sha256 is ``sha256``) for ``audience``."""

    audience: str
    who: str
    source: str
    sha256: str
    text: str
    wall_s: float


@dataclass(frozen=True, slots=True)
class Deadline:
    """A reporting obligation's clock for one incident: it started at ``start_wall_s`` (the
    incident first reached the obligation's severity), is due at ``due_wall_s``, its contacts
    are reminded at ``remind_wall_s``; ``report`` once made."""

    obligation: str
    description: str
    start_wall_s: float
    due_wall_s: float
    remind_wall_s: float
    report: ReportMade | None

    def status(self, now_wall_s: float) -> str:
        """``met``, ``overdue``, ``due soon`` (within the lead time) or ``open``."""
        if self.report is not None:
            return "met"
        if now_wall_s >= self.due_wall_s:
            return "overdue"
        return "due soon" if now_wall_s >= self.remind_wall_s else "open"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of the incident's story. ``wall_s`` UTC seconds; ``at_s`` supervisor time
    (None when not tied to a cycle); ``who`` the operator for operator actions."""

    wall_s: float
    at_s: float | None
    kind: EntryKind
    text: str
    who: str | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident (see the module docstring for how it is built).

    ``opened_at_s`` is the trip's supervisor time, ``opened_wall_s`` the wall clock when the
    incident opened. ``trips`` lists every trip of the incident, the first (``trigger``)
    included. ``checklist`` is the playbook's checklist for every phase with what is done.
    """

    id: str
    site: str
    trigger: Trigger
    opened_at_s: float | None
    opened_wall_s: float
    phase: Phase
    phases: tuple[PhaseChange, ...]
    mode_at_trip: str
    mode_after_trip: str
    model: ModelIdentity
    config_sha256: str | None
    playbook: PlaybookRef
    notifications_planned: tuple[str, ...] = ()
    containment: tuple[ContainmentRecord, ...] = ()
    notifications: tuple[NotificationRecord, ...] = ()
    checklist: tuple[ChecklistItem, ...] = ()
    trips: tuple[Trigger, ...] = ()
    notes: tuple[Note, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    flight_recorder: RecorderRef | None = None
    resolution: Resolution | None = None
    records: int = 0
    people: PeoplePlan = field(default_factory=PeoplePlan)
    severity: Severity | None = None
    severity_changes: tuple[SeverityChange, ...] = ()
    consequence: Consequence | None = None
    escalations: tuple[Escalation, ...] = ()
    deadline_notices: tuple[DeadlineNotice, ...] = ()
    reports: tuple[ReportMade, ...] = ()
    approvals: tuple[DraftApproval, ...] = ()
    resolve_requires: ResolveRequirements = field(default_factory=ResolveRequirements)
    plant_safety: str = ""
    review: Review | None = None
    actions: tuple[ActionItem, ...] = ()
    # What the trip names as the cause (gateway.incident.causes), set when it opens.
    cause: Cause = Cause.OTHER

    @property
    def is_open(self) -> bool:
        return self.phase is not Phase.RESOLVED

    def phase_change(self, phase: Phase) -> PhaseChange | None:
        """When the incident reached ``phase`` (None if it has not, or skipped it)."""
        for change in self.phases:
            if change.phase is phase:
                return change
        return None

    def checklist_of(self, phase: ChecklistPhase) -> tuple[ChecklistItem, ...]:
        return tuple(item for item in self.checklist if item.phase is phase)

    def open_requirements(self) -> tuple[str, ...]:
        """What must still be closed before the incident can be resolved without force:
        ``"checklist PHASE N: TEXT"`` per required item not done, ``"review"`` when a review
        is required and none is recorded. Empty when it may be resolved."""
        required = set(self.resolve_requires.checklist)
        out = []
        for phase in ChecklistPhase:
            if phase in required:
                out += [f"checklist {phase} {k}: {item.text}"
                        for k, item in enumerate(self.checklist_of(phase)) if not item.done]
        if self.resolve_requires.review and self.review is None:
            out.append("review")
        return tuple(out)

    def acknowledged_at(self) -> float | None:
        """When someone first acknowledged the incident (wall clock), None if no one has."""
        return next((n.wall_s for n in self.notes if n.acknowledge), None)

    def severity_since(self) -> float | None:
        """When the incident reached its current severity (wall clock)."""
        return self.severity_changes[-1].wall_s if self.severity_changes else None

    def reached(self, level: Severity) -> float | None:
        """When the incident first reached ``level`` or higher (wall clock), None if never."""
        return next((c.wall_s for c in self.severity_changes if c.level.rank >= level.rank),
                    None)

    def deadlines(self) -> tuple[Deadline, ...]:
        """The reporting obligations whose clock runs for this incident (it reached their
        severity), in the playbook's order."""
        out = []
        for ob in self.people.obligations:
            start = self.reached(ob.min_severity)
            if start is None:
                continue
            report = next((r for r in self.reports if r.obligation == ob.name), None)
            due = start + ob.within_s
            out.append(Deadline(ob.name, ob.description, start, due, due - ob.lead_s, report))
        return tuple(out)

    def summary(self) -> dict[str, Any]:
        """A short JSON-ready view (for listings)."""
        done = sum(1 for item in self.checklist if item.done)
        return {"id": self.id, "site": self.site, "phase": self.phase.value,
                "opened_wall_s": self.opened_wall_s, "opened_at_s": self.opened_at_s,
                "detector": self.trigger.detector, "reason": self.trigger.reason,
                "trips": len(self.trips), "notes": len(self.notes),
                "severity": None if self.severity is None else self.severity.value,
                "cause": self.cause.value,
                "checklist_done": done, "checklist_items": len(self.checklist),
                "flight_recorder_stored": (self.flight_recorder is not None
                                           and self.flight_recorder.stored)}

    def to_json(self) -> dict[str, Any]:
        """Every field as JSON-ready values (enums as their text, tuples as lists)."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out["is_open"] = self.is_open
        for item in out["actions"]:  # dates as text: strict JSON has no date type
            item["due"] = item["due"].isoformat()
        return out


# ------------------------------------------------------------------------------------- folding


_NONFINITE: Final = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _num(value: Any, what: str) -> float:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]  # canonical JSON's spelling of a non-finite float
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, not {value!r}")
    return float(value)


def _opt_num(value: Any, what: str) -> float | None:
    return None if value is None else _num(value, what)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {value!r}")
    return value


def _opt_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _evidence(value: Any) -> Evidence:
    if not isinstance(value, list | tuple):
        raise ValueError("evidence must be a list of [key, value] pairs")
    out: list[tuple[str, float | str]] = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"evidence item {pair!r} is not a [key, value] pair")
        v = pair[1]
        if isinstance(v, dict) and set(v) == {"$f"}:  # a tagged non-finite float
            v = _num(v["$f"], f"evidence {pair[0]}")
        out.append((pair[0], v if isinstance(v, str) else _num(v, f"evidence {pair[0]}")))
    return tuple(out)


def evidence_text(evidence: Evidence) -> str:
    """``key=value, ...`` for reports and timelines."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in evidence)


def _trigger(obj: Any) -> Trigger:
    if not isinstance(obj, dict):
        raise ValueError("trigger must be an object")
    return Trigger(detector=_text(obj.get("detector"), "trigger.detector"),
                   reason=_text(obj.get("reason", ""), "trigger.reason"),
                   at_s=_opt_num(obj.get("at_s"), "trigger.at_s"),
                   evidence=_evidence(obj.get("evidence", [])),
                   target=_opt_text(obj.get("target"), "trigger.target"))


def _checklist(obj: Any) -> tuple[ChecklistItem, ...]:
    if not isinstance(obj, dict):
        raise ValueError("checklist must be an object of phase: [items]")
    items: list[ChecklistItem] = []
    for phase in ChecklistPhase:  # always in the five phases' order
        texts = obj.get(phase.value, [])
        if not isinstance(texts, list):
            raise ValueError(f"checklist.{phase} must be a list")
        items.extend(ChecklistItem(phase, _text(t, f"checklist.{phase}")) for t in texts)
    unknown = set(obj) - {p.value for p in ChecklistPhase}
    if unknown:
        raise ValueError(f"checklist has unknown phases {sorted(unknown)}")
    return tuple(items)


def _entry(incident: Incident, payload: Mapping[str, Any], kind: EntryKind, text: str,
           who: str | None = None) -> Incident:
    entry = TimelineEntry(_num(payload.get("wall_s"), "wall_s"),
                          _opt_num(payload.get("at_s"), "at_s"), kind, text, who)
    return replace(incident, timeline=(*incident.timeline, entry),
                   records=incident.records + 1)


def _cause(value: Any, detector: str) -> Cause:
    """The recorded cause; a record from before causes were recorded gets its trigger's."""
    if value is None:
        return cause_of(detector)
    try:
        return Cause(_text(value, "cause"))
    except ValueError:
        raise ValueError(f"cause must be one of {', '.join(c.value for c in Cause)}, "
                         f"not {value!r}") from None


def _open(payload: Mapping[str, Any]) -> Incident:
    trigger = _trigger(payload.get("trigger"))
    model = payload.get("model") or {}
    book = payload.get("playbook") or {}
    if not isinstance(model, dict) or not isinstance(book, dict):
        raise ValueError("model and playbook must be objects")
    fr = payload.get("flight_recorder")
    recorder = None
    if fr is not None:
        if not isinstance(fr, dict):
            raise ValueError("flight_recorder must be an object")
        recorder = RecorderRef(_num(fr.get("trigger_s"), "flight_recorder.trigger_s"),
                               _num(fr.get("start_s"), "flight_recorder.start_s"),
                               _num(fr.get("end_s"), "flight_recorder.end_s"))
    wall_s = _num(payload.get("wall_s"), "wall_s")
    at_s = _opt_num(payload.get("at_s"), "at_s")
    notify = payload.get("notify", [])
    if not isinstance(notify, list):
        raise ValueError("notify must be a list")
    incident = Incident(
        id=_text(payload.get("incident"), "incident"),
        site=_text(payload.get("site"), "site"),
        trigger=trigger, opened_at_s=at_s, opened_wall_s=wall_s, phase=Phase.DETECTED,
        phases=(PhaseChange(Phase.DETECTED, wall_s, at_s, None,
                            f"trip by {trigger.detector}"),),
        mode_at_trip=_text(payload.get("mode_at_trip"), "mode_at_trip"),
        mode_after_trip=_text(payload.get("mode_after_trip"), "mode_after_trip"),
        model=ModelIdentity(_opt_text(model.get("path"), "model.path"),
                            _opt_text(model.get("sha256"), "model.sha256")),
        config_sha256=_opt_text(payload.get("config_sha256"), "config_sha256"),
        playbook=PlaybookRef(_text(book.get("name", ""), "playbook.name"),
                             _opt_text(book.get("source"), "playbook.source"),
                             _opt_text(book.get("sha256"), "playbook.sha256"),
                             _opt_text(book.get("rule"), "playbook.rule")),
        notifications_planned=tuple(_text(n, "notify") for n in notify),
        checklist=_checklist(payload.get("checklist", {})),
        trips=(trigger,), flight_recorder=recorder,
        people=PeoplePlan.from_json(payload.get("people")),
        resolve_requires=ResolveRequirements.from_json(payload.get("resolve_requires")),
        plant_safety=_text(payload.get("plant_safety", ""), "plant_safety"),
        cause=_cause(payload.get("cause"), trigger.detector))
    text = f"incident opened: {trigger.detector}: {trigger.reason}"
    if trigger.evidence:
        text += f" ({evidence_text(trigger.evidence)})"
    return _entry(incident, payload, EntryKind.OPENED, text)


def _phase(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    phase = Phase(_text(payload.get("phase"), "phase"))
    if phase.rank <= incident.phase.rank:
        raise ValueError(f"phase {phase} does not move forward from {incident.phase}")
    by = _opt_text(payload.get("by"), "by")
    reason = _text(payload.get("reason", ""), "reason")
    change = PhaseChange(phase, _num(payload.get("wall_s"), "wall_s"),
                         _opt_num(payload.get("at_s"), "at_s"), by, reason)
    incident = replace(incident, phase=phase, phases=(*incident.phases, change))
    return _entry(incident, payload, EntryKind.PHASE,
                  f"phase {phase}" + (f": {reason}" if reason else ""), by)


def _event(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    kind = _text(payload.get("kind"), "kind")
    name = _text(payload.get("name"), "name")
    reason = _text(payload.get("reason", ""), "reason")
    requester = _opt_text(payload.get("requester"), "requester")
    evidence = _evidence(payload.get("evidence", []))
    repeated = payload.get("repeated", 0)
    if kind == "trip":
        trip = Trigger(name, reason, _opt_num(payload.get("at_s"), "at_s"), evidence,
                       _opt_text(payload.get("target"), "target"))
        incident = replace(incident, trips=(*incident.trips, trip))
    text = f"{kind} {name}: {reason}"
    if kind == "trip" and evidence:
        text += f" ({evidence_text(evidence)})"
    if isinstance(repeated, int) and repeated > 0:
        text += f" (and {repeated} more like it before)"
    return _entry(incident, payload, EntryKind.EVENT, text, requester)


def _note(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    note = Note(_text(payload.get("who"), "who"), _text(payload.get("source", ""), "source"),
                _text(payload.get("text"), "text"), _num(payload.get("wall_s"), "wall_s"),
                _opt_num(payload.get("at_s"), "at_s"), bool(payload.get("acknowledge", False)))
    incident = replace(incident, notes=(*incident.notes, note))
    text = "acknowledged" if note.acknowledge else "note"
    if note.text:
        text += f": {note.text}"
    return _entry(incident, payload, EntryKind.NOTE, text, note.who)


def _containment(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    record = ContainmentRecord(_text(payload.get("step"), "step"),
                               ContainmentStatus(_text(payload.get("status"), "status")),
                               _text(payload.get("detail", ""), "detail"),
                               _num(payload.get("wall_s"), "wall_s"),
                               _opt_num(payload.get("at_s"), "at_s"),
                               _opt_num(payload.get("factor"), "factor"))
    incident = replace(incident, containment=(*incident.containment, record))
    step = record.step if record.factor is None else f"{record.step} x{record.factor:g}"
    return _entry(incident, payload, EntryKind.CONTAINMENT,
                  f"containment {step}: {record.status}"
                  + (f": {record.detail}" if record.detail else ""))


def _notify(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    status = _text(payload.get("status"), "status")
    record = NotificationRecord(_text(payload.get("hook"), "hook"),
                                _text(payload.get("kind"), "kind"),
                                _text(payload.get("target", ""), "target"),
                                status == "sent", _text(payload.get("detail", ""), "detail"),
                                _num(payload.get("wall_s"), "wall_s"),
                                _opt_num(payload.get("duration_s"), "duration_s"))
    incident = replace(incident, notifications=(*incident.notifications, record))
    return _entry(incident, payload, EntryKind.NOTIFY,
                  f"notification {record.hook} ({record.kind}) {status}"
                  + (f": {record.detail}" if record.detail else ""))


def _checklist_change(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    added = payload.get("added")
    if added is not None:
        extra = _checklist(added)
        items = list(incident.checklist)
        items += [item for item in extra
                  if not any(i.phase is item.phase and i.text == item.text for i in items)]
        # A stable sort keeps each phase's items in order, and the phases in theirs.
        items.sort(key=lambda i: _CHECKLIST_ORDER[i.phase])
        rule = _opt_text(payload.get("rule"), "rule")
        incident = replace(incident, checklist=tuple(items))
        return _entry(incident, payload, EntryKind.CHECKLIST,
                      f"checklist items added{f' by rule {rule}' if rule else ''}: "
                      + "; ".join(i.text for i in extra))
    phase = ChecklistPhase(_text(payload.get("phase"), "phase"))
    index = payload.get("index")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError("checklist index must be a whole number")
    who = _text(payload.get("who"), "who")
    wall_s = _num(payload.get("wall_s"), "wall_s")
    items = list(incident.checklist)
    positions = [k for k, i in enumerate(items) if i.phase is phase]
    if not 0 <= index < len(positions):
        raise ValueError(f"checklist {phase} has no item {index}")
    k = positions[index]
    items[k] = replace(items[k], done=True, by=who, wall_s=wall_s)
    incident = replace(incident, checklist=tuple(items))
    return _entry(incident, payload, EntryKind.CHECKLIST,
                  f"checklist {phase} done: {items[k].text}", who)


def _resolve(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    resolution = Resolution(_text(payload.get("who"), "who"),
                            _text(payload.get("source", ""), "source"),
                            _text(payload.get("summary"), "summary"),
                            _num(payload.get("wall_s"), "wall_s"),
                            bool(payload.get("forced", False)),
                            _text(payload.get("force_reason", ""), "force_reason"),
                            _names(payload.get("open", []), "open"))
    incident = replace(incident, resolution=resolution)
    text = f"resolved: {resolution.summary}"
    if resolution.forced:
        text += (f" (FORCED with {len(resolution.open)} required item(s) open: "
                 f"{resolution.force_reason})")
    return _entry(incident, payload, EntryKind.RESOLVED, text, resolution.who)


def _texts(value: Any, what: str) -> tuple[str, ...]:
    return _names(value if value is not None else [], what)


def _review(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    who = _text(payload.get("who"), "who")
    wall_s = _num(payload.get("wall_s"), "wall_s")
    before = incident.review
    review = Review(_text(payload.get("root_cause"), "root_cause"),
                    _texts(payload.get("factors"), "factors"),
                    _texts(payload.get("went_well"), "went_well"),
                    _texts(payload.get("went_badly"), "went_badly"), who, wall_s,
                    1 if before is None else before.revisions + 1)
    raw = payload.get("actions", [])
    if not isinstance(raw, list):
        raise ValueError("actions must be a list")
    items = list(incident.actions)
    for obj in raw:
        if not isinstance(obj, dict):
            raise ValueError("an action item must be an object")
        items.append(ActionItem(len(items) + 1, _text(obj.get("text"), "action text"),
                                _text(obj.get("owner"), "action owner"),
                                parse_due(_text(obj.get("due"), "action due"))))
    incident = replace(incident, review=review, actions=tuple(items))
    verb = "review recorded" if before is None else f"review revised ({review.revisions})"
    return _entry(incident, payload, EntryKind.REVIEW,
                  f"{verb}: root cause: {review.root_cause}; {len(raw)} action item(s) added",
                  who)


def _action_done(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    number = payload.get("number")
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError("action number must be a whole number")
    if not 1 <= number <= len(incident.actions):
        raise ValueError(f"no action item {number}")
    who = _text(payload.get("who"), "who")
    wall_s = _num(payload.get("wall_s"), "wall_s")
    note = _text(payload.get("note", ""), "note")
    items = list(incident.actions)
    item = items[number - 1]
    if item.done:
        raise ValueError(f"action item {number} is closed already")
    items[number - 1] = replace(item, done_by=who, done_wall_s=wall_s, note=note)
    incident = replace(incident, actions=tuple(items))
    return _entry(incident, payload, EntryKind.ACTION,
                  f"action item {number} done: {item.text}" + (f" ({note})" if note else ""),
                  who)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"flight_recorder {what} must be a whole number >= 0, not {value!r}")
    return value


def _flight_recorder(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    part = _count(payload.get("part"), "part")
    parts = _count(payload.get("parts"), "parts")
    total = _count(payload.get("total_frames"), "total_frames")
    ref = incident.flight_recorder
    trigger_s = _num(payload.get("trigger_s"), "trigger_s")
    start_s = _num(payload.get("start_s"), "start_s")
    end_s = _num(payload.get("end_s"), "end_s")
    if ref is None:
        ref = RecorderRef(trigger_s, start_s, end_s)
    if part != ref.parts_stored:
        raise ValueError(f"flight_recorder part {part} out of order "
                         f"({ref.parts_stored} stored)")
    ref = replace(ref, frames=total, parts=parts, parts_stored=ref.parts_stored + 1)
    incident = replace(incident, flight_recorder=ref)
    if not ref.stored:
        return replace(incident, records=incident.records + 1)
    return _entry(incident, payload, EntryKind.FLIGHT_RECORDER,
                  f"flight-recorder window stored: {total} frames, "
                  f"{start_s - trigger_s:+g} s to {end_s - trigger_s:+g} s around the trip")


def _severity(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    level = Severity(_text(payload.get("level"), "level"))
    previous = incident.severity
    if previous is not None and level.rank <= previous.rank:
        raise ValueError(f"severity {level} does not rise from {previous}")
    change = SeverityChange(level, previous, _num(payload.get("wall_s"), "wall_s"),
                            _opt_text(payload.get("by"), "by"),
                            _text(payload.get("reason", ""), "reason"),
                            _opt_text(payload.get("rule"), "rule"),
                            _text(payload.get("source", ""), "source"))
    incident = replace(incident, severity=level,
                       severity_changes=(*incident.severity_changes, change))
    text = f"severity {level}" + (f" (was {previous})" if previous is not None else "")
    if change.reason:
        text += f": {change.reason}"
    return _entry(incident, payload, EntryKind.SEVERITY, text, change.by)


def _consequence(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    frames = payload.get("frames", 0)
    if isinstance(frames, bool) or not isinstance(frames, int):
        raise ValueError("consequence frames must be a whole number")
    c = Consequence(_opt_num(payload.get("min_margin"), "min_margin"),
                    _opt_text(payload.get("sensor"), "sensor"),
                    _opt_num(payload.get("value"), "value"), frames)
    incident = replace(incident, consequence=c)
    if c.min_margin is None:
        text = "consequence: no watched sensor in the flight-recorder window"
    else:
        where = "beyond" if c.excursion else "from"
        text = (f"consequence: closest approach {abs(c.min_margin):.1%} of the span {where} "
                f"a danger limit ({c.sensor}={c.value:g}, {frames} frames)")
    return _entry(incident, payload, EntryKind.CONSEQUENCE, text)


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return tuple(_text(v, what) for v in value)


def _escalate(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    step = payload.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError("escalate step must be a whole number")
    e = Escalation(Severity(_text(payload.get("severity"), "severity")), step,
                   _num(payload.get("after_s"), "after_s"),
                   _text(payload.get("contact"), "contact"), _text(payload.get("role"), "role"),
                   _names(payload.get("hooks", []), "hooks"),
                   _text(payload.get("reason", ""), "reason"),
                   _num(payload.get("wall_s"), "wall_s"))
    incident = replace(incident, escalations=(*incident.escalations, e))
    return _entry(incident, payload, EntryKind.ESCALATION,
                  f"escalation ({e.severity}, step {e.step}): {e.contact} ({e.role}) notified"
                  f" via {', '.join(e.hooks) or '-'}: {e.reason}")


def _deadline(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    notice = _text(payload.get("notice"), "notice")
    if notice not in ("reminder", "overdue"):
        raise ValueError(f"deadline notice must be reminder or overdue, not {notice!r}")
    d = DeadlineNotice(_text(payload.get("obligation"), "obligation"), notice,
                       _num(payload.get("due_wall_s"), "due_wall_s"),
                       _names(payload.get("contacts", []), "contacts"),
                       _num(payload.get("wall_s"), "wall_s"))
    incident = replace(incident, deadline_notices=(*incident.deadline_notices, d))
    verb = "is due" if notice == "reminder" else "was due"
    return _entry(incident, payload, EntryKind.DEADLINE,
                  f"reporting {d.obligation} {verb} at {utc_text(d.due_wall_s)}; told "
                  + ", ".join(d.contacts))


def _reported(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    r = ReportMade(_text(payload.get("obligation"), "obligation"),
                   _text(payload.get("who"), "who"), _text(payload.get("source", ""), "source"),
                   _text(payload.get("ref", ""), "ref"), _num(payload.get("wall_s"), "wall_s"))
    incident = replace(incident, reports=(*incident.reports, r))
    return _entry(incident, payload, EntryKind.REPORTED,
                  f"report {r.obligation} made" + (f": {r.ref}" if r.ref else ""), r.who)


def _draft_approved(incident: Incident, payload: Mapping[str, Any]) -> Incident:
    a = DraftApproval(_text(payload.get("audience"), "audience"),
                      _text(payload.get("who"), "who"),
                      _text(payload.get("source", ""), "source"),
                      _text(payload.get("sha256"), "sha256"), _text(payload.get("text"), "text"),
                      _num(payload.get("wall_s"), "wall_s"))
    if hashlib.sha256(a.text.encode("utf-8")).hexdigest() != a.sha256:
        raise ValueError("draft_approved: the text does not match its sha256")
    incident = replace(incident, approvals=(*incident.approvals, a))
    return _entry(incident, payload, EntryKind.DRAFT_APPROVED,
                  f"draft for {a.audience} approved (sha256 {a.sha256[:12]}...)", a.who)


_FOLDS: Final = {
    "review": _review,
    "action_done": _action_done,
    "draft_approved": _draft_approved,
    "severity": _severity,
    "consequence": _consequence,
    "escalate": _escalate,
    "deadline": _deadline,
    "reported": _reported,
    "phase": _phase,
    "event": _event,
    "note": _note,
    "containment": _containment,
    "notify": _notify,
    "checklist": _checklist_change,
    "resolve": _resolve,
    "flight_recorder": _flight_recorder,
}


def fold_record(incident: Incident | None, payload: Mapping[str, Any]) -> Incident:
    """Apply one record's payload to ``incident`` (None for an ``open`` record) and return
    the new incident. Pure. Raises ``ValueError`` for a malformed payload, an ``open`` of an
    incident that exists, any other action before ``open``, an unknown action, or a phase that
    does not move forward."""
    action = payload.get("action")
    if action == "open":
        if incident is not None:
            raise ValueError(f"incident {incident.id} is opened twice")
        try:
            return _open(payload)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed open record: {exc}") from None
    if incident is None:
        raise ValueError(f"{action!r} record of an incident that was never opened")
    fn = _FOLDS.get(action) if isinstance(action, str) else None
    if fn is None:
        raise ValueError(f"unknown incident action {action!r}")
    try:
        return fn(incident, payload)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {action} record: {exc}") from None


def fold(payloads: Iterable[Mapping[str, Any]]) -> dict[str, Incident]:
    """Fold payloads (in record order) into incidents, by id, in the order they opened.
    Raises ``ValueError`` like :func:`fold_record`."""
    incidents: dict[str, Incident] = {}
    for payload in payloads:
        ident = payload.get("incident")
        if not isinstance(ident, str):
            raise ValueError("record names no incident")
        incidents[ident] = fold_record(incidents.get(ident), payload)
    return incidents


def utc_text(wall_s: float | None) -> str:
    """``2024-05-01 12:00:00.000Z`` for wall-clock seconds; "-" for None or non-finite."""
    if wall_s is None or not math.isfinite(wall_s):
        return "-"
    try:
        return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, OSError, ValueError):
        return repr(wall_s)


def finite_json(obj: Any) -> Any:
    """``obj`` with non-finite floats written as canonical JSON writes them ("nan", "inf",
    "-inf"), so that strict JSON can hold it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj
