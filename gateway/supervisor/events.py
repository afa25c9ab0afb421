"""Events emitted by the supervisor core: what happened, when, why and at whose request.

Events are plain frozen values; the runtime appends them to the audit log and hands them to
the incident manager. The core never performs that I/O itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Event", "EventKind"]


class EventKind(StrEnum):
    """What an :class:`Event` records."""

    MODE_CHANGE = "mode_change"
    TRIP = "trip"
    RESET = "reset"
    BYPASS_START = "bypass_start"
    BYPASS_END = "bypass_end"
    REQUEST_REFUSED = "request_refused"
    ANOMALY = "anomaly"


@dataclass(frozen=True, slots=True)
class Event:
    """One supervisor event.

    ``at_s`` is the injected monotonic time in seconds at which the core handled it (after any
    correction of a clock that went backwards). ``name`` is what the event is about: a
    detector's name, or ``"mode"`` for mode changes. ``reason`` is human readable.
    ``requester`` is the operator identity for operator actions and refusals, None for
    automatic events. ``evidence`` holds ``(key, value)`` pairs for the audit log and the
    incident record (for a mode change: ``("from", ...)`` and ``("to", ...)``).
    """

    at_s: float
    kind: EventKind
    name: str
    reason: str
    requester: str | None
    evidence: tuple[tuple[str, float | str], ...] = ()
