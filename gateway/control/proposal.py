"""What an AI controller hands the supervisor each cycle: a proposal, or why there is none.

It lives with the controllers that produce it (the ONNX policy's wiring, the external AI's
latest write); the supervisor imports it to judge it, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.envelope.compiled import F64


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
