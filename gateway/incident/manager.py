"""The incident manager: opens an incident on a trip, follows it, and says what to do.

The runtime calls :meth:`IncidentManager.on_decision` once per control cycle, right after the
flight recorder has recorded the cycle (``recorder.record_cycle(...)``), and executes the
actions it returns. The call is O(1) (a few hundred nanoseconds) when the decision carries no
events and no incident is waiting for containment or for its flight-recorder window; otherwise
it does a bounded amount of work (serialising at most :data:`FRAMES_PER_CYCLE` recorder frames per
cycle, so that storing a window never stalls the loop).

Actions are plain frozen values; the manager performs no I/O besides ``AuditLog.append`` (which
never blocks):

* :class:`Request` — pass ``action.operator_request()`` to ``Supervisor.request`` (requester
  ``"playbook"``, authorised; also to ``recorder.operator.request``). The supervisor's answer
  (a mode change or a refusal naming requester ``playbook``) comes back in a later decision's
  events, and the manager records it in the incident itself.
* :class:`Notify` — hand to :class:`gateway.incident.notify.Notifier` (``submit``), which runs it
  off the control path and reports the outcome to :meth:`IncidentManager.notified`.
* :class:`RateLimit` and :class:`QuarantineModel` — apply if the runtime supports it, then report
  with :meth:`IncidentManager.applied` (``ok=False`` and a reason when not supported: the
  incident records what was applied, and what was not).

Every change of an incident is appended to the audit log as a record of kind ``incident`` (see
:mod:`gateway.incident.model` for the payloads) and folded into the in-memory incident with the
same function that reads them back from the database.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

import numpy as np

from gateway.audit.chain import canonical_payload
from gateway.forensics.recorder import FORMAT, FORMAT_VERSION, frame_json, info_json
from gateway.incident.causes import cause_of
from gateway.incident.escalation import due_escalations, due_notices
from gateway.incident.model import (
    KIND,
    BadRequest,
    ChecklistPhase,
    ContainmentStatus,
    Incident,
    IncidentError,
    OpenItems,
    Phase,
    UnknownIncident,
    fold_record,
    utc_text,
)
from gateway.incident.people import Severity, SeverityFacts
from gateway.incident.playbook import ContainmentKind, NotificationSpec, Playbook, Rule
from gateway.supervisor.decision import Source
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode, OperatorRequest, RequestKind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from gateway.audit.log import AuditSink
    from gateway.forensics.recorder import FlightRecorder, Frame, FrozenWindow
    from gateway.incident.notify import NotifyResult
    from gateway.supervisor.decision import Decision
    from gateway.supervisor.events import Event

__all__ = [
    "FRAMES_PER_CYCLE",
    "MAX_DRAFT_CHARS",
    "PART_CHARS",
    "PLAYBOOK_REQUESTER",
    "Action",
    "IncidentManager",
    "Notify",
    "QuarantineModel",
    "RateLimit",
    "Request",
]

log = logging.getLogger("gateway.incident")

PLAYBOOK_REQUESTER: Final = "playbook"
# Recorder frames serialised per cycle while a window is being stored (~50 us each).
FRAMES_PER_CYCLE: Final = 32
# A flight_recorder record holds at most about this many characters of JSONL (the audit log
# cuts payloads above 1 MiB; escaping in canonical JSON adds ~10 %).
PART_CHARS: Final = 256 * 1024
# Identical repeated events (same kind and name) join the timeline at most once per this many
# seconds of supervisor time; the next entry says how many were folded into it.
REPEAT_S: Final = 10.0
_REPEATABLE: Final = frozenset({EventKind.ANOMALY, EventKind.REQUEST_REFUSED,
                                EventKind.BYPASS_START, EventKind.BYPASS_END})
_SITE_RE: Final = re.compile(r"[^A-Za-z0-9_-]+")
# An approved communication's text is kept in its audit record (the audit log cuts payloads
# above 1 MiB).
MAX_DRAFT_CHARS: Final = 200_000


# ------------------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Request:
    """Ask the supervisor for a mode change on the playbook's behalf."""

    kind: RequestKind
    reason: str
    incident_id: str

    requester: ClassVar[str] = PLAYBOOK_REQUESTER

    def operator_request(self) -> OperatorRequest:
        """The request to pass to ``Supervisor.request`` (authorised: the playbook is part of
        the gateway's configuration, and only ever asks for a safer mode)."""
        return OperatorRequest(self.kind, PLAYBOOK_REQUESTER, True, reason=self.reason)


@dataclass(frozen=True, slots=True)
class Notify:
    """Send one notification (see :class:`gateway.incident.notify.Notifier`)."""

    spec: NotificationSpec
    message: str
    incident_id: str
    site: str = ""
    detector: str = ""
    reason: str = ""

    def values(self) -> dict[str, str]:
        """The placeholder values for a command's argv, and the webhook's JSON body."""
        return {"incident": self.incident_id, "site": self.site, "detector": self.detector,
                "reason": self.reason, "message": self.message}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Scale every actuator's rate limit by ``factor`` (0 < factor <= 1) until resolved."""

    factor: float
    reason: str
    incident_id: str


@dataclass(frozen=True, slots=True)
class QuarantineModel:
    """Keep this model from being re-enabled (no SHADOW/AUTO with it) until investigated."""

    model_path: str | None
    model_sha256: str | None
    reason: str
    incident_id: str


Action = Request | Notify | RateLimit | QuarantineModel

_REQUEST_OF: Final = {ContainmentKind.MANUAL: (RequestKind.TO_MANUAL, Mode.MANUAL),
                      ContainmentKind.SAFE_STOP: (RequestKind.TO_SAFE_STOP, Mode.SAFE_STOP)}
