"""A site's status heartbeat and metrics snapshot, published to the fleet every ``heartbeat_s``.

Runs in the communications process (never in the safety core), on a nats-py client the caller
connected. Each period it builds, from what the site already has, without asking the core:

- from the core's view (the mirror, :class:`~gateway.link.mirror.MirrorSnapshot`, or a
  :class:`~gateway.runtime.view.PlantView` in-process): the mode, the latched trip and its
  reason, the open incident of the view, the last cycle's number and wall time;
- from the audit database, read-only (as the dashboard reads it, ``gateway.ops.incidents``):
  the incidents (open first, then newest; each with its severity and phase) and the model in
  use (the last accepted ``model_load`` record: path, sha256, version when recorded);
- from the fleet publisher's state when the caller passes one: the link's state and the
  backlog (audit records not yet acknowledged by the centre); null otherwise, never a made-up 0;
- the gateway's version.

It publishes the status as JSON to ``sg.site.<id>.status`` and the core's counters by name to
``sg.site.<id>.metrics``, as plain (core NATS) messages: the central stream
:data:`~gateway.fleet.subjects.STATUS_STREAM` keeps the latest of each per site, and a heartbeat
lost while the link is down is simply replaced by the next one (the audit records, which must
not be lost, travel by the publisher from the audit database). Publishing never waits for the
centre: a failure is logged once and the next period tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from gateway.audit.store import NotAuditDatabase, last_head, read_records
from gateway.fleet.subjects import SiteSubjects

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client

    from gateway.config.schema import Site
    from gateway.link.counters import CounterLayout
    from gateway.link.mirror import MirrorSnapshot
    from gateway.runtime.view import PlantView

__all__ = ["FORMAT", "MAX_INCIDENTS", "AuditReading", "PublisherState", "gateway_version",
           "metrics_document", "run_heartbeat", "status_document"]

log = logging.getLogger("gateway.fleet.heartbeat")

FORMAT: Final = 1
"""The version of the status and metrics documents (a reader refuses another)."""
MAX_INCIDENTS: Final = 20
"""Incidents carried in a heartbeat: the open ones first, then the newest closed ones."""
MAX_TEXT: Final = 300
"""Characters of an incident's trigger reason carried in a heartbeat."""


class PublisherState(Protocol):
    """What the fleet publisher (the audit records' sender) tells the heartbeat: its link's
    state (e.g. ``connected``, ``disconnected``) and how many audit records wait for the
    centre's acknowledgement (None: not known yet)."""

    @property
    def link_state(self) -> str: ...

    @property
    def backlog_records(self) -> int | None: ...


def gateway_version() -> str:
    """The installed package's version ("unknown" from a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("safety-gateway")
    except PackageNotFoundError:
        return "unknown"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class AuditReading:
    """What the heartbeat reads from the audit database ``db`` (read-only): the incidents
    and the model in use. The model is found incrementally: each :meth:`read` looks only at
    the records appended since the last one (the first looks at the whole chain once)."""

    db: Path
    incidents: list[dict[str, Any]] | None = None  # None: could not read
    open_incidents: int | None = None
    model: dict[str, Any] | None = None
    error: str | None = "not read yet"
    _next_seq: int = field(default=1, repr=False)

    def read(self) -> None:
        """Read once (blocking: call it from a worker thread). A database that cannot be read
        leaves ``incidents`` None and says why in ``error``; the model last seen is kept."""
        from gateway.incident.store import load_incidents

        try:
            if not self.db.is_file():
                raise NotAuditDatabase(f"no audit database at {self.db}")
            incidents = load_incidents(self.db)
            head = last_head(self.db).seq
            if head < self._next_seq - 1:  # a new database: start again
                self._next_seq, self.model = 1, None
            for record in read_records(self.db, first_seq=self._next_seq, last_seq=head,
                                       kinds=("model_load",)):
                model = _model_of(record.payload)
                if model is not None:
                    self.model = model
            self._next_seq = head + 1
        except (NotAuditDatabase, sqlite3.Error, OSError) as exc:
            if self.error != str(exc):
                log.warning("fleet heartbeat: cannot read the audit database: %s", exc)
            self.incidents = self.open_incidents = None
            self.error = str(exc)
            return
        listed = sorted(incidents, key=lambda i: (not i.is_open, -i.opened_wall_s))
        self.open_incidents = sum(1 for i in incidents if i.is_open)
        self.incidents = [{
            "id": i.id, "open": i.is_open, "phase": i.phase.value,
            "severity": None if i.severity is None else i.severity.value,
            "opened_wall_s": _finite(i.opened_wall_s), "detector": i.trigger.detector,
            "reason": _cut(i.trigger.reason)} for i in listed[:MAX_INCIDENTS]]
        self.error = None


def _cut(text: str) -> str:
    """At most :data:`MAX_TEXT` characters (a heartbeat stays small whatever a reason says)."""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def _model_of(payload: str) -> dict[str, Any] | None:
    """The model of an accepted ``model_load`` record, else None."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("accepted") is not True:
        return None
    model: dict[str, Any] = {"path": data.get("path"), "sha256": data.get("sha256")}
    if isinstance(data.get("version"), str | int):
        model["version"] = data["version"]
    return model


