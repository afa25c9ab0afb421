"""`check`'s proof of the safe state: in every region of the sensors' declared ranges, and with
any sensor unknown, the effective safe state satisfies the interlocks that hold there and the
linear constraints.

The regions come from the conditions (interlocks' and conditional safe rows' ``when``): each
sensor's range is cut at every breakpoint of a condition on that sensor alone, into points and
the open intervals between them, and a sensor may also be unknown (NaN: every condition on it
holds, and it may take any value of its range). A condition over several sensors is judged at
the corners and the centre of a region; where they disagree, both outcomes are proven (sound,
and at worst a refusal a narrower region would have avoided).

In each region, for the safe state ``g`` that the conditions give there (the same rules as the
engines: first holding row, projected into the holding interlocks' bounds, nearest allowed):

- every actuator keeps a value: the holding interlocks leave its range non-empty and, for a
  discrete actuator, one allowed value inside it;
- a value an interlock's bound gave the safe state is representable on the wire;
- every linear constraint holds for the worst case of the region's sensor values, unless no
  command at all could satisfy it there (then it is reported as a warning: the constraint
  cannot hold in that region, whatever is written).

Rate and step limits need no proof: moves toward the safe state are never limited, so no rate
limit can keep an interlock from being reached.

Pure: takes a validated :class:`~gateway.config.schema.Site`, returns findings.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.schema import ActuatorLimits, ConditionOp, FieldError, Interlock

if TYPE_CHECKING:
    from gateway.config.schema import Site, Tag

# Enumerating more regions than this is not attempted (a site that big is refused with a
# request to simplify, never silently half-proven).
MAX_REGIONS = 200_000


@dataclass(frozen=True)
class Finding:
    """One result of the proof. ``actuator`` (None for a whole-site finding) is where the
    fix usually goes (its safe value); ``refuse`` is False for a warning."""

    actuator: str | None
    message: str
    refuse: bool = True


@dataclass(frozen=True)
class _Cond:
    terms: tuple[tuple[int, float], ...]  # (sensor index, coefficient)
    op: ConditionOp
    rhs: float

    def holds(self, s: list[float]) -> bool:
        lhs = 0.0
        for j, c in self.terms:
            lhs += c * s[j]
        match self.op:
            case ConditionOp.LT:
                return not lhs >= self.rhs
            case ConditionOp.LE:
                return not lhs > self.rhs
            case ConditionOp.GT:
                return not lhs <= self.rhs
            case _:
                return not lhs < self.rhs


@dataclass(frozen=True)
class _Box:
    """One sensor's part of a region: [lo, hi] (a point when equal), or unknown."""

    lo: float
    hi: float
    unknown: bool = False

    @property
    def centre(self) -> float:
        return math.nan if self.unknown else (self.lo + self.hi) / 2

    def describe(self, name: str) -> str:
        if self.unknown:
            return f"{name} unknown"
        if self.lo == self.hi:
            return f"{name} = {self.lo:g}"
        return f"{name} in ({self.lo:g}, {self.hi:g})"


def prove_safe_state(site: Site) -> list[Finding]:
    """Every refusal and warning the proof finds (see the module docstring)."""
    sensors = site.sensors
    s_index = {t.name: i for i, t in enumerate(sensors)}
    env = site.envelope
    limits = {lim.actuator: lim for lim in env.limits}
    ilks = [(_Cond(tuple((s_index[n], c) for n, c in ilk.condition), ilk.op, ilk.rhs), ilk)
            for ilk in env.interlocks]
    rows = [(case.actuator, _Cond(tuple((s_index[n], c) for n, c in case.condition), case.op,
                                  case.rhs), case.value) for case in env.safe_cases]
    conds = [c for c, _ in ilks] + [c for _, c, _ in rows]
    involved = sorted({j for c in conds for j, _ in c.terms}
                      | {s_index[n] for con in env.constraints for n, _ in con.terms
                         if n in s_index})
    boxes = [_boxes(sensors[j], [c for c in conds if {k for k, _ in c.terms} == {j}], j)
             for j in involved]
    n_regions = math.prod(len(b) for b in boxes)
    if n_regions > MAX_REGIONS:
        return [Finding(None, f"the safe state cannot be proven: {n_regions} sensor regions "
                              f"(at most {MAX_REGIONS}); use fewer distinct thresholds")]
    findings: dict[tuple[str | None, str], Finding] = {}
    for combo in itertools.product(*boxes):
        region = dict(zip(involved, combo, strict=True))
        for truths in _truths(conds, region, len(sensors)):
            _prove_region(site, region, ilks, rows, limits, truths, findings)
    return list(findings.values())


def _boxes(tag: Tag, conds: list[_Cond], j: int) -> list[_Box]:
    """The sensor's range cut at its single-sensor conditions' breakpoints, plus unknown."""
    lo, hi = tag.range_min, tag.range_max
    assert lo is not None
    assert hi is not None
    cuts = {lo, hi}
    for c in conds:
        coef = sum(k for i, k in c.terms if i == j)
        if coef != 0:
            b = c.rhs / coef
            if lo < b < hi:
                cuts.add(b)
    points = sorted(cuts)
    out = [_Box(p, p) for p in points]
    out += [_Box(a, b) for a, b in itertools.pairwise(points)]
    out.append(_Box(lo, hi, unknown=True))
    return out


