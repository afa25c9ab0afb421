"""Playbooks: YAML files in ``configs/playbooks/`` that say what to do when a detector trips.

A playbook maps triggers (detector names, matched by shell-style patterns: ``envelope*``,
``input.*``, ``canary``, ``*``) to

* **containment** steps: ``manual``, ``shadow``, ``safe_stop`` (mode requests the runtime passes
  to the supervisor as requester ``playbook``; a step the supervisor's trip already satisfies is
  recorded as such and not requested), ``rate_limit`` with a ``factor`` in (0, 1] (the runtime
  scales the actuators' rate limits, if it supports that), ``quarantine_model`` (keep the model
  from being re-enabled until it is investigated), ``procedure`` with a ``name`` (and a
  document ``ref``): a manual-operation procedure the people on shift carry out (recorded in
  the incident and added to its containment checklist; the gateway itself does nothing);
* **notifications**: named hooks of kind ``log``, ``webhook`` (``url``, ``timeout_s``) or
  ``command`` (``argv``, a list: never a shell string; ``timeout_s``);
* **checklist** items per phase of incident response (detection, containment, investigation,
  forensics, recovery), added to the playbook's common checklist.

Rules are tried in file order; the first whose ``match`` has a pattern matching the detector's
name applies. Unless a rule says ``join_open_incident: false`` (or the playbook does, at the top
level), a trip while an incident is open joins that incident instead of opening another: one
attack, one incident.

Errors are reported like site errors (``file:line: key.path: message``), all at once.

Example::

    name: default
    join_open_incident: true
    hooks:
      ops_log: {kind: log, level: warning}
      soc: {kind: webhook, url: "http://soc.example:8080/incidents", timeout_s: 3}
      pager: {kind: command, argv: [/usr/local/bin/page, "{incident}", "{message}"]}
    checklist:
      detection: ["confirm the trip on the dashboard"]
    rules:
      - name: model_integrity
        match: [canary]
        containment: [manual, quarantine_model]
        notify: [ops_log, soc]
      - name: any
        match: ["*"]
        containment: [manual, {kind: rate_limit, factor: 0.5}]
        notify: [ops_log]

Command arguments may hold the placeholders ``{incident}``, ``{site}``, ``{detector}``,
``{reason}`` and ``{message}``; each is replaced by its text inside that one argument (no shell
is involved, so no quoting is needed and none can break out).
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from gateway.config.loader import Abort, ConfigError, Ctx, Section
from gateway.config.yamlsrc import Issue, Node, SourceError
from gateway.config.yamlsrc import load as load_yaml
from gateway.incident.model import ChecklistPhase, ResolveRequirements
from gateway.incident.people import (
    Contact,
    ContactRole,
    EscalationStep,
    Obligation,
    PeoplePlan,
    Severity,
    SeverityRule,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

T = TypeVar("T")

__all__ = [
    "DEFAULT_PLAYBOOK",
    "ContainmentKind",
    "ContainmentStep",
    "HookKind",
    "NotificationSpec",
    "Playbook",
    "Rule",
    "load_playbook",
    "redact_url",
]

DEFAULT_PLAYBOOK: Final = Path(__file__).resolve().parents[2] / "configs" / "playbooks" / \
    "default.yaml"
PLACEHOLDERS: Final = ("incident", "site", "detector", "reason", "message")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PLACEHOLDER_RE: Final = re.compile(r"\{([a-z_]*)\}")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class ContainmentKind(StrEnum):
    MANUAL = "manual"
    SHADOW = "shadow"
    SAFE_STOP = "safe_stop"
    RATE_LIMIT = "rate_limit"
    QUARANTINE_MODEL = "quarantine_model"
    PROCEDURE = "procedure"


class HookKind(StrEnum):
    LOG = "log"
    WEBHOOK = "webhook"
    COMMAND = "command"


@dataclass(frozen=True, slots=True)
class ContainmentStep:
    """One containment step; ``factor`` (0 < factor <= 1) only for ``rate_limit``;
    ``procedure`` (its name) and ``ref`` (where it is written down) only for ``procedure``."""

    kind: ContainmentKind
    factor: float | None = None
    procedure: str | None = None
    ref: str = ""

    def __post_init__(self) -> None:
        if self.kind is ContainmentKind.PROCEDURE:
            if not self.procedure or not self.procedure.strip():
                raise ValueError("a procedure step needs the procedure's `name`")
        elif self.procedure is not None or self.ref:
            raise ValueError(f"`name` and `ref` apply to procedure steps only, not {self.kind}")
        if self.kind is ContainmentKind.RATE_LIMIT:
            if self.factor is None or not (math.isfinite(self.factor)
                                           and 0.0 < self.factor <= 1.0):
                raise ValueError(f"rate_limit `factor` must be in (0, 1], not {self.factor!r}")
        elif self.factor is not None:
            raise ValueError(f"`factor` applies to rate_limit only, not {self.kind}")

    def describe(self) -> str:
        if self.procedure is not None:
            return f"procedure {self.procedure}" + (f" ({self.ref})" if self.ref else "")
        return self.kind.value if self.factor is None else f"{self.kind} x{self.factor:g}"

    @property
    def key(self) -> str:
        """What makes a step distinct within an incident (one per kind; procedures by name)."""
        return self.kind.value if self.procedure is None else f"procedure:{self.procedure}"

    def checklist_item(self) -> str | None:
        """The containment checklist item a procedure step adds (None for other steps)."""
        if self.procedure is None:
            return None
        return (f"carry out the manual-operation procedure {self.procedure}"
                + (f" ({self.ref})" if self.ref else "") + "; record who and when")


@dataclass(frozen=True, slots=True)
class NotificationSpec:
    """A notification hook. ``log``: a log line at ``level``; ``webhook``: a JSON POST to
    ``url`` (http or https), failing after ``timeout_s``; ``command``: run ``argv`` (no shell)
    and wait at most ``timeout_s``, a non-zero exit being a failure."""

    name: str
    kind: HookKind
    url: str | None = None
    argv: tuple[str, ...] = ()
    timeout_s: float = 5.0
    level: str = "warning"

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"hook name {self.name!r} must be 1-64 letters, digits, . _ -")
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= 600):
            raise ValueError(f"`timeout_s` must be in (0, 600] seconds, not {self.timeout_s!r}")
        if self.kind is HookKind.WEBHOOK:
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError(f"`url` must be an http:// or https:// URL, not {self.url!r}")
        elif self.url is not None:
            raise ValueError(f"`url` applies to webhooks only, not {self.kind}")
        if self.kind is HookKind.COMMAND:
            if not self.argv or not all(isinstance(a, str) for a in self.argv) or not self.argv[0]:
                raise ValueError("`argv` must be a non-empty list of text (the program first)")
            for arg in self.argv:
                for name in _PLACEHOLDER_RE.findall(arg):
                    if name not in PLACEHOLDERS:
                        raise ValueError(f"`argv`: unknown placeholder {{{name}}} (known: "
                                         + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS) + ")")
        elif self.argv:
            raise ValueError(f"`argv` applies to commands only, not {self.kind}")
        if self.level not in LOG_LEVELS:
            raise ValueError(f"`level` must be one of {', '.join(LOG_LEVELS)}, not "
                             f"{self.level!r}")

    @property
    def target(self) -> str:
        """Where it goes, for the incident record."""
        if self.kind is HookKind.WEBHOOK:
            return redact_url(self.url or "")
        if self.kind is HookKind.COMMAND:
            return self.argv[0]
        return f"log:{self.level}"

    def command(self, values: Mapping[str, str]) -> list[str]:
        """``argv`` with the placeholders replaced by ``values`` (missing ones by "")."""
        def sub(m: re.Match[str]) -> str:
            return values.get(m.group(1), "")
        return [_PLACEHOLDER_RE.sub(sub, arg) for arg in self.argv]


@dataclass(frozen=True, slots=True)
class Rule:
    """A playbook entry: which triggers, and what to do."""

    name: str
    match: tuple[str, ...]
    containment: tuple[ContainmentStep, ...] = ()
    notify: tuple[str, ...] = ()
    checklist: Mapping[ChecklistPhase, tuple[str, ...]] = field(default_factory=dict)
    join_open_incident: bool | None = None
    description: str = ""

    def matches(self, detector: str) -> bool:
        return any(fnmatch.fnmatchcase(detector, pattern) for pattern in self.match)


@dataclass(frozen=True)
class Playbook:
    """A loaded playbook (see the module docstring). ``hooks`` by name; ``checklist`` is the
    common checklist per phase; ``sha256`` is the file's (None when built in code)."""

    name: str
    rules: tuple[Rule, ...]
    hooks: Mapping[str, NotificationSpec] = field(default_factory=dict)
    checklist: Mapping[ChecklistPhase, tuple[str, ...]] = field(default_factory=dict)
    join_open_incident: bool = True
    description: str = ""
    source: str | None = None
    sha256: str | None = None
    plant_safety: str = ""
    people: PeoplePlan = field(default_factory=PeoplePlan)
    danger_limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    resolve_requires: ResolveRequirements = field(default_factory=ResolveRequirements)
    _cache: dict[str, Rule | None] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for rule in self.rules:
            for hook in rule.notify:
                if hook not in self.hooks:
                    raise ValueError(f"rule {rule.name!r} notifies unknown hook {hook!r}")
        for contact in self.people.contacts.values():
            for hook in contact.reach:
                if hook not in self.hooks:
                    raise ValueError(f"contact {contact.name!r} is reached by unknown hook "
                                     f"{hook!r}")

    def rule_for(self, detector: str) -> Rule | None:
        """The first rule matching ``detector`` (None if none does). Cached per name."""
        cache = self._cache
        if detector in cache:
            return cache[detector]
        found = next((r for r in self.rules if r.matches(detector)), None)
        if len(cache) < 4096:  # names come from the site's detectors: a small set
            cache[detector] = found
        return found

    def joins_open(self, rule: Rule | None) -> bool:
        """Whether a trip matched by ``rule`` joins an open incident."""
        if rule is not None and rule.join_open_incident is not None:
            return rule.join_open_incident
        return self.join_open_incident

    def checklist_for(self, rule: Rule | None) -> dict[str, list[str]]:
        """The common checklist plus ``rule``'s items, per phase (JSON-ready); a rule's
        procedure steps add their items to the containment phase."""
        out: dict[str, list[str]] = {}
        for phase in ChecklistPhase:
            items = list(self.checklist.get(phase, ()))
            if rule is not None:
                extra = list(rule.checklist.get(phase, ()))
                if phase is ChecklistPhase.CONTAINMENT:
                    extra += [t for t in (s.checklist_item() for s in rule.containment) if t]
                items += [i for i in extra if i not in items]
            out[phase.value] = items
        return out

    def hooks_for(self, rule: Rule | None) -> tuple[NotificationSpec, ...]:
        return tuple(self.hooks[name] for name in rule.notify) if rule is not None else ()