_TARGET_OF_REQUEST: Final = {RequestKind.TO_MANUAL: Mode.MANUAL,
                             RequestKind.TO_SAFE_STOP: Mode.SAFE_STOP}


# ------------------------------------------------------------------------------- the manager


class _Storing:
    """A complete window whose frames are being serialised, a few per cycle."""

    __slots__ = ("done", "frames", "header", "incident_id", "lines", "margin", "part",
                 "parts_chars", "watch", "window")

    def __init__(self, incident_id: str, window: FrozenWindow,
                 danger: Mapping[str, tuple[float, float]]) -> None:
        self.incident_id = incident_id
        self.window = window
        self.frames: tuple[Frame, ...] = window.frames()
        self.done = 0
        self.part = 0
        self.lines: list[str] = []
        self.parts_chars = 0
        info = window.info
        self.header = (None if info is None else json.dumps(
            {"format": FORMAT, "version": FORMAT_VERSION, "info": info_json(info)},
            allow_nan=False))
        # The watched sensors (those with danger limits) by index in the snapshot, their
        # limits, and the closest approach so far: (margin, sensor, value).
        names = info.sensor_names if info is not None else ()
        watched = [(k, n) for k, n in enumerate(names) if n in danger]
        self.watch = None if not watched else (
            np.array([k for k, _ in watched], dtype=np.intp),
            np.array([danger[n][0] for _, n in watched]),
            np.array([danger[n][1] for _, n in watched]), [n for _, n in watched])
        self.margin: tuple[float, str, float] | None = None

    def assess(self, frame: Frame) -> None:
        """Fold one frame into the closest approach to a danger limit (good readings only)."""
        if self.watch is None:
            return
        index, lo, hi, names = self.watch
        snap = frame.snapshot
        values = snap.sensors[index]
        good = snap.good[index] & np.isfinite(values)
        if not good.any():
            return
        margins = np.minimum(values - lo, hi - values) / (hi - lo)
        margins[~good] = np.inf
        k = int(np.argmin(margins))
        if self.margin is None or margins[k] < self.margin[0]:
            self.margin = (float(margins[k]), names[k], float(values[k]))


