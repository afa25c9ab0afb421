"""State survives restarts: a real gateway (stepped, real audit database, real northbound
servers on loopback) tripped, stopped, and started again on the same database."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

import gateway
from gateway.adapters.base import ClientInfo, Role
from gateway.adapters.modbus.map import StatusRegister
from gateway.audit import read_records, verify
from gateway.incident.store import load_incident
from gateway.runtime.gateway import Gateway
from gateway.supervisor.modes import Mode
from simulators.ports import free_port
from tests.incident.test_via_gateway import Clock as _Clock
from tests.incident.test_via_gateway import Device

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ClientInfo("opcua", "127.0.0.1:5", "chief", Role.ADMIN)


class Clock(_Clock):
    def __init__(self, now: float) -> None:
        self.now = now


def site_on_free_ports() -> gateway.Site:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    north = site.northbound
    assert north.modbus is not None and north.opcua is not None
    return replace(site, northbound=replace(
        north, modbus=replace(north.modbus, port=free_port()),
        opcua=replace(north.opcua, endpoint=f"opc.tcp://127.0.0.1:{free_port()}/gateway/",
                      allow_anonymous=True)))


def make(site: gateway.Site, db: Path, clock: Clock, wall: Clock) -> Gateway:
    gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0, audit_path=db, wall_clock=wall)
    feed(gw, clock(), True)
    return gw


def feed(gw: Gateway, now: float, good: bool) -> None:
    """Healthy readings of every sensor (the level's quality as ``good`` says)."""
    gw.store.update("level", 2.5, good, now)
    gw.store.update("inflow_rate", 0.01, True, now)
    gw.store.update("demand", 0.01, True, now)
    gw.store.update("uptime_s", float(int(now)), True, now)


async def cycles(gw: Gateway, clock: Clock, n: int, good: bool = True) -> None:
    for _ in range(n):
        clock.now += 0.1
        feed(gw, clock.now, good)
        await gw.cycle(clock.now)


async def status(gw: Gateway) -> tuple[int, int]:
    """status.mode and status.latched as a SCADA reads them over Modbus on loopback."""
    from pymodbus.client import AsyncModbusTcpClient

    nb = gw.site.northbound.modbus
    assert nb is not None
    client = AsyncModbusTcpClient("127.0.0.1", port=nb.port)
    await client.connect()
    try:
        rr = await client.read_input_registers(StatusRegister.MODE, count=2,
                                               device_id=nb.unit)
        assert not rr.isError()
        return rr.registers[0], rr.registers[1]
    finally:
        client.close()


async def opcua_status(gw: Gateway) -> tuple[str, bool]:
    """Status.Mode and Status.Latched as an OPC UA client reads them on loopback."""
    from asyncua import Client

    nb = gw.site.northbound.opcua
    assert nb is not None
    client = Client(nb.endpoint, timeout=5)
    await client.connect()
    try:
        mode = await client.get_node("ns=2;s=Gateway.Status.Mode").read_value()
        latched = await client.get_node("ns=2;s=Gateway.Status.Latched").read_value()
        return str(mode), bool(latched)
    finally:
        await client.disconnect()


async def trip_and_bypass(db: Path, wall: Clock, *, clean: bool) -> str:
    site = site_on_free_ports()
    clock = Clock(1000.0)
    gw = make(site, db, clock, wall)
    await gw.open()
    try:
        await cycles(gw, clock, 3)
        # The level transmitter reports bad quality: a trip, latched, into SAFE_STOP.
        await cycles(gw, clock, 3, good=False)
        assert gw.supervisor is not None and gw.supervisor.modes.latched
        assert gw.incidents is not None
        (incident,) = gw.incidents.open_incidents
        # An administrator bypasses the inflow valve's divergence detector for 60 s.
        out = await gw.request(ADMIN, "bypass", "divergence.inflow_valve", 60.0)
        assert out.accepted, out
        await cycles(gw, clock, 2)
        assert "divergence.inflow_valve" in gw.supervisor.modes.bypasses
        assert gw.supervisor.mode is Mode.SAFE_STOP
        await cycles(gw, clock, 2)
    finally:
        if clean:
            await gw.close()
        else:
            # A crash: nothing of the shutdown runs; the writer still commits what it was
            # given (as the audit child does when its parent dies), then lets go of the file.
            assert gw.records.audit is not None
            gw.records.audit.close()
            for task in gw.southbound.tasks:
                task.cancel()
            if gw.modbus_server is not None:
                await gw.modbus_server.stop()
            if gw.opcua_server is not None:
                await gw.opcua_server.stop()
    return incident.id


async def restart(db: Path, wall: Clock) -> tuple[Gateway, tuple[int, int]]:
    site = site_on_free_ports()
    clock = Clock(5.0)  # a new process: its monotonic clock has nothing to do with the last
    gw = make(site, db, clock, wall)
    await gw.open()
    await cycles(gw, clock, 2)
    return gw, await status(gw)


@pytest.mark.parametrize("clean", [True, False])
def test_a_tripped_gateway_comes_back_latched_with_its_incident_open(tmp_path, clean):
    db = tmp_path / "audit.db"
    wall = Clock(1_800_000_000.0)

    async def scenario() -> None:
        ident = await trip_and_bypass(db, wall, clean=clean)
        wall.now += 20.0  # 20 s later: 40 s of the bypass left
        gw, (mode, latched) = await restart(db, wall)
        try:
            sup = gw.supervisor
            assert sup is not None
            assert sup.mode is Mode.SAFE_STOP and sup.modes.latched
            assert "input.quality.level" in (sup.modes.trip_reason or "")
            # Restored, not tripped again: every sensor is healthy in this run.
            assert not [e for d in gw.decisions for e in d.events if e.kind == "trip"]
            assert gw.incidents is not None
            assert [i.id for i in gw.incidents.open_incidents] == [ident]
            left = sup.modes.bypasses["divergence.inflow_valve"] - gw.clock()
            assert 39.0 < left <= 40.0 + 1e-6
            # What a SCADA reads: safe_stop (3), latched; over OPC UA too.
            assert (mode, latched) == (3, 1)
            assert await opcua_status(gw) == ("safe_stop", True)
        finally:
            await gw.close()
        assert verify(db).ok
        records = list(read_records(db))
        (start,) = [r for r in records if r.kind == "start"][1:]
        restored = start.data()["restored"]
        assert restored["latched"] is True and restored["mode"] == "safe_stop"
        assert restored["open_incidents"] == [ident]
        assert 39.0 < restored["bypasses_left_s"]["divergence.inflow_valve"] <= 40.0 + 1e-6
        assert start.data()["previous"]["clean"] is clean
        unclean = [r for r in records if r.kind == "unclean_end"]
        if clean:
            assert not unclean
        else:
            (record,) = unclean
            window = record.data()
            # The window: after the last record the crashed run committed, before this run.
            before = [r for r in records if r.seq < record.seq]
            assert window["after_seq"] == before[-1].seq
            assert window["after_wall_s"] == before[-1].at_s
        incident = load_incident(db, ident)
        assert incident.is_open
        assert any("gateway restarted" in e.text for e in incident.timeline)

    asyncio.run(scenario())


def test_an_expired_bypass_is_not_restored(tmp_path):
    db = tmp_path / "audit.db"
    wall = Clock(1_800_000_000.0)

    async def scenario() -> None:
        await trip_and_bypass(db, wall, clean=True)
        wall.now += 61.0  # the 60 s bypass ran out while the gateway was down
        gw, (_, latched) = await restart(db, wall)
        try:
            assert gw.supervisor is not None
            assert gw.supervisor.modes.bypasses == {}
            assert latched == 1
        finally:
            await gw.close()
        (start,) = [r for r in read_records(db, kinds=("start",))][1:]
        assert start.data()["restored"]["bypasses_expired"] == ["divergence.inflow_valve"]

    asyncio.run(scenario())


def onnx_site(tmp_path: Path, variant: str) -> gateway.Site:
    import hashlib

    from gateway.config.schema import ControllerKind
    from simulators.zoo import policies

    model = tmp_path / f"{variant}.onnx"
    model.write_bytes(policies.build("water_tank", variant))
    site = site_on_free_ports()
    iface = policies.INTERFACES["water_tank"]
    return replace(site, controller=replace(
        site.controller, kind=ControllerKind.ONNX, model=model,
        sha256=hashlib.sha256(model.read_bytes()).hexdigest(), inputs=iface.inputs,
        outputs=iface.outputs, input_offset=iface.input_offset, input_scale=iface.input_scale,
        output_offset=iface.output_offset, output_scale=iface.output_scale))


def test_a_quarantined_model_stays_quarantined_until_another_is_loaded(tmp_path):
    db = tmp_path / "audit.db"
    wall = Clock(1_800_000_000.0)

    async def scenario() -> None:
        site = onnx_site(tmp_path, "nominal")
        clock = Clock(1000.0)
        gw = make(site, db, clock, wall)
        await gw.open()
        try:
            await cycles(gw, clock, 2)
            assert gw.policy is not None
            sha = gw.policy.model_sha256
            # As the playbook's quarantine_model step does it (its trip's events follow).
            gw.durable.quarantined = (sha, "INC-test: canary deviated")
            await gw.request(ADMIN, "to_safe_stop", None, None)
            await cycles(gw, clock, 2)
        finally:
            await gw.close()
        # The same model again: still quarantined, SHADOW refused.
        gw = make(onnx_site(tmp_path, "nominal"), db, Clock(5.0), wall)
        await gw.open()
        try:
            assert gw.quarantined == (sha, "INC-test: canary deviated")
            await gw.request(ADMIN, "to_manual", None, None)
            out = await gw.request(ADMIN, "to_shadow", None, None)
            assert not out.accepted and "quarantined" in out.reason
        finally:
            await gw.close()
        # Another version loaded: the quarantine is lifted, and the start record says why.
        gw = make(onnx_site(tmp_path, "drift"), db, Clock(5.0), wall)
        await gw.open()
        try:
            assert gw.quarantined is None
        finally:
            await gw.close()
        starts = [r.data()["restored"] for r in read_records(db, kinds=("start",))]
        assert starts[1]["quarantined"]["sha256"] == sha
        assert sha in starts[2]["quarantine_lifted"]

    asyncio.run(scenario())
