"""The dashboard's health and detector panels, from one view of the plant (pure, no I/O).

:func:`health` reads the core's counters that travel with each view (``gateway.link.counters``:
the audit sink's backlog, losses and fault, the audit alarms, each device link's state and
connections, the communications process's restarts) and grades each part ``ok``, ``warn`` or
``bad``, so that the page can make a bad one impossible to miss. :func:`detectors` lists each
detector's statistic against its threshold (``gateway.runtime.view.DetectorGauges``) with how
near it is to tripping. :func:`candidate` reads the candidate site's verdicts, which travel
in the same gauge block under names prefixed ``candidate.`` (``gateway.runtime.candidate``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

from gateway.adapters.base import ConnectionState
from gateway.link.counters import LINK_STATES, decode

if TYPE_CHECKING:
    from gateway.link.counters import CounterLayout
    from gateway.runtime.view import PlantView

__all__ = ["AUDIT_BACKLOG_WARN", "NEAR_FRACTION", "candidate", "detectors", "health"]

# An audit backlog this long (records not yet committed) is worth a look: the writer commits
# in batches every few hundred milliseconds, so a healthy backlog is a cycle's worth or so.
AUDIT_BACKLOG_WARN: Final = 1000
# The candidate's gauges (gateway.runtime.candidate.GAUGE_PREFIX; the core's module is not
# imported here: the communications process reads the view only).
CANDIDATE_PREFIX: Final = "candidate."
_CANDIDATE_TOTALS: Final = ("judged", "disagreements", "clamp", "reject", "trip", "mode",
                            "errors")
# A detector whose statistic has used this much of its threshold is shown as near.
NEAR_FRACTION: Final = 0.8


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def health(view: PlantView, layout: CounterLayout) -> dict[str, Any]:
    """The audit's and the device links' health as the core counted them with ``view``.

    ``audit``: ``level`` ``bad`` while the sink reports a fault or once records were lost,
    ``warn`` with alarm records or a backlog of :data:`AUDIT_BACKLOG_WARN` or more, else
    ``ok``; ``devices``: per device its link state, its connections so far and its reconnects
    (connections after the first), ``bad`` when not connected (``unknown`` when its client
    does not say). ``counted`` is False for a view
    without counters (then every level is ``unknown``: nothing is known, nothing looks fine).
    """
    counted = len(view.counters) == 8 * layout.size
    slots = decode(layout, view.counters)
    pending, lost = slots[layout.audit_pending], slots[layout.audit_lost]
    fault, alarms = bool(slots[layout.audit_fault]), slots[layout.audit_alarms]
    if not counted:
        audit_level = "unknown"
    elif fault or lost:
        audit_level = "bad"
    elif alarms or pending >= AUDIT_BACKLOG_WARN:
        audit_level = "warn"
    else:
        audit_level = "ok"
    devices = []
    for i, name in enumerate(layout.devices):
        code = slots[layout.link_state + i]
        state = LINK_STATES[code] if code < len(LINK_STATES) else LINK_STATES[0]
        connects = slots[layout.connects + i]
        devices.append({
            "name": name, "state": state, "connects": connects,
            "reconnects": max(0, connects - 1),
            "level": ("unknown" if not counted or code == 0 else
                      "ok" if state == ConnectionState.CONNECTED.value else "bad")})
    return {
        "counted": counted,
        "audit": {"level": audit_level, "pending": pending, "lost": lost, "fault": fault,
                  "alarms": alarms},
        "devices": devices,
        "comms_restarts": slots[layout.comms_restarts],
    }


def detectors(view: PlantView) -> list[dict[str, Any]]:
    """Each detector gauge of ``view``: name, statistic, threshold, the statistic as a fraction
    of the threshold (None when either is unknown or the threshold is not positive) and a
    ``level``: ``bad`` above the threshold (the detector trips there), ``near`` from
    :data:`NEAR_FRACTION` of it, ``unknown`` without a statistic, else ``ok``."""
    out = []
    for name, value, limit in zip(view.detector_names, view.detector_values,
                                  view.detector_limits, strict=False):
        if name.startswith(CANDIDATE_PREFIX):  # the candidate's verdicts: its own panel
            continue
        fraction = value / limit if math.isfinite(value) and limit > 0 and math.isfinite(
            limit) else None
        if not math.isfinite(value):
            level = "bad" if value == math.inf else "unknown"
        elif value > limit:
            level = "bad"
        elif fraction is not None and fraction >= NEAR_FRACTION:
            level = "near"  # (a threshold of 0, as the range check's, has no "near")
        else:
            level = "ok"
        out.append({"name": name, "value": _num(value), "limit": _num(limit),
                    "fraction": None if fraction is None else _num(fraction), "level": level})
    return out


def candidate(view: PlantView) -> dict[str, Any] | None:
    """The candidate site's verdicts since the gateway started, or None without a candidate:
    ``judged`` (cycles), ``disagreements`` (cycles where its outcome differed from the
    enforced side's), would-``clamp``/``reject``/``trip`` totals, ``mode`` (cycles it would
    have been in another mode), ``errors`` (1: it failed and was switched off),
    ``last_disagreement_utc`` (UTC seconds, None: none yet) and ``verdicts``: per constraint
    or detector, its action and count, most frequent first. ``level``: ``bad`` when the
    candidate is off, ``warn`` with disagreements, else ``ok``."""
    found: dict[str, float] = {}
    verdicts = []
    for name, value in zip(view.detector_names, view.detector_values, strict=False):
        if not name.startswith(CANDIDATE_PREFIX):
            continue
        key = name[len(CANDIDATE_PREFIX):]
        if key in _CANDIDATE_TOTALS or key == "last_disagreement_utc":
            found[key] = value
        else:
            action, _, what = key.partition(".")
            verdicts.append({"action": action, "name": what,
                             "count": int(value) if math.isfinite(value) else None})
    if not found:
        return None
    out: dict[str, Any] = {k: int(found[k]) if math.isfinite(found.get(k, math.nan)) else None
                           for k in _CANDIDATE_TOTALS}
    out["last_disagreement_utc"] = _num(found.get("last_disagreement_utc", math.nan))
    out["verdicts"] = sorted(verdicts, key=lambda v: (-(v["count"] or 0), v["name"]))
    out["level"] = ("bad" if out["errors"] else "warn" if out["disagreements"] else "ok")
    return out
