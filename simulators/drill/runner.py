"""Run one drill: plant simulator, gateway and AI controller in lockstep over loopback sockets.

Stepped time. A virtual clock advances one control cycle per step; in each step:

1. injections due now are applied (to the plant's PLC, the model, or the external AI);
2. the gateway reads the PLC over the real protocol (:meth:`Gateway.refresh`);
3. an external AI, if the scenario has one, writes its command through the gateway's
   northbound Modbus server (a real pymodbus client);
4. the gateway runs one control cycle (:meth:`Gateway.cycle`) and writes the PLC;
5. the PLC scans what it was written and the plant's physics advance one cycle.

Nothing waits for wall time, so ten simulated minutes take seconds, and a run is reproducible
for a seed. ``gateway=False`` is the baseline: the same AI reads and writes the PLC directly,
with nothing between them, to show what the gateway prevents.

Every value that reached the plant is in the plant server's own record (``writes``); the
scorecard (:mod:`simulators.drill.score`) is computed from that record, not from the gateway's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from gateway.adapters.base import AdapterError, ClientInfo, Role, TagStore
from gateway.config import load_config
from gateway.config.schema import (
    ControllerKind,
    ControllerSpec,
    McpAgent,
    McpServerSpec,
    ModbusDevice,
    ModbusServerSpec,
    Northbound,
    OpcUaDevice,
)
from gateway.control.ai import AiWiring, onnx_policy_config
from gateway.control.onnx_policy import OnnxPolicy, load_policy
from gateway.supervisor.detectors import CanaryCases
from simulators.drill.scenario import ControllerMode, Injection, InjectionKind, Scenario
from simulators.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.schema import Device, Site
    from gateway.runtime.gateway import Gateway
    from simulators.drill.agent import McpAgentDriver
    from simulators.drill.live import LiveScore, LiveWatch
    from simulators.drill.serve import DrillServing, WallPacer
    from simulators.plants.base import Plant, ProcessLimit

__all__ = ["DrillRun", "SimClock", "Tick", "run_drill"]

log = logging.getLogger("simulators.drill")

# The inference deadline in drills (see _controller).
DRILL_DEADLINE_MS = 500.0
# The drill's MCP agent's rate limit (northbound.mcp.agents[].calls_per_s, burst): a
# well-behaved agent makes two calls a step; a flood meets it.
AGENT_CALLS_PER_S = 40.0
AGENT_BURST = 20
OPERATOR = ClientInfo("drill", "127.0.0.1:0", "drill-operator", Role.ADMIN)


class SimClock:
    """The drill's virtual clock (seconds); everything in a drill reads it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Tick:
    """What the gateway (or the baseline AI) did in one step."""

    at_s: float
    mode: str          # the gateway's mode ("none" in a baseline run)
    source: str        # who the applied command came from: ai, fallback, safe
    proposal: tuple[float, ...]  # the AI's command (NaN where none)
    applied: tuple[float, ...]   # the command the gateway decided (actuator order)
    # Sensors the gateway did not trust in this step (frozen, stale, implausible...): unknown
    # to its envelope, so the scorecard judges the step's writes with them unknown too.
    untrusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mark:
    at_s: float
    kind: str      # trip, anomaly, mode_change, injection, ...
    name: str
    detail: str


@dataclass
class DrillRun:
    """Everything a scorecard and a report need."""

    scenario: Scenario
    gateway: bool
    site: Site
    cycle_s: float
    actuators: tuple[str, ...]
    ticks: list[Tick] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    writes: list[Any] = field(default_factory=list)   # the plant's PlantWrite record
    history: list[Any] = field(default_factory=list)  # the plant's Sample record
    limits: tuple[ProcessLimit, ...] = ()
    safe_values: tuple[float, ...] = ()
    initial_actuators: dict[str, float] = field(default_factory=dict)
    initial_published: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    audit_db: Path | None = None
    incidents: list[str] = field(default_factory=list)
    drill_site: Site | None = None  # the site as the drill ran it (ports, controller, ...)
    # Per incident: the detectors of its trips, first (its trigger) first.
    incident_trips: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The MCP agent's calls and what came of them (controller kind mcp; see
    # simulators.drill.agent.McpAgentDriver.summary).
    agent: dict[str, Any] | None = None
    # The model files the run loaded: (role, path, sha256); "ai" first, then swapped-in ones.
    models: list[tuple[str, Path, str]] = field(default_factory=list)
    # The drill operator's AUTO requests: how many, and when one was granted (None: never).
    auto_requests: int = 0
    auto_granted_at_s: float | None = None
    # ``drill --live``: how the people worked the incident while the gateway ran (None: not
    # a live drill, or the drill opened no incident).
    live: LiveScore | None = None


