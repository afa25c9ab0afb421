"""The predictive check's process model, fitted by least squares from the history.

The model of :class:`gateway.config.schema.Prediction` is, per kept sensor,
``d sensor / dt = sum(coef * tag) + constant`` (per second) over actuators and sensors. It is
fitted here on windows of the history: the history is cut into consecutive, non-overlapping
windows of about ``window_s`` seconds; in each, the sensor's rate is its change across the
window divided by the window's duration, and each regressor is its mean over the window.
Averaging over a window, rather than differencing consecutive readings, keeps measurement
noise (which differencing turns into large, meaningless rates) from swamping the fit.

A window with a missing reading of any tag used, or a gap (see :mod:`.stats`), is left out.
Regressors that never varied over the kept windows cannot be told apart from the constant and
are left out of that sensor's model (listed in ``dropped``). The fit quality is R² (the share
of the rate's variance the model explains) and the residual's RMS in units per second; a
sensor whose R² is under the threshold gets no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gateway.commissioning.stats import GAP_FACTOR

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gateway.commissioning.sources import History

__all__ = ["ECHO_R2", "SensorFit", "echoes", "fit_sensor"]

# A sensor whose value the actuators explain this well is an echo of the commands.
ECHO_R2 = 0.9


@dataclass(frozen=True)
class SensorFit:
    """The least-squares model of one sensor's rate.

    ``terms`` (tag, coefficient per second) and ``constant`` (units per second); ``r2`` and
    ``residual_rms_per_s`` on the ``n_windows`` windows of ``window_s`` used; ``dropped``: the
    regressors left out because they never varied; ``accepted``: whether the fit is good enough
    for a prediction (``reason`` says why not).
    """

    sensor: str
    terms: tuple[tuple[str, float], ...]
    constant: float
    r2: float
    residual_rms_per_s: float
    rate_rms_per_s: float
    n_windows: int
    window_s: float
    dropped: tuple[str, ...]
    accepted: bool
    reason: str

    def expr(self) -> str:
        """The model as a site-file expression (``gateway.config.expr`` syntax)."""
        parts: list[str] = []
        for name, coef in self.terms:
            sign = "-" if coef < 0 else "+"
            parts.append(f"{sign} {abs(coef):.6g} * {name}")
        c = self.constant
        parts.append(f"{'-' if c < 0 else '+'} {abs(c):.6g}")
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else "-" + text[2:]


def fit_sensor(history: History, sensor: str, regressors: Sequence[str], window_s: float,
               period_s: float, min_r2: float) -> SensorFit:
    """Fit ``d sensor/dt`` against ``regressors`` (tag names of the history) on windows of
    about ``window_s`` seconds, readings being ``period_s`` apart. ValueError for a window or
    period that is not finite and > 0."""
    if not (np.isfinite(window_s) and window_s > 0 and np.isfinite(period_s) and period_s > 0):
        raise ValueError("window_s and period_s must be finite and > 0")
    w = max(1, round(window_s / period_s))
    t = history.time_s
    s = history.column(sensor)
    regs = [r for r in regressors if r in history.names]
    x = (np.column_stack([history.column(r) for r in regs]) if regs
         else np.zeros((t.shape[0], 0)))
    n = t.shape[0]
    start = np.arange(0, n - w, w)
    end = start + w
    nan = float("nan")
    if start.shape[0] == 0:
        return SensorFit(sensor, (), 0.0, nan, nan, nan, 0, w * period_s, (), False,
                         "fewer readings than one fitting window")
    span = t[end] - t[start]
    y = (s[end] - s[start]) / span
    cs = np.vstack([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    xm = (cs[end] - cs[start]) / w  # NaN when any reading in the window is missing
    keep = (np.isfinite(y) & np.all(np.isfinite(xm), axis=1)
            & (span <= GAP_FACTOR * w * period_s))
    y, xm = y[keep], xm[keep]
    m = int(y.shape[0])
    if m < max(10, 3 * (len(regs) + 1)):
        return SensorFit(sensor, (), 0.0, nan, nan, nan, m, w * period_s, (), False,
                         f"only {m} complete windows of {w * period_s:g} s: too few to fit "
                         f"{len(regs) + 1} coefficients")
    sd = xm.std(axis=0)
    varied = sd > 1e-12 * np.maximum(1.0, np.abs(xm).max(axis=0))
    dropped = tuple(r for r, v in zip(regs, varied, strict=True) if not v)
    used = [r for r, v in zip(regs, varied, strict=True) if v]
    mean = xm[:, varied].mean(axis=0)
    z = (xm[:, varied] - mean) / sd[varied]  # standardised: a well-conditioned problem
    a = np.column_stack([z, np.ones(m)])
    sol, *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ sol
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    rms = float(np.sqrt(np.mean(resid ** 2)))
    rate_rms = float(np.sqrt(np.mean(y ** 2)))
    coefs = sol[:-1] / sd[varied]
    constant = float(sol[-1] - np.sum(coefs * mean))
    terms = tuple((r, float(c)) for r, c in zip(used, coefs, strict=True))
    if ss_tot <= 0.0:
        return SensorFit(sensor, terms, constant, nan, rms, rate_rms, m, w * period_s, dropped,
                         False, "its rate never varied: nothing to explain")
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot
    accepted = r2 >= min_r2
    reason = "" if accepted else f"R² {r2:.3f} is under the threshold {min_r2:g}"
    return SensorFit(sensor, terms, constant, r2, rms, rate_rms, m, w * period_s, dropped,
                     accepted, reason)


def echoes(history: History, sensors: Sequence[str], actuators: Sequence[str]) -> tuple[str, ...]:
    """The sensors whose *value* the actuators' values explain (R² >= :data:`ECHO_R2`, least
    squares with a constant): echoes of the commands, such as a flow meter behind a valve.
    They are left out of the regressors of every model, because the prediction holds sensors
    constant over its horizon: an echo would take the command's coefficient and leave the
    prediction blind to the command."""
    acts = [a for a in actuators if a in history.names]
    if not acts:
        return ()
    x = np.column_stack([history.column(a) for a in acts])
    found: list[str] = []
    for name in sensors:
        if name not in history.names:
            continue
        y = history.column(name)
        ok = np.isfinite(y) & np.all(np.isfinite(x), axis=1)
        if int(ok.sum()) < 3 * (len(acts) + 1):
            continue
        a = np.column_stack([x[ok], np.ones(int(ok.sum()))])
        sol, *_ = np.linalg.lstsq(a, y[ok], rcond=None)
        ss_tot = float(np.sum((y[ok] - y[ok].mean()) ** 2))
        if ss_tot > 0 and 1.0 - float(np.sum((y[ok] - a @ sol) ** 2)) / ss_tot >= ECHO_R2:
            found.append(name)
    return tuple(found)
