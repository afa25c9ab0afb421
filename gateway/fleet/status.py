"""The centre's view of the fleet: every site's latest heartbeat, read from ``SG_STATUS``.

The stream :data:`~gateway.fleet.subjects.STATUS_STREAM` keeps, per subject, only the latest
message (``max_msgs_per_subject=1``): a site's last status and last metrics.
:func:`ensure_status_stream` creates it when absent and leaves an existing one as it is (so
``fleet status`` may call it every time). :func:`read_fleet` lists the sites that ever sent a
heartbeat and judges each one's age.

A heartbeat's age is measured from the time the NATS server stored it (the server's clock, not
the site's: a site with a wrong clock is not made to look fresh) to the centre's clock now. A
site whose last heartbeat is older than :data:`STALE_AFTER` of its own periods is **stale**: its
mode, incidents and link are what it said then, and it is shown as unreachable, never as
healthy. A message that is not a status document of this format is shown as ``unreadable``.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from gateway.fleet.heartbeat import FORMAT
from gateway.fleet.subjects import PREFIX, STATUS_STREAM, SiteIdError, SiteSubjects
from gateway.incident.people import Severity
from gateway.supervisor.modes import Mode

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["STALE_AFTER", "STATUS_SUBJECTS", "Health", "SiteStatus", "ensure_status_stream",
           "judge", "read_fleet"]

STALE_AFTER: Final = 3
"""Heartbeats missed before a site is stale (unreachable)."""
STATUS_SUBJECTS: Final = (f"{PREFIX}.*.status", f"{PREFIX}.*.metrics")
"""What :data:`STATUS_STREAM` holds: every site's status and metrics."""


class Health(StrEnum):
    """A site at a glance, worst first: ``stale`` (no heartbeat within
    :data:`STALE_AFTER` periods: unreachable), ``unreadable`` (its last status cannot be read),
    ``tripped`` (a trip is latched), ``incident`` (an incident is open, or the site cannot read
    its own incidents), ``degraded`` (not in AUTO, or the core has not published), ``ok``."""

    STALE = "stale"
    UNREADABLE = "unreadable"
    TRIPPED = "tripped"
    INCIDENT = "incident"
    DEGRADED = "degraded"
    OK = "ok"


@dataclass(frozen=True)
class SiteStatus:
    """One site's last status (``document``; None when unreadable), when the server stored it
    (UTC seconds), its age in seconds at the time of reading, and the judgement."""

    site: str
    received_wall_s: float
    age_s: float
    health: Health
    document: dict[str, Any] | None
    problem: str | None = None

    @property
    def stale(self) -> bool:
        return self.health is Health.STALE

    def row(self) -> dict[str, Any]:
        """The site as one JSON-ready row of the fleet table."""
        doc = self.document or {}
        core = doc.get("core") if isinstance(doc.get("core"), dict) else None
        incidents = doc.get("incidents") if isinstance(doc.get("incidents"), list) else None
        open_list = [i for i in incidents or [] if isinstance(i, dict) and i.get("open")]
        model = doc.get("model") if isinstance(doc.get("model"), dict) else None
        return {
            "site": self.site, "health": self.health.value, "stale": self.stale,
            "problem": self.problem,
            "heartbeat_age_s": round(self.age_s, 3) if math.isfinite(self.age_s) else None,
            "received_wall_s": self.received_wall_s if math.isfinite(self.received_wall_s)
            else None,
            "heartbeat_s": doc.get("heartbeat_s"),
            "mode": None if core is None else core.get("mode"),
            "latched": None if core is None else core.get("latched"),
            "trip_reason": None if core is None else core.get("trip_reason"),
            "open_incidents": doc.get("open_incidents"),
            "worst_severity": _worst(open_list),
            "incidents": incidents,
            "link_state": doc.get("link_state"), "backlog": doc.get("backlog"),
            "model": model, "gateway_version": doc.get("gateway_version"),
            "audit_error": doc.get("audit_error"),
        }


