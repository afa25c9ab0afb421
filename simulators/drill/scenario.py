"""Drill scenarios: YAML files in ``configs/drills/``, read into frozen dataclasses.

A scenario names the plant, the site config the gateway runs (relative to the scenario file),
the AI controller (a zoo model run inside the gateway, or an external program writing through
the gateway's northbound Modbus server), and a timeline of injections. Errors are reported like
site errors: ``file:line: key.path: message``, all of them at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from gateway.config.loader import Abort, ConfigError, Ctx, Section
from gateway.config.yamlsrc import SourceError
from gateway.config.yamlsrc import load as load_yaml

if TYPE_CHECKING:
    from collections.abc import Callable

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["ControllerMode", "Injection", "InjectionKind", "Scenario", "load_scenario",
           "with_duration"]

PLANTS = ("water_tank", "boiler")
MODELS = ("nominal", "hijack", "backdoor", "drift", "stealthy", "oscillation", "swapped")


class ControllerMode(StrEnum):
    ONNX = "onnx"          # the zoo model runs inside the gateway
    EXTERNAL = "external"  # a separate client runs it and writes through the northbound server


class InjectionKind(StrEnum):
    TIME_BOMB = "time_bomb"                # a dormant model variant wakes (PLC uptime reaches it)
    BACKDOOR_TRIGGER = "backdoor_trigger"  # the process is driven into the backdoor's region
    SWAP_MODEL = "swap_model"              # the running model is replaced in memory
    SENSOR_FREEZE = "sensor_freeze"        # the PLC keeps publishing one value, good quality
    SENSOR_SPOOF = "sensor_spoof"          # the PLC publishes a forged value
    PLC_DISCONNECT = "plc_disconnect"      # the PLC drops off the network for a while
    AI_SILENT = "ai_silent"                # the external AI stops writing


@dataclass(frozen=True)
class Injection:
    at_s: float
    kind: InjectionKind
    tag: str | None = None
    value: float | None = None
    model: str | None = None
    duration_s: float | None = None

    def describe(self) -> str:
        k = self.kind
        if k is InjectionKind.SWAP_MODEL:
            return f"model swapped for {self.model!r} at runtime"
        if k is InjectionKind.SENSOR_FREEZE:
            return f"sensor {self.tag} frozen"
        if k is InjectionKind.SENSOR_SPOOF:
            return f"sensor {self.tag} spoofed to {self.value:g}"
        if k is InjectionKind.PLC_DISCONNECT:
            return f"PLC off the network for {self.duration_s:g} s"
        if k is InjectionKind.AI_SILENT:
            return "external AI goes silent"
        if k is InjectionKind.TIME_BOMB:
            return "dormant model variant wakes"
        return "process driven into the backdoor's trigger region"


@dataclass(frozen=True)
class Scenario:
    """One drill. ``detect_budget_s``: the longest time from the first injection to the first
    trip for the drill to pass; ``auto_after_s``: when the drill's operator asks for AUTO
    (the site's clean shadow period is shortened to fit, so drills stay short);
    ``baseline_s``: how long the baseline (no gateway) runs, when the scenario has one: long
    enough for the attack to do its harm (it stops early once the process has left its safe
    range)."""

    name: str
    source: Path
    description: str
    plant: str
    site: Path
    controller: ControllerMode
    model: str
    seed: int
    duration_s: float
    auto_after_s: float
    detect_budget_s: float | None
    injections: tuple[Injection, ...] = field(default=())
    baseline_s: float | None = None

    @property
    def baseline_duration_s(self) -> float:
        return self.baseline_s if self.baseline_s is not None else self.duration_s

    @property
    def injected_at_s(self) -> float | None:
        return min((i.at_s for i in self.injections), default=None)


_NEEDS = {
    InjectionKind.SWAP_MODEL: ("model",),
    InjectionKind.SENSOR_FREEZE: ("tag",),
    InjectionKind.SENSOR_SPOOF: ("tag", "value"),
    InjectionKind.PLC_DISCONNECT: ("duration_s",),
}


def with_duration(scenario: Scenario, duration_s: float) -> Scenario:
    """``scenario`` run for ``duration_s`` simulated seconds instead of its own ``duration_s``
    (a long drill: the injections keep their times and durations, so a fault that is never
    lifted, a frozen sensor or a silent AI, is held to the end, and a trip's response holds as
    long). Raises ``ValueError`` unless ``duration_s`` is finite and later than every injection
    and than ``auto_after_s``."""
    if not (isinstance(duration_s, float | int) and math.isfinite(duration_s)
            and duration_s > 0):
        raise ValueError(f"duration must be a finite number of seconds > 0, not {duration_s!r}")
    last = max((i.at_s for i in scenario.injections), default=scenario.auto_after_s)
    if not duration_s > max(last, scenario.auto_after_s):
        raise ValueError(f"duration {duration_s:g} s: scenario {scenario.name!r} needs more than "
                         f"{max(last, scenario.auto_after_s):g} s (its last injection, or AUTO)")
    return replace(scenario, duration_s=float(duration_s))


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file. Raises :class:`gateway.config.ConfigError` listing every problem."""
    path = Path(path)
    try:
        root_node = load_yaml(path)
    except SourceError as exc:
        raise ConfigError([exc.issue]) from None
    ctx = Ctx(str(path))
    try:
        scenario = _read(ctx, Section(ctx, root_node, ""), path)
    except Abort:
        scenario = None
    if ctx.issues or scenario is None:
        raise ConfigError(ctx.issues)
    return scenario


class _Grab:
    """Calls a getter; an error (already recorded) makes the scenario invalid but reading
    goes on, so that every problem is reported at once."""

    def __init__(self) -> None:
        self.ok = True

    def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return fn(*args, **kwargs)
        except Abort:
            self.ok = False
            return None


def _read(ctx: Ctx, m: Section, path: Path) -> Scenario | None:
    grab = _Grab()
    ok = True

    name = grab(m.opt_str, "name") or path.stem
    description = grab(m.opt_str, "description") or ""
    plant = grab(m.req_str, "plant")
    if plant is not None and plant not in PLANTS:
        m.error("plant", f"must be one of {', '.join(PLANTS)}; not {plant!r}")
        ok = False
    site_text = grab(m.req_str, "site")
    site = (path.parent / site_text).resolve() if site_text else None
    if site is not None and not site.is_file():
        m.error("site", f"no such site file: {site}")
        ok = False
    controller, model = ControllerMode.ONNX, "nominal"
    cm = grab(m.map, "controller", True)
    if cm is not None:
        controller = grab(cm.req_enum, "kind", ControllerMode) or controller
        model = grab(cm.req_str, "model") or model
        if model not in MODELS:
            cm.error("model", f"must be one of {', '.join(MODELS)}; not {model!r}")
            ok = False
        cm.finish()
    seed = grab(m.opt_int, "seed") or 0
    duration = grab(m.req_float, "duration_s")
    auto_after = grab(m.opt_float, "auto_after_s")
    budget = grab(m.opt_float, "detect_budget_s")
    baseline = grab(m.opt_float, "baseline_s")
    for key, value in (("duration_s", duration), ("auto_after_s", auto_after),
                       ("detect_budget_s", budget), ("baseline_s", baseline)):
        if value is not None and not value > 0:
            m.error(key, f"must be > 0, not {value}")
            ok = False
    injections: list[Injection] = []
    for node, where in m.items_of("injections"):
        try:
            im = Section(ctx, node, where)
            inj = _read_injection(im)
            im.finish()
        except Abort:
            ok = False
            continue
        if duration is not None and not 0 <= inj.at_s < duration:
            ctx.error(node.line, f"{where}.at_s", f"must lie in [0, duration_s={duration:g})")
            ok = False
        injections.append(inj)
    if injections and budget is None:
        m.error("detect_budget_s", "required when the scenario injects something")
        ok = False
    m.finish()
    ok = ok and grab.ok
    if not ok or plant is None or site is None or duration is None:
        return None
    auto = 30.0 if auto_after is None else auto_after
    first = min((i.at_s for i in injections), default=None)
    if first is not None and first <= auto:
        m.error("auto_after_s", f"the AI must be in AUTO before the first injection "
                                f"(at {first:g} s); {auto:g} s is too late")
        return None
    return Scenario(name, path, description, plant, site, controller, model, seed, duration,
                    auto, budget, tuple(sorted(injections, key=lambda i: i.at_s)), baseline)


def _read_injection(m: Section) -> Injection:
    at_s = m.req_float("at_s")
    kind = m.req_enum("kind", InjectionKind)
    inj = Injection(at_s, kind, m.opt_str("tag"), m.opt_float("value"), m.opt_str("model"),
                    m.opt_float("duration_s"))
    for key in _NEEDS.get(kind, ()):
        if getattr(inj, key) is None:
            m.ctx.error(m.node.line, m.sub_path(key), f"required for {kind.value}")
            raise Abort
    if inj.model is not None and inj.model not in MODELS:
        m.error("model", f"must be one of {', '.join(MODELS)}; not {inj.model!r}")
        raise Abort
    if inj.duration_s is not None and not inj.duration_s > 0:
        m.error("duration_s", f"must be > 0, not {inj.duration_s}")
        raise Abort
    return inj
