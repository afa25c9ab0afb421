"""From a site and its history to proposed envelope and detector settings, with provenance.

Every proposed number carries the sentence that says where it came from (how many samples,
which percentile, which margin), written beside it in the proposed site file and in the
report. The rules, per tag (``margin`` is a fraction of the tag's full range: its hand-written
limits' span for an actuator, its declared range for a sensor):

Actuators (``envelope.limits``), from the commands written:

* ``min``/``max``: the observed extremes widened by ``margin`` x span, never beyond the
  hand-written limits (the plant's own), and always holding the safe values.
* ``allowed``: the distinct values, when there are at most ``max_discrete`` and the actuator
  is discrete by nature (a coil, or integral values on an integer register of scale >= 1);
  then ``max_step`` is the largest observed step and no rate is learned.
* ``max_rate_per_s`` / ``max_step``: the ``percentile`` of the moves between readings times
  ``rate_factor``, at least ``margin`` x span / 10 (per second, per write: an actuator seen
  (nearly) still can still cross its margin within ten seconds); for an actuator whose limits
  ``trip``, at least the largest move seen, so that its own history never trips it. The
  factor (default 2) is there because a clamp is not free: every clamped proposal counts
  toward the violation-rate detector, and a controller's moves on another day (a start-up,
  a disturbance the history did not hold) are not bounded by one day's percentile.

Sensors (the tag's ``range`` and ``detection``), from the readings:

* ``range``: proposed as the observed extremes widened by ``margin`` x declared span, within
  the declared range, and written only with ``learn_ranges``: the input range detector
  demands SAFE_STOP outside it, and a process that visits a state the history did not hold
  (a heavier demand, a start-up) is not a faulty instrument. By default the declared range
  (the instrument's) stays, and the report shows the proposal.
* ``detection.max_rate_per_s``: the largest rate seen, and the largest change between two
  readings as if it had happened within one cycle (``site.cycle_ms``; the detector judges
  readings at least one cycle apart, and what moved between two historian samples could be
  noise between two cycles), times ``rate_factor``. A finding demands SAFE_STOP, so the
  maximum, not a percentile. Only for a sensor whose rate the fitted process model explains
  (its fit accepted: a state whose motion the actuators and the plant bound, seen moving):
  a disturbance from outside (a consumers' demand), an echo of the commands (a flow meter
  behind its valve, which jumps when the gateway fails over to the safe values) and a state
  the history hardly moved get none, because one day's fastest change does not bound
  another's. Never looser than the site's own limit, which stays where none is learned.
* ``detection.frozen_after_s``: the longest run of identical readings (at least 5 update
  periods) times ``1 + margin``, and at least twice the time the device may take to renew a
  reading (its update period plus its timeout; the loader requires once) and the site's
  staleness limit for the tag plus one update period, times ``1 + margin`` (a reading the
  site still calls fresh is not frozen); none for a sensor that repeats itself in more than
  ``REPEATING`` of its moves (quantised or slow values).
* counters (only ever rising) get neither, and no model.

The process model (``envelope.prediction``): see :mod:`.fitting`. A sensor the history cannot
fit keeps the site's own model and keep range where the site has them (``kept_models``: a
calm history cannot teach dynamics, and dropping the model would drop the predictive check).
The regressors are the actuators, the sensor itself and the other sensors that are not
echoes of the commands (:func:`.fitting.echoes`), and an echo whose value the actuators
explain better than the model explains its rate gets no model; the kept ranges are the site's
own where it has them, else the learned range. Linear constraints, interlocks and conditional
safe values are the site's own, unchanged: they cannot be learned from a clean history. A tag
with fewer than ``min_samples`` readings keeps its hand-written settings, and the report lists
it as thin.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gateway.commissioning.fitting import SensorFit, echoes, fit_sensor, windows
from gateway.commissioning.stats import TagStats, tag_stats
from gateway.config.schema import (
    Policy,
    Table,
    WireType,
    min_stale_after_ms,
    update_period_ms,
)

if TYPE_CHECKING:
    from gateway.commissioning.sources import History
    from gateway.config.schema import ActuatorLimits, Site, Tag

__all__ = ["ActuatorProposal", "LearnOptions", "Learned", "PredictionProposal",
           "SensorProposal", "learn"]

REPEATING = 0.05


@dataclass(frozen=True)
class LearnOptions:
    """How to learn; see the module docstring for each. Raises ValueError for values
    outside their ranges."""

    margin: float = 0.1
    percentile: float = 99.9
    rate_factor: float = 2.0
    learn_ranges: bool = False
    max_discrete: int = 8
    min_samples: int = 100
    fit_window_s: float = 60.0
    min_r2: float = 0.6
    holdout: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and 0.0 <= self.margin <= 1.0):
            raise ValueError(f"--margin must be in [0, 1], not {self.margin}")
        if not (math.isfinite(self.rate_factor) and 1.0 <= self.rate_factor <= 100.0):
            raise ValueError(f"--rate-factor must be in [1, 100], not {self.rate_factor}")
        if not 50.0 <= self.percentile <= 100.0:
            raise ValueError(f"--percentile must be in [50, 100], not {self.percentile}")
        if not 1 <= self.max_discrete <= 64:
            raise ValueError(f"--max-discrete must be 1..64, not {self.max_discrete}")
        if self.min_samples < 2:
            raise ValueError(f"--min-samples must be >= 2, not {self.min_samples}")
        if not (math.isfinite(self.fit_window_s) and self.fit_window_s > 0):
            raise ValueError(f"--fit-window must be > 0 s, not {self.fit_window_s}")
        if not (math.isfinite(self.min_r2) and self.min_r2 <= 1.0):
            raise ValueError(f"--min-r2 must be <= 1, not {self.min_r2}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"--holdout must be in [0, 1), not {self.holdout}")


@dataclass(frozen=True)
class Learned:
    """One proposed number and where it came from."""

    value: float
    why: str


@dataclass(frozen=True)
class ActuatorProposal:
    name: str
    unit: str
    stats: TagStats
    policy: str
    learned: bool
    min: Learned
    max: Learned
    max_rate_per_s: Learned | None
    max_step: Learned | None
    allowed: tuple[float, ...] | None
    allowed_why: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SensorProposal:
    name: str
    unit: str
    stats: TagStats
    learned: bool
    range_min: Learned
    range_max: Learned
    max_rate_per_s: Learned | None
    frozen_after_s: Learned | None
    notes: tuple[str, ...] = ()
    range_applied: bool = False  # whether range_min/max are written (else only proposed)


@dataclass(frozen=True)
class PredictionProposal:
    step_s: float
    horizon_steps: int
    policy: str
    fits: tuple[SensorFit, ...]
    keep: tuple[tuple[str, float, float, str], ...]  # sensor, min, max, where from

    @property
    def models(self) -> tuple[SensorFit, ...]:
        return tuple(f for f in self.fits if f.accepted and f.sensor in {k[0] for k in self.keep})


@dataclass(frozen=True)
class Proposal:
    """Everything :func:`learn` proposes for one site."""

    site: Site
    options: LearnOptions
    sources: tuple[str, ...]
    n_samples: int
    t_first_s: float
    t_last_s: float
    actuators: tuple[ActuatorProposal, ...]
    sensors: tuple[SensorProposal, ...]
    prediction: PredictionProposal | None
    unknown_columns: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())
    # Sensors of the site's own prediction model that the history could not fit: their model
    # and keep range are kept as the site has them (see the module docstring).
    kept_models: tuple[str, ...] = ()
    # Detection settings rescaled for the learned limits (``divergence_drift``,
    # ``divergence_threshold``): key -> value and why.
    detection: tuple[tuple[str, Learned], ...] = ()


def _num(x: float) -> str:
    return f"{x:.6g}"


def _is_bits(tag: Tag) -> bool:
    table = getattr(tag.ref, "table", None)
    return tag.wire_type is WireType.BOOL or (isinstance(table, Table) and table.is_bits)


def _encodable_bounds(tag: Tag) -> tuple[float, float]:
    """The engineering values the tag's wire type can carry."""
    if _is_bits(tag):
        ends = (tag.offset, tag.offset + tag.scale)
    elif tag.wire_type.is_integer:
        low, high = tag.wire_type.integer_range
        ends = (low * tag.scale + tag.offset, high * tag.scale + tag.offset)
    else:
        return (-math.inf, math.inf)
    return (min(ends), max(ends))


