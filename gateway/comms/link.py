"""The core's northbound side when the servers run in the communications process.

:class:`CommsLink` is a :class:`gateway.runtime.gateway.Northbound`: :meth:`~CommsLink.start`
creates the mirror and starts the communications process under its supervisor,
:meth:`~CommsLink.publish` writes each cycle's :class:`~gateway.runtime.view.PlantView` into the
mirror (a few microseconds, no await, nothing a northbound peer can delay), and
:meth:`~CommsLink.stop` ends the process and removes the mirror.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.comms.supervisor import CommsEvent, CommsEventKind, CommsSupervisor
from gateway.link.mirror import MirrorLayout, MirrorWriter, Source

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.adapters.base import NorthboundHandler
    from gateway.config.schema import Site
    from gateway.runtime.view import PlantView

__all__ = ["CommsLink", "comms_recorder"]

log = logging.getLogger("gateway.runtime")

_SOURCES = {s.name.lower(): int(s) for s in Source}


class CommsLink:
    """Mirror + supervised communications process for ``site`` (loaded from ``site_path``,
    which the child loads too). ``handler`` answers the child's requests (the core; it may
    be set after construction, before :meth:`start`); ``on_event`` gets every
    :class:`~gateway.comms.supervisor.CommsEvent`; ``supervisor`` holds
    :class:`~gateway.comms.supervisor.CommsSupervisor` keyword arguments (backoff, ping
    bounds, ``max_in_flight``...)."""

    def __init__(self, site: Site, site_path: str | Path,
                 handler: NorthboundHandler | None = None,
                 on_event: Callable[[CommsEvent], None] = lambda event: None,
                 mirror_name: str | None = None, **supervisor: Any) -> None:
        self.site = site
        self.site_path = site_path
        self.handler = handler
        self.on_event = on_event
        self.mirror_name = mirror_name
        self.supervisor_args = supervisor
        self.layout = MirrorLayout.for_site(site)
        self.mirror: MirrorWriter | None = None
        self.supervisor: CommsSupervisor | None = None

    async def start(self) -> None:
        """Create the mirror and start the communications process (returns once it is
        spawned). Raises ``RuntimeError`` without a handler or if already started,
        ``FileExistsError`` if ``mirror_name`` is taken by a running core."""
        if self.handler is None:
            raise RuntimeError("CommsLink needs its handler before start()")
        if self.mirror is not None:
            raise RuntimeError("already started")
        self.mirror = MirrorWriter(self.mirror_name, self.layout)
        self.supervisor = CommsSupervisor(self.site_path, self.mirror.name, self.handler,
                                          self.on_event, **self.supervisor_args)
        try:
            await self.supervisor.start()
        except BaseException:
            self.mirror.close()
            self.mirror = None
            raise

    def publish(self, view: PlantView) -> None:
        """Write ``view`` into the mirror (nothing before :meth:`start`)."""
        mirror = self.mirror
        if mirror is None:
            return
        sup = self.supervisor
        mirror.publish(
            cycle=view.cycle, heartbeat=view.heartbeat, wall_s=view.at_wall_s, mode=view.mode,
            latched=view.latched, sensor_values=view.sensor_values,
            sensor_good=view.sensor_good, sensor_read_s=view.sensor_at_s,
            applied=view.applied, proposal=view.proposal,
            source=[_SOURCES.get(s, 0) for s in view.sources],
            trip_reason=view.trip_reason, incident_id=view.incident_id,
            bypasses=[(d, when.timestamp()) for d, when in view.bypasses],
            generation=sup.generation if sup is not None else 0, counters=view.counters,
            detector_names=view.detector_names, detector_values=view.detector_values,
            detector_limits=view.detector_limits)

    def site_reloaded(self, site: Site, sha256: str) -> None:
        """A reload applied ``site`` (its file's bytes hash to ``sha256``): tell the
        communications process, which reads the file again for what it shows. A process
        started later loads the file itself."""
        self.site = site
        sup = self.supervisor
        channel = sup.channel if sup is not None else None
        if channel is not None:
            channel.site_reloaded(sha256)

    @property
    def restarts(self) -> int:
        """How many times the supervisor started the communications process again (0 before
        :meth:`start`)."""
        sup = self.supervisor
        return sup.restarts if sup is not None else 0

    async def stop(self) -> None:
        """End the communications process (SIGTERM, then SIGKILL) and remove the mirror.
        Idempotent."""
        sup, self.supervisor = self.supervisor, None
        if sup is not None:
            await sup.stop()
        mirror, self.mirror = self.mirror, None
        if mirror is not None:
            mirror.close()


def comms_recorder(record: Callable[[dict[str, Any]], None]) -> Callable[[CommsEvent], None]:
    """An ``on_event`` that logs each start, loss and stop of the communications process and
    hands it to ``record`` (the core's audit records): while the process is away nobody
    outside sees the plant or reaches the core, so each loss is evidence."""

    def on_event(event: CommsEvent) -> None:
        payload = {"kind": str(event.kind), "pid": event.pid, "restarts": event.restarts,
                   "cause": event.cause, "detail": event.detail,
                   "exit_code": event.exit_code, "delay_s": event.delay_s}
        record(payload)
        if event.kind is CommsEventKind.LOST:
            log.error("communications process lost (%s%s, exit code %s); the core keeps "
                      "controlling; next start in %.1f s", event.cause,
                      f": {event.detail}" if event.detail else "", event.exit_code,
                      event.delay_s or 0.0)
        else:
            log.info("communications process %s pid=%s restarts=%d", event.kind, event.pid,
                     event.restarts)

    return on_event
