"""What one tag did over a history: range, update period, moves between readings, repeats.

Pure numpy over one column. Moves are measured between consecutive readings of the tag
(missing cells skipped) that are at most ``GAP_FACTOR`` update periods apart: across a longer
gap (a historian outage, two joined exports) the move is not one move, and would inflate the
rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gateway.commissioning.sources import F64

__all__ = ["GAP_FACTOR", "TagStats", "tag_stats"]

GAP_FACTOR = 5.0
# At most this many distinct values are kept (an actuator's discrete set is a handful).
_MAX_DISTINCT = 64


@dataclass(frozen=True)
class TagStats:
    """Statistics of one tag's readings (engineering units, seconds).

    ``n``: readings; ``n_moves``: pairs of consecutive readings used for rates and steps;
    ``period_s``: the median time between readings (NaN with fewer than two);
    ``rate_pct_per_s`` / ``step_pct``: the ``percentile`` of the absolute rate of change and
    of the absolute change between readings, ``rate_max_per_s`` / ``step_max`` their maxima
    (0 without moves); ``distinct``: the distinct values, sorted, when there are at most 64
    (else None); ``repeat_fraction``: the fraction of moves with no change at all;
    ``longest_repeat_s``: the longest time one value was read again and again without a
    change; ``counter``: whether it only ever rises (a counter: no freeze, rate or model).
    """

    name: str
    n: int
    n_moves: int
    t_first_s: float
    t_last_s: float
    min: float
    max: float
    period_s: float
    percentile: float
    rate_pct_per_s: float
    rate_max_per_s: float
    rate_max_at_s: float
    step_pct: float
    step_max: float
    distinct: tuple[float, ...] | None
    repeat_fraction: float
    longest_repeat_s: float
    counter: bool

    @property
    def empty(self) -> bool:
        return self.n == 0


def tag_stats(name: str, time_s: F64, column: F64, percentile: float) -> TagStats:
    """The statistics of ``column`` (NaN = no reading) over ``time_s`` (increasing)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], not {percentile}")
    ok = np.isfinite(column)
    t = time_s[ok]
    v = column[ok]
    n = int(v.shape[0])
    nan = float("nan")
    if n == 0:
        return TagStats(name, 0, 0, nan, nan, nan, nan, nan, percentile, 0.0, 0.0, nan, 0.0,
                        0.0, None, 0.0, 0.0, False)
    dt = np.diff(t)
    dv = np.diff(v)
    period = float(np.median(dt)) if n > 1 else nan
    moves = dt <= GAP_FACTOR * period if n > 1 else np.zeros(0, dtype=bool)
    dts, dvs = dt[moves], dv[moves]
    n_moves = int(dts.shape[0])
    if n_moves:
        rates = np.abs(dvs) / dts
        steps = np.abs(dvs)
        rate_pct = float(np.percentile(rates, percentile))
        step_pct = float(np.percentile(steps, percentile))
        at = int(np.argmax(rates))
        rate_max, rate_at, step_max = float(rates[at]), float(t[1:][moves][at]), float(steps.max())
        repeats = dvs == 0.0
        repeat_fraction = float(np.mean(repeats))
    else:
        rate_pct = step_pct = rate_max = step_max = repeat_fraction = 0.0
        rate_at = nan
    distinct_values = np.unique(v)
    distinct = (tuple(float(x) for x in distinct_values)
                if distinct_values.shape[0] <= _MAX_DISTINCT else None)
    return TagStats(
        name=name, n=n, n_moves=n_moves, t_first_s=float(t[0]), t_last_s=float(t[-1]),
        min=float(v.min()), max=float(v.max()), period_s=period, percentile=percentile,
        rate_pct_per_s=rate_pct, rate_max_per_s=rate_max, rate_max_at_s=rate_at,
        step_pct=step_pct, step_max=step_max, distinct=distinct,
        repeat_fraction=repeat_fraction, longest_repeat_s=_longest_repeat(t, v, moves),
        # Never falls and rose more than ten times: a counter, however often it is sampled
        # between two of its increments (an uptime in whole seconds read every 0.1 s).
        counter=bool(n_moves > 10 and np.all(dvs >= 0) and int(np.count_nonzero(dvs)) > 10),
    )


def _longest_repeat(t: F64, v: F64, moves: np.ndarray) -> float:
    """The longest time span over which consecutive readings (no gap between them) were
    bit-for-bit equal: what a freeze detector must tolerate."""
    if v.shape[0] < 2:
        return 0.0
    same = (np.diff(v) == 0.0) & moves
    if not same.any():
        return 0.0
    # Runs of True in `same`: a run over pairs i..j spans t[i]..t[j+1].
    edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)  # exclusive pair index: the run ends at reading `end`
    return float(np.max(t[ends] - t[starts]))
