"""Declarative if/then fallback: the first rule whose condition holds gives the output.

Conditions are linear comparisons over sensors (``pressure > 12``), parsed by the site loader.
An unknown reading (NaN) in any sensor a rule reads makes the controller output the actuator's
safe value: a rule table is not designed for missing inputs, so it does not guess.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING

from gateway.control.base import FAULT_MEASUREMENT_NOT_FINITE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.config.schema import Rule

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class Rules:
    """Evaluate ``rules`` in order over the sensor vector; ``default`` when none holds."""

    def __init__(self, rules: Sequence[Rule], sensor_index: dict[str, int], default: float,
                 safe_value: float) -> None:
        self._rules = [
            (tuple((sensor_index[name], coef) for name, coef in rule.condition),
             _OPS[rule.op.value], rule.rhs, rule.value)
            for rule in rules
        ]
        self._default = default
        self._safe = safe_value
        self._last_fault: str | None = None
        self.matched: int | None = None  # index of the rule that gave the last output

    @property
    def last_fault(self) -> str | None:
        return self._last_fault

    def update(self, sensors: Sequence[float]) -> float:
        """Return the output for this cycle's sensor values (engineering units)."""
        self._last_fault = None
        for k, (terms, op, rhs, value) in enumerate(self._rules):
            lhs = 0.0
            for j, coef in terms:
                lhs += coef * sensors[j]
            if not math.isfinite(lhs):
                self._last_fault = FAULT_MEASUREMENT_NOT_FINITE
                self.matched = None
                return self._safe
            if op(lhs, rhs):
                self.matched = k
                return float(value)
        self.matched = None
        return self._default