def _is_discrete(tag: Tag, stats: TagStats, max_discrete: int) -> bool:
    if stats.distinct is None or len(stats.distinct) > max_discrete:
        return False
    if _is_bits(tag):
        return True
    return (tag.wire_type.is_integer and tag.scale >= 1.0 and float(tag.scale).is_integer()
            and all(float(v).is_integer() for v in stats.distinct))


def _safe_values(site: Site, tag: Tag) -> list[float]:
    values = [] if tag.safe_value is None else [tag.safe_value]
    values += [c.value for c in site.envelope.safe_cases if c.actuator == tag.name]
    return values


def _actuator(site: Site, tag: Tag, lim: ActuatorLimits, st: TagStats,
              opt: LearnOptions) -> ActuatorProposal:
    policy = lim.policy.value
    span = lim.max - lim.min
    kept = f"hand-written (kept: {st.n} commands, fewer than {opt.min_samples})"
    if st.n < opt.min_samples:
        return ActuatorProposal(
            tag.name, tag.unit, st, policy, False, Learned(lim.min, kept), Learned(lim.max, kept),
            None if lim.max_rate_per_s is None else Learned(lim.max_rate_per_s, kept),
            None if lim.max_step is None else Learned(lim.max_step, kept),
            lim.allowed, kept if lim.allowed is not None else "",
            (f"thin data: {st.n} commands; the hand-written limits are kept",))
    safe = _safe_values(site, tag)
    notes: list[str] = []
    if _is_discrete(tag, st, opt.max_discrete):
        assert st.distinct is not None
        allowed = tuple(sorted({*st.distinct, *safe}))
        extra = sorted(set(safe) - set(st.distinct))
        why = (f"the {len(st.distinct)} distinct values of {st.n} commands"
               + (f", plus the safe value(s) {[_num(v) for v in extra]}" if extra else ""))
        step = None
        if st.step_max > 0:
            step = Learned(st.step_max, f"largest step of {st.n_moves} moves (discrete: no "
                                        "percentile, no margin)")
        else:
            notes.append("never moved in the history: no step limit")
        return ActuatorProposal(tag.name, tag.unit, st, policy, True,
                                Learned(min(allowed), why), Learned(max(allowed), why), None,
                                step, allowed, why, tuple(notes))
    enc_lo, enc_hi = _encodable_bounds(tag)
    widen = opt.margin * span
    lo = max(st.min - widen, lim.min, enc_lo)
    hi = min(st.max + widen, lim.max, enc_hi)
    lo_why = (f"observed min {_num(st.min)} of {st.n} commands - margin {opt.margin:g} x span "
              f"{_num(span)}" + (f", held at the hand-written min {_num(lim.min)}"
                                 if lo == lim.min and st.min - widen < lim.min else ""))
    hi_why = (f"observed max {_num(st.max)} of {st.n} commands + margin {opt.margin:g} x span "
              f"{_num(span)}" + (f", held at the hand-written max {_num(lim.max)}"
                                 if hi == lim.max and st.max + widen > lim.max else ""))
    if safe and min(safe) < lo:
        lo, lo_why = min(safe), f"the safe value {_num(min(safe))} (below what was observed)"
    if safe and max(safe) > hi:
        hi, hi_why = max(safe), f"the safe value {_num(max(safe))} (above what was observed)"
    factor = opt.rate_factor
    floor = opt.margin * span / 10.0
    rate_value = max(st.rate_pct_per_s * factor, floor)
    rate_why = (f"P{opt.percentile:g} {_num(st.rate_pct_per_s)}/s of {st.n_moves} moves x "
                f"rate factor {factor:g}")
    if rate_value == floor and st.rate_pct_per_s * factor < floor:
        rate_why = (f"floor: margin {opt.margin:g} x span per 10 s (P{opt.percentile:g} "
                    f"{_num(st.rate_pct_per_s)}/s x {factor:g} is smaller)")
    step_value = max(st.step_pct * factor, floor)
    step_why = (f"P{opt.percentile:g} {_num(st.step_pct)} of {st.n_moves} moves x "
                f"rate factor {factor:g}")
    if step_value == floor and st.step_pct * factor < floor:
        step_why = (f"floor: margin {opt.margin:g} x span / 10 (P{opt.percentile:g} "
                    f"{_num(st.step_pct)} x {factor:g} is smaller)")
    if lim.policy is Policy.TRIP:
        if st.rate_max_per_s > rate_value:
            rate_value, rate_why = st.rate_max_per_s, (
                f"largest rate of {st.n_moves} moves (policy trip: its history must not trip)")
        if st.step_max > step_value:
            step_value, step_why = st.step_max, (
                f"largest step of {st.n_moves} moves (policy trip: its history must not trip)")
    if st.n_moves < opt.min_samples:
        notes.append(f"thin data: {st.n_moves} moves for the rate and step limits")
    return ActuatorProposal(tag.name, tag.unit, st, policy, True, Learned(lo, lo_why),
                            Learned(hi, hi_why), Learned(rate_value, rate_why),
                            Learned(step_value, step_why), None, "", tuple(notes))


