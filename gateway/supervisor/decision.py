"""What goes into one supervisor step and what comes out of it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

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


class ProposalAnomaly(StrEnum):
    """Why a cycle has no usable AI proposal. The ONNX controller's names, plus the external
    controller's silence."""

    DEADLINE_MISSED = "deadline_missed"
    BUSY = "busy"
    NONFINITE_OUTPUT = "nonfinite_output"
    WRONG_OUTPUT_SHAPE = "wrong_output_shape"
    NONFINITE_INPUT = "nonfinite_input"
    RUNTIME_ERROR = "runtime_error"
    SILENT = "silent"


@dataclass(frozen=True, slots=True)
class Proposal:
    """The AI's command for this cycle (actuator order, engineering units), or why there is
    none. ``produced_at_s`` is when it was computed or written (for an external controller, the
    time of its last write). ``canary`` carries the model's outputs on the golden inputs when
    the runtime ran them this cycle (rows in the order of the canary cases)."""

    values: F64 | None
    anomaly: ProposalAnomaly | None = None
    produced_at_s: float | None = None
    canary: F64 | None = None


class Source(StrEnum):
    AI = "ai"
    FALLBACK = "fallback"
    SAFE = "safe"


class Decision(NamedTuple):
    """The outcome of one step.

    ``command`` is what the runtime writes (it passed :class:`gateway.envelope.gate.Gate`);
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
