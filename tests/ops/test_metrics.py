"""Prometheus metrics: a real stepped gateway between a test Modbus PLC and the metrics text.

The gateway's northbound side is the real mirror writer of the communications link
(``CommsLink.publish``, without starting the process); the test reads the mirror as the
communications process does (``MirrorReader``, ``view_of``) and renders the metrics from that
view, so every count crosses the shared memory the way it does in production.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

import gateway
from gateway.adapters.base import ClientInfo, ConnectionState, Role
from gateway.comms.link import CommsLink
from gateway.comms.pump import view_of
from gateway.config.schema import Table
from gateway.link.counters import ACTIONS, REFUSALS, CoreCounters, CounterLayout
from gateway.link.mirror import MirrorLayout, MirrorReader, MirrorWriter
from gateway.ops.metrics import render
from gateway.runtime.gateway import Gateway
from gateway.supervisor.events import EventKind
from gateway.supervisor.modes import Mode
from simulators.plc_modbus import TestPLC

if TYPE_CHECKING:
    from gateway.runtime.view import PlantView

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ClientInfo("modbus", "127.0.0.1:50000", "op", Role.OPERATOR)
AI = ClientInfo("modbus", "127.0.0.2:50001", None, Role.AI)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MirrorOnly(CommsLink):
    """The communications link's mirror, without its process (this test is the reader)."""

    restarts_seen = 3  # what the link's supervisor would have counted

    async def start(self) -> None:
        self.mirror = MirrorWriter(None, self.layout)

    @property
    def restarts(self) -> int:
        return self.restarts_seen


