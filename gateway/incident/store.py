"""Incidents read back from the audit database.

Incidents live in the audit database as records of kind ``incident`` (see
:mod:`gateway.incident.model`); this module folds them into :class:`Incident` values. It only
reads, through the audit store's read-only connections, so it works while a gateway is writing
the same database (WAL readers see a consistent snapshot and never block the writer).

A record that cannot be folded (malformed, or out of order) is skipped with a warning and
listed in ``problems`` when the caller passes a list: the audit chain itself (``safety-gateway
audit verify``) is what proves the records were not altered.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.audit.store import NotAuditDatabase, read_records
from gateway.incident.model import KIND, Incident, UnknownIncident, fold_record

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    from gateway.audit.chain import Record

__all__ = [
    "StoredWindow",
    "incident_records",
    "load_incident",
    "load_incidents",
    "load_window",
]

log = logging.getLogger("gateway.incident")


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """An incident's flight-recorder window as stored: the recorder's JSONL header line (None
    without recording info) and the frames' lines. ``complete`` when every part is there."""

    header: str | None
    frames_jsonl: str
    frames: int
    parts: int
    complete: bool
    trigger_s: float
    start_s: float
    end_s: float

    def text(self) -> str:
        """The whole JSONL file, exactly as ``gateway.forensics.recorder.write_jsonl`` writes
        the window."""
        return (self.header + "\n" if self.header is not None else "") + self.frames_jsonl


def _incident_payloads(db: str | os.PathLike[str]) -> Iterator[tuple[Record, dict[str, Any]]]:
    try:
        for rec in read_records(db, kinds=(KIND,)):
            try:
                payload = json.loads(rec.payload)
            except json.JSONDecodeError:
                log.warning("%s: incident record seq %d is not JSON; skipped", db, rec.seq)
                continue
            if isinstance(payload, dict) and isinstance(payload.get("incident"), str):
                yield rec, payload
    except sqlite3.Error as exc:
        raise NotAuditDatabase(f"{db}: cannot read: {exc}") from None


def load_incidents(db: str | os.PathLike[str], *, problems: list[str] | None = None
                   ) -> list[Incident]:
    """Every incident in the audit database ``db``, in the order they opened. Raises
    :class:`~gateway.audit.store.NotAuditDatabase` for a missing file or one that is not an
    audit database."""
    incidents: dict[str, Incident] = {}
    for rec, payload in _incident_payloads(db):
        ident = payload["incident"]
        try:
            incidents[ident] = fold_record(incidents.get(ident), payload)
        except ValueError as exc:
            message = f"record seq {rec.seq} ({ident}): {exc}"
            log.warning("%s: %s; skipped", db, message)
            if problems is not None:
                problems.append(message)
    return list(incidents.values())


def load_incident(db: str | os.PathLike[str], incident_id: str, *,
                  problems: list[str] | None = None) -> Incident:
    """One incident. Raises :class:`~gateway.incident.model.UnknownIncident` if the database
    has none with this id, :class:`~gateway.audit.store.NotAuditDatabase` as
    :func:`load_incidents`."""
    incident: Incident | None = None
    for rec, payload in _incident_payloads(db):
        if payload["incident"] != incident_id:
            continue
        try:
            incident = fold_record(incident, payload)
        except ValueError as exc:
            message = f"record seq {rec.seq} ({incident_id}): {exc}"
            log.warning("%s: %s; skipped", db, message)
            if problems is not None:
                problems.append(message)
    if incident is None:
        raise UnknownIncident(f"no incident {incident_id!r} in {db}")
    return incident


def incident_records(db: str | os.PathLike[str], incident_id: str) -> list[Record]:
    """Every audit record of the incident, in sequence order."""
    return [rec for rec, payload in _incident_payloads(db)
            if payload["incident"] == incident_id]


def load_window(db: str | os.PathLike[str], incident_id: str) -> StoredWindow | None:
    """The incident's stored flight-recorder window (None if no part is stored). Parts are
    taken in order from part 0; a gap ends the window (``complete`` is then False)."""
    header: str | None = None
    chunks: list[str] = []
    frames = 0
    parts = 0
    trigger_s = start_s = end_s = 0.0
    for _, payload in _incident_payloads(db):
        if payload["incident"] != incident_id or payload.get("action") != "flight_recorder":
            continue
        if payload.get("part") != len(chunks) or not isinstance(payload.get("frames_jsonl"),
                                                                str):
            continue
        if not chunks:
            head = payload.get("header")
            header = head if isinstance(head, str) else None
            trigger_s, start_s, end_s = (float(payload.get(k, 0.0))
                                         for k in ("trigger_s", "start_s", "end_s"))
        chunks.append(payload["frames_jsonl"])
        total = payload.get("total_frames")
        frames = total if isinstance(total, int) else frames
        count = payload.get("parts")
        parts = count if isinstance(count, int) and count > 0 else parts
    if not chunks:
        return None
    return StoredWindow(header, "".join(chunks), frames, len(chunks),
                        parts > 0 and parts == len(chunks), trigger_s, start_s, end_s)