def _sensor(site: Site, tag: Tag, st: TagStats, opt: LearnOptions) -> SensorProposal:
    assert tag.range_min is not None
    assert tag.range_max is not None
    declared = f"declared range (kept: {st.n} readings, fewer than {opt.min_samples})"
    if st.n < opt.min_samples:
        return SensorProposal(tag.name, tag.unit, st, False, Learned(tag.range_min, declared),
                              Learned(tag.range_max, declared), None, None,
                              (f"thin data: {st.n} readings; declared range kept, no "
                               "freeze or rate limit",))
    notes: list[str] = []
    span = tag.range_max - tag.range_min
    if st.counter:
        return SensorProposal(tag.name, tag.unit, st, True,
                              Learned(tag.range_min, "declared range (a counter)"),
                              Learned(tag.range_max, "declared range (a counter)"), None, None,
                              ("a counter (only ever rises): declared range, no freeze or "
                               "rate limit, no model",))
    widen = opt.margin * span
    lo = max(st.min - widen, tag.range_min)
    hi = min(st.max + widen, tag.range_max)
    lo_why = (f"observed min {_num(st.min)} of {st.n} readings - margin {opt.margin:g} x "
              f"declared span {_num(span)}")
    hi_why = (f"observed max {_num(st.max)} of {st.n} readings + margin {opt.margin:g} x "
              f"declared span {_num(span)}")
    if lo == tag.range_min:
        lo_why += f", held at the declared min {_num(tag.range_min)}"
    if hi == tag.range_max:
        hi_why += f", held at the declared max {_num(tag.range_max)}"
    if not opt.learn_ranges:
        notes.append(f"observed {_num(st.min)} .. {_num(st.max)}; proposed range "
                     f"{_num(lo)} .. {_num(hi)} not written (--learn-ranges): the declared "
                     "range stays")
    cycle_s = site.site.cycle_ms / 1000.0
    factor = opt.rate_factor
    rate: Learned | None = None
    if st.n_moves >= 1:
        per_cycle = st.step_max / cycle_s
        base = max(st.rate_max_per_s, per_cycle)
        if base > 0:
            rate = Learned(base * factor, (
                f"max(largest rate {_num(st.rate_max_per_s)}/s, largest change "
                f"{_num(st.step_max)} within one {cycle_s:g} s cycle) of {st.n_moves} moves x "
                f"rate factor {factor:g}"))
        else:
            notes.append("never changed: no rate limit")
    frozen: Learned | None = None
    if st.repeat_fraction > REPEATING:
        notes.append(f"repeats its value in {st.repeat_fraction:.0%} of moves (quantised or "
                     "slow): no freeze limit")
    elif math.isfinite(st.period_s):
        base = max(st.longest_repeat_s, 5.0 * st.period_s)
        seen = base * (1.0 + opt.margin)
        seen_why = (f"max(longest unchanged run {_num(st.longest_repeat_s)} s, 5 x update "
                    f"period {_num(st.period_s)} s) x (1 + margin {opt.margin:g})")
        # Never shorter than twice the time the device may take to renew a healthy reading
        # (its update period plus its timeout: the loader's own floor, in
        # gateway/config/sanity.py, is once), whatever the history's sampling: a history at
        # the cycle sees a fresh value every sample, but a healthy device answering near its
        # timeout twice in a row leaves the reading unchanged that long.
        device = next(d for d in site.devices if d.name == tag.device)
        renew_s = 2.0 * min_stale_after_ms(device) / 1000.0
        renew_why = (f"twice the time device {device.name!r} may take to renew a reading "
                     f"(2 x {_num(renew_s / 2.0)} s)")
        # Nor shorter than the site's own staleness limit for the tag plus the update that
        # ends the run, with the margin: the site declares that a healthy device may leave a
        # reading unrenewed that long (behind the other requests of a round, on a busy host),
        # and a reading the staleness detector still calls fresh is not frozen. A drill on a
        # loaded machine tripped a learned 1.2 s on a healthy PLC.
        stale_s = site.stale_after_ms(tag) / 1000.0
        period_s = update_period_ms(device) / 1000.0
        healthy_s = (stale_s + period_s) * (1.0 + opt.margin)
        healthy_why = (f"the site's staleness limit for it {_num(stale_s)} s + update period "
                       f"{_num(period_s)} s, x (1 + margin {opt.margin:g})")
        value, why = max((seen, seen_why), (renew_s, renew_why), (healthy_s, healthy_why),
                         key=lambda c: c[0])
        others = [w for v, w in ((seen, seen_why), (renew_s, renew_why),
                                 (healthy_s, healthy_why)) if w != why]
        if why != seen_why:
            why += f" (larger than {'; '.join(others)})"
        frozen = Learned(value, why)
    if st.n_moves < opt.min_samples:
        notes.append(f"thin data: {st.n_moves} moves for the rate and freeze limits")
    return SensorProposal(tag.name, tag.unit, st, True, Learned(lo, lo_why), Learned(hi, hi_why),
                          rate, frozen, tuple(notes), range_applied=opt.learn_ranges)


