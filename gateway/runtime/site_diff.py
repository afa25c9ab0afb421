"""The difference between the running site and a newly loaded one, and what of it can be
applied without a restart.

Pure: two validated :class:`~gateway.config.schema.Site` objects in, a :class:`SiteDiff` out.
Each :class:`Change` says what moved (``area``, ``name``, ``field``), from what to what, in
which direction for safety (a limit *tightened* or *loosened*; a constraint *added* or
*removed*; anything else *changed*), and whether a running gateway can take it live.

Live (applied between two cycles, see :mod:`gateway.runtime.reload`): the envelope (limits,
linear constraints, interlocks, the predictive check, safe cases, the non-finite policy),
detection thresholds, fallback controllers, the operation policy, the site's description, a
device's settings (that device alone reconnects; the others keep their connections), and the
candidate judged beside the site (``commissioning.candidate``: named, dropped or replaced).

Needs a restart (refused, nothing changes): the tags (their set, order, addresses or wire
types fix the shared-memory mirror's layout and the northbound maps), adding or removing a
device or changing its protocol, the controller (the model is loaded and hashed at start), the
northbound listeners, the audit log, the site's name and cycle period, and any section this
module does not know.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from gateway.config.schema import Policy

if TYPE_CHECKING:
    from gateway.config.schema import ActuatorLimits, Site

__all__ = ["Change", "Direction", "SiteDiff", "diff_sites"]


class Direction(StrEnum):
    """Which way a change moves the protection."""

    TIGHTENED = "tightened"
    LOOSENED = "loosened"
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True)
class Change:
    """One difference. ``restart`` is None when it can be applied live, else why it cannot."""

    area: str  # limit, constraint, interlock, prediction, envelope, detection, fallback, ...
    name: str  # the actuator, constraint, tag, device, ... ("" for a whole section)
    field: str  # e.g. "max", "max_rate_per_s" ("" for the whole item)
    direction: Direction
    old: str
    new: str
    restart: str | None = None

    @property
    def live(self) -> bool:
        return self.restart is None

    def text(self) -> str:
        """One line people read, e.g. ``limit inflow_valve.max tightened: 100 -> 80``."""
        where = ".".join(p for p in (self.name, self.field) if p)
        head = f"{self.area} {where}".rstrip()
        body = f"{head} {self.direction.value}"
        if self.old or self.new:
            body += f": {self.old or '-'} -> {self.new or '-'}"
        if self.restart is not None:
            body += f" (needs a restart: {self.restart})"
        return body

    def as_json(self) -> dict[str, Any]:
        return {"area": self.area, "name": self.name, "field": self.field,
                "direction": self.direction.value, "old": self.old, "new": self.new,
                "live": self.live, "restart": self.restart}


@dataclass(frozen=True)
class SiteDiff:
    """Every difference between two sites, in a stable order (the file's sections)."""

    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def refused(self) -> tuple[Change, ...]:
        """The changes a running gateway cannot take (a reload containing one is refused)."""
        return tuple(c for c in self.changes if not c.live)

    @property
    def live(self) -> bool:
        return not self.refused

    def lines(self) -> list[str]:
        return [c.text() for c in self.changes]

    def summary(self) -> str:
        """Counts by direction, e.g. ``2 tightened, 1 added`` (``no change`` when empty)."""
        if not self.changes:
            return "no change"
        counts: dict[str, int] = {}
        for c in self.changes:
            counts[c.direction.value] = counts.get(c.direction.value, 0) + 1
        text = ", ".join(f"{n} {d}" for d, n in counts.items())
        if self.refused:
            text += f"; {len(self.refused)} need a restart"
        return text

    def restart_reason(self) -> str:
        """``needs a restart: ...`` naming each refused change ("" when all are live)."""
        if not self.refused:
            return ""
        return "needs a restart: " + "; ".join(c.text() for c in self.refused)

    def as_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "live": self.live,
                "changes": [c.as_json() for c in self.changes]}


