"""The dashboard's incidents and recent events, read from the audit database (read-only).

Incidents are records in the audit database (``gateway.incident.store``); the safety core's
audit writer appends them, and this module only reads, through the store's read-only
connections (WAL readers never block the writer). :class:`IncidentBoard` reads at most once a
second, in a worker thread so that SQLite never blocks the event loop, and keeps what it read
as ready-made JSON: every event-stream message and page request is served from that copy,
never from the database.

Recent events are the audit records people act on (trips and other supervisor events, mode
changes, operator actions, refused writes, incident changes, alarms, the communications
process's losses and restarts), the newest :data:`MAX_EVENTS`, read incrementally from the
last record seen (at start, from at most :data:`EVENTS_LOOKBACK` records back).

The evidence bundle of an incident (:func:`evidence_zip`) is built on request, in a worker
thread, by the incident export (``gateway.incident.export.export_incident``) in a temporary
folder, and zipped.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import sqlite3
import tempfile
import time
import zipfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.audit.store import NotAuditDatabase, last_head, read_records
from gateway.incident.model import ChecklistPhase, Incident
from gateway.incident.store import load_incidents

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from gateway.audit.chain import Record

__all__ = ["EVENT_KINDS", "MAX_EVENTS", "IncidentBoard", "event_of", "evidence_zip",
           "incident_detail", "incident_summary", "valid_id"]

log = logging.getLogger("gateway.ops.incidents")

# The audit record kinds shown as recent events (gateway.runtime.records, gateway.incident).
EVENT_KINDS: Final = ("event", "mode", "operator", "refused_write", "incident", "alarm",
                      "comms")
MAX_EVENTS: Final = 50
MAX_INCIDENTS: Final = 20  # listed, open first then newest; the rest are in the CLI
MAX_TIMELINE: Final = 200  # the newest entries of the selected incident's timeline
EVENTS_LOOKBACK: Final = 50_000
MAX_TEXT: Final = 300  # characters of an event's text in the list
_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def valid_id(text: str) -> bool:
    """Whether ``text`` can be an incident id (letters, digits, ``._:-``; at most 64)."""
    return _ID.match(text) is not None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _progress(incident: Incident) -> list[dict[str, Any]]:
    out = []
    for phase in ChecklistPhase:
        items = incident.checklist_of(phase)
        if items:
            out.append({"phase": phase.value, "done": sum(1 for i in items if i.done),
                        "total": len(items),
                        "items": [{"text": i.text, "done": i.done, "by": i.by}
                                  for i in items]})
    return out


def _deadlines(incident: Incident) -> list[dict[str, Any]]:
    # The page says "due in X" or "overdue" against the state's clock (now_wall_s), so the
    # state stays right between two reads of the database.
    return [{"obligation": d.obligation, "description": d.description,
             "due_wall_s": _finite(d.due_wall_s), "remind_wall_s": _finite(d.remind_wall_s),
             "reported": d.report is not None,
             "reported_by": None if d.report is None else d.report.who,
             "reported_wall_s": None if d.report is None else _finite(d.report.wall_s)}
            for d in incident.deadlines()]


def incident_summary(incident: Incident) -> dict[str, Any]:
    """An incident for the list: id, phase, when it opened (UTC seconds), the trigger, the
    checklist's progress (done/total, overall and per phase), how many timeline entries, its
    severity (null before one is set), its reporting deadlines (each with ``due_wall_s`` and
    whether it was ``reported``), whether a review is recorded, how many action items are
    open, and what resolving still needs (``open_requirements``, as the CLI's refusal says)."""
    progress = _progress(incident)
    return {"id": incident.id, "phase": incident.phase.value, "open": incident.is_open,
            "opened_wall_s": _finite(incident.opened_wall_s),
            "detector": incident.trigger.detector, "reason": incident.trigger.reason,
            "done": sum(p["done"] for p in progress), "total": sum(p["total"] for p in progress),
            "entries": len(incident.timeline),
            "progress": [{k: p[k] for k in ("phase", "done", "total")} for p in progress],
            "severity": None if incident.severity is None else incident.severity.value,
            "deadlines": _deadlines(incident),
            "reviewed": incident.review is not None,
            "open_actions": sum(1 for a in incident.actions if not a.done),
            "open_requirements": list(incident.open_requirements()) if incident.is_open
            else []}


def incident_detail(incident: Incident) -> dict[str, Any]:
    """The selected incident: its summary, the review (null when none) and the action items
    (``due`` as YYYY-MM-DD), the checklist by phase with each item, the timeline (newest
    :data:`MAX_TIMELINE` entries, oldest first) and its phase changes."""
    timeline = incident.timeline[-MAX_TIMELINE:]
    review = incident.review
    return {**incident_summary(incident),
            "review": None if review is None else {
                "root_cause": review.root_cause, "factors": list(review.factors),
                "went_well": list(review.went_well), "went_badly": list(review.went_badly),
                "who": review.who, "wall_s": _finite(review.wall_s)},
            "actions": [{"number": a.number, "text": a.text, "owner": a.owner,
                         "due": a.due.isoformat(), "done": a.done, "done_by": a.done_by,
                         "note": a.note} for a in incident.actions],
            "checklist": _progress(incident),
            "phases": [{"phase": c.phase.value, "wall_s": _finite(c.wall_s), "by": c.by,
                        "reason": c.reason} for c in incident.phases],
            "timeline": [{"wall_s": _finite(e.wall_s), "kind": e.kind.value, "text": e.text,
                          "who": e.who} for e in timeline],
            "timeline_left_out": len(incident.timeline) - len(timeline)}


def event_of(record: Record) -> dict[str, Any]:
    """One audit record as a line of the recent events: when, kind, who and a short text."""
    try:
        data = json.loads(record.payload)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        data = {}
    kind = record.kind
    if kind in ("event", "mode"):
        text = f"{data.get('kind', kind)} {data.get('name', '')}: {data.get('reason', '')}"
    elif kind == "operator":
        text = f"{data.get('action', '?')}: {data.get('result', '')}"
        if data.get("detector"):
            text += f" (detector {data['detector']})"
    elif kind == "incident":
        text = f"incident {data.get('incident', '?')}: {data.get('action', '?')}"
        for key in ("phase", "text", "summary", "reason"):
            if isinstance(data.get(key), str) and data[key]:
                text += f" {data[key]}"
                break
    elif kind == "alarm":
        text = str(data.get("message", ""))
    else:  # refused_write, comms: their payload says it best
        text = json.dumps(data, separators=(", ", ": "), sort_keys=True)
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 1] + "…"
    return {"seq": record.seq, "wall_s": _finite(record.at_s), "kind": kind,
            "actor": record.actor, "source": record.source, "text": text}