def _truths(conds: list[_Cond], region: dict[int, _Box], n_s: int) -> list[tuple[bool, ...]]:
    """Every combination of condition outcomes the region admits."""
    centre = [math.nan] * n_s
    for j, box in region.items():
        centre[j] = box.centre
    options: list[tuple[bool, ...]] = []
    for c in conds:
        at_centre = c.holds(centre)
        idx = [j for j, _ in c.terms]
        if len(set(idx)) <= 1 or any(region[j].unknown for j in idx):
            options.append((at_centre,))  # exact: the cuts align with it, or NaN holds
            continue
        seen = {at_centre}
        for corner in itertools.product(*[(region[j].lo, region[j].hi) for j in idx]):
            s = list(centre)
            for j, x in zip(idx, corner, strict=True):
                s[j] = x
            seen.add(c.holds(s))
        options.append(tuple(sorted(seen)))
    return list(itertools.product(*options))


def _prove_region(site: Site, region: dict[int, _Box], ilks: list[tuple[_Cond, Interlock]],
                  rows: list[tuple[str, _Cond, float]], limits: dict[str, ActuatorLimits],
                  truths: tuple[bool, ...], findings: dict[tuple[str | None, str], Finding]
                  ) -> None:
    sensors = site.sensors
    where = ", ".join(region[j].describe(sensors[j].name) for j in sorted(region)) or "always"
    n_ilk = len(ilks)
    holding = [ilk for (_, ilk), t in zip(ilks, truths[:n_ilk], strict=True) if t]
    row_truths = truths[n_ilk:]
    safe: dict[str, float] = {}
    bounds: dict[str, tuple[float, float]] = {}
    for tag in site.actuators:
        lim = limits[tag.name]
        lo, hi = lim.min, lim.max
        by: list[str] = []
        for ilk in holding:
            for t in ilk.then:
                if t.actuator != tag.name:
                    continue
                if t.upper and t.value < hi:
                    hi = t.value
                    by.append(ilk.name)
                elif not t.upper and t.value > lo:
                    lo = t.value
                    by.append(ilk.name)
        value = tag.safe_value
        assert value is not None
        value = next((v for (name, _, v), held in zip(rows, row_truths, strict=True)
                      if name == tag.name and held), value)  # the first holding row wins
        if not lo <= hi:
            _add(findings, tag.name, f"when {where}: interlocks {', '.join(by)} leave "
                                     f"{tag.name} no value (>= {lo:g} and <= {hi:g})")
            return
        projected = min(max(value, lo), hi)
        if lim.allowed is not None and projected not in lim.allowed:
            inside = [a for a in lim.allowed if lo <= a <= hi]
            if not inside:
                _add(findings, tag.name, f"when {where}: interlocks {', '.join(by)} leave "
                                         f"{tag.name} none of its allowed values "
                                         f"{list(lim.allowed)}")
                return
            projected = min(inside, key=lambda a: (abs(a - projected), a))
        if projected != value:
            try:
                tag.check_encodable(projected)
            except FieldError as exc:
                _add(findings, tag.name, f"when {where}: interlock {', '.join(by)} makes the "
                                         f"safe value {projected:g}, which {exc.message}")
        safe[tag.name] = projected
        bounds[tag.name] = (lo, hi)
    s_index = {t.name: i for i, t in enumerate(sensors)}
    for con in site.envelope.constraints:
        worst_s = 0.0
        best_u = 0.0
        value_u = 0.0
        for name, coef in con.terms:
            if name in s_index:
                box = region[s_index[name]]
                worst_s += coef * (box.hi if coef > 0 else box.lo)
            else:
                lo, hi = bounds[name]
                best_u += coef * (lo if coef > 0 else hi)
                value_u += coef * safe[name]
        if value_u + worst_s <= con.rhs:
            continue
        shown = ", ".join(f"{n} = {safe[n]:g}" for n, _ in con.terms if n in safe)
        if best_u + worst_s > con.rhs:
            _add(findings, None, f"when {where}: no command satisfies {con.name} "
                                 f"({con.expr}); the safe state gives {shown}", refuse=False)
            continue
        actuator = next(n for n, _ in con.terms if n in safe)
        _add(findings, actuator, f"when {where}: the safe state breaks {con.name} "
                                 f"({con.expr}) with {shown}")


def _add(findings: dict[tuple[str | None, str], Finding], actuator: str | None, message: str,
         refuse: bool = True) -> None:
    # One finding per actuator and kind of message is enough to act on; keep the first.
    key = (actuator, message.split(": ", 1)[1] if ": " in message else message)
    findings.setdefault(key, Finding(actuator, message, refuse))
