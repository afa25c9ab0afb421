"""Fallback controllers that ignore the measurement: a fixed safe value, or the last applied one.

Both satisfy :class:`gateway.control.base.ActuatorController`, so the supervisor drives them
exactly like a :class:`gateway.control.pid.Pid`.
"""

from __future__ import annotations

import math

from gateway.control.base import FAULT_APPLIED_NOT_FINITE, require_finite

__all__ = ["FixedValue", "HoldLast"]

# Bound once at import: update()/track() run every cycle for every actuator, and a module
# global is cheaper to look up than `math.isfinite` (attribute access on each call).
_isfinite = math.isfinite


class FixedValue:
    """Always outputs one configured value (actuator units), e.g. valve closed or pump at 40 %.

    ``update()`` ignores its arguments, so a NaN measurement is not a fault for this controller
    and :attr:`last_fault` is always None. ``track()`` and ``reset()`` do not change the
    output: the value is a property of the site's safety case, not of history. Raises
    ``ValueError`` at construction if ``value`` is not finite.
    """

    __slots__ = ("_value",)

    def __init__(self, value: float) -> None:
        self._value = require_finite("value", value)

    @property
    def value(self) -> float:
        """The fixed output, in actuator units."""
        return self._value

    @property
    def last_fault(self) -> str | None:
        """Always None: nothing this controller receives can make it misbehave."""
        return None

    def update(self, measurement: float, dt_s: float) -> float:
        """Return the fixed value; both arguments are ignored."""
        return self._value

    def track(self, applied: float) -> None:
        """Ignored: the output never depends on what was applied."""

    def reset(self, output: float) -> None:
        """Keep the fixed value; ``ValueError`` if ``output`` is not finite, as for any reset."""
        require_finite("output", output)


class HoldLast:
    """Outputs the last value the supervisor reported as applied (the last safe value).

    Starts at ``initial`` (actuator units; ``ValueError`` if not finite). ``update()`` ignores
    its arguments, returns the held value and clears :attr:`last_fault`. ``track(applied)``
    replaces the held value; a non-finite ``applied`` is ignored, the previous value is kept
    and :attr:`last_fault` is set to ``FAULT_APPLIED_NOT_FINITE``, so a NaN from the actuator
    path can never become the held value.
    """

    __slots__ = ("_held", "_last_fault")

    _held: float
    _last_fault: str | None

    def __init__(self, initial: float) -> None:
        self._held = require_finite("initial", initial)
        self._last_fault = None

    @property
    def held(self) -> float:
        """The value ``update()`` returns, in actuator units."""
        return self._held

    @property
    def last_fault(self) -> str | None:
        """``FAULT_APPLIED_NOT_FINITE`` after a rejected ``track()`` until the next ``update()``.

        None otherwise.
        """
        return self._last_fault

    def update(self, measurement: float, dt_s: float) -> float:
        """Return the held value; both arguments are ignored."""
        self._last_fault = None
        return self._held

    def track(self, applied: float) -> None:
        """Hold ``applied`` from now on, unless it is not finite (see the class docstring)."""
        if _isfinite(applied):
            self._held = float(applied)
        else:
            self._last_fault = FAULT_APPLIED_NOT_FINITE

    def reset(self, output: float) -> None:
        """Hold ``output`` and clear :attr:`last_fault`; ``ValueError`` if it is not finite."""
        self._held = require_finite("output", output)
        self._last_fault = None