def redact_url(url: str) -> str:
    """``url`` without the user name and password it may carry (never recorded)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


# ---------------------------------------------------------------------------------- loading


def load_playbook(path: str | Path) -> Playbook:
    """Read a playbook file. Raises :class:`gateway.config.ConfigError` listing every
    problem (``file:line: key.path: message``)."""
    path = Path(path)
    try:
        root = load_yaml(path)
    except SourceError as exc:
        raise ConfigError([exc.issue]) from None
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:  # read once already: only a race gets here
        raise ConfigError([Issue(str(path), 0, "", f"cannot read: {exc.strerror}")]) from None
    ctx = Ctx(str(path))
    book = None
    try:
        book = _read(ctx, Section(ctx, root, ""), path, digest)
    except Abort:
        book = None
    if ctx.issues or book is None:
        raise ConfigError(ctx.issues or [Issue(str(path), 0, "", "invalid playbook")])
    return book


def _grab(fn: Callable[[], T], ok: list[bool]) -> T | None:
    """Call a getter; an error (already recorded) marks the playbook invalid and reading goes
    on, so that every problem is reported at once."""
    try:
        return fn()
    except Abort:
        ok[0] = False
        return None


def _read(ctx: Ctx, m: Section, path: Path, digest: str) -> Playbook | None:
    ok = [True]
    name = _grab(lambda: m.opt_str("name"), ok) or path.stem
    description = _grab(lambda: m.opt_str("description"), ok) or ""
    plant_safety = _grab(lambda: m.opt_str("plant_safety"), ok) or ""
    join = _grab(lambda: m.opt_bool("join_open_incident"), ok)

    hooks: dict[str, NotificationSpec] = {}
    hm = _grab(lambda: m.map("hooks"), ok)
    if isinstance(hm, Section):
        for key, node, where in hm.entries():
            try:
                hooks[key] = _read_hook(ctx, key, node, where)
            except Abort:
                ok[0] = False
        hm.finish()

    checklist: dict[ChecklistPhase, tuple[str, ...]] = {}
    cm = _grab(lambda: m.map("checklist"), ok)
    if isinstance(cm, Section):
        try:
            checklist = _read_checklist(cm)
        except Abort:
            ok[0] = False

    rules: list[Rule] = []
    names: dict[str, int] = {}
    items = _grab(lambda: m.items_of("rules"), ok)
    if not m.has("rules"):
        ctx.error(m.node.line, "rules", "required key is missing")
        ok[0] = False
    elif isinstance(items, list):
        if not items:
            m.error("rules", "a playbook needs at least one rule")
            ok[0] = False
        for node, where in items:
            # Names first, so that a duplicate is reported even when a rule has other errors.
            name_node = node.value.get("name") if isinstance(node.value, dict) else None
            if name_node is not None and isinstance(name_node.value, str):
                first = names.setdefault(name_node.value, name_node.line)
                if first != name_node.line:
                    ctx.error(name_node.line, f"{where}.name",
                              f"duplicate rule name (first at line {first})")
                    ok[0] = False
            try:
                rm = Section(ctx, node, where)
                rules.append(_read_rule(rm, hooks, hm if isinstance(hm, Section) else None))
            except Abort:
                ok[0] = False
    people = _read_people(ctx, m, hooks, hm if isinstance(hm, Section) else None, ok)
    danger = _read_danger(m, ok)
    requires = _read_requires(m, ok)
    m.finish()
    if not ok[0] or people is None:
        return None
    return Playbook(name=str(name), rules=tuple(rules), hooks=hooks, checklist=checklist,
                    join_open_incident=True if join is None else bool(join),
                    description=str(description), source=str(path), sha256=digest,
                    people=people, danger_limits=danger, resolve_requires=requires,
                    plant_safety=" ".join(str(plant_safety).split()))


def _read_hook(ctx: Ctx, name: str, node: Node, where: str) -> NotificationSpec:
    hm = Section(ctx, node, where)
    kind = hm.req_enum("kind", HookKind)
    url = hm.opt_str("url")
    argv = hm.opt_strs("argv")
    timeout = hm.opt_float("timeout_s")
    level = hm.opt_str("level")
    hm.finish()
    try:
        return NotificationSpec(name=name, kind=kind, url=url, argv=argv or (),
                                timeout_s=5.0 if timeout is None else timeout,
                                level=level or "warning")
    except ValueError as exc:
        message = str(exc)
        key = next((k for k in ("url", "argv", "timeout_s", "level") if f"`{k}`" in message),
                   None)
        if key is not None and hm.has(key):
            hm.error(key, message.replace(f"`{key}` ", "", 1))
        else:
            ctx.error(node.line, where, message)
        raise Abort from None


def _read_checklist(cm: Section) -> dict[ChecklistPhase, tuple[str, ...]]:
    out: dict[ChecklistPhase, tuple[str, ...]] = {}
    failed = False
    for phase in ChecklistPhase:
        try:
            items = cm.opt_strs(phase.value)
        except Abort:
            failed = True
            continue
        if items is not None:
            blank = [i for i, text in enumerate(items) if not text.strip()]
            if blank:
                cm.error(phase.value, f"item {blank[0]} is empty")
                failed = True
            out[phase] = tuple(text.strip() for text in items)
    for key in cm.items:
        if key not in {p.value for p in ChecklistPhase}:
            cm.used.add(key)
            cm.error(key, "unknown phase; use " + ", ".join(p.value for p in ChecklistPhase))
            failed = True
    if failed:
        raise Abort
    return out


def _read_rule(rm: Section, hooks: Mapping[str, NotificationSpec],
               hook_map: Section | None) -> Rule:
    ok = [True]
    name = _grab(lambda: rm.req_str("name"), ok)
    if isinstance(name, str) and not _NAME_RE.fullmatch(name):
        rm.error("name", "must be 1-64 letters, digits, . _ -")
        ok[0] = False
    description = _grab(lambda: rm.opt_str("description"), ok) or ""
    match = _grab(lambda: _strs_or_one(rm, "match", required=True), ok)
    if isinstance(match, tuple):
        if not match:
            rm.error("match", "needs at least one detector pattern")
            ok[0] = False
        for pattern in match:
            if not pattern.strip():
                rm.error("match", "a pattern is empty")
                ok[0] = False
    containment: list[ContainmentStep] = []
    for node, where in _grab(lambda: rm.items_of("containment"), ok) or []:
        try:
            containment.append(_read_step(rm.ctx, node, where))
        except Abort:
            ok[0] = False
    kinds = [s.kind for s in containment]
    if len({s.key for s in containment}) != len(containment):
        rm.error("containment", "a step is listed twice")
        ok[0] = False
    modes = {ContainmentKind.MANUAL, ContainmentKind.SHADOW, ContainmentKind.SAFE_STOP}
    if len([k for k in kinds if k in modes]) > 1:
        rm.error("containment", "at most one of manual, shadow, safe_stop")
        ok[0] = False
    notify = _grab(lambda: _strs_or_one(rm, "notify", required=False), ok) or ()
    assert isinstance(notify, tuple)
    defined = sorted(hook_map.items) if hook_map is not None else sorted(hooks)
    for hook in notify:
        if hook not in defined:
            rm.error("notify", f"unknown hook {hook!r}; defined: "
                               + (", ".join(defined) or "none"))
            ok[0] = False
    checklist: dict[ChecklistPhase, tuple[str, ...]] = {}
    cm = _grab(lambda: rm.map("checklist"), ok)
    if isinstance(cm, Section):
        try:
            checklist = _read_checklist(cm)
        except Abort:
            ok[0] = False
    join = _grab(lambda: rm.opt_bool("join_open_incident"), ok)
    rm.finish()
    if not ok[0] or not isinstance(name, str) or not isinstance(match, tuple):
        raise Abort
    return Rule(name=name, match=match, containment=tuple(containment),
                notify=tuple(h for h in notify if h in hooks), checklist=checklist,
                join_open_incident=join if isinstance(join, bool) else None,
                description=str(description))


def _strs_or_one(m: Section, key: str, *, required: bool) -> tuple[str, ...]:
    """A list of text, or one text."""
    node = m.raw(key, required)
    if node is None:
        return ()
    if isinstance(node.value, str):
        return (node.value,)
    result = m.opt_strs(key)
    return result or ()


def _read_step(ctx: Ctx, node: Node, where: str) -> ContainmentStep:
    choices = ", ".join(k.value for k in ContainmentKind)
    if isinstance(node.value, str):
        try:
            kind = ContainmentKind(node.value)
        except ValueError:
            ctx.error(node.line, where, f"must be one of {choices}; not {node.value!r}")
            raise Abort from None
        if kind is ContainmentKind.RATE_LIMIT:
            ctx.error(node.line, where, "rate_limit needs a factor: {kind: rate_limit, "
                                        "factor: 0.5}")
            raise Abort
        return ContainmentStep(kind)
    sm = Section(ctx, node, where)
    kind = sm.req_enum("kind", ContainmentKind)
    factor = sm.opt_float("factor")
    name = sm.opt_str("name")
    ref = sm.opt_str("ref")
    sm.finish()
    if kind is ContainmentKind.RATE_LIMIT and factor is None:
        ctx.error(node.line, f"{where}.factor", "required for rate_limit (0 < factor <= 1)")
        raise Abort
    if kind is ContainmentKind.PROCEDURE and (name is None or not name.strip()):
        ctx.error(node.line, f"{where}.name", "a procedure step needs the procedure's name")
        raise Abort
    try:
        return ContainmentStep(kind, factor, None if name is None else name.strip(),
                               (ref or "").strip())
    except ValueError as exc:
        key = "name" if "`name`" in str(exc) and sm.has("name") else (
            "ref" if sm.has("ref") and "`ref`" in str(exc) else "factor")
        sm.error(key, str(exc).replace("rate_limit `factor` ", "").replace("`factor` ", ""))
        raise Abort from None


# ------------------------------------------------------------------- people (contacts, ...)


def _read_people(ctx: Ctx, m: Section, hooks: Mapping[str, NotificationSpec],
                 hook_map: Section | None, ok: list[bool]) -> PeoplePlan | None:
    """``contacts``, ``severity``, ``escalation`` and ``reporting`` (all optional)."""
    defined_hooks = sorted(hook_map.items) if hook_map is not None else sorted(hooks)
    contacts: dict[str, Contact] = {}
    contact_lines: set[str] = set()  # contacts named, even those that failed to read
    cm = _grab(lambda: m.map("contacts"), ok)
    if isinstance(cm, Section):
        for key, node, where in cm.entries():
            contact_lines.add(key)
            try:
                contacts[key] = _read_contact(ctx, key, node, where, defined_hooks)
            except Abort:
                ok[0] = False
        cm.finish()
    known = contact_lines

    def contact_names(sec: Section, key: str) -> tuple[str, ...]:
        names = _strs_or_one(sec, key, required=True)
        if not names:
            sec.error(key, "must name at least one contact")
            raise Abort
        for name in names:
            if name not in known:
                sec.error(key, f"unknown contact {name!r}; defined: "
                               + (", ".join(sorted(known)) or "none"))
                raise Abort
        return names

    default = Severity.MEDIUM
    rules: list[SeverityRule] = []
    sm = _grab(lambda: m.map("severity"), ok)
    if isinstance(sm, Section):
        given = _grab(lambda: sm.opt_enum("default", Severity), ok)
        default = given if isinstance(given, Severity) else Severity.MEDIUM
        seen: dict[str, int] = {}
        for node, where in _grab(lambda: sm.items_of("rules"), ok) or []:
            try:
                rule = _read_severity_rule(ctx, node, where)
            except Abort:
                ok[0] = False
                continue
            first = seen.setdefault(rule.name, node.line)
            if first != node.line:
                ctx.error(node.line, f"{where}.name",
                          f"duplicate severity rule name (first at line {first})")
                ok[0] = False
            rules.append(rule)
        sm.finish()

    escalation: dict[Severity, tuple[EscalationStep, ...]] = {}
    em = _grab(lambda: m.map("escalation"), ok)
    if isinstance(em, Section):
        for key, _node, _where in em.entries():
            try:
                level = Severity(key)
            except ValueError:
                em.error(key, "unknown severity; use " + ", ".join(s.value for s in Severity))
                ok[0] = False
                continue
            steps: list[EscalationStep] = []
            try:
                items = em.items_of(key)
            except Abort:
                ok[0] = False
                continue
            for item, item_where in items:
                try:
                    step_m = Section(ctx, item, item_where)
                    after = step_m.req_float("after_min")
                    names = contact_names(step_m, "notify")
                    step_m.finish()
                    if not after >= 0:
                        step_m.error("after_min", f"must be >= 0, not {after:g}")
                        raise Abort
                    steps.append(EscalationStep(after * 60.0, names))
                except Abort:
                    ok[0] = False
            afters = [st.after_s for st in steps]
            if afters != sorted(afters):
                em.error(key, "steps must be in order of after_min")
                ok[0] = False
            escalation[level] = tuple(steps)

    obligations: list[Obligation] = []
    rm = _grab(lambda: m.map("reporting"), ok)
    if isinstance(rm, Section):
        lead = _grab(lambda: rm.opt_float("lead_time_min"), ok)
        default_lead_s = 60.0 * (60.0 if lead is None else lead)
        names_seen: set[str] = set()
        for node, where in _grab(lambda: rm.items_of("obligations"), ok) or []:
            try:
                om = Section(ctx, node, where)
                name = om.req_str("name")
                if not _NAME_RE.fullmatch(name):
                    om.error("name", "must be 1-64 letters, digits, . _ -")
                    raise Abort
                if name in names_seen:
                    om.error("name", "duplicate obligation name")
                    raise Abort
                names_seen.add(name)
                within = om.req_float("within_h")
                level = om.req_enum("min_severity", Severity)
                names = contact_names(om, "notify")
                own_lead = om.opt_float("lead_time_min")
                description = om.opt_str("description") or ""
                om.finish()
                try:
                    obligations.append(Obligation(
                        name, within * 3600.0, level, names,
                        default_lead_s if own_lead is None else own_lead * 60.0, description))
                except ValueError as exc:
                    key = "within_h" if str(exc).startswith("`within_h`") else (
                        "lead_time_min" if own_lead is not None else "within_h")
                    om.error(key, str(exc).replace(f"`{key}` ", "", 1))
                    raise Abort from None
            except Abort:
                ok[0] = False
        rm.finish()
    if not ok[0]:
        return None
    return PeoplePlan(contacts, default, tuple(rules), escalation, tuple(obligations))


def _read_contact(ctx: Ctx, name: str, node: Node, where: str,
                  defined_hooks: list[str]) -> Contact:
    if not _NAME_RE.fullmatch(name):
        ctx.error(node.line, where, "a contact's name must be 1-64 letters, digits, . _ -")
        raise Abort
    cm = Section(ctx, node, where)
    role = cm.req_enum("role", ContactRole)
    reach = _strs_or_one(cm, "reach", required=True)
    person = cm.opt_str("person") or ""
    hours = cm.opt_str("hours") or ""
    cm.finish()
    if not reach:
        cm.error("reach", "must name at least one hook (log, webhook or command)")
        raise Abort
    for hook in reach:
        if hook not in defined_hooks:
            cm.error("reach", f"unknown hook {hook!r}; defined: "
                              + (", ".join(defined_hooks) or "none"))
            raise Abort
    return Contact(name, role, reach, person, hours)


def _read_severity_rule(ctx: Ctx, node: Node, where: str) -> SeverityRule:
    rm = Section(ctx, node, where)
    ok = [True]
    name = _grab(lambda: rm.req_str("name"), ok)
    level = _grab(lambda: rm.req_enum("level", Severity), ok)
    wm = _grab(lambda: rm.map("when", required=True), ok)
    rm.finish()
    trigger: tuple[str, ...] = ()
    ai: bool | None = None
    modes: tuple[str, ...] = ()
    margin: float | None = None
    if isinstance(wm, Section):
        trigger = _grab(lambda: _strs_or_one(wm, "trigger", required=False), ok) or ()
        ai = _grab(lambda: wm.opt_bool("ai_in_control"), ok)
        modes = _grab(lambda: _strs_or_one(wm, "mode_after", required=False), ok) or ()
        for mode in modes:
            if mode not in _MODES:
                wm.error("mode_after", f"unknown mode {mode!r}; use " + ", ".join(_MODES))
                ok[0] = False
        margin = _grab(lambda: wm.opt_float("margin_below"), ok)
        if margin is not None and not 0.0 <= margin <= 1.0:
            wm.error("margin_below", f"must be in [0, 1] (a fraction of the span), not "
                                     f"{margin:g}")
            ok[0] = False
        wm.finish()
        if ok[0] and not (trigger or modes or ai is not None or margin is not None):
            rm.error("when", "needs at least one condition: trigger, ai_in_control, "
                             "mode_after, margin_below")
            ok[0] = False
    if not ok[0] or not isinstance(name, str) or level is None:
        raise Abort
    return SeverityRule(name, level, trigger, ai, modes, margin)


_MODES: Final = ("auto", "shadow", "manual", "safe_stop")


def _read_danger(m: Section, ok: list[bool]) -> dict[str, tuple[float, float]]:
    """``danger_limits: {sensor: [min, max], ...}`` (engineering units)."""
    out: dict[str, tuple[float, float]] = {}
    dm = _grab(lambda: m.map("danger_limits"), ok)
    if not isinstance(dm, Section):
        return out
    for key, _node, _where in dm.entries():
        try:
            pair = dm.opt_floats(key)
        except Abort:
            ok[0] = False
            continue
        if pair is None or len(pair) != 2 or not pair[0] < pair[1]:
            dm.error(key, "must be [min, max] with min < max")
            ok[0] = False
            continue
        out[key] = (pair[0], pair[1])
    dm.finish()
    return out


def _read_requires(m: Section, ok: list[bool]) -> ResolveRequirements:
    """``resolve_requires: {checklist: [phase, ...], review: bool}``; absent: everything."""
    rm = _grab(lambda: m.map("resolve_requires"), ok)
    if not isinstance(rm, Section):
        return ResolveRequirements()
    phases = _grab(lambda: rm.opt_strs("checklist"), ok)
    review = _grab(lambda: rm.opt_bool("review"), ok)
    rm.finish()
    known = [p.value for p in ChecklistPhase]
    chosen: list[ChecklistPhase] = []
    for phase in phases if phases is not None else known:
        if phase not in known:
            rm.error("checklist", f"unknown phase {phase!r}; use " + ", ".join(known))
            ok[0] = False
        else:
            chosen.append(ChecklistPhase(phase))
    return ResolveRequirements(tuple(chosen), True if review is None else review)
