"""The mirror pump: the core's latest publish, copied into the northbound servers.

Once per period (the site's cycle) it reads the mirror, and only when the core's cycle counter
moved does it update the servers: sensors and applied values, the mode, latch, heartbeat and
open incident, the trip reason and the bypasses in force with their expiry. What the servers
show is what the core published, nothing computed here: the seconds until a bypass expires
are counted from the core's wall time of that publish.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.link.mirror import MirrorReader, MirrorSnapshot

log = logging.getLogger("gateway.comms")


class MirrorPump:
    """Copies the mirror into ``modbus`` (a ``ModbusServer`` whose image the TLS server
    shares) and ``opcua`` (an ``OpcUaServer``); either may be None."""

    def __init__(self, reader: MirrorReader, period_s: float, *, modbus: Any = None,
                 opcua: Any = None) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, not {period_s}")
        self.reader = reader
        self.period_s = period_s
        self.modbus = modbus
        self.opcua = opcua
        self.cycle: int | None = None  # the core's cycle last copied (None: none yet)
        self.updates = 0
        self._unknown_mode: str | None = None
        layout = reader.layout
        self._sensors = layout.sensors
        self._actuators = layout.actuators

    async def run(self) -> None:
        """Copy every period until cancelled."""
        while True:
            await self.step()
            await asyncio.sleep(self.period_s)

    async def step(self) -> bool:
        """Read the mirror once; update the servers if the core published a new cycle.
        Returns whether it did."""
        snap = self.reader.read()
        if snap is None or snap.cycle == self.cycle:
            return False
        self.cycle = snap.cycle
        if self.modbus is not None:
            self._modbus(snap)
        if self.opcua is not None:
            await self._opcua(snap)
        self.updates += 1
        return True

    def _modbus(self, snap: MirrorSnapshot) -> None:
        from gateway.adapters.modbus.map import ModeCode

        srv = self.modbus
        for name, value in zip(self._sensors, snap.sensor_values, strict=True):
            srv.set_sensor(name, value)
        for name, value in zip(self._actuators, snap.applied, strict=True):
            srv.set_actuator(name, value)
        try:
            mode = ModeCode.of(snap.mode)
        except ValueError:
            if snap.mode != self._unknown_mode:
                log.error("mirror: unknown mode %r; shown as starting", snap.mode)
                self._unknown_mode = snap.mode
            mode = ModeCode.STARTING
        srv.set_status(mode, snap.latched, bool(snap.incident_id), snap.heartbeat % 65536)
        expiries = [expiry for _, expiry in snap.bypasses]
        srv.set_bypasses(len(expiries), min(expiries) - snap.wall_s if expiries else None)

    async def _opcua(self, snap: MirrorSnapshot) -> None:
        srv = self.opcua
        for name, value, good in zip(self._sensors, snap.sensor_values, snap.sensor_good,
                                     strict=True):
            await srv.set_sensor(name, value, good)
        for name, value in zip(self._actuators, snap.applied, strict=True):
            await srv.set_actuator(name, value)
        bypasses = [(d, datetime.datetime.fromtimestamp(e, datetime.UTC))
                    for d, e in snap.bypasses]
        await srv.set_status(snap.mode, snap.latched, snap.heartbeat, bool(snap.incident_id),
                             trip_reason=snap.trip_reason, incident_id=snap.incident_id,
                             bypasses=bypasses)
