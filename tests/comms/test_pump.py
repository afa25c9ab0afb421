"""The mirror pump alone (no process): it copies a publish once, including a first publish
numbered 0, and only when the core's cycle counter moved."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.adapters.modbus.map import ModeCode
from gateway.comms.pump import MirrorPump
from gateway.link.mirror import MirrorLayout, MirrorReader, MirrorWriter


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


def test_each_publish_is_copied_once_from_cycle_zero() -> None:
    layout = MirrorLayout(("level",), ("valve",))
    writer = MirrorWriter(None, layout)
    reader = MirrorReader(writer.name, layout)
    server = Recorder()
    pump = MirrorPump(reader, 0.1, modbus=server)

    def publish(cycle: int, mode: str) -> None:
        writer.publish(cycle=cycle, heartbeat=65537, wall_s=100.0, mode=mode, latched=False,
                       sensor_values=[2.5], sensor_good=[True], sensor_read_s=[0.0],
                       applied=[30.0], proposal=None, source=[2],
                       bypasses=[("drift", 160.2)])

    async def main() -> None:
        assert not await pump.step()  # nothing published yet
        publish(0, "manual")
        assert await pump.step()
        assert server.calls[:3] == [("sensor", ("level", 2.5)), ("actuator", ("valve", 30.0)),
                                    ("status", (ModeCode.MANUAL, False, False, 1))]
        # seconds left, from the core's wall time of the publish
        assert server.calls[3] == ("bypasses", (1, pytest.approx(60.2)))
        assert not await pump.step()  # the same cycle: nothing to do
        publish(1, "no-such-mode")
        assert await pump.step()
        assert server.calls[-2] == ("status", (ModeCode.STARTING, False, False, 1))
    try:
        asyncio.run(main())
    finally:
        reader.close()
        writer.close()