class IncidentBoard:
    """What the dashboard shows of incidents and events, refreshed from ``db`` at most every
    ``period_s`` seconds by :meth:`run` (in a worker thread). ``wanted`` tells :meth:`run`
    whether anyone looks (the page's requests and event streams): nobody looking, no reading.
    """

    def __init__(self, db: str | os.PathLike[str], period_s: float = 1.0,
                 wanted: Callable[[], bool] = lambda: True) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, not {period_s}")
        self.db = Path(db)
        self.period_s = period_s
        self.wanted = wanted
        self.incidents: list[dict[str, Any]] = []  # summaries, open first then newest
        self.details: dict[str, dict[str, Any]] = {}  # by id, of the listed incidents
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.error: str | None = "not read yet"
        self.read_at_wall_s: float | None = None
        self.reads = 0
        self._next_seq = 0  # the first record not yet read for events (0: not started)
        self._document: dict[str, Any] = self._build()

    @property
    def document(self) -> dict[str, Any]:
        """The list, the recent events (newest first) and the reading's status, ready as
        JSON; replaced as a whole at each read (never changed in place)."""
        return self._document

    def detail(self, incident_id: str) -> dict[str, Any] | None:
        """The listed incident ``incident_id`` in full (None when not listed)."""
        return self.details.get(incident_id)

    async def run(self) -> None:
        """Read every period while someone looks, until cancelled."""
        while True:
            if self.wanted():
                await self.refresh()
            await asyncio.sleep(self.period_s)

    async def refresh(self) -> None:
        """Read the database once (in a worker thread) and replace :attr:`document`."""
        await asyncio.to_thread(self.read)

    def read(self) -> None:
        """Read the database once (blocking: call it from a worker thread)."""
        try:
            if not self.db.is_file():
                raise NotAuditDatabase(f"no audit database at {self.db}")
            incidents = load_incidents(self.db)
            head = last_head(self.db).seq
            if self._next_seq == 0 or head < self._next_seq - 1:  # first read, or a new db
                self.events.clear()
                self._next_seq = max(1, head - EVENTS_LOOKBACK + 1)
            for record in read_records(self.db, first_seq=self._next_seq, last_seq=head,
                                       kinds=EVENT_KINDS):
                self.events.append(event_of(record))
            self._next_seq = head + 1
        except (NotAuditDatabase, sqlite3.Error, OSError) as exc:
            if self.error != str(exc):
                log.warning("incidents: cannot read the audit database: %s", exc)
            self.error = str(exc)
        else:
            listed = sorted(incidents, key=lambda i: (not i.is_open, -i.opened_wall_s))
            listed = listed[:MAX_INCIDENTS]
            self.incidents = [incident_summary(i) for i in listed]
            self.details = {i.id: incident_detail(i) for i in listed}
            self.error = None
        self.read_at_wall_s = time.time()
        self.reads += 1
        self._document = self._build()

    def _build(self) -> dict[str, Any]:
        return {"incidents": self.incidents, "events": list(reversed(self.events)),
                "error": self.error, "read_at_wall_s": self.read_at_wall_s}


def evidence_zip(db: str | os.PathLike[str], incident_id: str) -> bytes:
    """The evidence bundle of ``incident_id`` (``gateway.incident.export``) as a zip, built
    in a temporary folder that is removed afterwards (blocking: call it from a worker
    thread). Raises :class:`~gateway.incident.model.UnknownIncident`,
    :class:`~gateway.audit.store.NotAuditDatabase` and
    :class:`~gateway.incident.export.ExportError` as the export does."""
    from gateway.incident.export import export_incident  # matplotlib: only when asked

    with tempfile.TemporaryDirectory(prefix="sg-evidence-") as tmp:
        folder = export_incident(db, incident_id, tmp)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, f"{folder.name}/{path.relative_to(folder)}")
        return out.getvalue()