def _fmt(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


def _limit_value(value: float | None) -> float:
    return math.inf if value is None else value


_POLICY_RANK = {Policy.CLAMP: 0, Policy.REJECT: 1, Policy.TRIP: 2}


def _limits(old: ActuatorLimits, new: ActuatorLimits) -> list[Change]:
    out: list[Change] = []
    name = old.actuator

    def add(field_: str, tighter: bool | None, a: object, b: object) -> None:
        direction = (Direction.CHANGED if tighter is None
                     else Direction.TIGHTENED if tighter else Direction.LOOSENED)
        out.append(Change("limit", name, field_, direction, _fmt(a), _fmt(b)))

    if new.min != old.min:
        add("min", new.min > old.min, old.min, new.min)
    if new.max != old.max:
        add("max", new.max < old.max, old.max, new.max)
    for key in ("max_rate_per_s", "max_step"):
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            add(key, _limit_value(b) < _limit_value(a), a, b)
    if new.allowed != old.allowed:
        tighter: bool | None = None  # some values added and others removed: changed
        if old.allowed is None or new.allowed is None:
            tighter = old.allowed is None
        elif set(new.allowed) < set(old.allowed):
            tighter = True
        elif set(new.allowed) > set(old.allowed):
            tighter = False
        add("allowed", tighter, old.allowed, new.allowed)
    if new.policy != old.policy:
        add("policy", _POLICY_RANK[new.policy] > _POLICY_RANK[old.policy], old.policy,
            new.policy)
    return out


def _named(area: str, old: tuple[Any, ...], new: tuple[Any, ...], show: str) -> list[Change]:
    """Items keyed by ``.name``: added (a new protection), removed, changed (``show``: the
    attribute that people recognise them by, e.g. the expression)."""
    a = {x.name: x for x in old}
    b = {x.name: x for x in new}
    out: list[Change] = []
    for name, item in a.items():
        if name not in b:
            out.append(Change(area, name, "", Direction.REMOVED, str(getattr(item, show)), ""))
        elif b[name] != item:
            out.extend(_fields(area, name, item, b[name]))
    for name, item in b.items():
        if name not in a:
            out.append(Change(area, name, "", Direction.ADDED, "", str(getattr(item, show))))
    return out


def _fields(area: str, name: str, old: Any, new: Any, restart: str | None = None,
            skip: tuple[str, ...] = ()) -> list[Change]:
    """One CHANGED per dataclass field that differs (``skip``: fields not compared)."""
    out = []
    for f in fields(old):
        if f.name in skip:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            out.append(Change(area, name, f.name, Direction.CHANGED, _fmt(a), _fmt(b),
                              restart))
    return out


def diff_sites(old: Site, new: Site) -> SiteDiff:
    """Everything that differs between ``old`` (running) and ``new`` (the file now)."""
    out: list[Change] = []
    info_restart = {"name": "the site's name keys the audit chain and the northbound view",
                    "cycle_ms": "the cycle period sets the schedule and the mirror's timing"}
    for f in fields(old.site):
        a, b = getattr(old.site, f.name), getattr(new.site, f.name)
        if a != b:
            out.append(Change("site", "", f.name, Direction.CHANGED, _fmt(a), _fmt(b),
                              info_restart.get(f.name)))
    # Devices and tags: their connections, the mirror layout and the northbound maps.
    a_dev = {d.name: d for d in old.devices}
    b_dev = {d.name: d for d in new.devices}
    # A device's settings change live: that device alone reconnects with them. Adding or
    # removing a device, or changing its protocol, changes the mirror's layout and the tags.
    dev_restart = "the set of devices and their protocols fix the mirror's layout and the tags"
    for name in a_dev.keys() | b_dev.keys():
        if name not in b_dev:
            out.append(Change("device", name, "", Direction.REMOVED, name, "", dev_restart))
        elif name not in a_dev:
            out.append(Change("device", name, "", Direction.ADDED, "", name, dev_restart))
        elif a_dev[name] != b_dev[name]:
            if type(a_dev[name]) is not type(b_dev[name]):
                out.append(Change("device", name, "protocol", Direction.CHANGED,
                                  type(a_dev[name]).__name__, type(b_dev[name]).__name__,
                                  dev_restart))
            else:
                out.extend(_fields("device", name, a_dev[name], b_dev[name]))
    tag_restart = "the tag set fixes the mirror layout and the northbound maps"
    a_tags = {t.name: t for t in old.tags}
    b_tags = {t.name: t for t in new.tags}
    for name in a_tags.keys() | b_tags.keys():
        if name not in b_tags:
            out.append(Change("tag", name, "", Direction.REMOVED, name, "", tag_restart))
        elif name not in a_tags:
            out.append(Change("tag", name, "", Direction.ADDED, "", name, tag_restart))
        elif a_tags[name] != b_tags[name]:
            out.extend(_fields("tag", name, a_tags[name], b_tags[name], tag_restart))
    if (tuple(t.name for t in old.tags) != tuple(t.name for t in new.tags)
            and a_tags.keys() == b_tags.keys()):
        out.append(Change("tag", "", "order", Direction.CHANGED,
                          " ".join(a_tags), " ".join(b_tags), tag_restart))
    # The envelope: all live.
    env_a, env_b = old.envelope, new.envelope
    lim_a = {lim.actuator: lim for lim in env_a.limits}
    lim_b = {lim.actuator: lim for lim in env_b.limits}
    for name in lim_a:
        if name in lim_b and lim_a[name] != lim_b[name]:
            out.extend(_limits(lim_a[name], lim_b[name]))
    out.extend(_named("constraint", env_a.constraints, env_b.constraints, "expr"))
    out.extend(_named("interlock", env_a.interlocks, env_b.interlocks, "when"))
    if env_a.prediction != env_b.prediction:
        if env_a.prediction is None:
            out.append(Change("prediction", "", "", Direction.ADDED, "", "on"))
        elif env_b.prediction is None:
            out.append(Change("prediction", "", "", Direction.REMOVED, "on", ""))
        else:
            out.extend(_fields("prediction", "", env_a.prediction, env_b.prediction))
    out.extend(_fields("envelope", "", env_a, env_b,
                       skip=("limits", "constraints", "interlocks", "prediction")))
    out.extend(_fields("detection", "", old.detection, new.detection))
    fb_a = {f.actuator: f for f in old.fallback}
    fb_b = {f.actuator: f for f in new.fallback}
    for name in fb_a.keys() | fb_b.keys():
        if name not in fb_b:
            out.append(Change("fallback", name, "", Direction.REMOVED, fb_a[name].kind.value,
                              ""))
        elif name not in fb_a:
            out.append(Change("fallback", name, "", Direction.ADDED, "", fb_b[name].kind.value))
        elif fb_a[name] != fb_b[name]:
            out.extend(_fields("fallback", name, fb_a[name], fb_b[name]))
    out.extend(_fields("operation", "", old.operation, new.operation))
    out.extend(_fields("controller", "", old.controller, new.controller,
                       "the model is loaded, hashed and verified at start"))
    out.extend(_fields("northbound", "", old.northbound, new.northbound,
                       "the northbound listeners are opened at start"))
    out.extend(_fields("audit", "", old.audit, new.audit,
                       "the audit log is opened at start"))
    out.extend(_commissioning(old, new))
    # Any other section (added to the site file after this module was written): never
    # applied silently; a restart takes it.
    for f in fields(old):
        if f.name not in _HANDLED and getattr(old, f.name) != getattr(new, f.name):
            out.append(Change("other", f.name, "", Direction.CHANGED, "", "",
                              f"this reload does not apply the {f.name} section"))
    out.sort(key=_order)
    return SiteDiff(tuple(out))


def _commissioning(old: Site, new: Site) -> list[Change]:
    """The candidate judged beside the site: named, dropped, another file, or the same file
    with other contents. Live: a reload replaces the judge (it never acts on the plant)."""
    a, b = old.commissioning, new.commissioning
    if a.candidate != b.candidate:
        direction = (Direction.ADDED if a.candidate is None else
                     Direction.REMOVED if b.candidate is None else Direction.CHANGED)
        return [Change("commissioning", "candidate", "", direction,
                       "" if a.candidate is None else str(a.candidate),
                       "" if b.candidate is None else str(b.candidate))]
    if a.candidate_site != b.candidate_site:
        return [Change("commissioning", "candidate", "", Direction.CHANGED,
                       str(a.candidate), f"{b.candidate} (its contents)")]
    return []


_HANDLED = frozenset({"source", "site", "devices", "tags", "envelope", "controller", "fallback",
                      "detection", "operation", "northbound", "audit", "commissioning"})
_AREAS = ("site", "device", "tag", "limit", "constraint", "interlock", "prediction", "envelope",
          "detection", "fallback", "operation", "controller", "northbound", "audit",
          "commissioning", "other")


def _order(c: Change) -> tuple[int, str, str]:
    return (_AREAS.index(c.area), c.name, c.field)
