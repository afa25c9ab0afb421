"""What goes into one supervisor step and what comes out of it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

# What the AI proposes is the controllers' vocabulary (gateway.control.proposal); the supervisor
# judges it. Re-exported here for the supervisor's readers.
from gateway.control.proposal import Proposal, ProposalAnomaly

__all__ = ["Decision", "Proposal", "ProposalAnomaly", "Snapshot", "Source"]

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from gateway.envelope.compiled import F64
    from gateway.envelope.engine import Verdict
    from gateway.supervisor.events import Event
    from gateway.supervisor.modes import Mode


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The process as the adapters last saw it, in the site's sensor order.

    ``sensors`` in engineering units; ``good`` the quality flag of each reading (False for a
    device-reported bad quality or a failed read); ``age_s`` seconds since each value was read.
    """

    sensors: F64
    good: npt.NDArray[np.bool_]
    age_s: F64


class Source(StrEnum):
    AI = "ai"
    FALLBACK = "fallback"
    SAFE = "safe"


class Decision(NamedTuple):
    """The outcome of one step.

    ``command`` is what the runtime writes (it passed :class:`gateway.envelope.gate.Gate`,
    and, with the supervisor's codec, it is the value after encoding, checked again as such);
    ``source`` is where it came from before the gate, ``sources`` per actuator after it (an
    actuator the gate replaced is SAFE); ``verdict`` is the envelope's verdict on the AI's
    proposal (None when there was none); ``clamped`` tells whether the written command is a
    projection; ``canary_due`` asks the runtime to run the golden inputs this cycle;
    ``sensors`` and ``dt_s`` are what the command was judged with (bad readings as NaN), so
    that the check after encoding judges the same way.
    Immutable; a NamedTuple because one is built every cycle and a frozen dataclass costs
    several microseconds to construct.
    """

    at_s: float
    mode: Mode
    command: F64
    source: Source
    sources: tuple[Source, ...]
    verdict: Verdict | None
    fallback: F64
    clamped: bool
    events: tuple[Event, ...]
    canary_due: bool
    sensors: F64
    dt_s: float
