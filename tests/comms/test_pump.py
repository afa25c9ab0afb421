"""The mirror pump alone (no process): it copies a publish once, including a first publish
numbered 0, and only when the core's cycle counter moved; and how a view is shown on the
Modbus server (the same code in the communications process and in-process)."""

from __future__ import annotations

import asyncio
import datetime
import math
from dataclasses import replace
from typing import Any

import pytest

import gateway
from gateway.adapters.modbus.map import ModeCode
from gateway.comms.pump import MirrorPump
from gateway.comms.servers import NorthboundServers
from gateway.config.schema import Northbound
from gateway.link.mirror import MirrorLayout, MirrorReader, MirrorWriter
from gateway.runtime.view import PlantView


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def set_sensor(self, name: str, value: float) -> None:
        self.calls.append(("sensor", (name, value)))

    def set_actuator(self, name: str, value: float) -> None:
        self.calls.append(("actuator", (name, value)))

    def set_status(self, *args: Any) -> None:
        self.calls.append(("status", args))

    def set_bypasses(self, *args: Any) -> None:
        self.calls.append(("bypasses", args))


class Views:
    def __init__(self) -> None:
        self.views: list[PlantView] = []

    async def publish(self, view: PlantView) -> None:
        self.views.append(view)


def test_each_publish_is_copied_once_from_cycle_zero() -> None:
    layout = MirrorLayout(("level",), ("valve",))
    writer = MirrorWriter(None, layout)
    reader = MirrorReader(writer.name, layout)
    servers = Views()
    pump = MirrorPump(reader, 0.1, servers)

    def publish(cycle: int, mode: str) -> None:
        writer.publish(cycle=cycle, heartbeat=65537, wall_s=100.0, mode=mode, latched=False,
                       sensor_values=[2.5], sensor_good=[True], sensor_read_s=[0.0],
                       applied=[30.0], proposal=None, source=[2],
                       bypasses=[("drift", 160.2)])

    async def main() -> None:
        assert not await pump.step()  # nothing published yet
        publish(0, "manual")
        assert await pump.step()
        (view,) = servers.views
        assert (view.cycle, view.mode, view.heartbeat, view.sensor_values, view.applied,
                view.sources) == (0, "manual", 65537, (2.5,), (30.0,), ("fallback",))
        assert math.isnan(view.proposal[0])
        # seconds left, from the core's wall time of the publish
        assert view.bypass_left_s == pytest.approx(60.2)
        assert view.bypasses[0][1] == datetime.datetime.fromtimestamp(160.2, datetime.UTC)
        assert not await pump.step()  # the same cycle: nothing to do
        publish(1, "no-such-mode")
        assert await pump.step()
        assert servers.views[-1].mode == "no-such-mode"
    try:
        asyncio.run(main())
    finally:
        reader.close()
        writer.close()


def test_a_view_on_the_modbus_server_and_an_unknown_mode_shown_as_starting() -> None:
    site = gateway.load_config("configs/water_tank.yaml")
    servers = NorthboundServers(replace(site, northbound=Northbound()), handler=None)  # type: ignore[arg-type]
    modbus = Recorder()
    servers.modbus = modbus
    view = PlantView(
        at_s=5.0, at_wall_s=100.0, cycle=3, sensor_values=(2.5, 0.01, 0.004, 9.0),
        sensor_good=(True,) * 4, sensor_at_s=(5.0,) * 4, applied=(30.0, 40.0, 0.0),
        sources=("fallback",) * 3, proposal=(math.nan,) * 3, mode="safe_stop", latched=True,
        trip_reason="x", incident_id="INC-1", heartbeat=65537,
        bypasses=(("drift", datetime.datetime.fromtimestamp(160.0, datetime.UTC)),),
        bypass_left_s=60.0)

    asyncio.run(servers.publish(view))
    names = [t.name for t in site.sensors] + [t.name for t in site.actuators]
    assert [c[1][0] for c in modbus.calls[:7]] == names
    assert modbus.calls[7] == ("status", (ModeCode.SAFE_STOP, True, True, 1))
    assert modbus.calls[8] == ("bypasses", (1, 60.0))
    asyncio.run(servers.publish(replace(view, mode="no-such-mode")))
    assert modbus.calls[-2] == ("status", (ModeCode.STARTING, True, True, 1))
