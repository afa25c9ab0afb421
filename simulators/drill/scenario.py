"""Drill scenarios: YAML files in ``configs/drills/``, read into frozen dataclasses.

A scenario names the plant, the site config the gateway runs (relative to the scenario file),
the AI controller (a zoo model, the team's own ONNX file, or the site's own model; run inside
the gateway, or by an external program writing through the gateway's northbound Modbus
server), and a timeline of injections. Errors are reported like site errors:
``file:line: key.path: message``, all of them at once. ``docs/drills.md`` describes every key.
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
from simulators.drill.causes import Cause
from simulators.drill.profiles import Profile, read_profile

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config.schema import Site

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["ControllerMode", "Expect", "Injection", "InjectionKind", "OwnModel", "Scenario",
           "load_scenario", "with_duration"]

PLANTS = ("water_tank", "boiler")
MODELS = ("nominal", "hijack", "backdoor", "drift", "stealthy", "oscillation", "swapped")
# The plant's own disturbances a scenario may drive (simulators/plants/*: set_disturbance).
DISTURBANCES = {"water_tank": ("demand",), "boiler": ("load", "temperature")}
# Scenario.model when the AI is not a zoo model.
OWN_FILE, SITE_MODEL = "file", "site"


class ControllerMode(StrEnum):
    ONNX = "onnx"          # the zoo model runs inside the gateway
    EXTERNAL = "external"  # a separate client runs it and writes through the northbound server
    # A scripted MCP agent runs it and proposes through the gateway's MCP server
    # (simulators.drill.agent); an `agent_hostile` injection turns it hostile.
    MCP = "mcp"


class InjectionKind(StrEnum):
    TIME_BOMB = "time_bomb"                # a dormant model variant wakes (PLC uptime reaches it)
    BACKDOOR_TRIGGER = "backdoor_trigger"  # the process is driven into the backdoor's region
    SWAP_MODEL = "swap_model"              # the running model is replaced in memory
    SENSOR_FREEZE = "sensor_freeze"        # the PLC keeps publishing one value, good quality
    SENSOR_SPOOF = "sensor_spoof"          # the PLC publishes a forged value
    PLC_DISCONNECT = "plc_disconnect"      # the PLC drops off the network for a while
    AI_SILENT = "ai_silent"                # the external AI stops writing
    SENSOR_PROFILE = "sensor_profile"      # the PLC publishes a sensor along a profile
    DISTURBANCE = "disturbance"            # a process disturbance driven along a profile
    AGENT_HOSTILE = "agent_hostile"        # the MCP agent turns hostile (controller kind mcp)


class Expect(StrEnum):
    """What the gateway should do about an injection: trip (an attack or a fault), or not
    (a benign disturbance, a distractor)."""

    TRIP = "trip"
    NO_TRIP = "no_trip"


# The cause each kind of injection really is, for the scorecard's "cause named" column (an
# injection's own `cause` key overrides it, and only a declared cause decides pass or fail).
NATURAL_CAUSE = {
    InjectionKind.TIME_BOMB: Cause.AI_BEHAVIOUR,
    InjectionKind.BACKDOOR_TRIGGER: Cause.AI_BEHAVIOUR,
    InjectionKind.SWAP_MODEL: Cause.AI_BEHAVIOUR,
    InjectionKind.SENSOR_FREEZE: Cause.SENSING,
    InjectionKind.SENSOR_SPOOF: Cause.SENSING,
    InjectionKind.SENSOR_PROFILE: Cause.SENSING,
    InjectionKind.PLC_DISCONNECT: Cause.DEVICE,
    InjectionKind.AI_SILENT: Cause.AI_UNAVAILABLE,
    InjectionKind.AGENT_HOSTILE: Cause.AI_BEHAVIOUR,
}


@dataclass(frozen=True)
class Injection:
    """One injection. ``window_s``: (start, end) in which the trip is expected (a model's own
    trigger fires when the process gets there, not when the injection starts); detection is
    timed from the window's start (default: ``at_s``). ``budget_s``: this injection's
    detection budget (default: the scenario's ``detect_budget_s``). ``cause``: the cause the
    incident must name (scored only when given)."""

    at_s: float
    kind: InjectionKind
    tag: str | None = None
    value: float | None = None
    model: str | None = None
    duration_s: float | None = None
    profile: Profile | None = None
    name: str | None = None
    window_s: tuple[float, float] | None = None
    expect: Expect = Expect.TRIP
    cause: Cause | None = None
    budget_s: float | None = None
    label: str | None = None

    @property
    def start_s(self) -> float:
        """When the gateway should start to see it: the window's start, else ``at_s``."""
        return self.window_s[0] if self.window_s is not None else self.at_s

    @property
    def natural_cause(self) -> Cause | None:
        return self.cause or NATURAL_CAUSE.get(self.kind)

    @property
    def title(self) -> str:
        return self.label or self.kind.value

    def describe(self) -> str:
        k = self.kind
        if k is InjectionKind.SENSOR_PROFILE:
            assert self.profile is not None
            return f"sensor {self.tag} {self.profile.describe()}"
        if k is InjectionKind.DISTURBANCE:
            assert self.profile is not None
            return f"disturbance {self.name} {self.profile.describe()}"
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
        if k is InjectionKind.AGENT_HOSTILE:
            return ("the MCP agent turns hostile: limits, outside the envelope, a flood, "
                    "operator tools, a reset")
        if k is InjectionKind.TIME_BOMB:
            return "dormant model variant wakes"
        return "process driven into the backdoor's trigger region"


@dataclass(frozen=True)
class Scenario:
    """One drill. ``detect_budget_s``: the longest time from an injection (its window's
    start) to its trip for the drill to pass; ``auto_after_s``: when the drill's operator first
    asks for AUTO; refused, the operator asks again every ``auto_retry_s`` until it is granted,
    a trip latches, or ``auto_until_s`` passes (default: the end of the run).
    ``clean_shadow_s``: the clean shadow period the gateway requires before AUTO (default:
    the site's, shortened to end two cycles before ``auto_after_s``, so drills stay short);
    ``baseline_s``: how long the baseline (no gateway) runs, when the scenario has one: long
    enough for the attack to do its harm (it stops early once the process has left its safe
    range). ``own_model``: the ONNX file the AI runs when it is not a zoo model (``model`` is
    then ``"file"``, the scenario's own, or ``"site"``, the site's own)."""

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
    own_model: OwnModel | None = None
    auto_retry_s: float = 1.0
    auto_until_s: float | None = None
    clean_shadow_s: float | None = None
    agent: str = "drill-agent"  # the MCP agent's name (controller kind mcp)

    @property
    def baseline_duration_s(self) -> float:
        return self.baseline_s if self.baseline_s is not None else self.duration_s

    @property
    def attacks(self) -> tuple[Injection, ...]:
        """The injections the gateway should trip on (attacks and faults), in time order."""
        return tuple(i for i in self.injections if i.expect is Expect.TRIP)

    @property
    def injected_at_s(self) -> float | None:
        """When the first attack or fault starts to show (benign injections do not count)."""
        return min((i.start_s for i in self.attacks), default=None)


@dataclass(frozen=True)
class OwnModel:
    """A team's own ONNX file and how it maps to the site's tags (the site's ``controller``
    keys, see :class:`gateway.config.schema.ControllerSpec`). ``source``: where it was
    declared (the scenario or the site file)."""

    path: Path
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_offset: tuple[float, ...] = ()
    input_scale: tuple[float, ...] = ()
    output_offset: tuple[float, ...] = ()
    output_scale: tuple[float, ...] = ()
    source: Path | None = None


_NEEDS = {
    InjectionKind.SWAP_MODEL: ("model",),
    InjectionKind.SENSOR_FREEZE: ("tag",),
    InjectionKind.SENSOR_SPOOF: ("tag", "value"),
    InjectionKind.PLC_DISCONNECT: ("duration_s",),
    InjectionKind.SENSOR_PROFILE: ("tag", "profile"),
    InjectionKind.DISTURBANCE: ("name", "profile"),
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
    last = max(last, scenario.auto_after_s)
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
    site_cfg = _site(ctx, m, site) if site is not None and site.is_file() else None
    if site is not None and site.is_file() and site_cfg is None:
        ok = False
    controller, model = ControllerMode.ONNX, "nominal"
    own: OwnModel | None = None
    agent = "drill-agent"
    cm = grab(m.map, "controller", True)
    if cm is not None:
        controller = grab(cm.req_enum, "kind", ControllerMode) or controller
        if cm.has("agent"):
            agent = grab(cm.req_str, "agent") or agent
            if controller is not ControllerMode.MCP:
                cm.error("agent", "names the MCP agent of controller kind mcp")
                ok = False
        picked = _read_model(cm, path, site_cfg)
        if picked is None:
            ok = False
        else:
            model, own = picked
        cm.finish()
    seed = grab(m.opt_int, "seed") or 0
    duration = grab(m.req_float, "duration_s")
    auto_after = grab(m.opt_float, "auto_after_s")
    budget = grab(m.opt_float, "detect_budget_s")
    baseline = grab(m.opt_float, "baseline_s")
    retry = grab(m.opt_float, "auto_retry_s")
    until = grab(m.opt_float, "auto_until_s")
    clean = grab(m.opt_float, "clean_shadow_s")
    for key, value in (("duration_s", duration), ("auto_after_s", auto_after),
                       ("detect_budget_s", budget), ("baseline_s", baseline),
                       ("auto_retry_s", retry), ("auto_until_s", until),
                       ("clean_shadow_s", clean)):
        if value is not None and not value > 0:
            m.error(key, f"must be > 0, not {value}")
            ok = False
    injections: list[Injection] = []
    for node, where in m.items_of("injections"):
        try:
            im = Section(ctx, node, where)
            inj = _read_injection(im, plant, site_cfg)
            im.finish()
        except Abort:
            ok = False
            continue
        if duration is not None and not 0 <= inj.at_s < duration:
            ctx.error(node.line, f"{where}.at_s", f"must lie in [0, duration_s={duration:g})")
            ok = False
        if inj.window_s is not None and not inj.at_s <= inj.window_s[0] < inj.window_s[1]:
            ctx.error(node.line, f"{where}.window_s",
                      f"must be [start, end] with at_s <= start < end, not "
                      f"{list(inj.window_s)}")
            ok = False
        if inj.kind is InjectionKind.AGENT_HOSTILE and controller is not ControllerMode.MCP:
            ctx.error(node.line, f"{where}.kind", "agent_hostile needs controller kind mcp "
                      "(an MCP agent to turn hostile)")
            ok = False
        if own is not None and inj.kind is InjectionKind.SWAP_MODEL and not _zoo_shaped(
                own, plant):
            ctx.error(node.line, f"{where}.kind", "swap_model swaps in a zoo model, which "
                      "fits only the zoo's interface; the drill's own model has another")
            ok = False
        injections.append(inj)
    if any(i.expect is Expect.TRIP for i in injections) and budget is None and any(
            i.budget_s is None and i.expect is Expect.TRIP for i in injections):
        m.error("detect_budget_s", "required when the scenario injects something")
        ok = False
    m.finish()
    ok = ok and grab.ok
    if not ok or plant is None or site is None or duration is None:
        return None
    auto = 30.0 if auto_after is None else auto_after
    return Scenario(name, path, description, plant, site, controller, model, seed, duration,
                    auto, budget, tuple(sorted(injections, key=lambda i: i.at_s)), baseline,
                    own, 1.0 if retry is None else retry, until, clean, agent)


def _site(ctx: Ctx, m: Section, site: Path) -> Site | None:
    """The site the scenario names, loaded (its own errors join the scenario's)."""
    from gateway.config import load_config

    try:
        return load_config(site)
    except ConfigError as exc:
        ctx.issues.extend(exc.issues)
        return None


def _read_model(cm: Section, path: Path, site: Site | None) -> tuple[str, OwnModel | None] | None:
    """(model label, own model) from the scenario's ``controller``: a zoo ``model``, or a
    ``file`` with its ``sha256`` and mapping, or neither (the site's own model if it names
    one, else the zoo's nominal model). None if invalid (errors recorded)."""
    from gateway.config.schema import ControllerKind

    model = cm.opt_str("model") if cm.has("model") else None
    file_text = cm.opt_str("file") if cm.has("file") else None
    keys = ("sha256", "inputs", "outputs", "input_offset", "input_scale", "output_offset",
            "output_scale")
    site_spec = site.controller if site is not None else None
    site_own = (site_spec is not None and site_spec.kind is ControllerKind.ONNX)
    if file_text is None:
        for key in keys:
            if cm.has(key):
                cm.error(key, "goes with controller.file (the team's own ONNX file)")
                return None
    if model is not None and file_text is not None:
        cm.error("file", "give either model (a zoo name) or file (your own ONNX file), "
                         "not both")
        return None
    if site_own and (model is not None or file_text is not None):
        assert site_spec is not None
        assert site is not None
        what = site_spec.model if site_spec.model is not None else (
            f"registry {site_spec.registry}, {site_spec.name!r}")
        cm.error("model" if model is not None else "file",
                 f"the site {site.site.name!r} runs its own ONNX model ({what}); a drill "
                 "never replaces it: remove this key to drill the site's model")
        return None
    if model is not None:
        if model not in MODELS:
            cm.error("model", f"must be one of {', '.join(MODELS)}, or use controller.file "
                              f"for your own ONNX file; not {model!r}")
            return None
        return model, None
    if file_text is not None:
        own = _read_own_file(cm, path, file_text, site)
        return None if own is None else (OWN_FILE, own)
    if site_own:
        assert site_spec is not None
        assert site is not None
        if site_spec.model is None or site_spec.sha256 is None:
            cm.error("kind", f"the site {site.site.name!r} loads its model from a registry; "
                             "drills run a model file (name it in the site, or use "
                             "controller.file)")
            return None
        own = OwnModel(site_spec.model, site_spec.sha256, site_spec.inputs, site_spec.outputs,
                       site_spec.input_offset, site_spec.input_scale, site_spec.output_offset,
                       site_spec.output_scale, site.source)
        problem = _check_model(own)
        if problem is not None:
            cm.error("kind", f"the site's own model: {problem[1]}")
            return None
        return SITE_MODEL, own
    return "nominal", None


def _read_own_file(cm: Section, path: Path, file_text: str, site: Site | None
                   ) -> OwnModel | None:
    model_path = (path.parent / file_text).resolve()
    if not model_path.is_file():
        cm.error("file", f"no such model file: {model_path}")
        return None
    sha = cm.opt_str("sha256")
    inputs, outputs = cm.opt_strs("inputs"), cm.opt_strs("outputs")
    bad = False
    for key, value in (("sha256", sha), ("inputs", inputs), ("outputs", outputs)):
        if not value:
            cm.ctx.error(cm.node.line, cm.sub_path(key), "required with controller.file")
            bad = True
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        cm.error("sha256", "must be the model's sha256 as 64 lowercase hex digits")
        bad = True
    scales = {k: cm.opt_floats(k) or () for k in ("input_offset", "input_scale",
                                                  "output_offset", "output_scale")}
    if bad:
        return None
    assert sha is not None
    assert inputs is not None
    assert outputs is not None
    if site is not None:
        sensors = {t.name for t in site.sensors}
        actuators = {t.name for t in site.actuators}
        for name in inputs:
            if name not in sensors | actuators:
                cm.error("inputs", f"{name!r} is not a tag of the site {site.site.name!r} "
                                   f"(its tags: {', '.join(sorted(sensors | actuators))})")
                bad = True
        for name in outputs:
            if name not in actuators:
                cm.error("outputs", f"{name!r} is not an actuator of the site "
                                    f"{site.site.name!r} (its actuators: "
                                    f"{', '.join(sorted(actuators))})")
                bad = True
    for key, values in scales.items():
        n = len(inputs) if key.startswith("input") else len(outputs)
        if values and len(values) != n:
            cm.error(key, f"has {len(values)} values for {n} tags")
            bad = True
        if key.endswith("scale") and any(v == 0 for v in values):
            cm.error(key, "scales must not be 0")
            bad = True
    if bad:
        return None
    own = OwnModel(model_path, sha, inputs, outputs, scales["input_offset"],
                   scales["input_scale"], scales["output_offset"], scales["output_scale"],
                   path)
    problem = _check_model(own)
    if problem is not None:
        cm.error(*problem)
        return None
    return own


def _check_model(own: OwnModel) -> tuple[str, str] | None:
    """(key, message) if the gateway would refuse the model (hash, format, widths), else
    None. Loads it exactly as the gateway does."""
    from gateway.control.onnx_policy import (
        ModelError,
        ModelIntegrityError,
        ModelNotFound,
        OnnxPolicyConfig,
        load_policy,
    )

    n_in, n_out = len(own.inputs), len(own.outputs)
    config = OnnxPolicyConfig(
        model_path=own.path, sha256=own.sha256, inputs=own.inputs, outputs=own.outputs,
        input_offset=own.input_offset or (0.0,) * n_in,
        input_scale=own.input_scale or (1.0,) * n_in,
        output_offset=own.output_offset or (0.0,) * n_out,
        output_scale=own.output_scale or (1.0,) * n_out, deadline_ms=1000.0)
    try:
        load_policy(config).close()
    except ModelNotFound as exc:
        return "file", str(exc)
    except ModelIntegrityError as exc:
        return "sha256", str(exc)
    except ModelError as exc:
        text = str(exc)
        return ("inputs" if "input" in text else "outputs" if "output" in text else "file",
                text)
    return None


def _zoo_shaped(own: OwnModel, plant: str | None) -> bool:
    """Whether ``own`` has its plant's zoo interface (a zoo model can be swapped in)."""
    from simulators.zoo.policies import INTERFACES

    if plant not in INTERFACES:
        return False
    z = INTERFACES[plant]
    return (own.inputs, own.outputs, own.input_offset, own.input_scale, own.output_offset,
            own.output_scale) == (z.inputs, z.outputs, z.input_offset, z.input_scale,
                                  z.output_offset, z.output_scale)


def _read_injection(m: Section, plant: str | None, site: Site | None) -> Injection:
    at_s = m.req_float("at_s")
    kind = m.req_enum("kind", InjectionKind)
    pm = m.map("profile")
    profile = read_profile(pm) if pm is not None else None
    window = m.opt_floats("window_s")
    if window is not None and len(window) != 2:
        m.error("window_s", f"must be [start, end] in seconds, not {list(window)}")
        raise Abort
    default_expect = Expect.NO_TRIP if kind is InjectionKind.DISTURBANCE else Expect.TRIP
    expect = m.opt_enum("expect", Expect) or default_expect
    cause = m.opt_enum("cause", Cause)
    inj = Injection(at_s, kind, m.opt_str("tag"), m.opt_float("value"), m.opt_str("model"),
                    m.opt_float("duration_s"), profile, m.opt_str("name"),
                    (window[0], window[1]) if window is not None else None, expect, cause,
                    m.opt_float("detect_budget_s"), m.opt_str("label"))
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
    if inj.budget_s is not None and not inj.budget_s > 0:
        m.error("detect_budget_s", f"must be > 0, not {inj.budget_s}")
        raise Abort
    if expect is Expect.NO_TRIP and cause is not None:
        m.error("cause", "an injection expected not to trip has no cause to name")
        raise Abort
    if profile is not None and kind not in (InjectionKind.SENSOR_PROFILE,
                                            InjectionKind.DISTURBANCE):
        m.error("profile", "only sensor_profile and disturbance injections take a profile")
        raise Abort
    if kind is InjectionKind.DISTURBANCE and plant in DISTURBANCES and (
            inj.name not in DISTURBANCES[plant]):
        m.error("name", f"the {plant} plant's disturbances are "
                        f"{', '.join(DISTURBANCES[plant])}; not {inj.name!r}")
        raise Abort
    if inj.tag is not None and site is not None and inj.tag not in {
            t.name for t in site.sensors}:
        m.error("tag", f"{inj.tag!r} is not a sensor of the site {site.site.name!r} (its "
                       f"sensors: {', '.join(t.name for t in site.sensors)})")
        raise Abort
    return inj