def learn(site: Site, history: History, opt: LearnOptions) -> Proposal:
    """Propose settings for ``site`` from ``history`` (the first ``1 - opt.holdout`` of it)."""
    if opt.holdout:
        history, _ = history.split(opt.holdout)
    warnings: list[str] = []
    names = {t.name for t in site.tags}
    unknown = tuple(n for n in history.names if n not in names)
    if unknown:
        warnings.append(f"columns that are not tags of the site, ignored: {', '.join(unknown)}")
    t = history.time_s
    nan_col = None

    def stats_of(tag: Tag) -> TagStats:
        nonlocal nan_col
        if tag.name in history.names:
            return tag_stats(tag.name, t, history.column(tag.name), opt.percentile)
        if nan_col is None:
            nan_col = np.full(t.shape[0], np.nan)
        return tag_stats(tag.name, t, nan_col, opt.percentile)

    limits = {lim.actuator: lim for lim in site.envelope.limits}
    actuators = tuple(_actuator(site, tag, limits[tag.name], stats_of(tag), opt)
                      for tag in site.actuators)
    sensors = tuple(_sensor(site, tag, stats_of(tag), opt) for tag in site.sensors)
    every: list[ActuatorProposal | SensorProposal] = [*actuators, *sensors]
    for prop in every:
        if prop.stats.n == 0:
            warnings.append(f"{prop.name}: no data in the history; its hand-written settings "
                            "are kept")
    prediction = _prediction(site, history, sensors, actuators, opt)
    sensors = _rate_limits(site, sensors, prediction, opt)
    fitted = {m.sensor for m in prediction.models} if prediction is not None else set()
    own = site.envelope.prediction
    kept = () if own is None else tuple(
        m.sensor for m in own.model
        if m.sensor not in fitted and m.sensor in {k.sensor for k in own.keep})
    return Proposal(site, opt, history.sources, history.n_samples,
                    float(t[0]) if t.shape[0] else math.nan,
                    float(t[-1]) if t.shape[0] else math.nan, actuators, sensors, prediction,
                    unknown, tuple(warnings), kept, _divergence(site, actuators))


