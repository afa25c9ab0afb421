"""Profiles: how an injection drives a value over time (a sensor's published reading, or a
plant's disturbance), in engineering units, from the injection's start.

``hold``
    ``value`` from the start.
``ramp``
    from ``from`` (default: the value at the start) to ``to`` over ``over_s`` seconds, then
    ``to``.
``step``
    ``from`` (default: the value at the start) until ``after_s`` seconds (default 0), then
    ``to``.
``band``
    a triangle wave between ``low`` and ``high`` with period ``period_s`` (default 20 s),
    starting at ``low``: the value stays inside the band and visits all of it (a trigger that
    fires only in a narrow band is entered and left again).

Profiles are pure: :meth:`Profile.value` takes the seconds since the injection and the value
at its start, and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from gateway.config.loader import Abort

if TYPE_CHECKING:
    from gateway.config.loader import Section

__all__ = ["Profile", "Shape", "read_profile"]


class Shape(StrEnum):
    HOLD = "hold"
    RAMP = "ramp"
    STEP = "step"
    BAND = "band"


@dataclass(frozen=True)
class Profile:
    """One profile (see the module docstring). Values are engineering units; ``start`` is
    None where the value at the injection's start is meant."""

    shape: Shape
    start: float | None = None
    to: float | None = None
    over_s: float | None = None
    after_s: float = 0.0
    low: float | None = None
    high: float | None = None
    period_s: float = 20.0

    def value(self, since_s: float, at_start: float) -> float:
        """The value ``since_s`` seconds after the injection; ``at_start`` is the value the
        drill saw when the injection began (used where ``from`` is not given)."""
        begin = at_start if self.start is None else self.start
        if self.shape is Shape.HOLD:
            assert self.to is not None
            return self.to
        if self.shape is Shape.RAMP:
            assert self.to is not None
            assert self.over_s is not None
            frac = min(max(since_s / self.over_s, 0.0), 1.0)
            return begin + (self.to - begin) * frac
        if self.shape is Shape.STEP:
            assert self.to is not None
            return begin if since_s < self.after_s else self.to
        assert self.low is not None
        assert self.high is not None
        phase = (since_s / self.period_s) % 1.0
        tri = 2.0 * phase if phase < 0.5 else 2.0 * (1.0 - phase)
        return self.low + (self.high - self.low) * tri

    def describe(self, unit: str = "") -> str:
        u = f" {unit}" if unit else ""
        if self.shape is Shape.HOLD:
            return f"held at {self.to:g}{u}"
        start = "its value" if self.start is None else f"{self.start:g}{u}"
        if self.shape is Shape.RAMP:
            return f"ramped from {start} to {self.to:g}{u} over {self.over_s:g} s"
        if self.shape is Shape.STEP:
            if self.after_s == 0 and self.start is None:
                return f"stepped to {self.to:g}{u}"
            return f"stepped from {start} to {self.to:g}{u} after {self.after_s:g} s"
        return (f"swept through the band [{self.low:g}, {self.high:g}]{u} every "
                f"{self.period_s:g} s")


def read_profile(m: Section) -> Profile:
    """Read a ``profile`` mapping; errors are recorded on ``m`` (file:line: key) and raise
    :class:`Abort`."""
    shape = m.req_enum("shape", Shape)
    start = m.opt_float("from")
    value = m.opt_float("value")
    to = m.opt_float("to")
    over_s = m.opt_float("over_s")
    after_s = m.opt_float("after_s")
    low, high = m.opt_float("low"), m.opt_float("high")
    period_s = m.opt_float("period_s")
    needs = {Shape.HOLD: ("value",), Shape.RAMP: ("to", "over_s"), Shape.STEP: ("to",),
             Shape.BAND: ("low", "high")}[shape]
    given = {"from": start, "value": value, "to": to, "over_s": over_s, "after_s": after_s,
             "low": low, "high": high, "period_s": period_s}
    allowed = {Shape.HOLD: {"value"}, Shape.RAMP: {"from", "to", "over_s"},
               Shape.STEP: {"from", "to", "after_s"},
               Shape.BAND: {"low", "high", "period_s"}}[shape]
    bad = False
    for key in needs:
        if given[key] is None:
            m.ctx.error(m.node.line, m.sub_path(key), f"required for a {shape.value} profile")
            bad = True
    for key, v in given.items():
        if v is not None and key not in allowed:
            m.error(key, f"not used by a {shape.value} profile (it takes "
                         f"{', '.join(sorted(allowed))})")
            bad = True
    for key in ("over_s", "period_s"):
        v = given[key]
        if v is not None and not v > 0:
            m.error(key, f"must be > 0, not {v:g}")
            bad = True
    if after_s is not None and not after_s >= 0:
        m.error("after_s", f"must be >= 0, not {after_s:g}")
        bad = True
    if low is not None and high is not None and not low < high:
        m.error("high", f"must be above low ({low:g}), not {high:g}")
        bad = True
    m.finish()
    if bad:
        raise Abort
    if shape is Shape.HOLD:
        to = value
    return Profile(shape, start, to, over_s, after_s or 0.0, low, high,
                   period_s if period_s is not None else 20.0)
