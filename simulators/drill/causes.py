"""What caused an incident, as a drill scores it: the category its trigger's detector names.

The categories are those of an AI incident drill: the AI's behaviour (its commands break the
envelope, diverge from the fallback, or its model fails its golden inputs), sensing (a sensor
bad, stale, out of range, frozen or jumping), the device (a PLC lost), and the AI unavailable
(silent, late, unusable output). The gateway's detectors name these by prefix, as the default
playbook's rules match them (``configs/playbooks/default.yaml``).

The gateway has no device-level detector today: a PLC that drops off the network shows as its
sensors' bad quality or staleness, i.e. ``sensing``. A drill that expects ``device`` therefore
scores such an incident as naming the wrong cause; that is a true finding about the gateway,
not a fault of the drill.
"""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase

__all__ = ["Cause", "cause_of"]


class Cause(StrEnum):
    AI_BEHAVIOUR = "ai_behaviour"
    SENSING = "sensing"
    DEVICE = "device"
    AI_UNAVAILABLE = "ai_unavailable"
    UNKNOWN = "unknown"


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
    """The cause category a trip by ``detector`` names (``unknown`` for any other name)."""
    for pattern, cause in _PATTERNS:
        if fnmatchcase(detector, pattern):
            return cause
    return Cause.UNKNOWN