def _plant(scenario: Scenario, uptime_s: float) -> Plant:
    if scenario.plant == "water_tank":
        from simulators.plants.water_tank import WaterTank

        return WaterTank(seed=scenario.seed, uptime_s=uptime_s)
    from simulators.plants.boiler import Boiler

    return Boiler(seed=scenario.seed, uptime_s=uptime_s)


def _model_file(workdir: Path, plant: str, variant: str) -> tuple[Path, str]:
    from simulators.zoo import policies
    from simulators.zoo.graphs import sha256_hex

    data = policies.build(plant, variant)
    path = workdir / "models" / plant / f"{variant}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, sha256_hex(data)


def _controller(site: Site, scenario: Scenario, model: Path, sha: str,
                kind: ControllerKind) -> ControllerSpec:
    """The drill's AI controller: the scenario's (or the site's) own model with its own
    mapping to the site's tags, else the zoo model with the zoo's interface."""
    from simulators.zoo import policies

    own = scenario.own_model
    if own is not None:
        mapping: tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...], tuple[float, ...],
                       tuple[float, ...], tuple[float, ...]] = (
            own.inputs, own.outputs, own.input_offset, own.input_scale, own.output_offset,
            own.output_scale)
    else:
        iface = policies.INTERFACES[scenario.plant]
        mapping = (iface.inputs, iface.outputs, iface.input_offset, iface.input_scale,
                   iface.output_offset, iface.output_scale)
    inputs, outputs, in_off, in_scale, out_off, out_scale = mapping
    return dataclasses.replace(
        site.controller, kind=kind, model=model, sha256=sha, inputs=inputs,
        outputs=outputs, input_offset=in_off, input_scale=in_scale,
        output_offset=out_off, output_scale=out_scale,
        # A drill runs on a virtual clock, but inference is real and its deadline is wall
        # time: on a shared 2-core machine a 50 ms deadline still saw four misses in a row
        # (a stall of 200 ms while two drills and a test suite ran) and a false trip in the
        # clean boiler run. Drills do not test compute speed (the deadline detector has its
        # own tests), so only a hung inference may miss this one.
        deadline_ms=max(site.controller.deadline_ms, DRILL_DEADLINE_MS))


def _policy(site: Site) -> OnnxPolicy:
    return load_policy(onnx_policy_config(site))


def _canary(site: Site, plant: str) -> CanaryCases:
    """The golden cases as registration would record them: the configured model's outputs."""
    from simulators.zoo import policies

    inputs = np.asarray(policies.canary_inputs(plant), dtype=np.float64)
    with _policy(site) as policy:
        rows = []
        for row in inputs:
            out = policy.infer_sync(np.ascontiguousarray(row)).outputs
            assert out is not None, "the zoo's model must answer its own golden inputs"
            rows.append(np.asarray(out, dtype=np.float64))
    return CanaryCases(inputs, np.array(rows), site.detection.canary_tolerance)


