"""The people in a playbook: contacts, severity rules, escalation and reporting clocks.

Pure values and pure functions (no I/O, time passed in), shared by the playbook loader, the
incident record and the manager:

* :class:`Contact` — a role (:class:`ContactRole`), who holds it, how to reach them (names of
  the playbook's notification hooks) and when they can be reached (``hours``, text);
* :class:`SeverityRule` — a :class:`Severity` given to an incident when every condition of the
  rule holds (trigger patterns, whether the AI was in control, the mode after the trip, how close
  the process came to a danger limit); an incident's severity is the highest of the default and
  every rule that holds, and never falls by itself;
* :class:`EscalationStep` — per severity: who is notified ``after_s`` seconds after the
  incident reached that severity; a step with ``after_s`` > 0 fires only if no one has
  acknowledged the incident by then;
* :class:`Obligation` — a reporting clock: from the moment the incident first reached
  ``min_severity`` (the moment the site became aware of a significant incident), a report is
  due within ``within_s``; its contacts are reminded ``lead_s`` before the deadline and told
  again when it has passed, unless the report was recorded as made.

:class:`PeoplePlan` gathers them; the manager writes it into each incident when it opens (as
JSON, :meth:`PeoplePlan.to_json`), so that an incident carries the plan it is handled by, and
``incidents show`` needs no playbook to print its deadlines.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "Consequence",
    "Contact",
    "ContactRole",
    "EscalationStep",
    "Obligation",
    "PeoplePlan",
    "Severity",
    "SeverityFacts",
    "SeverityRule",
    "classify",
]


class Severity(StrEnum):
    """How bad an incident is, from least to most severe."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK: Final = {s: i for i, s in enumerate(Severity)}


class ContactRole(StrEnum):
    SHIFT_LEAD = "shift_lead"
    PLANT_SAFETY_ENGINEER = "plant_safety_engineer"
    MODEL_OWNER = "model_owner"
    SECURITY_TEAM = "security_team"
    BUSINESS_OWNER = "business_owner"
    EXECUTIVE = "executive"
    REGULATOR_LIAISON = "regulator_liaison"


@dataclass(frozen=True, slots=True)
class Contact:
    """Someone to tell: ``name`` (the playbook's key), ``role``, ``person`` (who holds the role,
    text), ``reach`` (hook names, tried all), ``hours`` (when they can be reached, text)."""

    name: str
    role: ContactRole
    reach: tuple[str, ...]
    person: str = ""
    hours: str = ""

    def __post_init__(self) -> None:
        if not self.reach:
            raise ValueError("`reach` must name at least one hook")


@dataclass(frozen=True, slots=True)
class Consequence:
    """What the process did around the trip, from the incident's flight-recorder window:
    ``min_margin`` is the smallest distance of a watched sensor to its danger limits, as a
    fraction of the limits' span (negative: beyond a limit), at ``sensor`` reading ``value``;
    None when no watched sensor was in the window."""

    min_margin: float | None
    sensor: str | None = None
    value: float | None = None
    frames: int = 0

    @property
    def excursion(self) -> bool:
        return self.min_margin is not None and self.min_margin < 0.0


@dataclass(frozen=True, slots=True)
class SeverityFacts:
    """What a severity rule can look at: the detectors of every trip of the incident, whether
    the AI's output was applied when it tripped (``ai_in_control``: mode AUTO), the mode after
    the trip, and the consequence (None until the window is assessed)."""

    detectors: tuple[str, ...]
    ai_in_control: bool
    mode_after: str
    consequence: Consequence | None = None


@dataclass(frozen=True, slots=True)
class SeverityRule:
    """``level`` when every given condition holds (at least one is given): ``trigger`` (a trip's
    detector matches one pattern), ``ai_in_control``, ``mode_after`` (one of these modes),
    ``margin_below`` (the process came closer than this fraction of the span to a danger limit;
    0 means it went beyond one; never holds before the consequence is assessed)."""

    name: str
    level: Severity
    trigger: tuple[str, ...] = ()
    ai_in_control: bool | None = None
    mode_after: tuple[str, ...] = ()
    margin_below: float | None = None

    def __post_init__(self) -> None:
        if not (self.trigger or self.mode_after or self.ai_in_control is not None
                or self.margin_below is not None):
            raise ValueError("a severity rule needs at least one condition (trigger, "
                             "ai_in_control, mode_after, margin_below)")
        if self.margin_below is not None and not (math.isfinite(self.margin_below)
                                                  and 0.0 <= self.margin_below <= 1.0):
            raise ValueError(f"`margin_below` must be in [0, 1], not {self.margin_below!r}")

    def holds(self, facts: SeverityFacts) -> bool:
        if self.trigger and not any(fnmatch.fnmatchcase(d, p) for d in facts.detectors
                                    for p in self.trigger):
            return False
        if self.ai_in_control is not None and facts.ai_in_control != self.ai_in_control:
            return False
        if self.mode_after and facts.mode_after not in self.mode_after:
            return False
        if self.margin_below is not None:
            c = facts.consequence
            if c is None or c.min_margin is None or not c.min_margin < self.margin_below:
                return False
        return True


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """Notify ``contacts`` ``after_s`` seconds after the incident reached its severity (at
    once for 0; for more, only if it is not acknowledged by then)."""

    after_s: float
    contacts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.after_s) and self.after_s >= 0):
            raise ValueError(f"`after_min` must be finite and >= 0, not {self.after_s / 60!r}")
        if not self.contacts:
            raise ValueError("`notify` must name at least one contact")


