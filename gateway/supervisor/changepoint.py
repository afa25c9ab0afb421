"""Sequential change detectors for the residual between the AI's and the fallback's output.

Per actuator the supervisor feeds ``r = ai_output - fallback_output`` (actuator units), one
sample per cycle. While the AI behaves, ``r`` wanders around zero; a detector alarms when its
mean shifts (a step or a slow drift) in either direction.

* :class:`Cusum` (two-sided tabular CUSUM) measures the shift against a *fixed* reference of
  zero, so it also flags an offset present from the very first sample.
* :class:`PageHinkley` measures it against the residual's own running mean, so it ignores a
  constant offset and reacts to *changes* only. A divergence present from the first sample is
  invisible to it; pair it with :class:`Cusum` or an absolute limit if that matters.

Both alarm immediately on a non-finite residual (NaN is never taken as "no change"), latch the
alarm until :meth:`reset`, and keep plain float state: one ``update()`` costs a few float
operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "REASON_DECREASE",
    "REASON_INCREASE",
    "REASON_NOT_FINITE",
    "ChangeDetector",
    "Cusum",
    "CusumConfig",
    "PageHinkley",
    "PageHinkleyConfig",
]

# Values of `last_reason`. Strings because they go verbatim into the supervisor's events.
REASON_INCREASE: Final = "g_pos above threshold"
REASON_DECREASE: Final = "g_neg above threshold"
REASON_NOT_FINITE: Final = "residual not finite"

# Bound once at import: update() runs every cycle for every actuator.
_isfinite = math.isfinite


def _require_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{name}` must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"`{name}` must be finite and > 0, got {value!r}")
    return float(value)


class ChangeDetector(Protocol):
    """What the supervisor needs from any change detector."""

    @property
    def alarm(self) -> bool:
        """True from the sample that raised the alarm until :meth:`reset`."""
        ...

    @property
    def last_reason(self) -> str | None:
        """One of the ``REASON_*`` strings while alarmed, else None."""
        ...

    def update(self, residual: float) -> bool:
        """Consume one residual sample; return :attr:`alarm`. Never raises."""
        ...

    def evidence(self) -> dict[str, float]:
        """Statistic values, threshold and sample count, for the alarm event."""
        ...

    def reset(self) -> None:
        """Clear the alarm and all statistics."""
        ...


@dataclass(frozen=True, slots=True)
class CusumConfig:
    """Tuning of a two-sided tabular CUSUM, in the residual's units.

    ``drift`` (often called k) is the slack per sample: mean shifts smaller than it are
    tolerated indefinitely; a common choice is half the smallest shift worth detecting.
    ``threshold`` (h) is the accumulated excess, in residual units times samples, that raises
    the alarm. Raises ``ValueError`` naming the field unless both are finite and > 0.
    """

    drift: float
    threshold: float

    def __post_init__(self) -> None:
        _require_positive("drift", self.drift)
        _require_positive("threshold", self.threshold)


class _TwoSided:
    """State and rules shared by both tests: the two one-sided statistics, their clamping at 0,
    the strict threshold, and the latching alarm."""

    __slots__ = ("_alarm", "_g_neg", "_g_pos", "_last_reason", "_n_samples", "_threshold")

    _threshold: float
    _g_pos: float
    _g_neg: float
    _n_samples: int
    _alarm: bool
    _last_reason: str | None

    @property
    def g_pos(self) -> float:
        """Evidence the residual mean rose, residual units times samples."""
        return self._g_pos

    @property
    def g_neg(self) -> float:
        """Evidence the residual mean fell, residual units times samples."""
        return self._g_neg

    @property
    def n_samples(self) -> int:
        """Samples consumed since the last reset, including the one that raised the alarm."""
        return self._n_samples

    @property
    def alarm(self) -> bool:
        """True from the sample that raised the alarm until ``reset()``."""
        return self._alarm

    @property
    def last_reason(self) -> str | None:
        """Why the alarm was raised (a ``REASON_*`` string), or None when not alarmed."""
        return self._last_reason

    def _accumulate(self, deviation: float, allowance: float) -> bool:
        """Add one finite deviation to both statistics; return the alarm."""
        g_pos = self._g_pos + deviation - allowance
        g_neg = self._g_neg - deviation - allowance
        self._g_pos = g_pos = g_pos if g_pos > 0.0 else 0.0
        self._g_neg = g_neg = g_neg if g_neg > 0.0 else 0.0
        # No NaN can reach the clamps above (which would turn it into 0, "no change"): the
        # deviation is finite and both statistics are finite while not alarmed, so the worst
        # an extreme residual can do is overflow one statistic to +inf, which alarms.
        threshold = self._threshold
        if g_pos > threshold:
            return self._raise(REASON_INCREASE)
        if g_neg > threshold:
            return self._raise(REASON_DECREASE)
        return False

    def state(self) -> dict[str, float | int | bool | str | None]:
        """The accumulated state, for a forensic checkpoint (see :meth:`restore`)."""
        return {"g_pos": self._g_pos, "g_neg": self._g_neg, "n_samples": self._n_samples,
                "alarm": self._alarm, "last_reason": self._last_reason}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`state` returned. Forensic replay only: a live detector never
        calls it. Raises ``KeyError``/``ValueError``/``TypeError`` on a malformed ``state``."""
        reason = state["last_reason"]
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"last_reason must be a string or null, got {reason!r}")
        self._g_pos = float(state["g_pos"])
        self._g_neg = float(state["g_neg"])
        self._n_samples = int(state["n_samples"])
        self._alarm = bool(state["alarm"])
        self._last_reason = reason

    def _clear(self) -> None:
        self._g_pos = 0.0
        self._g_neg = 0.0
        self._n_samples = 0
        self._alarm = False
        self._last_reason = None

    def _raise(self, reason: str) -> bool:
        self._alarm = True
        self._last_reason = reason
        return True