def _drill_site(site: Site, scenario: Scenario, server: Any, controller: ControllerSpec,
                external_port: int | None, serving: DrillServing | None = None,
                workdir: Path | None = None, mcp: McpServerSpec | None = None) -> Site:
    devices: list[Device] = []
    for dev in site.devices:
        if isinstance(dev, ModbusDevice):
            devices.append(dataclasses.replace(dev, host="127.0.0.1", port=server.modbus_port))
        elif isinstance(dev, OpcUaDevice):
            devices.append(dataclasses.replace(dev, endpoint=server.opcua_endpoint,
                                               subscribe=False))
    northbound = Northbound()
    if external_port is not None:
        northbound = Northbound(modbus=ModbusServerSpec(
            host="127.0.0.1", port=external_port, unit=1, allow=("127.0.0.1",),
            ai_clients=("127.0.0.1",)))
    if mcp is not None:
        northbound = dataclasses.replace(northbound, mcp=mcp)
    if serving is not None:
        assert workdir is not None
        northbound = serving.northbound(northbound, workdir / "pki")
    # The drill's operator asks for AUTO at auto_after_s; the clean shadow period required
    # before it is shortened to fit (drills compress time; the rule itself still applies),
    # unless the scenario sets its own.
    cycle_s = site.site.cycle_ms / 1000.0
    clean = scenario.clean_shadow_s
    if clean is None:
        clean = max(cycle_s, scenario.auto_after_s - 2 * cycle_s)
    operation = dataclasses.replace(site.operation, clean_shadow_s=clean)
    return dataclasses.replace(site, devices=tuple(devices), controller=controller,
                               northbound=northbound, operation=operation)


def _server_options(site: Site) -> dict[str, Any]:
    modbus = any(isinstance(d, ModbusDevice) for d in site.devices)
    opcua = [d for d in site.devices if isinstance(d, OpcUaDevice)]
    opts: dict[str, Any] = {"modbus_port": 0 if modbus else None,
                            "opcua_port": 0 if opcua else None}
    if opcua:
        opts["opcua_path"] = urlparse(opcua[0].endpoint).path or "/"
    return opts