def _divergence(site: Site, actuators: tuple[ActuatorProposal, ...]
                ) -> tuple[tuple[str, Learned], ...]:
    """The divergence detector's drift and threshold rescaled for the learned limits.

    The detector measures the AI's disagreement with the fallback's reference as a fraction of
    each watched actuator's range (``max - min`` of its limits): learned limits narrower than
    the site's by a factor ``k`` make every disagreement ``k`` times larger, and the detector
    ``k`` times more sensitive in engineering units (the boiler's learned heater range of 0 to
    47.5 % tripped 37 times on a clean day). Drift and threshold scaled by ``k`` judge the same
    disagreement in engineering units exactly (CUSUM and Page-Hinkley are linear in both). With
    several watched actuators the smallest ``k`` is taken: none is judged more loosely than the
    site's own settings judge it."""
    from gateway.config.schema import FallbackKind

    det = site.detection
    if not det.divergence:
        return ()
    fallback = {f.actuator: f.kind for f in site.fallback}
    driven = set(site.controller.outputs) if site.controller.outputs else {
        t.name for t in site.actuators}
    limits = {lim.actuator: lim for lim in site.envelope.limits}
    ratios: list[tuple[float, str]] = []
    for a in actuators:
        lim = limits[a.name]
        if (fallback.get(a.name) is not FallbackKind.PID or a.name not in driven
                or a.allowed is not None):
            continue
        learned_span = a.max.value - a.min.value
        if learned_span > 0 and lim.max > lim.min:
            ratios.append(((lim.max - lim.min) / learned_span, a.name))
    if not ratios:
        return ()
    k, name = min(ratios)
    if not k > 1.0:
        return ()
    why = (f"the site's {{}} x {k:.4g}: {name}'s learned range is {k:.4g} times narrower than "
           "the site's, and divergence is measured in fractions of it (the same disagreement "
           "in engineering units)")
    return (("divergence_drift", Learned(det.divergence_drift * k,
                                         why.format(f"{det.divergence_drift:g}"))),
            ("divergence_threshold", Learned(det.divergence_threshold * k,
                                             why.format(f"{det.divergence_threshold:g}"))))