class Cusum(_TwoSided):
    """Two-sided tabular CUSUM on a residual whose in-control mean is zero.

    Per sample ``r``::

        g_pos = max(0, g_pos + r - drift)      grows while r stays above +drift
        g_neg = max(0, g_neg - r - drift)      grows while r stays below -drift

    and the alarm is raised when either exceeds ``threshold`` (strictly). For a step of size
    ``mu > drift`` the expected detection delay is about ``threshold / (mu - drift)`` samples.

    Once raised, the alarm latches: ``update()`` returns True without touching the statistics,
    so :meth:`evidence` describes the sample that raised it, until :meth:`reset`. A non-finite
    residual raises the alarm at once with ``last_reason == REASON_NOT_FINITE`` and leaves the
    statistics as they were.
    """

    # drift and threshold are copied into slots: one attribute load per use instead of two.
    __slots__ = ("_config", "_drift")

    _config: CusumConfig
    _drift: float

    def __init__(self, config: CusumConfig) -> None:
        self._config = config
        self._drift = config.drift
        self._threshold = config.threshold
        self.reset()

    @property
    def config(self) -> CusumConfig:
        """The tuning this detector was built with."""
        return self._config

    def update(self, residual: float) -> bool:
        """Consume one residual (actuator units) and return :attr:`alarm`. Never raises."""
        if self._alarm:
            return True
        self._n_samples += 1
        if not _isfinite(residual):
            return self._raise(REASON_NOT_FINITE)
        return self._accumulate(residual, self._drift)

    def evidence(self) -> dict[str, float]:
        """``g_pos``, ``g_neg``, ``threshold``, ``drift`` and ``n_samples`` (as a float)."""
        return {
            "g_pos": self._g_pos,
            "g_neg": self._g_neg,
            "threshold": self._config.threshold,
            "drift": self._config.drift,
            "n_samples": float(self._n_samples),
        }

    def reset(self) -> None:
        """Clear the alarm, the reason, both statistics and the sample count."""
        self._clear()