class IncidentManager:
    """Incidents of one site, driven by the supervisor's decisions.

    ``site_name`` names the site (in incident ids: ``INC-<site>-<yyyymmddThhmmss>-<n>``, UTC);
    ``playbook`` says what to do per trigger; ``audit`` receives every change (None keeps
    incidents in memory only); ``model_path``, ``model_sha256`` and ``config_sha256`` identify
    what ran (see :meth:`set_model`); ``recorder`` is frozen on each new incident's trip, for
    ``after_s`` seconds after it (``ValueError`` if not finite and >= 0); ``clock`` gives
    wall-clock UTC seconds (ids and ``wall_s``); ``existing`` are incidents read back from the
    database (:func:`gateway.incident.store.load_incidents`), so that after a restart an open
    incident stays open and further trips join it. ``danger_limits`` (sensor: (min, max),
    engineering units; the runtime passes the site's keep ranges) are the limits whose closest
    approach in the flight-recorder window is the incident's consequence; the playbook's own
    ``danger_limits`` take precedence.

    Severity: each incident is classified when it opens, again when a trip joins it and when
    its window has been assessed, by the playbook's severity rules (recorded in the incident,
    so that the command line classifies by the same plan); it only ever rises.
    Escalations and reporting clocks are not handled in the control cycle: :meth:`tick`,
    called from a timer off the control path, records and returns what is due.
    """

    def __init__(self, site_name: str, playbook: Playbook, audit: AuditSink | None, *,
                 model_path: str | None = None, model_sha256: str | None = None,
                 config_sha256: str | None = None, recorder: FlightRecorder | None = None,
                 after_s: float = 30.0, clock: Callable[[], float] = time.time,
                 existing: Iterable[Incident] = (),
                 danger_limits: Mapping[str, tuple[float, float]] | None = None) -> None:
        if isinstance(after_s, bool) or not isinstance(after_s, int | float) or not (
                math.isfinite(after_s) and after_s >= 0):
            raise ValueError(f"`after_s` must be finite and >= 0, not {after_s!r}")
        self.site_name = site_name
        self.playbook = playbook
        self.audit = audit
        self.model_path = model_path
        self.model_sha256 = model_sha256
        self.config_sha256 = config_sha256
        self.recorder = recorder
        self.after_s = float(after_s)
        self.clock = clock
        self.danger_limits = {**(danger_limits or {}), **playbook.danger_limits}
        self._incidents: dict[str, Incident] = {i.id: i for i in existing}
        self._open: list[str] = [i.id for i in self._incidents.values() if i.is_open]
        self._awaiting_containment: list[str] = []
        self._windows: list[tuple[str, FrozenWindow]] = []
        self._storing: list[_Storing] = []
        self._pending_requests: list[Request] = []
        self._taken: dict[str, set[str]] = {}
        self._repeats: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._last_at_s: float | None = None
        self._busy = False

    # ----------------------------------------------------------------------- observation

    @property
    def incidents(self) -> tuple[Incident, ...]:
        """Every incident, in the order they opened."""
        return tuple(self._incidents.values())

    @property
    def open_incidents(self) -> tuple[Incident, ...]:
        """The incidents not yet resolved, oldest first."""
        return tuple(self._incidents[i] for i in self._open)

    def get(self, incident_id: str) -> Incident:
        """The incident. Raises :class:`UnknownIncident`."""
        try:
            return self._incidents[incident_id]
        except KeyError:
            raise UnknownIncident(f"no incident {incident_id!r}") from None

    @property
    def busy(self) -> bool:
        """True while some incident waits for containment or its flight-recorder window."""
        return self._busy

    def set_model(self, model_path: str | None, model_sha256: str | None) -> None:
        """The model now running (after a rollback or a swap): recorded in later incidents."""
        self.model_path = model_path
        self.model_sha256 = model_sha256

    # ----------------------------------------------------------------------- the control side

    def on_decision(self, decision: Decision) -> list[Action]:
        """Follow one cycle's decision; return the actions to execute (usually none).

        Call after ``recorder.record_cycle`` of the same cycle, so that a window frozen on this
        cycle's trip includes it. Never raises: a fault of its own is logged, and the actions
        found before it are returned.
        """
        self._last_at_s = decision.at_s
        events = decision.events
        if not events and not self._busy:
            return []
        actions: list[Action] = []
        try:
            for event in events:
                if event.kind is EventKind.TRIP:
                    actions += self._trip(event, decision)
                else:
                    self._event(event, decision)
            if self._busy:
                self._progress(decision)
        except Exception:
            # A fault in incident handling is a bug of ours; it must not stop the control
            # loop (the supervisor has already failed over; the runtime audits the events).
            log.exception("incident handling failed at t=%s; the control loop goes on",
                          decision.at_s)
        return actions

    def close(self) -> None:
        """At shutdown: close the windows still collecting (they keep what they have) and
        store them. Not for the control loop: it serialises every pending frame at once."""
        for _, window in self._windows:
            window.close()
        self._collect_windows()
        while self._storing:
            self._store_some(len(self._storing[0].frames) + 1)
        self._awaiting_containment.clear()
        self._update_busy()

    # ----------------------------------------------------------------------- operator side

    def note(self, incident_id: str, who: str, source: str, text: str) -> Incident:
        """Add an operator's note (also to resolved incidents). A note moves a detected or
        contained incident to ``investigating``. Raises :class:`IncidentError` for an unknown
        id or an empty text or name."""
        return self._note(incident_id, who, source, text, acknowledge=False)

    def acknowledge(self, incident_id: str, who: str, source: str = "",
                    text: str = "") -> Incident:
        """An operator takes the incident on: like :meth:`note`, marked as acknowledgement."""
        return self._note(incident_id, who, source, text, acknowledge=True)

    def check(self, incident_id: str, phase: ChecklistPhase | str, item: int | str, who: str,
              source: str = "") -> Incident:
        """Mark checklist item ``item`` of ``phase`` done: its index within the phase (from
        0) or its exact text. Moves a detected or contained incident to ``investigating``.
        Raises :class:`IncidentError` for an unknown id, phase or item, or an item already
        done."""
        incident = self.get(incident_id)
        _need_text("who", who)
        phase = _one_of(ChecklistPhase, phase, "checklist phase")
        items = incident.checklist_of(phase)
        if isinstance(item, str) and not item.isdigit():
            index = next((k for k, i in enumerate(items) if i.text == item), -1)
        else:
            index = int(item)
        if not 0 <= index < len(items):
            raise IncidentError(f"{incident_id}: checklist {phase} has no item {item!r} "
                                f"({len(items)} items, numbered from 0)")
        if items[index].done:
            raise IncidentError(f"{incident_id}: checklist {phase} item {index} is already "
                                f"done (by {items[index].by})")
        self._record(incident_id, {"action": "checklist", "phase": phase.value, "index": index,
                                   "item": items[index].text, "who": who, "source": source},
                     actor=who, source=source)
        self._investigating(incident_id, who, "checklist item done")
        return self._incidents[incident_id]

    def resolve(self, incident_id: str, who: str, source: str, summary: str, *,
                authorised: bool = True, enforce: bool = False,
                force_reason: str | None = None) -> Incident:
        """Resolve the incident with a summary. ``authorised`` is the ops layer's verdict on
        ``who`` (an administrator). With ``enforce``, resolving is refused while required
        checklist items or the review are open (:meth:`Incident.open_requirements`), unless
        ``force_reason`` says why it must be resolved anyway: the resolution then records that
        it was forced, the reason and what was open. Raises :class:`OpenItems` (listing what is
        open), :class:`BadRequest` for an empty summary, name or force reason,
        :class:`IncidentError` for an unknown id, an incident already resolved, or an
        unauthorised request."""
        incident = self.get(incident_id)
        _need_text("who", who)
        if not authorised:
            raise IncidentError(f"{who} is not authorised to resolve incidents")
        if not incident.is_open:
            raise IncidentError(f"{incident_id} is already resolved")
        if not isinstance(summary, str) or not summary.strip():
            raise BadRequest("a resolution needs a summary")
        if force_reason is not None:
            _need_text("force reason", force_reason)
        payload: dict[str, Any] = {"action": "resolve", "who": who, "source": source,
                                   "summary": summary.strip(), "at_s": self._last_at_s}
        open_items = incident.open_requirements() if enforce else ()
        if open_items:
            if force_reason is None:
                items = [t.removeprefix("checklist ") for t in open_items if t != "review"]
                parts = []
                if items:
                    parts.append(f"{len(items)} required checklist item(s) open: "
                                 + "; ".join(items[:3]) + ("; ..." if len(items) > 3 else ""))
                if "review" in open_items:
                    parts.append("no post-incident review recorded")
                raise OpenItems(f"{incident_id} cannot be resolved: " + ", and ".join(parts)
                                + " (an administrator may force it, giving a reason)",
                                open_items)
            payload |= {"forced": True, "force_reason": force_reason.strip(),
                        "open": list(open_items)}
            log.warning("incident %s resolved by %s with %d required items open: %s",
                        incident_id, who, len(open_items), force_reason)
        self._record(incident_id, payload, actor=who, source=source)
        self._phase(incident_id, Phase.RESOLVED, self._last_at_s, who, "resolved")
        self._open.remove(incident_id)
        self._awaiting_containment = [i for i in self._awaiting_containment
                                      if i != incident_id]
        self._pending_requests = [r for r in self._pending_requests
                                  if r.incident_id != incident_id]
        self._update_busy()
        return self._incidents[incident_id]

    def raise_severity(self, incident_id: str, level: Severity | str, who: str, source: str,
                       reason: str, *, authorised: bool = True) -> Incident:
        """An operator raises the incident's severity to ``level``, giving a reason; the
        escalation plan of the new severity starts at the next :meth:`tick`. Raises
        :class:`BadRequest` for an unknown level or an empty reason or name,
        :class:`IncidentError` for an unknown id, a resolved incident, a level that is not
        higher than the current one, or an unauthorised request."""
        incident = self.get(incident_id)
        _need_text("who", who)
        if not authorised:
            raise IncidentError(f"{who} is not authorised to change an incident's severity")
        level = _one_of(Severity, level, "severity")
        _need_text("reason", reason)
        if not incident.is_open:
            raise IncidentError(f"{incident_id} is resolved; its severity stays "
                                f"{incident.severity or '-'}")
        current = incident.severity
        if current is not None and level.rank <= current.rank:
            higher = ", ".join(s.value for s in Severity if s.rank > current.rank)
            raise IncidentError(f"{incident_id}: severity is {current}; it can only be raised"
                                + (f" (to {higher})" if higher else " and it is the highest"))
        self._record(incident_id, {"action": "severity", "level": level.value,
                                   "previous": None if current is None else current.value,
                                   "by": who, "source": source, "reason": reason.strip(),
                                   "rule": None},
                     actor=who, source=source)
        self._investigating(incident_id, who, f"severity raised to {level}")
        return self._incidents[incident_id]

    def report_made(self, incident_id: str, obligation: str, who: str, source: str,
                    ref: str = "") -> Incident:
        """Record that the report a reporting obligation asks for was made (``ref``: its
        reference, or where it went): its reminders stop. Raises :class:`BadRequest` for an
        empty name, :class:`IncidentError` for an unknown id, an obligation whose clock does
        not run for this incident, or one already recorded as made."""
        incident = self.get(incident_id)
        _need_text("who", who)
        clocks = {d.obligation: d for d in incident.deadlines()}
        if obligation not in clocks:
            known = ", ".join(clocks) or "none runs for it"
            raise IncidentError(f"{incident_id}: no reporting clock {obligation!r} ({known})")
        made = clocks[obligation].report
        if made is not None:
            raise IncidentError(f"{incident_id}: report {obligation} already recorded "
                                f"(by {made.who})")
        self._record(incident_id, {"action": "reported", "obligation": obligation, "who": who,
                                   "source": source, "ref": ref.strip()},
                     actor=who, source=source)
        return self._incidents[incident_id]

    def review(self, incident_id: str, who: str, source: str, root_cause: str, *,
               factors: Iterable[str] = (), went_well: Iterable[str] = (),
               went_badly: Iterable[str] = (),
               actions: Iterable[tuple[str, str, str]] = ()) -> Incident:
        """Record the post-incident review (or revise it: a later review replaces the root
        cause and lessons and adds its action items). ``actions`` are (text, owner, due date
        ``YYYY-MM-DD``). Also for resolved incidents. Raises :class:`BadRequest` for an empty
        root cause, name, text or owner, or a malformed due date; :class:`IncidentError` for
        an unknown id."""
        from gateway.incident.review import parse_due

        self.get(incident_id)
        _need_text("who", who)
        _need_text("root cause", root_cause)
        lists = {}
        for key, texts in (("factors", factors), ("went_well", went_well),
                           ("went_badly", went_badly)):
            items = [t.strip() for t in texts]
            if any(not t for t in items):
                raise BadRequest(f"`{key}`: an entry is empty")
            lists[key] = items
        items_json = []
        for text, owner, due in actions:
            _need_text("action text", text)
            _need_text("action owner", owner)
            try:
                day = parse_due(due)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            items_json.append({"text": text.strip(), "owner": owner.strip(),
                               "due": day.isoformat()})
        self._record(incident_id, {"action": "review", "who": who, "source": source,
                                   "root_cause": root_cause.strip(), **lists,
                                   "actions": items_json}, actor=who, source=source)
        if self._incidents[incident_id].is_open:
            self._investigating(incident_id, who, "review recorded")
        return self._incidents[incident_id]

    def action_done(self, incident_id: str, number: int | str, who: str, source: str = "",
                    note: str = "") -> Incident:
        """Close action item ``number`` (from 1, as ``incidents actions`` lists it). Raises
        :class:`BadRequest` for an empty name or a number that is not one,
        :class:`IncidentError` for an unknown id or item, or an item closed already."""
        incident = self.get(incident_id)
        _need_text("who", who)
        try:
            n = int(number)
        except ValueError:
            raise BadRequest(f"action item {number!r} is not a number") from None
        if not 1 <= n <= len(incident.actions):
            raise IncidentError(f"{incident_id} has no action item {n} "
                                f"({len(incident.actions)} items, numbered from 1)")
        item = incident.actions[n - 1]
        if item.done:
            raise IncidentError(f"{incident_id}: action item {n} is closed already "
                                f"(by {item.done_by})")
        self._record(incident_id, {"action": "action_done", "number": n, "who": who,
                                   "source": source, "note": note.strip()},
                     actor=who, source=source)
        return self._incidents[incident_id]

    def approve_draft(self, incident_id: str, audience: str, text: str, who: str,
                      source: str = "") -> Incident:
        """Record that ``who`` approved ``text`` for ``audience`` (regulator, customers,
        board, internal), with its sha256 (also for resolved incidents: reports go on after
        resolution). Raises :class:`BadRequest` for an unknown audience, an empty name or
        text, or a text over :data:`MAX_DRAFT_CHARS`; :class:`IncidentError` for an unknown
        id."""
        from gateway.incident.comms import Audience, text_sha256

        self.get(incident_id)
        _need_text("who", who)
        audience = _one_of(Audience, audience, "audience")
        _need_text("text", text)
        if len(text) > MAX_DRAFT_CHARS:
            raise BadRequest(f"the text has {len(text)} characters; at most "
                             f"{MAX_DRAFT_CHARS} are recorded")
        self._record(incident_id, {"action": "draft_approved", "audience": audience.value,
                                   "who": who, "source": source, "sha256": text_sha256(text),
                                   "text": text}, actor=who, source=source)
        return self._incidents[incident_id]

    def tick(self, now_wall_s: float | None = None) -> list[Notify]:
        """What the escalation plans and reporting clocks ask for now (see
        :mod:`gateway.incident.escalation`): each is recorded in its incident, and the
        notifications to send (one per contact and hook) are returned for the notifier. Not
        for the control cycle: call it from a timer (:meth:`gateway.incident.notify.Notifier.
        start_timer`). ``now_wall_s`` defaults to the manager's clock. A contact's hook that
        the running playbook does not define is recorded as a failed notification."""
        now = float(self.clock()) if now_wall_s is None else now_wall_s
        out: list[Notify] = []
        for incident in tuple(self._incidents.values()):
            ident = incident.id
            for due in due_escalations(incident, now):
                c = due.contact
                self._record(ident, {"action": "escalate", "severity": due.severity.value,
                                     "step": due.step, "after_s": due.after_s,
                                     "contact": c.name, "role": c.role.value,
                                     "hooks": list(c.reach), "reason": due.reason},
                             wall_s=now)
                message = (f"incident {ident} on {incident.site} ({due.severity}): "
                           f"{incident.trigger.detector}: {incident.trigger.reason}; "
                           f"to {c.name} ({c.role}): {due.reason}")
                out += self._notifies(incident, c.reach, message, now)
            for notice in due_notices(incident, now):
                ob = notice.obligation
                self._record(ident, {"action": "deadline", "obligation": ob.name,
                                     "notice": notice.notice, "due_wall_s": notice.due_wall_s,
                                     "contacts": list(ob.contacts)}, wall_s=now)
                verb = "is due" if notice.notice == "reminder" else "WAS DUE"
                message = (f"incident {ident} on {incident.site}: report {ob.name} "
                           f"{verb} at {utc_text(notice.due_wall_s)}"
                           + (f" ({ob.description})" if ob.description else ""))
                for name in ob.contacts:  # one message per contact: a shared pager hook
                    contact = incident.people.contacts.get(name)  # says whom it is for
                    if contact is not None:
                        out += self._notifies(incident, contact.reach,
                                              f"{message}; to {name} ({contact.role})", now)
        return out

    def _notifies(self, incident: Incident, hooks: Iterable[str], message: str,
                  now: float) -> list[Notify]:
        out: list[Notify] = []
        for name in hooks:
            spec = self.playbook.hooks.get(name)
            if spec is None:
                self._record(incident.id, {
                    "action": "notify", "hook": name, "kind": "?", "target": "",
                    "status": "failed", "detail": "the running playbook has no such hook",
                    "duration_s": None}, wall_s=now)
                continue
            out.append(Notify(spec, message, incident.id, incident.site,
                              incident.trigger.detector, incident.trigger.reason))
        return out

    # ----------------------------------------------------------------------- runtime reports

    def restarted(self, detail: str) -> None:
        """The gateway restarted with these incidents open (read back from the database):
        each gets a timeline entry saying so and what the gateway restored. They stay open,
        and a trip that the playbook joins to an open incident joins the newest of them."""
        for ident in self._open:
            self._record(ident, {"action": "event", "kind": "restart", "name": "gateway",
                                 "reason": detail, "requester": None, "evidence": [],
                                 "at_s": None})

    def notified(self, action: Notify, result: NotifyResult) -> None:
        """A notification's outcome (the :class:`~gateway.incident.notify.Notifier` calls
        this, on the event loop)."""
        if action.incident_id not in self._incidents:
            return
        self._record(action.incident_id, {
            "action": "notify", "hook": action.spec.name, "kind": action.spec.kind.value,
            "target": action.spec.target, "status": "sent" if result.ok else "failed",
            "detail": result.detail, "duration_s": result.duration_s})

    def applied(self, action: Action, ok: bool, detail: str = "", *,
                supported: bool = True) -> None:
        """What the runtime did with a containment action: applied (``ok``), failed, or not
        ``supported`` by this runtime, and why (``detail``). For a :class:`Request` the
        supervisor's own answer is recorded anyway; call this only if the runtime did not
        pass the request on. Ignored for a :class:`Notify` (see :meth:`notified`)."""
        if action.incident_id not in self._incidents or isinstance(action, Notify):
            return
        if isinstance(action, Request):
            step = _STEP_OF_REQUEST.get(action.kind, str(action.kind))
            self._pending_requests = [r for r in self._pending_requests if r is not action]
            factor = None
        elif isinstance(action, RateLimit):
            step, factor = ContainmentKind.RATE_LIMIT.value, action.factor
        else:
            step, factor = ContainmentKind.QUARANTINE_MODEL.value, None
        status = (ContainmentStatus.APPLIED if ok else ContainmentStatus.FAILED if supported
                  else ContainmentStatus.UNSUPPORTED)
        payload: dict[str, Any] = {"action": "containment", "step": step,
                                   "status": status.value, "detail": detail,
                                   "at_s": self._last_at_s}
        if factor is not None:
            payload["factor"] = factor
        self._record(action.incident_id, payload)

    # ----------------------------------------------------------------------- internals

    def _trip(self, event: Event, decision: Decision) -> list[Action]:
        rule = self.playbook.rule_for(event.name)
        current = self._incidents[self._open[-1]] if self._open else None
        if current is not None and self.playbook.joins_open(rule):
            return self._join(current, event, decision, rule)
        return self._open_incident(event, decision, rule)

    def _new_id(self, wall_s: float) -> str:
        site = _SITE_RE.sub("-", self.site_name).strip("-") or "site"
        try:
            stamp = datetime.fromtimestamp(wall_s, UTC).strftime("%Y%m%dT%H%M%S")
        except (OverflowError, OSError, ValueError):
            stamp = "00000000T000000"
        n = len(self._incidents) + 1
        while f"INC-{site}-{stamp}-{n}" in self._incidents:
            n += 1
        return f"INC-{site}-{stamp}-{n}"

    def _open_incident(self, event: Event, decision: Decision, rule: Rule | None
                       ) -> list[Action]:
        wall_s = float(self.clock())
        ident = self._new_id(wall_s)
        mode_before = decision.mode.value
        for other in decision.events:
            if other.kind is EventKind.MODE_CHANGE and other.requester is None:
                mode_before = str(dict(other.evidence).get("from", mode_before))
                break
        window: FrozenWindow | None = None
        if self.recorder is not None:
            try:
                window = self.recorder.freeze(event.at_s, self.after_s)
            except ValueError as exc:  # a non-finite trip time: no window, say why
                log.warning("incident %s: flight recorder not frozen: %s", ident, exc)
        hooks = self.playbook.hooks_for(rule)
        payload: dict[str, Any] = {
            "action": "open", "site": self.site_name, "wall_s": wall_s, "at_s": event.at_s,
            "trigger": _trigger_json(event),
            "mode_at_trip": mode_before, "mode_after_trip": decision.mode.value,
            "model": {"path": self.model_path, "sha256": self.model_sha256},
            "config_sha256": self.config_sha256,
            "playbook": {"name": self.playbook.name, "source": self.playbook.source,
                         "sha256": self.playbook.sha256,
                         "rule": None if rule is None else rule.name},
            "checklist": self.playbook.checklist_for(rule),
            "notify": [h.name for h in hooks],
            "flight_recorder": None if window is None else {
                "trigger_s": window.trigger_s, "start_s": window.start_s,
                "end_s": window.end_s},
            "people": self.playbook.people.to_json(),
            "resolve_requires": self.playbook.resolve_requires.to_json(),
            "plant_safety": self.playbook.plant_safety,
            # What the trip names as the cause: one mapping, shared with the drills.
            "cause": cause_of(event.name).value,
        }
        self._record(ident, payload, wall_s=wall_s)
        if ident not in self._incidents:  # not folded: a bug, already logged
            return []
        self._classify(ident, "at the trip")
        self._open.append(ident)
        self._taken[ident] = set()
        if window is not None:
            self._windows.append((ident, window))
        self._awaiting_containment.append(ident)
        log.info("incident %s opened: %s: %s", ident, event.name, event.reason)
        actions: list[Action] = self._containment(ident, rule, decision, event)
        message = (f"incident {ident} on {self.site_name}: {event.name} tripped: "
                   f"{event.reason}; mode {decision.mode}")
        actions += [Notify(spec, message, ident, self.site_name, event.name, event.reason)
                    for spec in hooks]
        self._update_busy()
        return actions

    def _join(self, incident: Incident, event: Event, decision: Decision, rule: Rule | None
              ) -> list[Action]:
        ident = incident.id
        payload = _event_json(event, decision)
        payload["joined"] = True
        payload["rule"] = None if rule is None else rule.name
        self._record(ident, payload)
        if rule is not None:
            book = self.playbook.checklist_for(rule)
            have = {(i.phase.value, i.text) for i in incident.checklist}
            added = {phase: [t for t in texts if (phase, t) not in have]
                     for phase, texts in book.items()}
            if any(added.values()):
                self._record(ident, {"action": "checklist",
                                     "added": {p: t for p, t in added.items() if t},
                                     "rule": rule.name})
        self._classify(ident, f"trip {event.name} joined")
        # The joined trip's containment steps not taken yet; no new notifications (one
        # incident, one page), the timeline shows the trip.
        return list(self._containment(ident, rule, decision, event))

    def _containment(self, ident: str, rule: Rule | None, decision: Decision, event: Event
                     ) -> list[Action]:
        if rule is None:
            return []
        taken = self._taken.setdefault(ident, set())
        actions: list[Action] = []
        reason = f"incident {ident}: {event.name}"
        mode = decision.mode
        for step in rule.containment:
            kind = step.kind
            if step.key in taken:
                continue
            taken.add(step.key)
            payload: dict[str, Any] = {"action": "containment", "step": kind.value,
                                       "at_s": decision.at_s}
            if kind in _REQUEST_OF:
                request_kind, target = _REQUEST_OF[kind]
                if mode.safety_rank >= target.safety_rank:
                    payload |= {"status": ContainmentStatus.ALREADY.value,
                                "detail": f"mode is {mode} (the supervisor's trip)"}
                else:
                    request = Request(request_kind, reason, ident)
                    self._pending_requests.append(request)
                    actions.append(request)
                    payload |= {"status": ContainmentStatus.REQUESTED.value,
                                "detail": f"{request_kind} requested from mode {mode}"}
            elif kind is ContainmentKind.SHADOW:
                # Nothing automatic moves toward the AI; a trip leaves a mode at least as safe
                # as SHADOW, and the AI is still computed and judged (evidence) in it.
                status = (ContainmentStatus.ALREADY if mode.safety_rank
                          >= Mode.SHADOW.safety_rank else ContainmentStatus.UNSUPPORTED)
                payload |= {"status": status.value,
                            "detail": f"mode is {mode}; the AI keeps being computed and "
                                      "judged without being applied"}
            elif kind is ContainmentKind.PROCEDURE:
                # For the people on shift: the incident says which procedure, its checklist
                # tracks it; the gateway keeps doing what it does (fallback control).
                payload |= {"status": ContainmentStatus.REQUESTED.value,
                            "detail": f"operators: {step.describe()}"}
            elif kind is ContainmentKind.RATE_LIMIT:
                assert step.factor is not None
                actions.append(RateLimit(step.factor, reason, ident))
                payload |= {"status": ContainmentStatus.REQUESTED.value, "factor": step.factor,
                            "detail": "rate limits scaled until resolved"}
            else:
                actions.append(QuarantineModel(self.model_path, self.model_sha256, reason,
                                               ident))
                payload |= {"status": ContainmentStatus.REQUESTED.value,
                            "detail": f"model {self.model_sha256 or self.model_path or '?'}"}
            self._record(ident, payload)
        return actions

    def _event(self, event: Event, decision: Decision) -> None:
        if event.requester == PLAYBOOK_REQUESTER and self._pending_requests:
            self._playbook_answer(event)
        if not self._open:
            return
        ident = self._open[-1]
        repeated = 0
        if event.kind in _REPEATABLE:
            key = (ident, event.kind.value, event.name)
            last = self._repeats.get(key)
            at = event.at_s
            if last is not None and at - last[0] < REPEAT_S:
                self._repeats[key] = (last[0], last[1] + 1)
                return
            repeated = last[1] if last is not None else 0
            self._repeats[key] = (at, 0)
        payload = _event_json(event, decision)
        payload["repeated"] = repeated
        self._record(ident, payload)

    def _playbook_answer(self, event: Event) -> None:
        """Record the supervisor's answer to a playbook request."""
        for request in self._pending_requests:
            target = _TARGET_OF_REQUEST.get(request.kind)
            applied = (event.kind is EventKind.MODE_CHANGE and target is not None
                       and dict(event.evidence).get("to") == target.value)
            refused = (event.kind is EventKind.REQUEST_REFUSED
                       and event.name == request.kind.value)
            if applied or refused:
                self._pending_requests.remove(request)
                status = ContainmentStatus.APPLIED if applied else ContainmentStatus.REFUSED
                self._record(request.incident_id, {
                    "action": "containment", "step": _STEP_OF_REQUEST[request.kind],
                    "status": status.value, "detail": event.reason, "at_s": event.at_s})
                return

    def _progress(self, decision: Decision) -> None:
        """Containment, windows that completed, and windows being stored."""
        if self._awaiting_containment and decision.source is not Source.AI:
            for ident in self._awaiting_containment:
                detail = (f"applied output from {decision.source} (mode {decision.mode}); "
                          "the AI's output no longer reaches the equipment")
                self._record(ident, {"action": "containment", "step": "fallback",
                                     "status": ContainmentStatus.APPLIED.value,
                                     "detail": detail, "at_s": decision.at_s})
                if self._incidents[ident].phase is Phase.DETECTED:
                    self._phase(ident, Phase.CONTAINED, decision.at_s, None,
                                f"applied output from {decision.source}")
            self._awaiting_containment.clear()
        if self._windows:
            self._collect_windows()
        if self._storing:
            self._store_some(FRAMES_PER_CYCLE)
        self._update_busy()

    def _collect_windows(self) -> None:
        still = []
        for ident, window in self._windows:
            if window.complete:
                self._storing.append(_Storing(ident, window, self.danger_limits))
            else:
                still.append((ident, window))
        self._windows = still

    def _store_some(self, budget: int) -> None:
        """Serialise up to ``budget`` frames of the first window being stored; append a
        record for each full part, and the last part when all frames are done."""
        job = self._storing[0]
        frames = job.frames
        end = min(job.done + budget, len(frames))
        for k in range(job.done, end):
            job.assess(frames[k])
            line = json.dumps(frame_json(frames[k]), allow_nan=False, separators=(",", ":"))
            job.lines.append(line)
            job.parts_chars += len(line) + 1
            if job.parts_chars >= PART_CHARS and k + 1 < len(frames):
                self._store_part(job, final=False, done=k + 1)
        job.done = end
        if end >= len(frames):
            self._store_part(job, final=True, done=end)
            self._storing.pop(0)
            if job.watch is not None and job.incident_id in self._incidents:
                margin = job.margin
                self._record(job.incident_id, {
                    "action": "consequence", "frames": len(frames),
                    "min_margin": None if margin is None else margin[0],
                    "sensor": None if margin is None else margin[1],
                    "value": None if margin is None else margin[2]})
                self._classify(job.incident_id, "consequence assessed")

    def _store_part(self, job: _Storing, *, final: bool, done: int) -> None:
        # The number of parts is known only at the end; non-final parts say 0 and the fold
        # counts them; the final one states the total. Parts are contiguous in frame order.
        window = job.window
        text = "".join(line + "\n" for line in job.lines)
        payload: dict[str, Any] = {
            "action": "flight_recorder", "part": job.part,
            "parts": job.part + 1 if final else 0, "frames": len(job.lines),
            "total_frames": len(job.frames) if final else done,
            "trigger_s": window.trigger_s, "start_s": window.start_s, "end_s": window.end_s,
            "header": job.header if job.part == 0 else None, "frames_jsonl": text}
        job.part += 1
        job.lines = []
        job.parts_chars = 0
        self._record(job.incident_id, payload, light=True)

    def _phase(self, ident: str, phase: Phase, at_s: float | None, by: str | None,
               reason: str) -> None:
        self._record(ident, {"action": "phase", "phase": phase.value, "at_s": at_s,
                             "by": by, "reason": reason},
                     actor=by or "gateway")

    def _investigating(self, ident: str, who: str, why: str) -> None:
        if self._incidents[ident].phase.rank < Phase.INVESTIGATING.rank:
            self._phase(ident, Phase.INVESTIGATING, self._last_at_s, who, why)

    def _note(self, incident_id: str, who: str, source: str, text: str, *,
              acknowledge: bool) -> Incident:
        self.get(incident_id)
        _need_text("who", who)
        if not isinstance(text, str) or (not acknowledge and not text.strip()):
            raise BadRequest("a note needs a text")
        self._record(incident_id, {"action": "note", "who": who, "source": source,
                                   "text": text.strip(), "acknowledge": acknowledge,
                                   "at_s": self._last_at_s},
                     actor=who, source=source)
        if self._incidents[incident_id].is_open:
            self._investigating(incident_id, who, "acknowledged" if acknowledge
                                else "operator note")
        return self._incidents[incident_id]

    def _record(self, ident: str, payload: dict[str, Any], *, actor: str = "gateway",
                source: str = "", wall_s: float | None = None, light: bool = False) -> None:
        """Append the change to the audit log and fold it into the incident. The in-memory
        fold sees the payload exactly as the database will hold it (canonical JSON; with
        ``light``, without the flight recorder's text, which the fold does not read)."""
        payload["incident"] = ident
        if "wall_s" not in payload:
            payload["wall_s"] = float(self.clock()) if wall_s is None else wall_s
        if self.audit is not None:
            self.audit.append(KIND, payload, actor, source)
        normal = json.loads(canonical_payload(_light(payload) if light else payload))
        try:
            self._incidents[ident] = fold_record(self._incidents.get(ident), normal)
        except ValueError:  # a bug here must not stop the control loop
            log.exception("incident %s: record not folded: %s", ident, payload.get("action"))

    def _classify(self, ident: str, why: str) -> None:
        """Classify the incident by its recorded plan; record the severity if it rose."""
        incident = self._incidents[ident]
        facts = SeverityFacts(tuple(t.detector for t in incident.trips),
                              incident.mode_at_trip == Mode.AUTO.value,
                              incident.mode_after_trip, incident.consequence)
        level, rule = incident.people.classify(facts)
        current = incident.severity
        if current is not None and level.rank <= current.rank:
            return
        reason = (f"{why}: severity rule {rule}" if rule is not None
                  else f"{why}: the playbook's default")
        self._record(ident, {"action": "severity", "level": level.value,
                             "previous": None if current is None else current.value,
                             "by": None, "source": "", "reason": reason, "rule": rule})

    def _update_busy(self) -> None:
        self._busy = bool(self._awaiting_containment or self._windows or self._storing)

    def evidence_served(self, incident_id: str, who: str, source: str) -> Incident:
        """Record on the incident's timeline that ``who`` (from ``source``) is given its
        evidence bundle, before it is served: a note (so the fold and older readers take it
        as they are), which does not move the incident's phase. Also for resolved incidents.
        Raises :class:`IncidentError` for an unknown id, :class:`BadRequest` for an empty
        name."""
        self.get(incident_id)
        _need_text("who", who)
        self._record(incident_id, {"action": "note", "who": who, "source": source,
                                   "text": "evidence bundle downloaded",
                                   "acknowledge": False, "at_s": self._last_at_s},
                     actor=who, source=source)
        return self._incidents[incident_id]


