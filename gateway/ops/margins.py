"""How far the plant is from each limit of its envelope, for the people on shift.

A pure function of the site's envelope and one plant view: no I/O, no clock. The dashboard
shows its result so that a slow drift toward a constraint is seen before it trips. The margin
is in the units of the constraint's own expression (for an actuator limit, the actuator's
engineering unit): positive is room left, zero is at the limit, negative is a violation
(for an interlock: the condition holds, its tightening is in force).

Actuators are taken at their applied value (what the equipment has been told), sensors at their
mirrored reading. A term whose value is unknown (NaN: no reading, no value yet) leaves the
margin unknown (``None``), never a number that looks safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.schema import ConditionOp

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.config.schema import Site
    from gateway.runtime.view import PlantView


@dataclass(frozen=True, slots=True)
class Margin:
    """One constraint's room left: ``margin`` in the expression's units (None: unknown) and,
    when the constraint has a natural span (an actuator's range, a kept sensor's range), the
    margin as a fraction of it (``fraction``, else None)."""

    kind: str  # "limit", "constraint", "interlock" or "keep"
    name: str
    text: str
    margin: float | None
    fraction: float | None


def values_of(site: Site, view: PlantView) -> dict[str, float]:
    """Every tag's value as the view shows it: actuators applied, sensors as read (NaN when the
    reading is not good)."""
    out: dict[str, float] = {}
    for tag, value, good in zip(site.sensors, view.sensor_values, view.sensor_good,
                                strict=True):
        out[tag.name] = value if good else math.nan
    for tag, value in zip(site.actuators, view.applied, strict=True):
        out[tag.name] = value
    return out


def _lhs(terms: tuple[tuple[str, float], ...], values: Mapping[str, float]) -> float:
    total = 0.0
    for name, coef in terms:
        total += coef * values.get(name, math.nan)
    return total


def _known(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _fraction(margin: float | None, span: float) -> float | None:
    if margin is None or span <= 0:
        return None
    return margin / span


def margins(site: Site, view: PlantView) -> tuple[Margin, ...]:
    """The margin of each actuator limit (the nearer of min and max to the applied value), each
    linear constraint (``rhs - lhs``), each interlock (how far its condition is from holding)
    and each range the prediction keeps a sensor in (the nearer bound to the reading), in the
    order of the site file."""
    values = values_of(site, view)
    env = site.envelope
    out: list[Margin] = []
    for lim in env.limits:
        x = values.get(lim.actuator, math.nan)
        m = _known(min(x - lim.min, lim.max - x))
        out.append(Margin("limit", lim.actuator, f"{lim.min:g} <= {lim.actuator} <= {lim.max:g}",
                          m, _fraction(m, lim.max - lim.min)))
    for con in env.constraints:
        m = _known(con.rhs - _lhs(con.terms, values))
        out.append(Margin("constraint", con.name, con.expr, m, None))
    for ilk in env.interlocks:
        lhs = _lhs(ilk.condition, values)
        # Room before the condition holds: for "x > b" it is b - x (at 0 a strict condition does
        # not hold yet; the sign says on which side the plant is, which is what people read).
        if ilk.op in (ConditionOp.GT, ConditionOp.GE):
            m = _known(ilk.rhs - lhs)
        else:
            m = _known(lhs - ilk.rhs)
        out.append(Margin("interlock", ilk.name, ilk.when, m, None))
    if env.prediction is not None:
        for keep in env.prediction.keep:
            x = values.get(keep.sensor, math.nan)
            m = _known(min(x - keep.min, keep.max - x))
            out.append(Margin("keep", f"keep.{keep.sensor}",
                              f"{keep.min:g} <= {keep.sensor} <= {keep.max:g}", m,
                              _fraction(m, keep.max - keep.min)))
    return tuple(out)