def samples(text: bytes) -> Samples:
    """Every sample of the exposition text, parsed by prometheus_client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "site")))
            assert s.labels.get("site") == "water-tank", s
            assert key not in out, key
            out[key] = s.value
    return out


def promtool_problems(text: bytes) -> str:
    """What ``promtool check metrics`` says about ``text`` (empty: nothing), or raise if it
    exits non-zero without saying why."""
    promtool = shutil.which("promtool")
    assert promtool is not None, ("promtool is missing: apt-get install prometheus "
                                  "(.ci/run installs it)")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          timeout=60, check=False)
    said = (done.stdout + done.stderr).decode().strip()
    assert done.returncode == 0 or said, done
    return said


def site_for(plc_port: int) -> gateway.config.Site:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    devices = tuple(replace(d, port=plc_port, timeout_ms=300.0) for d in site.devices)
    # The test PLC's level holds still: no frozen-sensor check here.
    detection = replace(site.detection, frozen_after_s=())
    return replace(site, devices=devices, detection=detection,
                   northbound=replace(site.northbound, modbus=None, opcua=None))


async def until(check: object, what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not check():  # type: ignore[operator]
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class FaultySink:
    """An audit sink in trouble: a backlog, losses and an alarm (as AuditLog reports them)."""

    pending = 7
    lost = 2
    alarm = "disk full"

    def append(self, *args: object, **kwargs: object) -> None:
        return None

    def idle(self) -> None:
        return None

    def close(self, timeout_s: float = 10.0) -> bool:
        return True


async def scenario(tmp: Path) -> tuple[Samples, Samples, bytes, Gateway, int, Samples]:
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)  # level, m
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10])  # inflow 0.010 m3/s
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])
        site = site_for(plc.port)
        clock = Clock()
        link = MirrorOnly(site, ROOT / "configs" / "water_tank.yaml")
        gw = Gateway(site, clock=clock, stepped=True, northbound=link, startup_wait_s=5.0,
                     audit_path=tmp / "audit.db")
        link.handler = gw
        reader: MirrorReader | None = None
        await gw.open()
        try:
            assert link.mirror is not None
            # As the communications process attaches: the layout built from the site alone.
            reader = MirrorReader(link.mirror.name, MirrorLayout.for_site(site))
            layout = reader.layout.counters

            def latest() -> PlantView:
                assert reader is not None
                snap = reader.read()
                assert snap is not None
                return view_of(snap)

            async def cycles(n: int) -> None:
                for _ in range(n):
                    clock.now += 0.1
                    await gw.refresh()
                    await gw.cycle(clock.now)

            await cycles(5)
            assert gw.supervisor is not None and gw.supervisor.mode is Mode.MANUAL
            # The external AI proposes (judged by the envelope every cycle from now on) ...
            outcome = await gw.write(AI, {"inflow_valve": 30.0, "outflow_pump": 30.0}, True)
            assert all(o.accepted for o in outcome.values()), outcome
            # ... an operator setpoint is written through, one outside the envelope refused.
            ok = await gw.write(OPERATOR, {"outflow_pump": 31.0}, False)
            assert ok["outflow_pump"].accepted, ok
            bad = await gw.write(OPERATOR, {"outflow_pump": 150.0}, False)
            assert not bad["outflow_pump"].accepted
            # A refusal the servers made themselves, reported with its Modbus code only.
            gw.refused_many(OPERATOR, {"40001": 1.0}, "server device busy", 6, 4)
            await cycles(5)
            before = render(latest(), site.site.name, layout, clock)

            # The PLC goes away: the level's reads fail, the core trips to SAFE_STOP.
            await plc.stop()
            await until(lambda: gw.clients["plc"].state is not ConnectionState.CONNECTED,
                        "the link to drop")
            for _ in range(40):
                await cycles(1)
                if gw.supervisor.mode is Mode.SAFE_STOP:
                    break
            assert gw.supervisor.mode is Mode.SAFE_STOP
            await cycles(2)
            after_text = render(latest(), site.site.name, layout, clock)
            n_cycles = gw.control.count if gw.control is not None else 0
            # The audit sink's figures are read once a second: a sink in trouble shows.
            real, gw.records.audit = gw.records.audit, FaultySink()  # type: ignore[assignment]
            try:
                clock.now += 1.0
                await cycles(1)
                faulty = samples(render(latest(), site.site.name, layout, clock))
            finally:
                gw.records.audit = real
            return samples(before), samples(after_text), after_text, gw, n_cycles, faulty
        finally:
            if reader is not None:
                reader.close()
            await gw.close()


def value(s: Samples, name: str, **labels: str) -> float:
    return s[(name, tuple(sorted(labels.items())))]


def test_the_core_counts_and_the_metrics_show_it(tmp_path: Path) -> None:
    before, after, text, gw, n_cycles, faulty = asyncio.run(scenario(tmp_path))
    p = "safety_gateway_"
    assert value(after, p + "core_published") == 1.0
    assert value(after, p + "cycles_total") == n_cycles
    # Lateness and duration are the running loop's (stepped drills have no schedule).
    assert value(after, p + "cycle_lateness_seconds_count") == 0.0
    # Verdicts: one per cycle that had a proposal, by action, as the decisions say.
    judged = [d.verdict.action for d in gw.decisions if d.verdict is not None]
    assert judged
    for code, action in enumerate(ACTIONS):
        assert value(after, p + "envelope_verdicts_total", action=action) == sum(
            1 for a in judged if a == code)
    # Violations by constraint: exactly the verdicts' (the safe state's interlocks refuse the
    # AI's 30 % inflow with the level unknown).
    violated = [c for d in gw.decisions if d.verdict is not None for c in d.verdict.violations]
    assert violated
    layout = CounterLayout.for_site(gw.site)
    for constraint in layout.violation_names:
        assert value(after, p + "envelope_violations_total", constraint=constraint) == (
            violated.count(constraint)), constraint
    assert set(violated) < set(layout.violation_names)
    # Trips by detector: exactly the decisions' TRIP events.
    trips = [e.name for d in gw.decisions for e in d.events if e.kind is EventKind.TRIP]
    assert trips
    for detector in layout.detectors:
        assert value(after, p + "trips_total", detector=detector) == trips.count(detector)
    assert value(before, p + "trips_total", detector="other") == 0.0
    # Refusals by reason: the envelope's and the busy channel's four.
    assert value(after, p + "refused_writes_total", reason="envelope") == 1.0
    assert value(after, p + "refused_writes_total", reason="busy") == 4.0
    assert sum(value(after, p + "refused_writes_total", reason=r) for r in REFUSALS) == 5.0
    # The write-through, with its latency.
    assert value(after, p + "write_through_latency_seconds_count") == 1.0
    assert value(after, p + "write_through_latency_seconds_bucket", le="+Inf") == 1.0
    # Mode and latch, before and after the trip.
    assert value(before, p + "mode", mode="manual") == 1.0
    assert value(after, p + "mode", mode="manual") == 0.0
    assert value(after, p + "mode", mode="safe_stop") == 1.0
    assert value(after, p + "latched") == 1.0
    # The device link: connected once, then not connected.
    assert value(before, p + "device_link_state", device="plc", state="connected") == 1.0
    assert value(after, p + "device_link_state", device="plc", state="connected") == 0.0
    assert value(after, p + "device_connects_total", device="plc") == 1.0
    assert value(after, p + "comms_restarts_total") == float(MirrorOnly.restarts_seen)
    # Values: the level as the PLC held it before it went away; the applied commands.
    assert value(before, p + "sensor_value", sensor="level") == 2.5
    assert value(before, p + "sensor_good", sensor="level") == 1.0
    assert value(after, p + "sensor_good", sensor="level") == 0.0
    assert value(before, p + "actuator_proposal", actuator="inflow_valve") == 30.0
    assert not math.isnan(value(after, p + "actuator_applied", actuator="outflow_pump"))
    assert value(after, p + "actuator_source", actuator="outflow_pump", source="safe") == 1.0
    # The audit: healthy with a real database, then the sink in trouble.
    assert value(after, p + "audit_fault") == 0.0
    assert value(after, p + "audit_lost_records_total") == 0.0
    assert value(faulty, p + "audit_fault") == 1.0
    assert value(faulty, p + "audit_pending_records") == 7.0
    assert value(faulty, p + "audit_lost_records_total") == 2.0
    # And Prometheus's own linter finds nothing to say.
    assert promtool_problems(text) == ""


def test_promtool_rejects_what_breaks_the_conventions() -> None:
    """The check above can fail: promtool names a counter without ``_total``."""
    said = promtool_problems(b"# HELP x_seconds A thing.\n# TYPE x_seconds counter\n"
                             b"x_seconds 1\n")
    assert "_total" in said


def test_label_sets_are_bounded_by_the_site() -> None:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    layout = CounterLayout.for_site(site)
    counters = CoreCounters(layout)
    # A flood of names a site cannot have lands in one series each, not one per name.
    for i in range(1000):
        counters.trip(f"detector-{i}")
        counters.refused(f"reason-{i}")
    from gateway.runtime.view import PlantView

    n_s, n_a = len(site.sensors), len(site.actuators)
    view = PlantView(
        at_s=0.0, at_wall_s=1.7e9, cycle=1, sensor_values=(1.0,) * n_s,
        sensor_good=(True,) * n_s, sensor_at_s=(0.0,) * n_s, applied=(0.0,) * n_a,
        sources=("fallback",) * n_a, proposal=(math.nan,) * n_a, mode="weird",
        latched=False, trip_reason="", incident_id="", heartbeat=1, bypasses=(),
        bypass_left_s=None, counters=counters.snapshot())
    s = samples(render(view, "water-tank", layout, lambda: 1.0))
    assert value(s, "safety_gateway_trips_total", detector="other") == 1000.0
    assert value(s, "safety_gateway_refused_writes_total", reason="other") == 1000.0
    trips = [k for k in s if k[0] == "safety_gateway_trips_total"]
    assert len(trips) == len(layout.detectors)
    # An unknown mode code shows no mode as current, with the same four series.
    modes = {dict(k[1])["mode"]: v for k, v in s.items() if k[0] == "safety_gateway_mode"}
    assert modes == {"auto": 0.0, "shadow": 0.0, "manual": 0.0, "safe_stop": 0.0}
    assert ("safety_gateway_actuator_proposal", (("actuator", "inflow_valve"),)) not in s


def test_every_detector_of_the_shipped_sites_has_a_slot() -> None:
    """Trips by a detector the layout does not know would all count as ``other``."""
    import numpy as np

    from gateway.envelope import compile as compile_envelope
    from gateway.supervisor.core import Supervisor

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        site = gateway.load_config(path)
        sup = Supervisor(site, compile_envelope(site, "python"),
                         np.array([t.safe_value for t in site.actuators], dtype=np.float64)
                         if all(isinstance(t.safe_value, float) for t in site.actuators)
                         else np.zeros(len(site.actuators)), 0.0)
        missing = set(sup.detector_names) - set(CounterLayout.for_site(site).detectors)
        assert not missing, (path.name, missing)


def test_the_constraint_slots_are_the_envelopes() -> None:
    """Every shipped site: the violation slots are the compiled envelope's slot names (what a
    verdict can name), and the mirror's layout carries them."""
    from gateway.envelope import compile as compile_envelope

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        site = gateway.load_config(path)
        names = compile_envelope(site, "python").compiled.slot_names
        layout = CounterLayout.for_site(site)
        assert layout.violation_names == (*names, "other"), path.name
        assert MirrorLayout.for_site(site).counters == layout