class ExternalAi:
    """An external AI program: reads the gateway's northbound mirror, runs its model, writes
    its command to the gateway's northbound Modbus server, like a real client would."""

    def __init__(self, site: Site, port: int, policy: OnnxPolicy) -> None:
        from gateway.adapters.modbus.map import NorthboundMap

        self.map = NorthboundMap.from_site(site)
        self.site = site
        self.port = port
        self.policy = policy
        self.wiring = AiWiring(site)
        self.silent = False
        self.client: Any = None
        self.refused = 0
        self.last: np.ndarray | None = None

    async def connect(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        self.client = AsyncModbusTcpClient("127.0.0.1", port=self.port, timeout=2,
                                           retries=0, reconnect_delay=0)
        if not await self.client.connect():
            raise RuntimeError("external AI cannot reach the gateway's northbound server")

    async def step(self) -> None:
        from simulators.plant_server import decode_registers, encode_registers

        if self.silent:
            return
        n_s = len(self.map.sensors)
        rr = await self.client.read_input_registers(0, count=2 * n_s, device_id=self.map.unit)
        rh = await self.client.read_holding_registers(0, count=2 * len(self.map.actuators),
                                                      device_id=self.map.unit)
        if rr.isError() or rh.isError():
            return

        def floats(regs: list[int]) -> np.ndarray:  # the northbound map: float32 per tag
            return np.array([decode_registers("float32", 1.0, regs[i:i + 2])
                             for i in range(0, len(regs), 2)], dtype=np.float64)

        sensors, applied = floats(rr.registers), floats(rh.registers)
        out = self.policy.infer_sync(self.wiring.inputs(sensors, applied)).outputs
        if out is None:
            return
        values = applied.copy()
        outputs = self.site.controller.outputs
        for name, v in zip(outputs, np.asarray(out).tolist(), strict=True):
            values[self.map.actuators.index(name)] = v
        self.last = values
        # One FC16 per output (float32 at 2 registers per actuator): it writes only what it
        # drives, as a real client must (a write to an actuator it does not drive is refused).
        for name in outputs:
            j = self.map.actuators.index(name)
            wr = await self.client.write_registers(
                2 * j, encode_registers("float32", 1.0, float(values[j])),
                device_id=self.map.unit)
            if wr.isError():
                self.refused += 1

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


async def run_drill(scenario: Scenario, workdir: Path, *, gateway: bool = True,
                    seed: int | None = None, audit_db: Path | None = None,
                    recording: Path | None = None, serving: DrillServing | None = None,
                    pacer: WallPacer | None = None, live: LiveWatch | None = None
                    ) -> DrillRun:
    """Run ``scenario`` (with the gateway, or the baseline without it) and return the record.
    ``audit_db``: the gateway's audit database (default: one in ``workdir``); the incidents
    the run opened are read back from it into ``DrillRun.incidents``. ``recording``: write the
    gateway's whole flight recording there (JSONL, for forensic replay); the recorder then
    keeps the whole run, not only its last ``audit.recorder_before_s``.

    ``serving``: the gateway serves its dashboard and OPC UA endpoint there while it runs.
    ``pacer``: each step waits for its wall instant (plant seconds = wall seconds).
    ``live``: after the timeline, hand the run's first incident to ``live`` and keep plant and
    gateway stepping at wall pace until the people have worked it or ``live`` times out
    (their score in ``DrillRun.live``); the gateway closes after that."""
    import time

    from simulators.plant_server import PlantServer
    from simulators.zoo import policies

    if seed is not None:
        scenario = dataclasses.replace(scenario, seed=seed)
    wall0 = time.perf_counter()
    site0 = load_config(scenario.site)
    cycle_s = site0.site.cycle_ms / 1000.0
    bomb = next((i for i in scenario.injections if i.kind is InjectionKind.TIME_BOMB), None)
    # Align the PLC's uptime so that a dormant variant wakes exactly at the injection time.
    uptime0 = policies.TIME_BOMB_UPTIME_S - bomb.at_s if bomb is not None else 0.0
    plant = _plant(scenario, uptime0)
    clock = SimClock()
    server = PlantServer(plant, clock=clock, **_server_options(site0))
    external = scenario.controller is ControllerMode.EXTERNAL
    agent = scenario.controller is ControllerMode.MCP
    if scenario.own_model is not None:
        # The team's own file (the scenario's, or the site's own model): run as it is, never
        # replaced by a zoo model. Its hash is checked again when the gateway loads it.
        model_path, sha = scenario.own_model.path, scenario.own_model.sha256
    else:
        model_path, sha = _model_file(workdir, scenario.plant, scenario.model)
    kind = ControllerKind.EXTERNAL if external or agent else ControllerKind.ONNX
    run = DrillRun(scenario, gateway, site0, cycle_s, tuple(t.name for t in site0.actuators),
                   limits=tuple(plant.limits),
                   safe_values=tuple(float(t.safe_value or 0.0) for t in site0.actuators),
                   initial_actuators=dict(plant.actuators()))
    run.models.append(("ai", model_path, sha))
    await server.start()
    try:
        await server.publish()
        run.initial_published = server.published()
        ext_port = free_port() if (external and gateway) else None
        mcp = _mcp_spec(scenario, workdir) if (agent and gateway) else None
        site = _drill_site(site0, scenario, server, _controller(site0, scenario, model_path,
                                                               sha, kind), ext_port,
                           serving if gateway else None, workdir, mcp)
        if recording is not None:
            site = dataclasses.replace(site, audit=dataclasses.replace(
                site.audit, recorder_before_s=scenario.duration_s + 1.0))
        run.drill_site = site
        onnx_site = dataclasses.replace(site, controller=dataclasses.replace(
            site.controller, kind=ControllerKind.ONNX))
        if gateway:
            run.audit_db = audit_db or workdir / f"{scenario.name}-audit.db"
            await _with_gateway(run, site, onnx_site, scenario, server, plant, clock,
                                ext_port, workdir, recording, serving is not None, pacer,
                                live)
            from gateway.incident.store import load_incidents

            if run.agent is not None:
                run.agent["refused_calls_audited"] = _audited_refusals(run.audit_db,
                                                                        scenario.agent)
            found = load_incidents(run.audit_db)
            run.incidents = [i.id for i in found]
            run.incident_trips = {i.id: tuple(t.detector for t in (i.trips or (i.trigger,)))
                                  for i in found}
        else:
            await _baseline(run, site, onnx_site, scenario, server, plant, clock, workdir)
    finally:
        await server.stop()
    run.writes = list(server.writes)
    run.history = list(server.history)
    run.wall_s = time.perf_counter() - wall0
    return run


def _mcp_spec(scenario: Scenario, workdir: Path) -> McpServerSpec:
    """The drill's MCP server: one agent in role ``ai``, a fresh token in a file (0600)."""
    import secrets

    token = workdir / f"{scenario.name}-agent.token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(secrets.token_urlsafe(32))
    token.chmod(0o600)
    return McpServerSpec(agents=(McpAgent(scenario.agent, "ai", token_file=token,
                                          calls_per_s=AGENT_CALLS_PER_S,
                                          burst=AGENT_BURST),),
                         host="127.0.0.1", port=free_port())


def _audited_refusals(db: Path, agent: str) -> int:
    """The agent's refused calls as the audit chain counts them (``agent_call`` records)."""
    from gateway.audit import read_records

    total = 0
    for record in read_records(db, kinds=("agent_call",)):
        data = record.data()
        if data.get("agent") == agent and str(data.get("outcome", "")).startswith("refused"):
            total += int(data.get("count", 0))
    return total


@dataclass
class _Active:
    """An injection in force that the injector drives every step, or ends at ``end_s``."""

    inj: Injection
    start_s: float
    at_start: float
    end_s: float


class _Injector:
    """Applies the scenario's timeline at the right steps: starts each injection when due,
    drives profiles every step, and lifts an injection with a ``duration_s`` when it ends."""

    def __init__(self, run: DrillRun, scenario: Scenario, server: Any, plant: Plant,
                 workdir: Path) -> None:
        self.run = run
        self.pending = list(scenario.injections)
        self.active: list[_Active] = []
        self.server = server
        self.plant = plant
        self.scenario = scenario
        self.workdir = workdir
        self.swap_to: str | None = None
        self.silence = False
        self.hostile = False  # the MCP agent has turned hostile (it stays so)

    async def due(self, t: float, eps: float) -> None:
        for act in [a for a in self.active if t + eps >= a.end_s]:
            self.active.remove(act)
            await self._lift(act.inj, t)
        while self.pending and self.pending[0].at_s <= t + eps:
            inj = self.pending.pop(0)
            await self._apply(inj, t)
            self.run.marks.append(Mark(t, "injection", inj.title, inj.describe()))
        for act in self.active:
            self._drive(act, t)

    def _current(self, inj: Injection) -> float:
        """The value a profile starts from where it gives no ``from``."""
        if inj.kind is InjectionKind.SENSOR_PROFILE:
            assert inj.tag is not None
            return float(self.server.published().get(inj.tag, math.nan))
        assert inj.name is not None
        process, sensors = self.plant.process(), self.plant.sensors()
        return float(process.get(inj.name, sensors.get(inj.name, math.nan)))

    def _drive(self, act: _Active, t: float) -> None:
        inj = act.inj
        if inj.profile is None:
            return
        value = inj.profile.value(t - act.start_s, act.at_start)
        if inj.kind is InjectionKind.SENSOR_PROFILE:
            assert inj.tag is not None
            self.server.spoof(inj.tag, value)
        else:
            assert inj.name is not None
            self.plant.set_disturbance(inj.name, value)

    async def _apply(self, inj: Injection, t: float) -> None:
        from simulators.zoo import policies

        k = inj.kind
        end = t + inj.duration_s if inj.duration_s is not None else math.inf
        if k is InjectionKind.BACKDOOR_TRIGGER:
            tag = policies.BACKDOOR_TRIGGER[self.scenario.plant][0]
            self.plant.set_disturbance(tag, policies.trigger_value(self.scenario.plant))
        elif k is InjectionKind.SWAP_MODEL:
            assert inj.model is not None
            self.swap_to = inj.model
        elif k is InjectionKind.SENSOR_FREEZE:
            self.server.freeze(inj.tag)
        elif k is InjectionKind.SENSOR_SPOOF:
            self.server.spoof(inj.tag, inj.value)
        elif k is InjectionKind.PLC_DISCONNECT:
            assert inj.duration_s is not None
            await self.server.disconnect()
        elif k is InjectionKind.AI_SILENT:
            self.silence = True
        elif k is InjectionKind.AGENT_HOSTILE:
            self.hostile = True
        elif k in (InjectionKind.SENSOR_PROFILE, InjectionKind.DISTURBANCE):
            self.active.append(_Active(inj, t, self._current(inj), end))
            return
        # TIME_BOMB: the plant's uptime was aligned at start; nothing to do now.
        if math.isfinite(end):
            self.active.append(_Active(inj, t, math.nan, end))

    async def _lift(self, inj: Injection, t: float) -> None:
        k = inj.kind
        if k is InjectionKind.PLC_DISCONNECT:
            await self.server.reconnect()
            self.run.marks.append(Mark(t, "fault", "plc_reconnect", "PLC back on the network"))
            return
        if k is InjectionKind.SENSOR_FREEZE:
            self.server.unfreeze(inj.tag)
        elif k in (InjectionKind.SENSOR_SPOOF, InjectionKind.SENSOR_PROFILE):
            self.server.unspoof(inj.tag)
        elif k is InjectionKind.DISTURBANCE:
            assert inj.name is not None
            self.plant.set_disturbance(inj.name, math.nan)
        elif k is InjectionKind.AI_SILENT:
            self.silence = False
        elif k is InjectionKind.BACKDOOR_TRIGGER:
            from simulators.zoo import policies

            self.plant.set_disturbance(policies.BACKDOOR_TRIGGER[self.scenario.plant][0],
                                       math.nan)
        self.run.marks.append(Mark(t, "lifted", inj.title, f"{inj.describe()}: lifted"))

    def swapped_policy(self, site: Site) -> OnnxPolicy | None:
        """The attacker's model, once a swap is due (the file has the same interface)."""
        if self.swap_to is None:
            return None
        path, sha = _model_file(self.workdir, self.scenario.plant, self.swap_to)
        self.swap_to = None
        self.run.models.append(("swapped_in", path, sha))
        return _policy(dataclasses.replace(site, controller=dataclasses.replace(
            site.controller, model=path, sha256=sha)))


async def _with_gateway(run: DrillRun, site: Site, onnx_site: Site, scenario: Scenario,
                        server: Any, plant: Plant, clock: SimClock, ext_port: int | None,
                        workdir: Path, recording: Path | None = None, serve: bool = False,
                        pacer: WallPacer | None = None, live: LiveWatch | None = None
                        ) -> None:
    from gateway.runtime.gateway import Gateway

    mcp = site.northbound.mcp
    external = ext_port is not None or mcp is not None
    # The zoo's golden inputs fit only the zoo's models; a team's own model has none here
    # (its registry records its canary cases).
    canary = None if external or scenario.own_model is not None else _canary(
        site, scenario.plant)
    gw = Gateway(site, clock=clock, stepped=True, servers=external or serve, canary=canary,
                 startup_wait_s=10.0, audit_path=run.audit_db)
    ext: ExternalAi | None = None
    agent: McpAgentDriver | None = None
    injector = _Injector(run, scenario, server, plant, workdir)
    await gw.open()
    try:
        if gw.policy is None and not external:
            raise RuntimeError("the gateway refused the drill's model")
        if ext_port is not None:
            ext = ExternalAi(site, ext_port, _policy(onnx_site))
            await ext.connect()
        if mcp is not None:
            from simulators.drill.agent import McpAgentDriver

            token = mcp.agents[0].token_file
            assert token is not None
            agent = McpAgentDriver(site, f"http://{mcp.host}:{mcp.port}{mcp.path}",
                                   token.read_text(), _policy(onnx_site),
                                   lambda: len(gw.requests.proposals))
            await agent.connect()
        await _loop(run, gw, ext, injector, server, clock, scenario, pacer, live, agent)
        if recording is not None and gw.records.recorder is not None:
            gw.records.recorder.to_jsonl(recording)
    finally:
        if ext is not None:
            ext.close()
            ext.policy.close()
        if agent is not None:
            await agent.close()
            agent.policy.close()
            run.agent = agent.summary(None)
        await gw.close()


class _AutoOperator:
    """The drill's operator: asks for AUTO at ``auto_after_s`` and, refused (the clean shadow
    period has not run yet, an anomaly restarted it), asks again every ``auto_retry_s`` until
    it is granted, until ``auto_until_s`` passes, or until a trip takes the gateway out of
    SHADOW (a person does not keep asking once the AI has been caught). The first request,
    the grant and giving up are marked; the refusals in between are counted."""

    def __init__(self, run: DrillRun, scenario: Scenario) -> None:
        self.run = run
        self.next_s = scenario.auto_after_s
        self.until_s = (scenario.auto_until_s if scenario.auto_until_s is not None
                        else scenario.duration_s)
        self.retry_s = scenario.auto_retry_s
        self.done = False
        self.last_refusal = ""

    async def step(self, gw: Gateway, t: float, dt: float, mode: str) -> None:
        if self.done or t + dt / 2 < self.next_s:
            return
        run = self.run
        if t > self.until_s + dt / 2 or (run.auto_requests and mode != "shadow"):
            self.done = True
            run.marks.append(Mark(t, "operator", "auto_abandoned",
                                  f"drill operator stops asking for AUTO after "
                                  f"{run.auto_requests} refused requests "
                                  f"({self.last_refusal or 'mode ' + mode})"))
            return
        outcome = await gw.request(OPERATOR, "to_auto", None, None)
        run.auto_requests += 1
        if outcome.accepted:
            self.done = True
            run.auto_granted_at_s = t
            run.marks.append(Mark(t, "operator", "to_auto",
                                  f"drill operator: AUTO, granted at request "
                                  f"{run.auto_requests}"))
            return
        self.last_refusal = outcome.reason
        if run.auto_requests == 1:
            run.marks.append(Mark(t, "operator", "to_auto_refused",
                                  f"drill operator: AUTO refused ({outcome.reason}); asking "
                                  f"again every {self.retry_s:g} s"))
        self.next_s = t + self.retry_s


async def _loop(run: DrillRun, gw: Gateway, ext: ExternalAi | None, injector: _Injector,
                server: Any, clock: SimClock, scenario: Scenario,
                pacer: WallPacer | None = None, live: LiveWatch | None = None,
                agent: McpAgentDriver | None = None) -> None:
    """Step the scenario's timeline; then, for a live drill, keep stepping (at wall pace)
    while the people work its incident."""
    dt = run.cycle_s
    steps = round(scenario.duration_s / dt)
    operator = _AutoOperator(run, scenario)
    n_a = len(run.actuators)
    mode = ""
    k = 0
    incident: str | None = None
    while True:
        if k == steps:
            if live is None or gw.incidents is None or not gw.incidents.incidents:
                if live is not None:
                    live.no_incident()
                return
            incident = gw.incidents.incidents[0].id
            live.handover(incident)
            if pacer is None:
                # From here on a person watches: plant seconds = wall seconds.
                from simulators.drill.serve import WallPacer

                pacer = WallPacer()
        if incident is not None:
            assert live is not None
            assert gw.incidents is not None
            score = live.check(gw.incidents.get(incident), scenario.name)
            if score is not None:
                run.live = score
                return
        t = k * dt
        if pacer is not None:
            await pacer.until(t)
        clock.now = t
        await injector.due(t, dt / 2)
        if k == 0:
            await gw.request(OPERATOR, "to_shadow", None, None)
            run.marks.append(Mark(t, "operator", "to_shadow", "drill operator: SHADOW"))
        await operator.step(gw, t, dt, mode)
        swapped = injector.swapped_policy(gw.site)
        if swapped is not None:
            if gw.policy is not None:
                gw.policy.close()
            gw.policy = swapped
        await gw.refresh()
        if ext is not None:
            ext.silent = injector.silence
            await ext.step()
        if agent is not None:
            agent.silent = injector.silence
            agent.hostile = injector.hostile
            await agent.step(t)  # its proposals now wait in the core for this cycle
        decision = await gw.cycle(t)
        if agent is not None:
            await agent.settle()
        prop = gw.last_proposal
        proposal = (tuple(prop.values.tolist()) if prop is not None and prop.values is not None
                    else (math.nan,) * n_a)
        if ext is not None:
            proposal = (tuple(ext.last.tolist()) if ext.last is not None and not ext.silent
                        else (math.nan,) * n_a)
        if agent is not None:
            proposal = (tuple(agent.last.tolist()) if agent.last is not None
                        and not agent.silent and not agent.hostile else proposal)
        untrusted = tuple(name for name, x in zip(gw.sensor_names, decision.sensors.tolist(),
                                                  strict=True) if math.isnan(x))
        run.ticks.append(Tick(t, str(decision.mode), str(decision.source), proposal,
                              tuple(decision.command.tolist()), untrusted))
        mode = str(decision.mode)
        for ev in decision.events:
            run.marks.append(Mark(ev.at_s, str(ev.kind), ev.name, ev.reason))
        await server.tick(dt)
        k += 1


async def _baseline(run: DrillRun, site: Site, onnx_site: Site, scenario: Scenario,
                    server: Any, plant: Plant, clock: SimClock, workdir: Path) -> None:
    """The same AI wired straight to the PLC: no envelope, no detectors, no fallback."""
    from gateway.adapters.factory import make_client

    store = TagStore(tuple(t.name for t in site.tags))
    dev = site.devices[0]
    client = make_client(dev, [t for t in site.tags if t.device == dev.name], store, clock,
                         False)
    task = asyncio.create_task(client.run())
    policy = _policy(onnx_site)
    wiring = AiWiring(onnx_site)
    injector = _Injector(run, scenario, server, plant, workdir)
    names = run.actuators
    sensor_names = [t.name for t in site.sensors]
    outputs = site.controller.outputs
    try:
        for _ in range(200):  # wait (wall time) for the connection
            await client.refresh()
            if all(store.get(n).good for n in names):
                break
            await asyncio.sleep(0.02)
        dt = run.cycle_s
        left_at: float | None = None
        for k in range(round(scenario.baseline_duration_s / dt)):
            t = k * dt
            clock.now = t
            if left_at is None and _left_safe_range(plant):
                left_at = t
            if left_at is not None and t >= left_at + _AFTER_HARM_S:
                break  # the harm is shown; no need to watch the plant overflow for minutes
            await injector.due(t, dt / 2)
            swapped = injector.swapped_policy(onnx_site)
            if swapped is not None:
                policy.close()
                policy = swapped
            await client.refresh()
            sensors = np.array([store.get(n).value for n in sensor_names], dtype=np.float64)
            applied = np.array([store.get(n).value for n in names], dtype=np.float64)
            command = applied.copy()
            proposal = np.full(len(names), math.nan)
            if not injector.silence:
                out = policy.infer_sync(wiring.inputs(sensors, applied)).outputs
                if out is not None:
                    values = {name: _saturate(site.tag(name), v) for name, v in zip(
                        outputs, np.asarray(out, dtype=np.float64).tolist(), strict=True)}
                    for name, v in values.items():
                        command[names.index(name)] = v
                        proposal[names.index(name)] = v
                    try:
                        await client.write(values)
                    except AdapterError as exc:  # nothing checks it; the device may refuse
                        run.marks.append(Mark(t, "fault", "write_failed", str(exc)))
            run.ticks.append(Tick(t, "none", "ai", tuple(proposal.tolist()),
                                  tuple(command.tolist())))
            await server.tick(dt)
    finally:
        policy.close()
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


_AFTER_HARM_S = 10.0

_REGISTER_RANGE = {"int16": (-32768, 32767), "uint16": (0, 65535),
                   "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}


def _saturate(tag: Any, value: float) -> float:
    """What a plain driver does with a value its register cannot hold: saturate it. (The
    baseline has no envelope; this only keeps the write from failing to encode.)"""
    span = _REGISTER_RANGE.get(str(tag.wire_type))
    if span is None or not math.isfinite(value):
        return value
    scale = getattr(tag, "scale", 1.0)
    offset = getattr(tag, "offset", 0.0)
    lo, hi = sorted((span[0] * scale + offset, span[1] * scale + offset))
    return min(max(value, lo), hi)


def _left_safe_range(plant: Plant) -> bool:
    process = plant.process()
    return any(not lim.safe_min <= process.get(lim.tag, lim.nominal) <= lim.safe_max
               for lim in plant.limits)