def _prediction(site: Site, history: History, sensors: tuple[SensorProposal, ...],
                actuators: tuple[ActuatorProposal, ...], opt: LearnOptions
                ) -> PredictionProposal | None:
    usable = [s for s in sensors if s.learned and not s.stats.counter
              and math.isfinite(s.stats.period_s)]
    acts = [a.name for a in actuators if a.stats.n >= opt.min_samples]
    echo = echoes(history, [s.name for s in usable], acts)
    regressors = acts + [s.name for s in usable if s.name not in echo]
    fits = []
    if usable:
        period = float(np.median(np.diff(history.time_s)))
        win = windows(history, opt.fit_window_s, period)
        for s in usable:
            # Its own value is always a regressor (self-regulation, losses), echo or not.
            own = regressors if s.name in regressors else [*regressors, s.name]
            fit = fit_sensor(win, s.name, own, opt.min_r2)
            self_coef = dict(fit.terms).get(s.name, 0.0)
            if fit.accepted and self_coef > 0.0:
                # Its rate grows with its own value: rolled forward with the command held, the
                # prediction runs away exponentially wherever the plant is away from the
                # history's operating point (a boiler cooling in SAFE_STOP), and rejects even
                # the safe state there. A stable process loses what it holds (a negative
                # coefficient); a positive one from a clean day is a correlated sensor (the
                # pressure on the saturation curve) mistaken for a cause.
                fit = dataclasses.replace(fit, accepted=False, reason=(
                    f"unstable: its rate grows with its own value ({self_coef:+.4g}/s), so "
                    "the prediction would run away from the history's operating point"))
            value_r2 = echo.get(s.name)
            if fit.accepted and value_r2 is not None and not fit.r2 > value_r2:
                # Its value follows the commands at once, better than its rate follows the
                # model: an echo (a flow meter behind its valve), not a state whose excursion
                # a rolled-forward model could foresee.
                fit = dataclasses.replace(fit, accepted=False, reason=(
                    f"an echo of the commands: its value follows them (R² {value_r2:.3f} "
                    f"against the actuators' values) better than its rate follows the model "
                    f"(R² {fit.r2:.3f})"))
            fits.append(fit)
    pred = site.envelope.prediction
    site_keep = {k.sensor: k for k in (pred.keep if pred is not None else ())}
    keep: list[tuple[str, float, float, str]] = []
    for fit in fits:
        if not fit.accepted:
            continue
        if fit.sensor in site_keep:
            k = site_keep[fit.sensor]
            keep.append((fit.sensor, k.min, k.max, "the site's own keep range"))
        else:
            prop = next(s for s in sensors if s.name == fit.sensor)
            keep.append((fit.sensor, prop.range_min.value, prop.range_max.value,
                         "the learned range"))
    step_s = pred.step_s if pred is not None else 1.0
    horizon = pred.horizon_steps if pred is not None else 10
    policy = pred.policy.value if pred is not None else Policy.REJECT.value
    if not fits:
        return None
    return PredictionProposal(step_s, horizon, policy, tuple(fits), tuple(keep))