@dataclass(frozen=True, slots=True)
class Obligation:
    """A report due ``within_s`` after the incident first reached ``min_severity``; its
    ``contacts`` are reminded ``lead_s`` before the deadline and told when it has passed."""

    name: str
    within_s: float
    min_severity: Severity
    contacts: tuple[str, ...]
    lead_s: float
    description: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.within_s) and self.within_s > 0):
            raise ValueError(f"`within_h` must be > 0, not {self.within_s / 3600!r}")
        if not (math.isfinite(self.lead_s) and 0 <= self.lead_s < self.within_s):
            raise ValueError("`lead_time_min` must be >= 0 and shorter than the obligation's "
                             f"`within_h` ({self.within_s / 3600:g} h)")


@dataclass(frozen=True, slots=True)
class PeoplePlan:
    """Contacts by name, severity rules (with the default level), escalation steps per
    severity (sorted by ``after_s``) and reporting obligations."""

    contacts: Mapping[str, Contact] = field(default_factory=dict)
    default_severity: Severity = Severity.MEDIUM
    severity_rules: tuple[SeverityRule, ...] = ()
    escalation: Mapping[Severity, tuple[EscalationStep, ...]] = field(default_factory=dict)
    obligations: tuple[Obligation, ...] = ()

    def __post_init__(self) -> None:
        named = [(f"escalation.{s}", c) for s, steps in self.escalation.items()
                 for step in steps for c in step.contacts]
        named += [(f"reporting.{o.name}", c) for o in self.obligations for c in o.contacts]
        for where, contact in named:
            if contact not in self.contacts:
                raise ValueError(f"{where}: unknown contact {contact!r}")

    def classify(self, facts: SeverityFacts) -> tuple[Severity, str | None]:
        """See :func:`classify`."""
        return classify(self.default_severity, self.severity_rules, facts)

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON (contacts without their hooks' addresses: names only)."""
        return {
            "contacts": {n: {"role": c.role.value, "reach": list(c.reach), "person": c.person,
                             "hours": c.hours} for n, c in self.contacts.items()},
            "default_severity": self.default_severity.value,
            "severity_rules": [{"name": r.name, "level": r.level.value,
                                "trigger": list(r.trigger), "ai_in_control": r.ai_in_control,
                                "mode_after": list(r.mode_after),
                                "margin_below": r.margin_below} for r in self.severity_rules],
            "escalation": {s.value: [{"after_s": st.after_s, "contacts": list(st.contacts)}
                                     for st in steps] for s, steps in self.escalation.items()},
            "obligations": [{"name": o.name, "within_s": o.within_s,
                             "min_severity": o.min_severity.value,
                             "contacts": list(o.contacts), "lead_s": o.lead_s,
                             "description": o.description} for o in self.obligations],
        }

    @classmethod
    def from_json(cls, obj: Any) -> PeoplePlan:
        """The plan :meth:`to_json` wrote. Raises ``ValueError`` (or ``KeyError``,
        ``TypeError``) when it is malformed."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ValueError("people must be an object")
        contacts = {n: Contact(n, ContactRole(c["role"]), tuple(c["reach"]),
                               str(c.get("person", "")), str(c.get("hours", "")))
                    for n, c in obj.get("contacts", {}).items()}
        rules = tuple(SeverityRule(r["name"], Severity(r["level"]), tuple(r.get("trigger", ())),
                                   r.get("ai_in_control"), tuple(r.get("mode_after", ())),
                                   r.get("margin_below"))
                      for r in obj.get("severity_rules", []))
        escalation = {Severity(s): tuple(EscalationStep(float(st["after_s"]),
                                                        tuple(st["contacts"]))
                                         for st in steps)
                      for s, steps in obj.get("escalation", {}).items()}
        obligations = tuple(Obligation(o["name"], float(o["within_s"]),
                                       Severity(o["min_severity"]), tuple(o["contacts"]),
                                       float(o["lead_s"]), str(o.get("description", "")))
                            for o in obj.get("obligations", []))
        return cls(contacts, Severity(obj.get("default_severity", "medium")), rules,
                   escalation, obligations)


def classify(default: Severity, rules: Iterable[SeverityRule], facts: SeverityFacts
             ) -> tuple[Severity, str | None]:
    """The highest of ``default`` and the levels of the rules that hold for ``facts``, and
    the name of the first rule giving it (None when the default stands)."""
    level, why = default, None
    for rule in rules:
        if rule.level.rank > level.rank and rule.holds(facts):
            level, why = rule.level, rule.name
    return level, why
