"""The interface every fallback actuator controller offers to the supervisor.

The supervisor runs every fallback controller in hot standby, every cycle, in this order:

1. ``output = controller.update(measurement, dt_s)``: the value the controller would apply now;
2. the supervisor picks what is actually applied (AI command, this output, or another one);
3. ``controller.track(applied)``: the controller learns what the actuator really received.

Step 3 is what makes a later takeover bumpless, so it must happen on every cycle, whether or not
the controller is in control.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

__all__ = [
    "FAULT_APPLIED_NOT_FINITE",
    "FAULT_DT_NOT_FINITE",
    "FAULT_DT_NOT_POSITIVE",
    "FAULT_MEASUREMENT_NOT_FINITE",
    "FAULT_OVERFLOW",
    "ActuatorController",
    "require_finite",
]

# Reasons reported through ``last_fault``. Plain strings (not an Enum) because they go straight
# into events and logs; they are constants so that callers and tests compare against one spelling.
FAULT_MEASUREMENT_NOT_FINITE: Final = "measurement not finite"
FAULT_DT_NOT_POSITIVE: Final = "dt_s not positive"
FAULT_DT_NOT_FINITE: Final = "dt_s not finite"
FAULT_APPLIED_NOT_FINITE: Final = "applied not finite"
FAULT_OVERFLOW: Final = "arithmetic overflow"


def require_finite(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name``.

    For configuration and explicit commands, where bad input is a caller bug to report
    precisely (per-cycle values are never passed through this: they must not raise).
    Rejects non-numbers, bools (``true`` in a YAML file is a typo, not the number 1), NaN and
    infinities.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{name}` must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return float(value)


class ActuatorController(Protocol):
    """A fallback controller for one actuator, as the supervisor sees it.

    Implementations never raise out of :meth:`update` or :meth:`track` for bad *values* (NaN,
    infinity, a non-positive time step): the control loop must keep running, so they hold their
    last output and report the reason in :attr:`last_fault` instead.
    """

    @property
    def last_fault(self) -> str | None:
        """Why the latest ``update()`` (or a rejected ``track()``) did not act normally.

        ``None`` after an ``update()`` that computed a fresh output. ``update()`` always
        overwrites it; ``track()`` only sets it when it rejects its argument, so a fault from
        ``update()`` is still visible after a clean ``track()`` in the same cycle.
        """
        ...

    def update(self, measurement: float, dt_s: float) -> float:
        """Return the output for this cycle, in actuator units.

        ``measurement`` is the controlled variable in engineering units and ``dt_s`` the time
        since the previous ``update()`` in seconds. Never raises for non-finite or
        non-positive inputs; see :attr:`last_fault`.
        """
        ...

    def track(self, applied: float) -> None:
        """Record the value actually applied to the actuator this cycle (actuator units).

        Called once per cycle after ``update()``. Non-finite values are ignored and reported in
        :attr:`last_fault`.
        """
        ...

    def reset(self, output: float) -> None:
        """Forget history and restart from ``output`` (actuator units).

        Raises ``ValueError`` if ``output`` is not finite: a reset is an explicit command, and a
        NaN there is a caller bug that must not be absorbed silently.
        """
        ...
