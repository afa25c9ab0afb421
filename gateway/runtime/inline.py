"""The northbound servers inside the core's own process: for tests and drills, which step the
gateway themselves. ``safety-gateway run`` hosts them in the communications process instead
(``gateway.comms``), where no northbound peer can delay the cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.adapters.base import Refusal

if TYPE_CHECKING:
    from gateway.adapters.base import NorthboundHandler, WriteOutcome
    from gateway.config.schema import Site
    from gateway.runtime.view import PlantView


class InlineServers:
    """The site's northbound Modbus (plain and/or TLS) and OPC UA servers, fed each cycle."""

    def __init__(self, site: Site, handler: NorthboundHandler) -> None:
        self.site = site
        self.handler = handler
        self.index = {t.name: i for i, t in enumerate(site.actuators)}
        self.modbus: Any = None
        self.modbus_tls: Any = None  # beside a plain server
        self.opcua: Any = None

    async def start(self) -> None:
        nb = self.site.northbound
        if nb.modbus is not None:
            from gateway.adapters.modbus.map import NorthboundMap
            from gateway.adapters.modbus.server import ModbusServer

            nmap = NorthboundMap.from_site(self.site)
            if nb.modbus.plain:
                self.modbus = ModbusServer(nmap, nb.modbus, self.handler)
                await self.modbus.start()
            if nb.modbus.tls is not None:
                # Modbus/TCP Security on its own port, sharing the plain server's image (one
                # mirror serves both); without plain Modbus it is the site's Modbus server.
                secure = ModbusServer(nmap, nb.modbus, self.handler, secure=True,
                                      image=None if self.modbus is None else self.modbus.image)
                await secure.start()
                if self.modbus is None:
                    self.modbus = secure
                else:
                    self.modbus_tls = secure
        if nb.opcua is not None:
            from gateway.adapters.opcua.server import OpcUaServer

            self.opcua = OpcUaServer(self.site, self.handler)
            # refused channels and certificates, failed logins: audited (issue 16)
            self.opcua.add_security_listener(
                lambda e: self.handler.refused_connection("opcua", e.source, e.user, e.kind,
                                                          e.reason))
            await self.opcua.start()

    async def stop(self) -> None:
        for server in (self.modbus_tls, self.modbus):
            if server is not None:
                await server.stop()
        if self.opcua is not None:
            await self.opcua.stop()

    async def publish(self, view: PlantView) -> None:
        """Mirror values and the true status: mode, latch and its reason, the open incident,
        the bypasses in force with their expiry."""
        names = self.site.sensors
        if self.modbus is not None:
            from gateway.adapters.modbus.map import ModeCode

            srv = self.modbus
            for tag, value in zip(names, view.sensor_values, strict=True):
                srv.set_sensor(tag.name, value)
            for tag, value in zip(self.site.actuators, view.applied, strict=True):
                srv.set_actuator(tag.name, value)
            srv.set_status(ModeCode.of(view.mode), view.latched, bool(view.incident_id),
                           view.heartbeat % 65536)
            srv.set_bypasses(len(view.bypasses), view.bypass_left_s)
        if self.opcua is not None:
            srv = self.opcua
            for tag, value, good in zip(names, view.sensor_values, view.sensor_good,
                                        strict=True):
                await srv.set_sensor(tag.name, value, good)
            for tag, value in zip(self.site.actuators, view.applied, strict=True):
                await srv.set_actuator(tag.name, value)
            await srv.set_status(view.mode, view.latched, view.heartbeat,
                                 bool(view.incident_id), trip_reason=view.trip_reason,
                                 incident_id=view.incident_id, bypasses=view.bypasses)

    async def show_rejection(self, name: str, outcome: WriteOutcome) -> None:
        """Let operators read the latest refusal on the northbound status: its kind as a
        Modbus ``status.rejection`` code, and ``"<tag> refused (<kind>): <reason>"`` on the
        OPC UA ``Status/LastRejection``."""
        why = Refusal.UNKNOWN_TAG if name not in self.index else outcome.why
        if self.modbus is not None:
            from gateway.adapters.modbus.map import RejectionCode

            code = (RejectionCode.UNKNOWN_TAG if name not in self.index
                    else RejectionCode.of(outcome))
            self.modbus.set_rejection(code, self.index.get(name))
        if self.opcua is not None:
            kind = str(why).replace("_", " ") if why is not None else "refused"
            await self.opcua.set_rejection(f"{name} refused ({kind}): {outcome.reason}")
