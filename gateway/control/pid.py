"""PID fallback controller for one actuator, run in hot standby every supervisor cycle.

Discrete form, evaluated once per :meth:`Pid.update` with the caller's time step ``dt_s``::

    e    = s * (setpoint - measurement)          s = +1 direct action, -1 reverse action
    P    = kp * e
    I   += ki * e * dt_s                         (conditional integration, see below)
    rate = (measurement - previous) / dt_s       optionally low-passed with derivative_filter_s
    D    = -s * kd * rate                        (derivative on measurement)
    out  = clamp(P + I + D, output_min, output_max)

The integral state ``I`` is kept in output units (``ki`` is applied before accumulating), so
tracking and reset can set it directly to an output value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.control.base import (
    FAULT_APPLIED_NOT_FINITE,
    FAULT_DT_NOT_FINITE,
    FAULT_DT_NOT_POSITIVE,
    FAULT_MEASUREMENT_NOT_FINITE,
    FAULT_OVERFLOW,
    require_finite,
)

__all__ = ["Pid", "PidConfig"]

if TYPE_CHECKING:
    from collections.abc import Mapping

# Bound once at import: update()/track() run every cycle for every actuator, and a module
# global is cheaper to look up than `math.isfinite` (attribute access on each call).
_isfinite = math.isfinite


@dataclass(frozen=True, slots=True)
class PidConfig:
    """Tuning and limits of one PID loop.

    Gains are in actuator units per measurement unit: ``kp`` as is, ``ki`` per second (1/s) and
    ``kd`` times seconds (s). ``setpoint`` is in measurement units; ``output_min`` and
    ``output_max`` are in actuator units and may be equal (a pinned output).

    ``reverse=False`` (direct action): the output rises when the measurement is *below* the
    setpoint, e.g. a burner on a boiler temperature. ``reverse=True``: the output rises when the
    measurement is *above* the setpoint, e.g. an outflow pump on a tank level.

    ``derivative_filter_s`` is the time constant of a first-order low-pass on the measurement
    rate feeding the D term; 0 means no filter.

    Raises ``ValueError`` naming the field for: a non-number or non-finite value, a negative
    gain, a negative filter time, ``output_min > output_max``, or a non-bool ``reverse``.
    """

    kp: float
    ki: float
    kd: float
    setpoint: float
    output_min: float
    output_max: float
    reverse: bool = False
    derivative_filter_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("kp", "ki", "kd", "setpoint", "output_min", "output_max"):
            require_finite(name, getattr(self, name))
        require_finite("derivative_filter_s", self.derivative_filter_s)
        for name in ("kp", "ki", "kd"):
            if getattr(self, name) < 0.0:
                # A negative gain silently flips the action; direction is chosen with `reverse`.
                raise ValueError(f"`{name}` must be >= 0 (use `reverse` to flip the action)")
        if self.derivative_filter_s < 0.0:
            raise ValueError("`derivative_filter_s` must be >= 0 (0 disables the filter)")
        if self.output_min > self.output_max:
            raise ValueError(
                f"`output_min` ({self.output_min}) must be <= `output_max` ({self.output_max})"
            )
        if not isinstance(self.reverse, bool):
            raise ValueError(f"`reverse` must be a bool, got {type(self.reverse).__name__}")


class Pid:
    """A PID controller with anti-windup, bumpless tracking and fault holding.

    Behaviour per call of :meth:`update` (see the module docstring for the formula):

    * The output is always finite and within ``[output_min, output_max]``.
    * Derivative on measurement: a setpoint change moves P (and I from the next step on) but
      never produces a derivative kick.
    * Anti-windup by conditional integration: an integration step is skipped when it would push
      the unclamped output further beyond a limit it already exceeds.
    * Bad input never raises: a non-finite measurement, a non-finite ``dt_s`` or ``dt_s <= 0``
      returns the last output unchanged, leaves the integral untouched and sets
      :attr:`last_fault`. The next good sample computes no fresh derivative (the history is
      stale), it reuses the last measurement rate instead, so a fault causes neither a
      derivative spike nor a D-term jump.

    ``initial_output`` (actuator units, clamped to the limits) seeds the integral, so the first
    output is ``initial_output + P + one integration step``. Raises ``ValueError`` if it is not
    finite.
    """

    # The config's numbers are copied into slots because update() runs every cycle for every
    # actuator, and one attribute load is cheaper than two (self._config.kp).
    __slots__ = (
        "_config",
        "_filter_s",
        "_integral",
        "_kd_signed",
        "_ki",
        "_kp",
        "_last_fault",
        "_output",
        "_output_max",
        "_output_min",
        "_pd_term",
        "_prev_measurement",
        "_rate",
        "_setpoint",
        "_sign",
        "_use_derivative",
    )

    _config: PidConfig
    _sign: float
    _kp: float
    _ki: float
    _kd_signed: float
    _use_derivative: bool
    _filter_s: float
    _output_min: float
    _output_max: float
    _setpoint: float
    _integral: float
    _output: float
    _pd_term: float
    _rate: float
    _prev_measurement: float | None
    _last_fault: str | None

    def __init__(self, config: PidConfig, initial_output: float = 0.0) -> None:
        self._config = config
        self._sign = sign = -1.0 if config.reverse else 1.0
        self._kp = config.kp
        self._ki = config.ki
        # D = -s * kd * rate: the sign is folded in once here.
        self._kd_signed = -sign * config.kd
        self._use_derivative = config.kd > 0.0
        self._filter_s = config.derivative_filter_s
        self._output_min = config.output_min
        self._output_max = config.output_max
        self._setpoint = config.setpoint
        self.reset(require_finite("initial_output", initial_output))

    @property
    def config(self) -> PidConfig:
        """The configuration this controller was built with (its setpoint is the initial one)."""
        return self._config

    @property
    def setpoint(self) -> float:
        """The current setpoint, in measurement units."""
        return self._setpoint

    @property
    def output(self) -> float:
        """The last output: from ``update()``, or the clamped value of a later ``track()``."""
        return self._output

    @property
    def integral(self) -> float:
        """The integral state, in actuator units (for evidence and tests)."""
        return self._integral

    @property
    def last_fault(self) -> str | None:
        """Reason the last ``update()`` held its output, or a rejected ``track()``; else None.

        One of the ``FAULT_*`` strings of :mod:`gateway.control.base`. ``update()`` always
        overwrites it; ``track()`` only sets it when it rejects its argument.
        """
        return self._last_fault

    def set_setpoint(self, value: float) -> None:
        """Change the setpoint (measurement units) from the next ``update()`` on.

        The P term follows the step at once (there is no setpoint weighting); the D term does
        not, because it differentiates the measurement only. Raises ``ValueError`` if ``value``
        is not finite.
        """
        self._setpoint = require_finite("value", value)

    def state(self) -> dict[str, float | str | None]:
        """The internal state, for a forensic checkpoint (see :meth:`restore`)."""
        return {"setpoint": self._setpoint, "integral": self._integral,
                "output": self._output, "pd_term": self._pd_term, "rate": self._rate,
                "prev_measurement": self._prev_measurement, "last_fault": self._last_fault}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`state` returned. Forensic replay only: a live controller never
        calls it. Raises ``KeyError``/``ValueError``/``TypeError`` on a malformed ``state``."""
        prev, fault = state["prev_measurement"], state["last_fault"]
        if fault is not None and not isinstance(fault, str):
            raise TypeError(f"last_fault must be a string or null, got {fault!r}")
        self._setpoint = float(state["setpoint"])
        self._integral = float(state["integral"])
        self._output = float(state["output"])
        self._pd_term = float(state["pd_term"])
        self._rate = float(state["rate"])
        self._prev_measurement = None if prev is None else float(prev)
        self._last_fault = fault

    def reset(self, output: float) -> None:
        """Forget all history and restart from ``output`` (actuator units, clamped to limits).

        Afterwards the integral equals the clamped ``output``, the stored P and D terms and the
        measurement rate are zero, the derivative history is empty and :attr:`last_fault` is
        None. Raises ``ValueError`` if ``output`` is not finite.
        """
        start = self._clamp(require_finite("output", output))
        self._integral = start
        self._output = start
        self._pd_term = 0.0
        self._rate = 0.0
        self._prev_measurement = None
        self._last_fault = None

    def update(self, measurement: float, dt_s: float) -> float:
        """Compute and return this cycle's output, in actuator units.

        ``measurement`` is in measurement units; ``dt_s`` is the time since the previous call,
        in seconds. Never raises; on bad input returns :attr:`output` and sets
        :attr:`last_fault` (see the class docstring). If the arithmetic overflows (inputs near
        the float range), the output is held the same way with ``FAULT_OVERFLOW``.
        """
        # One test on the fast path; _reject() works out which input was bad.
        if not (_isfinite(measurement) and _isfinite(dt_s) and dt_s > 0.0):
            return self._reject(measurement, dt_s)

        error = self._sign * (self._setpoint - measurement)
        rate = self._rate
        prev = self._prev_measurement
        # Skipped when kd == 0: a tiny dt_s can make the raw rate overflow, and that must not
        # fault a loop that does not even use the derivative.
        if prev is not None and self._use_derivative:
            raw_rate = (measurement - prev) / dt_s
            tau = self._filter_s
            if tau > 0.0:
                # Backward-Euler discretisation of a first-order low-pass: stable for any dt_s.
                rate += dt_s / (tau + dt_s) * (raw_rate - rate)
            else:
                rate = raw_rate

        pd_term = self._kp * error + self._kd_signed * rate
        step = self._ki * error * dt_s
        integral = self._integral + step
        unclamped = pd_term + integral
        lo = self._output_min
        hi = self._output_max
        # Anti-windup: conditional integration (clamping). Chosen over back-calculation because
        # it needs no extra tuning constant (back-calculation's tracking time Tt), keeps no
        # extra state, and its rule is easy to audit: the integrator never moves in the
        # direction that deepens a saturation, while it does integrate out of one at once.
        # Back-calculation is still available in effect: when the supervisor feeds the
        # applied (clamped) output back through track(), the integral is re-based on it.
        if (unclamped > hi and step > 0.0) or (unclamped < lo and step < 0.0):
            integral = self._integral
            unclamped = pd_term + integral

        # Any inf or NaN among the terms propagates into the sum, so one check covers them all.
        if not _isfinite(unclamped):
            return self._hold(FAULT_OVERFLOW)

        output = hi if unclamped > hi else lo if unclamped < lo else unclamped
        self._integral = integral
        self._pd_term = pd_term
        self._rate = rate
        self._prev_measurement = measurement
        self._output = output
        self._last_fault = None
        return output

    def track(self, applied: float) -> None:
        """Re-base the integral on the value actually applied to the actuator this cycle.

        Contract: call once per cycle, after that cycle's ``update()``. Let ``a`` be ``applied``
        clamped to ``[output_min, output_max]`` and ``P``, ``D`` the terms of the latest
        successful ``update()``. Tracking sets ``integral = a - P - D``, i.e. the value for
        which that update would have produced exactly ``a``, and sets :attr:`output` to ``a``.
        Hence the first ``update()`` after a takeover returns::

            clamp(a + (P_new - P) + (D_new - D) + ki * e_new * dt_s)

        — the applied value moved only by one cycle's change of P and D plus one integration
        step. If ``applied`` lies outside the limits, the jump to the nearest limit is
        unavoidable and is the only bump.

        While this controller is in control, ``applied`` is normally its own output and the
        call changes nothing; if the output saturated or a downstream limiter changed it, the
        integral is pulled to what the actuator really got, which also ends any windup.

        A non-finite ``applied`` is ignored and sets :attr:`last_fault` to
        ``FAULT_APPLIED_NOT_FINITE``; a result that would overflow is ignored with
        ``FAULT_OVERFLOW``. Never raises.
        """
        if not _isfinite(applied):
            self._last_fault = FAULT_APPLIED_NOT_FINITE
            return
        target = self._clamp(applied)
        integral = target - self._pd_term
        if not _isfinite(integral):
            self._last_fault = FAULT_OVERFLOW
            return
        self._integral = integral
        # Holding on a later fault should keep what the actuator has, not a standby value it
        # never received, or a fault on the takeover cycle would itself cause a bump.
        self._output = target

    def _reject(self, measurement: float, dt_s: float) -> float:
        if not _isfinite(measurement):
            return self._hold(FAULT_MEASUREMENT_NOT_FINITE)
        if not _isfinite(dt_s):
            return self._hold(FAULT_DT_NOT_FINITE)
        return self._hold(FAULT_DT_NOT_POSITIVE)

    def _hold(self, reason: str) -> float:
        self._last_fault = reason
        # The measurement history no longer spans exactly one dt_s; differencing across the
        # gap would produce a derivative spike, so the next good sample reuses the last rate.
        self._prev_measurement = None
        return self._output

    def _clamp(self, value: float) -> float:
        hi = self._output_max
        lo = self._output_min
        return hi if value > hi else lo if value < lo else value
