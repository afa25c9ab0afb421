"""What caused an incident: the category its trigger's detector names.

One mapping, shared by the incident manager (each incident records its ``cause`` when it
opens) and the drills (which score the cause an incident names against the one a scenario
declares). The categories:

- ``ai_behaviour``: the AI's commands break the envelope, leave the fallback's neighbourhood,
  or its model no longer answers its golden inputs (``envelope*``, ``violation_rate``,
  ``divergence.*``, ``canary``, ``model.*``);
- ``sensing``: a sensor is bad, stale, out of range, frozen or jumping (``input.*``);
- ``device``: a device (a PLC) is lost: every sensor tag it serves went bad or stale in the
  same cycle (``device.<name>``, :class:`gateway.supervisor.detectors.InputHealth`);
- ``ai_unavailable``: the AI is silent, late or gives unusable output (``ai_silent``,
  ``deadline``, ``controller.*``);
- ``other``: any other detector (an operator's or a site's own).

The patterns are written as the playbook writes its ``match`` (fnmatch); the first that
matches wins.
"""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase

__all__ = ["CAUSE_WORDS", "Cause", "cause_of"]


class Cause(StrEnum):
    AI_BEHAVIOUR = "ai_behaviour"
    SENSING = "sensing"
    DEVICE = "device"
    AI_UNAVAILABLE = "ai_unavailable"
    OTHER = "other"


# Each cause in words, for people (drafts, reports).
CAUSE_WORDS: dict[Cause, str] = {
    Cause.AI_BEHAVIOUR: "the AI controller's commands or model",
    Cause.SENSING: "a sensor's readings (bad, stale, out of range, frozen or jumping)",
    Cause.DEVICE: "a device (a PLC) or its connection was lost",
    Cause.AI_UNAVAILABLE: "the AI controller was silent, late or gave unusable output",
    Cause.OTHER: "a trip the gateway does not classify",
}

# First match wins; patterns as the playbook writes them.
_PATTERNS: tuple[tuple[str, Cause], ...] = (
    ("device.*", Cause.DEVICE),
    ("input.*", Cause.SENSING),
    ("canary", Cause.AI_BEHAVIOUR),
    ("model.*", Cause.AI_BEHAVIOUR),
    ("envelope*", Cause.AI_BEHAVIOUR),
    ("violation_rate", Cause.AI_BEHAVIOUR),
    ("divergence.*", Cause.AI_BEHAVIOUR),
    ("ai_silent", Cause.AI_UNAVAILABLE),
    ("deadline", Cause.AI_UNAVAILABLE),
    ("controller.*", Cause.AI_UNAVAILABLE),
)


def cause_of(detector: str) -> Cause:
    """The cause a trip by ``detector`` names (``other`` for a name no pattern matches)."""
    for pattern, cause in _PATTERNS:
        if fnmatchcase(detector, pattern):
            return cause
    return Cause.OTHER