@dataclass(frozen=True, slots=True)
class PageHinkleyConfig:
    """Tuning of a two-sided Page-Hinkley test, in the residual's units.

    ``delta`` is the tolerated deviation per sample from the running mean (the analogue of
    CUSUM's drift); ``threshold`` (lambda) is the accumulated excess, in residual units times
    samples, that raises the alarm; ``alpha`` in (0, 1] is the forgetting factor of the running
    mean: sample ``i`` steps back weighs ``alpha**i``, so the mean remembers roughly
    ``1 / (1 - alpha)`` samples, and 1.0 gives the plain cumulative mean. A smaller alpha lets
    the mean follow a change sooner, which shortens the time the test has to see it.

    Raises ``ValueError`` naming the field unless ``delta`` and ``threshold`` are finite and
    > 0 and ``0 < alpha <= 1``.
    """

    delta: float
    threshold: float
    alpha: float = 1.0

    def __post_init__(self) -> None:
        _require_positive("delta", self.delta)
        _require_positive("threshold", self.threshold)
        _require_positive("alpha", self.alpha)
        if self.alpha > 1.0:
            raise ValueError(f"`alpha` must be in (0, 1], got {self.alpha!r}")


class PageHinkley(_TwoSided):
    """Two-sided Page-Hinkley test for a change in the residual's mean.

    Per sample ``x`` (the running mean ``m`` is updated with ``x`` first)::

        w     = alpha * w + 1                   total weight of the remembered samples
        m    += (x - m) / w                     exponentially weighted (alpha = 1: cumulative)
        g_pos = max(0, g_pos + (x - m) - delta)  evidence of an increase
        g_neg = max(0, g_neg - (x - m) - delta)  evidence of a decrease

    and the alarm is raised when either exceeds ``threshold`` (strictly). ``g_pos`` equals the
    textbook form ``U_t - min(U_s, s <= t)`` with ``U_t = sum(x - m - delta)``; the recursive
    form is used because ``U_t`` itself decreases without bound while nothing happens, losing
    precision over months of operation.

    Alarm latching, frozen statistics while latched, and non-finite handling are as for
    :class:`Cusum`.
    """

    # Tuning copied into slots as in Cusum.
    __slots__ = ("_alpha", "_config", "_delta", "_mean", "_weight")

    _config: PageHinkleyConfig
    _alpha: float
    _delta: float
    _mean: float
    _weight: float

    def __init__(self, config: PageHinkleyConfig) -> None:
        self._config = config
        self._alpha = config.alpha
        self._delta = config.delta
        self._threshold = config.threshold
        self.reset()

    @property
    def config(self) -> PageHinkleyConfig:
        """The tuning this detector was built with."""
        return self._config

    @property
    def mean(self) -> float:
        """The running (weighted) mean of the residual, in residual units; 0 before any sample."""
        return self._mean

    def update(self, residual: float) -> bool:
        """Consume one residual (actuator units) and return :attr:`alarm`. Never raises."""
        if self._alarm:
            return True
        self._n_samples += 1
        if not _isfinite(residual):
            # Checked before the mean is touched: one NaN would poison the mean for good.
            return self._raise(REASON_NOT_FINITE)
        self._weight = weight = self._alpha * self._weight + 1.0
        # Written as the convex combination (1 - 1/w) * m + x / w, which cannot overflow for
        # finite inputs, rather than m + (x - m) / w, whose x - m can.
        inv_weight = 1.0 / weight
        mean = self._mean
        self._mean = mean = mean - mean * inv_weight + residual * inv_weight
        # May overflow to +-inf for residuals near the float range; that drives one statistic
        # to +inf and alarms, it cannot produce NaN (see _TwoSided._accumulate).
        return self._accumulate(residual - mean, self._delta)

    def evidence(self) -> dict[str, float]:
        """``g_pos``, ``g_neg``, ``mean``, ``threshold``, ``delta``, ``alpha``, ``n_samples``."""
        cfg = self._config
        return {
            "g_pos": self._g_pos,
            "g_neg": self._g_neg,
            "mean": self._mean,
            "threshold": cfg.threshold,
            "delta": cfg.delta,
            "alpha": cfg.alpha,
            "n_samples": float(self._n_samples),
        }

    def state(self) -> dict[str, float | int | bool | str | None]:
        """The accumulated state with the running mean and its weight (forensic checkpoint)."""
        out = _TwoSided.state(self)
        out["mean"] = self._mean
        out["weight"] = self._weight
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        """Put back what :meth:`state` returned. Forensic replay only."""
        _TwoSided.restore(self, state)
        self._mean = float(state["mean"])
        self._weight = float(state["weight"])

    def reset(self) -> None:
        """Clear the alarm, the reason, the statistics, the running mean and the count."""
        self._mean = 0.0
        self._weight = 0.0
        self._clear()