def test_nothing_published_yet() -> None:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    s = samples(render(None, "water-tank", CounterLayout.for_site(site)))
    assert s == {("safety_gateway_core_published", ()): 0.0}


def test_the_dashboard_asks_only_for_metrics_that_exist() -> None:
    """docs/grafana-dashboard.json: valid JSON, and every metric name in its queries is one
    the collector serves (a renamed metric would leave a panel empty)."""
    import json
    import re

    from gateway.runtime.view import PlantView

    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    layout = CounterLayout.for_site(site)
    n_s, n_a = len(site.sensors), len(site.actuators)
    view = PlantView(
        at_s=0.0, at_wall_s=1.7e9, cycle=1, sensor_values=(1.0,) * n_s,
        sensor_good=(True,) * n_s, sensor_at_s=(0.0,) * n_s, applied=(0.0,) * n_a,
        sources=("ai",) * n_a, proposal=(1.0,) * n_a, mode="auto", latched=False,
        trip_reason="", incident_id="", heartbeat=1, bypasses=(), bypass_left_s=None,
        counters=CoreCounters(layout).snapshot())
    served = {name for name, _ in samples(render(view, "water-tank", layout, lambda: 1.0))}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    asked = {m for panel in dashboard["panels"] for target in panel["targets"]
             for m in re.findall(r"\bsafety_gateway_\w+", target["expr"])}
    for var in dashboard["templating"]["list"]:
        if isinstance(var.get("query"), dict):
            asked |= set(re.findall(r"\bsafety_gateway_\w+", var["query"]["query"]))
    assert asked, "no metric in the dashboard"
    assert asked <= served, asked - served


class QuietDevice:
    """A southbound device that takes writes and has nothing to read."""

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def refresh(self) -> None:
        return None

    async def write(self, values: dict[str, float]) -> None:
        return None

    async def write_heartbeat(self, counter: int) -> None:
        return None

    async def close(self) -> None:
        return None


def test_a_running_gateway_times_every_cycle() -> None:
    """Lateness and duration histograms: one observation per cycle the running loop ran."""
    site = site_for(1)

    async def body() -> CoreCounters:
        gw = Gateway(site, clients={"plc": QuietDevice()}, servers=False, startup_wait_s=0.0)
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        try:
            await until(lambda: gw.counters.values[CounterLayout.cycles] >= 4, "4 cycles", 20.0)
        finally:
            stop.set()
            await asyncio.wait_for(runner, 20)
        return gw.counters

    counters = asyncio.run(body())
    layout, values = counters.layout, counters.values
    cycles = values[layout.cycles]
    assert cycles >= 4
    for h in (layout.lateness, layout.duration):
        counts, _ = layout.histogram(values, h)
        assert sum(counts) == cycles
    assert layout.histogram(values, layout.duration)[1] > 0  # nanoseconds spent in cycles
    text = render(None, "water-tank", layout)
    assert promtool_problems(text) == ""
