"""The site's northbound servers, and how a plant view is shown on them.

The communications process hosts them (``gateway.comms.process``), fed from the mirror, with the
request channel as their handler. Tests and drills, which step the gateway themselves, may host
them inside the core's own process (``Gateway(servers=True)``), fed by each cycle directly:
the same servers, the same mapping of a view onto them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.adapters.base import Refusal

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.adapters.base import NorthboundHandler, WriteOutcome
    from gateway.config.schema import Site
    from gateway.runtime.view import PlantView

log = logging.getLogger("gateway.comms")


class NorthboundServers:
    """The site's northbound Modbus (plain and/or Modbus/TCP Security) and OPC UA servers, its
    dashboard (HTTP) and its MCP server for agents (``gateway.mcp``). ``clock`` times the
    agents' rate limits and call windows (the core's clock when they run in its process: a
    drill's simulated time).

    The Modbus servers are built at once (their register image exists before they listen, so
    a first :meth:`publish` is what their first client reads); :meth:`start` starts them, then
    the OPC UA server (slower to start: a view published meanwhile reaches the Modbus servers
    only). :meth:`stop` stops whatever started, each server on its own."""

    def __init__(self, site: Site, handler: NorthboundHandler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site = site
        self.handler = handler
        self.index = {t.name: i for i, t in enumerate(site.actuators)}
        self.modbus: Any = None  # the plain server, or the TLS one when plain is off
        self.modbus_tls: Any = None  # beside a plain server, sharing its image
        self.opcua: Any = None  # set once started
        self.http: Any = None  # the dashboard (gateway.ops.http), when the site has one
        self.mcp: Any = None  # the MCP server for agents (gateway.mcp), when the site has one
        self._started: list[Any] = []
        self._unknown_mode: str | None = None
        self._last: PlantView | None = None
        nb = site.northbound
        if nb.modbus is not None:
            from gateway.adapters.modbus.map import NorthboundMap
            from gateway.adapters.modbus.server import ModbusServer

            nmap = NorthboundMap.from_site(site)
            if nb.modbus.plain:
                self.modbus = ModbusServer(nmap, nb.modbus, handler)
            if nb.modbus.tls is not None:
                # Modbus/TCP Security on its own port, sharing the plain server's image (one
                # view serves both); without plain Modbus it is the site's Modbus server.
                secure = ModbusServer(nmap, nb.modbus, handler, secure=True,
                                      image=None if self.modbus is None else self.modbus.image)
                if self.modbus is None:
                    self.modbus = secure
                else:
                    self.modbus_tls = secure

        if nb.http is not None:
            from gateway.ops.http import Dashboard

            self.http = Dashboard(site, nb.http, handler)
        if nb.mcp is not None:
            # The SDK is imported only for a site that serves agents.
            from gateway.mcp.server import McpServer

            self.mcp = McpServer(site, nb.mcp, handler, clock)

    def site_reloaded(self, site: Site, sha256: str = "") -> None:
        """Show ``site`` from now on (a reload applied it): the dashboard's facts (limits,
        constraints, interlocks). Nothing restarts: the maps and listeners depend only on
        what a reload may not change (tags, northbound settings)."""
        self.site = site
        if self.http is not None:
            from gateway.ops.http import site_facts

            # The mirror's counter slots were laid out for the site the core started with
            # (a reload may add constraints, which keep counting under "other"): pin them
            # before the site changes.
            _ = self.http.counter_layout
            self.http.site = site
            self.http.facts = site_facts(site)

    async def start(self) -> None:
        """Start listening: Modbus first, then the dashboard, then OPC UA. Raises what a server
        raises (OSError for a port taken, AdapterError for a certificate missing...)."""
        for server in (self.modbus, self.modbus_tls, self.http, self.mcp):
            if server is not None:
                await server.start()
                self._started.append(server)
        if self.site.northbound.opcua is not None:
            from gateway.adapters.opcua.server import OpcUaServer

            opcua = OpcUaServer(self.site, self.handler)
            # refused channels and certificates, failed logins: evidence for the core
            opcua.add_security_listener(
                lambda e: self.handler.refused_connection("opcua", e.source, e.user, e.kind,
                                                          e.reason))
            self._started.append(opcua)
            await opcua.start()
            self.opcua = opcua
            if self._last is not None:  # what was published while it started
                await self._publish_opcua(self._last)

    async def stop(self) -> None:
        """Stop every server that started; one failing to stop does not keep the others up."""
        started, self._started = self._started, []
        for server in reversed(started):
            try:
                await server.stop()
            except Exception:
                log.exception("stopping %s failed", type(server).__name__)

    async def publish(self, view: PlantView) -> None:
        """Show values and the true status: mode, latch and its reason, the open incident,
        the bypasses in force with their expiry."""
        self._last = view
        if self.modbus is not None:
            self._publish_modbus(view)
        if self.http is not None:
            self.http.publish(view)
        if self.mcp is not None:
            self.mcp.publish(view)
        if self.opcua is not None:
            await self._publish_opcua(view)

    def _publish_modbus(self, view: PlantView) -> None:
        from gateway.adapters.modbus.map import ModeCode

        srv = self.modbus
        for tag, value in zip(self.site.sensors, view.sensor_values, strict=True):
            srv.set_sensor(tag.name, value)
        for tag, value in zip(self.site.actuators, view.applied, strict=True):
            srv.set_actuator(tag.name, value)
        try:
            mode = ModeCode.of(view.mode)
        except ValueError:  # a core newer than this process: shown as starting
            if view.mode != self._unknown_mode:
                log.error("unknown mode %r; shown as starting", view.mode)
                self._unknown_mode = view.mode
            mode = ModeCode.STARTING
        srv.set_status(mode, view.latched, bool(view.incident_id), view.heartbeat % 65536)
        srv.set_bypasses(len(view.bypasses), view.bypass_left_s)

    async def _publish_opcua(self, view: PlantView) -> None:
        srv = self.opcua
        for tag, value, good in zip(self.site.sensors, view.sensor_values, view.sensor_good,
                                    strict=True):
            await srv.set_sensor(tag.name, value, good)
        for tag, value in zip(self.site.actuators, view.applied, strict=True):
            await srv.set_actuator(tag.name, value)
        await srv.set_status(view.mode, view.latched, view.heartbeat, bool(view.incident_id),
                             trip_reason=view.trip_reason, incident_id=view.incident_id,
                             bypasses=view.bypasses)

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
