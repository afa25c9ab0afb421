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

    import numpy.typing as npt

    from gateway.commissioning.sources import History

__all__ = ["ECHO_R2", "SensorFit", "Windows", "echoes", "fit_sensor", "windows"]

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


@dataclass(frozen=True)
class Windows:
    """Every tag's rate and mean over the same consecutive windows of a history, computed once
    for all the sensors' fits. ``rates`` and ``means``: shape (windows, tags), NaN where a
    reading is missing (an endpoint, for a rate; any reading, for a mean) or the window spans
    a gap."""

    names: tuple[str, ...]
    window_s: float
    rates: npt.NDArray[np.float64]
    means: npt.NDArray[np.float64]


def windows(history: History, window_s: float, period_s: float) -> Windows:
    """Cut ``history`` (readings ``period_s`` apart) into windows of about ``window_s``.
    ValueError for a window or period that is not finite and > 0."""
    if not (np.isfinite(window_s) and window_s > 0 and np.isfinite(period_s) and period_s > 0):
        raise ValueError("window_s and period_s must be finite and > 0")
    w = max(1, round(window_s / period_s))
    t = history.time_s
    v = history.values
    n = t.shape[0]
    start = np.arange(0, max(0, n - w), w)
    end = start + w
    if start.shape[0] == 0:
        empty = np.zeros((0, len(history.names)))
        return Windows(history.names, w * period_s, empty, empty)
    span = t[end] - t[start]
    gap = span > GAP_FACTOR * w * period_s
    missing = np.isnan(v)
    # Sums over rows start..end-1 from cumulative sums; the missing readings are counted apart
    # (a NaN would poison every later cumulative sum).
    cs = np.zeros((n + 1, v.shape[1]))
    np.cumsum(np.where(missing, 0.0, v), axis=0, out=cs[1:])
    cm = np.zeros((n + 1, v.shape[1]), dtype=np.int64)
    np.cumsum(missing, axis=0, out=cm[1:])
    means = (cs[end] - cs[start]) / w
    means[(cm[end] - cm[start]) > 0] = np.nan
    rates = (v[end] - v[start]) / span[:, None]
    means[gap] = np.nan
    rates[gap] = np.nan
    return Windows(history.names, w * period_s, rates, means)


def fit_sensor(win: Windows, sensor: str, regressors: Sequence[str],
               min_r2: float) -> SensorFit:
    """Fit ``d sensor/dt`` against ``regressors`` (tag names of the windows' history) by least
    squares on the windows where all are present (see the module docstring)."""
    nan = float("nan")
    regs = [r for r in regressors if r in win.names]
    y = win.rates[:, win.names.index(sensor)]
    x = win.means[:, [win.names.index(r) for r in regs]]
    keep = np.isfinite(y) & np.all(np.isfinite(x), axis=1)
    y, x = y[keep], x[keep]
    m = int(y.shape[0])
    if m < max(10, 3 * (len(regs) + 1)):
        return SensorFit(sensor, (), 0.0, nan, nan, nan, m, win.window_s, (), False,
                         f"only {m} complete windows of {win.window_s:g} s: too few to fit "
                         f"{len(regs) + 1} coefficients")
    sd = x.std(axis=0)
    varied = sd > 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0))
    dropped = tuple(r for r, v in zip(regs, varied, strict=True) if not v)
    used = [r for r, v in zip(regs, varied, strict=True) if v]
    mean = x[:, varied].mean(axis=0)
    # Standardised columns, centred rate: the normal equations of a well-conditioned problem.
    # (LAPACK's SVD least squares on the windows cost 0.3 s per sensor on this machine; the
    # Gram matrix's, 100 times less. lstsq on the Gram still copes with collinear columns.)
    z = (x[:, varied] - mean) / sd[varied]
    y_mean = float(y.mean())
    yc = y - y_mean
    sol, *_ = np.linalg.lstsq(z.T @ z, z.T @ yc, rcond=None)
    resid = yc - z @ sol
    ss_tot = float(np.sum(yc ** 2))
    rms = float(np.sqrt(np.mean(resid ** 2)))
    rate_rms = float(np.sqrt(np.mean(y ** 2)))
    coefs = sol / sd[varied]
    constant = float(y_mean - np.sum(coefs * mean))
    terms = tuple((r, float(c)) for r, c in zip(used, coefs, strict=True))
    if ss_tot <= 0.0:
        return SensorFit(sensor, terms, constant, nan, rms, rate_rms, m, win.window_s, dropped,
                         False, "its rate never varied: nothing to explain")
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot
    accepted = r2 >= min_r2
    reason = "" if accepted else f"R² {r2:.3f} is under the threshold {min_r2:g}"
    return SensorFit(sensor, terms, constant, r2, rms, rate_rms, m, win.window_s, dropped,
                     accepted, reason)


def echoes(history: History, sensors: Sequence[str], actuators: Sequence[str]
           ) -> dict[str, float]:
    """The sensors whose *value* the actuators' values explain (R² >= :data:`ECHO_R2`, least
    squares with a constant, over the rows where all are present), with that R²: echoes of
    the commands, such as a flow meter behind a valve. They are left out of the regressors of
    the other sensors' models, because the prediction holds sensors constant over its
    horizon: an echo would take the command's coefficient and leave the prediction blind to
    the command.

    One least-squares problem for all sensors (normal equations on the actuators' Gram
    matrix), so that it costs little more than one sensor."""
    acts = [a for a in actuators if a in history.names]
    names = [s for s in sensors if s in history.names]
    if not acts or not names:
        return {}
    x = np.column_stack([history.column(a) for a in acts])
    y = np.column_stack([history.column(s) for s in names])
    rows = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(y), axis=1)
    m = int(rows.sum())
    if m < 3 * (len(acts) + 1):
        return {}
    x, y = x[rows], y[rows]
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    gram = x.T @ x
    sol, *_ = np.linalg.lstsq(gram, x.T @ y, rcond=None)
    ss_res = np.sum((y - x @ sol) ** 2, axis=0)
    ss_tot = np.sum(y ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 0.0)
    return {n: r for n, r in zip(names, r2.tolist(), strict=True) if r >= ECHO_R2}