def _rate_limits(site: Site, sensors: tuple[SensorProposal, ...],
                 prediction: PredictionProposal | None, opt: LearnOptions
                 ) -> tuple[SensorProposal, ...]:
    """Each sensor's ``detection.max_rate_per_s`` as proposed, decided once the process model
    is known (see the module docstring): kept from the history only for a sensor whose rate
    the model explains; never looser than the site's own limit; the site's own limit where
    none is learned."""
    own = dict(site.detection.max_rate_per_s)
    fits = {f.sensor: f for f in prediction.fits} if prediction is not None else {}
    out = []
    for prop in sensors:
        rate, notes = prop.max_rate_per_s, list(prop.notes)
        fit = fits.get(prop.name)
        if rate is not None and not (fit is not None and fit.accepted):
            # Neither the actuators nor the plant's other sensors explain how it moves (a
            # disturbance from outside, such as a consumers' demand; an echo of the commands,
            # which jumps when the gateway fails over to the safe values; a state this history
            # hardly moved): one day's fastest change does not bound another day's, and a
            # finding demands SAFE_STOP.
            why = (fit.reason if fit is not None and fit.reason else
                   "no model of its rate was fitted")
            notes.append(f"no rate limit learned ({why}): the history does not bound how "
                         f"fast it can move (learned from the history: {_num(rate.value)}/s)")
            rate = None
        hand = own.get(prop.name)
        if hand is not None:
            if rate is None:
                rate = Learned(hand, "hand-written (kept: none learned, see the report)")
            elif rate.value > hand:
                rate = Learned(hand, f"hand-written (kept: the learned {_num(rate.value)}/s, "
                                     f"{rate.why}, is looser)")
        out.append(dataclasses.replace(prop, max_rate_per_s=rate, notes=tuple(notes)))
    return tuple(out)