# Most severe first (gateway.incident.people.Severity lists them from least to most).
_SEVERITY_ORDER: Final = tuple(s.value for s in reversed(Severity))


def _worst(incidents: list[dict[str, Any]]) -> str | None:
    found = {i.get("severity") for i in incidents}
    for level in _SEVERITY_ORDER:
        if level in found:
            return level
    # A severity this reader does not know is still shown, never dropped.
    others = sorted(s for s in found if isinstance(s, str))
    return others[0] if others else None


def judge(document: dict[str, Any] | None, age_s: float) -> tuple[Health, str | None]:
    """The health of a site whose last status is ``document`` (None: unreadable), received
    ``age_s`` seconds ago, with the reason when it is not ``ok``-by-content."""
    period = None if document is None else document.get("heartbeat_s")
    if not isinstance(period, int | float) or isinstance(period, bool) or not (
            math.isfinite(period) and period > 0):
        period = None
    if document is not None and period is not None and age_s > STALE_AFTER * period:
        return Health.STALE, (f"no heartbeat for {age_s:.0f} s (every {period:g} s "
                              "expected): unreachable")
    if document is None or period is None:
        # Without its period the age cannot be judged: unreadable, never healthy.
        return Health.UNREADABLE, "the last status cannot be read"
    core = document.get("core")
    if not isinstance(core, dict):
        return Health.DEGRADED, "the safety core has not published a view"
    if core.get("latched"):
        return Health.TRIPPED, f"trip latched: {core.get('trip_reason') or '?'}"
    if document.get("open_incidents") is None:
        return Health.INCIDENT, f"the site cannot read its incidents: {document.get('audit_error')}"
    if document["open_incidents"]:
        return Health.INCIDENT, f"{document['open_incidents']} open incident(s)"
    if core.get("mode") != Mode.AUTO.value:
        return Health.DEGRADED, f"mode {core.get('mode')}"
    return Health.OK, None


async def ensure_status_stream(js: JetStreamContext) -> bool:
    """Create :data:`STATUS_STREAM` (file storage, the latest message per subject) unless it
    exists; True when created. An existing stream is left unchanged."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(STATUS_STREAM)
    except NotFoundError:
        await js.add_stream(StreamConfig(
            name=STATUS_STREAM, subjects=list(STATUS_SUBJECTS), max_msgs_per_subject=1,
            discard=DiscardPolicy.OLD, storage=StorageType.FILE))
        return True
    return False


def _site_of(subject: str) -> str | None:
    parts = subject.split(".")
    if len(parts) != 4 or f"{parts[0]}.{parts[1]}" != PREFIX or parts[3] != "status":
        return None
    try:
        return SiteSubjects(parts[2]).site_id
    except SiteIdError:
        return None


async def read_fleet(js: JetStreamContext, now_wall_s: float, *, site: str | None = None
                     ) -> list[SiteStatus]:
    """Every site's last status, sorted by site id (only ``site``, when given: empty if it
    never sent one). Raises ``nats.js.errors.NotFoundError`` when the stream does not exist."""
    from nats.js.errors import NotFoundError

    pattern = f"{PREFIX}.{'*' if site is None else site}.status"
    info = await js.stream_info(STATUS_STREAM, subjects_filter=pattern)
    subjects = sorted((info.state.subjects or {}).keys())
    out = []
    for subject in subjects:
        ident = _site_of(subject)
        if ident is None:
            continue
        try:
            msg = await js.get_last_msg(STATUS_STREAM, subject)
        except NotFoundError:  # purged between the listing and now
            continue
        received = msg.time.timestamp() if isinstance(msg.time, datetime.datetime) else math.nan
        age = max(0.0, now_wall_s - received) if math.isfinite(received) else math.inf
        document = _document(msg.data or b"", ident)
        health, problem = judge(document, age)
        out.append(SiteStatus(ident, received, age, health, document, problem))
    return out


def _document(data: bytes, site: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("site") != site:
        return None  # another format, or a status that names another site than its subject
    return doc