def _core_of(view: MirrorSnapshot | PlantView | None, now_wall_s: float
             ) -> dict[str, Any] | None:
    if view is None:
        return None
    # The mirror's snapshot says ``wall_s``, the in-process view ``at_wall_s``.
    wall_s = float(getattr(view, "wall_s", getattr(view, "at_wall_s", math.nan)))
    return {"mode": view.mode, "latched": view.latched,
            "trip_reason": view.trip_reason or None,
            "incident_id": view.incident_id or None, "cycle": view.cycle,
            "last_cycle_wall_s": _finite(wall_s),
            "age_s": max(0.0, now_wall_s - wall_s) if math.isfinite(wall_s) else None}


def status_document(site_id: str, *, now_wall_s: float, heartbeat_s: float, number: int,
                    view: MirrorSnapshot | PlantView | None, audit: AuditReading,
                    publisher: PublisherState | None, version: str) -> dict[str, Any]:
    """The status heartbeat as JSON-ready data. ``core`` is null before the core published a
    view; ``incidents`` and ``open_incidents`` null when the audit database cannot be read
    (``audit_error`` says why); ``link_state`` and ``backlog`` null without a publisher (or
    before it knows); ``model`` null before a model was loaded (or with no AI)."""
    return {
        "format": FORMAT, "site": site_id, "at_wall_s": now_wall_s, "number": number,
        "heartbeat_s": heartbeat_s, "gateway_version": version,
        "core": _core_of(view, now_wall_s),
        "open_incidents": audit.open_incidents, "incidents": audit.incidents,
        "audit_error": audit.error, "model": audit.model,
        "link_state": None if publisher is None else publisher.link_state,
        "backlog": None if publisher is None else publisher.backlog_records,
    }


def metrics_document(site_id: str, *, now_wall_s: float,
                     view: MirrorSnapshot | PlantView | None, layout: CounterLayout
                     ) -> dict[str, Any]:
    """The core's counters by slot name (``counters`` null before the core counted)."""
    from gateway.link.counters import decode

    counters = None if view is None or len(view.counters) != 8 * layout.size else dict(
        zip(layout.names, decode(layout, view.counters), strict=True))
    return {"format": FORMAT, "site": site_id, "at_wall_s": now_wall_s,
            "cycle": None if view is None else view.cycle, "counters": counters}


async def run_heartbeat(client: Client, site: Site,
                        view_source: Callable[[], MirrorSnapshot | PlantView | None],
                        publisher_state: PublisherState | None = None, *,
                        stop: asyncio.Event,
                        wall_clock: Callable[[], float] = time.time,
                        audit_path: Path | None = None) -> None:
    """Publish the status and metrics of ``site`` every ``site.fleet.heartbeat_s`` seconds
    until ``stop`` is set (the first at once). ``view_source`` gives the core's latest view
    (``MirrorReader.read``; None before the first). Raises ValueError for a site without a
    ``fleet:`` section. A publish that fails is logged (once while it keeps failing) and
    retried at the next period; cancellation is not caught."""
    import nats.errors

    from gateway.link.mirror import MirrorLayout

    spec = site.fleet
    if spec is None:
        raise ValueError("the site has no fleet: section")
    names = SiteSubjects(spec.site_id)
    layout = MirrorLayout.for_site(site).counters
    audit = AuditReading(Path(site.audit.path if audit_path is None else audit_path))
    version = gateway_version()
    number = 0
    failing: str | None = None
    while not stop.is_set():
        await asyncio.to_thread(audit.read)
        view = view_source()
        now = wall_clock()
        number += 1
        status = status_document(spec.site_id, now_wall_s=now, heartbeat_s=spec.heartbeat_s,
                                 number=number, view=view, audit=audit,
                                 publisher=publisher_state, version=version)
        metrics = metrics_document(spec.site_id, now_wall_s=now, view=view, layout=layout)
        try:
            await client.publish(names.status, _encode(status))
            await client.publish(names.metrics, _encode(metrics))
        except (nats.errors.Error, OSError) as exc:
            if failing != str(exc):
                log.warning("fleet heartbeat not sent: %s (retrying every %g s)", exc,
                            spec.heartbeat_s)
            failing = str(exc)
        else:
            if failing is not None:
                log.info("fleet heartbeat sent again")
            failing = None
        # The period's end, or the stop: a timeout here is the normal way round the loop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), spec.heartbeat_s)


def _encode(document: dict[str, Any]) -> bytes:
    # NaN has no JSON form: a NaN left anywhere is a bug raised here, not a broken message.
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