_STEP_OF_REQUEST: Final = {RequestKind.TO_MANUAL: ContainmentKind.MANUAL.value,
                           RequestKind.TO_SAFE_STOP: ContainmentKind.SAFE_STOP.value}


_E = TypeVar("_E", bound=StrEnum)


def _one_of(kind: type[_E], value: str, what: str) -> _E:
    """``value`` as a member of ``kind``, or :class:`BadRequest` naming the allowed ones."""
    try:
        return kind(value)
    except ValueError:
        raise BadRequest(f"unknown {what} {value!r}; use "
                         + ", ".join(m.value for m in kind)) from None


def _need_text(what: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"`{what}` must be a non-empty text")


def _light(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A flight_recorder payload without its text (the fold needs only the counts)."""
    return {k: v for k, v in payload.items() if k not in ("frames_jsonl", "header")}


def _evidence_json(event: Event) -> list[list[Any]]:
    # A non-finite float is tagged (as the flight recorder does): canonical JSON would write
    # it as the text "nan", which could not be told apart from evidence that is text.
    return [[k, {"$f": repr(float(v))} if isinstance(v, float) and not math.isfinite(v)
             else v] for k, v in event.evidence]


def _trigger_json(event: Event) -> dict[str, Any]:
    evidence = dict(event.evidence)
    target = evidence.get("target")
    return {"detector": event.name, "reason": event.reason, "at_s": event.at_s,
            "target": target if isinstance(target, str) else None,
            "evidence": _evidence_json(event)}


def _event_json(event: Event, decision: Decision) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "action": "event", "at_s": event.at_s, "kind": event.kind.value, "name": event.name,
        "reason": event.reason, "requester": event.requester,
        "evidence": _evidence_json(event), "mode": decision.mode.value}
    if event.kind is EventKind.TRIP:
        target = dict(event.evidence).get("target")
        payload["target"] = target if isinstance(target, str) else None
    return payload
