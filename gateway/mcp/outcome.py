"""The real outcome of an agent's proposal, as the control cycle that judged it decided.

Pure: the safety core builds a :class:`ProposalOutcome` from the decision of the first cycle
that took the proposal (``gateway.runtime.proposals``), the request channel carries it as JSON
(:meth:`ProposalOutcome.to_json` / :meth:`ProposalOutcome.from_json`, which refuses anything of
the wrong shape), and the MCP ``propose`` tool answers it. Never "accepted" for something
refused: ``result`` says what reached the plant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Result(StrEnum):
    """What became of a proposal."""

    APPLIED = "applied"  # AUTO, the envelope passed it: written as proposed
    CLAMPED = "clamped"  # AUTO, projected into the envelope: the clamped values were written
    REFUSED = "refused"  # not written: outside the envelope, not authorised, busy...
    SHADOW = "shadow"  # judged (verdict given) but not applied: the AI is on trial in SHADOW
    NOT_IN_CONTROL = "not_in_control"  # judged, not applied: MANUAL or SAFE_STOP
    SUPERSEDED = "superseded"  # a later proposal replaced it before any cycle took it
    # The core's channel closed while it waited: it may or may not have been taken (never
    # reported as refused, which would be a claim the gateway cannot make).
    UNKNOWN = "unknown"


# A proposal's values reached the plant only for these.
WRITTEN = frozenset({Result.APPLIED, Result.CLAMPED})


@dataclass(frozen=True, slots=True)
class ProposalOutcome:
    """``result``; ``mode`` of the judging cycle ("" when no cycle judged it); ``action`` the
    envelope's verdict (ok, clamp, reject, trip; "" when none); ``violations`` the violated
    constraints by name; ``written`` the values the devices were told for the proposed
    actuators (engineering units; empty unless APPLIED or CLAMPED); ``applied`` what each
    proposed actuator holds after that cycle, whoever's value it is; ``reason`` a short
    fixed-vocabulary explanation; ``cycle_at_s`` the judging cycle's time (the core's
    clock; NaN when none)."""

    result: Result
    mode: str = ""
    action: str = ""
    violations: tuple[str, ...] = ()
    written: tuple[tuple[str, float], ...] = ()
    applied: tuple[tuple[str, float], ...] = ()
    reason: str = ""
    cycle_at_s: float = math.nan

    @property
    def reached_plant(self) -> bool:
        return self.result in WRITTEN

    def to_json(self) -> dict[str, Any]:
        return {"result": str(self.result), "mode": self.mode, "action": self.action,
                "violations": list(self.violations),
                "written": {k: v for k, v in self.written},
                "applied": {k: v for k, v in self.applied}, "reason": self.reason,
                "cycle_at_s": self.cycle_at_s}

    @classmethod
    def from_json(cls, raw: Any) -> ProposalOutcome:
        """Read :meth:`to_json`'s form back; ValueError for anything else."""
        if not isinstance(raw, dict):
            raise ValueError("a proposal outcome must be an object")
        try:
            result = Result(raw["result"])
        except (KeyError, ValueError, TypeError):
            raise ValueError("a proposal outcome needs a known result") from None
        texts = {k: raw.get(k, "") for k in ("mode", "action", "reason")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise ValueError("mode, action and reason must be texts")
        violations = raw.get("violations", [])
        if not (isinstance(violations, list) and all(isinstance(v, str) for v in violations)):
            raise ValueError("violations must be a list of texts")
        at = raw.get("cycle_at_s", math.nan)
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError("cycle_at_s must be a number")
        return cls(result, texts["mode"], texts["action"], tuple(violations),
                   _pairs(raw.get("written", {})), _pairs(raw.get("applied", {})),
                   texts["reason"], float(at))


def _pairs(raw: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, dict):
        raise ValueError("values must be an object")
    out = []
    for k, v in raw.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError("values must map tags to numbers")
        out.append((k, float(v)))
    return tuple(out)


def refused(reason: str, violations: tuple[str, ...] = (), mode: str = "",
            action: str = "") -> ProposalOutcome:
    """A proposal that never entered a cycle (or whose cycle refused it)."""
    return ProposalOutcome(Result.REFUSED, mode, action, violations, reason=reason)
