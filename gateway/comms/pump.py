"""The mirror pump: the core's latest publish, copied into the northbound servers.

Once per period (the site's cycle) it reads the mirror, and only when the core's cycle counter
moved does it update the servers: sensors and applied values, the mode, latch, heartbeat and
open incident, the trip reason, the bypasses in force with their expiry, the core's counters
and the detectors' statistics against their thresholds. What the servers
show is what the core published, nothing computed here: the seconds until a bypass expires
are counted from the core's wall time of that publish.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
from typing import TYPE_CHECKING, Any

from gateway.runtime.view import PlantView

if TYPE_CHECKING:
    from gateway.link.mirror import MirrorReader, MirrorSnapshot

log = logging.getLogger("gateway.comms")


class MirrorPump:
    """Shows the mirror on ``servers`` (a :class:`~gateway.comms.servers.NorthboundServers`,
    or anything with the same ``publish``)."""

    def __init__(self, reader: MirrorReader, period_s: float, servers: Any) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, not {period_s}")
        self.reader = reader
        self.period_s = period_s
        self.servers = servers
        self.cycle: int | None = None  # the core's cycle last copied (None: none yet)
        self.updates = 0

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
        await self.servers.publish(view_of(snap))
        self.updates += 1
        return True


def view_of(snap: MirrorSnapshot) -> PlantView:
    """The core's view as the mirror holds it (``at_s`` unknown here: NaN). The seconds
    until the first bypass expires are counted from the core's wall time of the publish."""
    expiries = [expiry for _, expiry in snap.bypasses]
    return PlantView(
        at_s=math.nan, at_wall_s=snap.wall_s, cycle=snap.cycle,
        sensor_values=snap.sensor_values, sensor_good=snap.sensor_good,
        sensor_at_s=snap.sensor_read_s, applied=snap.applied,
        sources=tuple(s.name.lower() for s in snap.source), proposal=snap.proposal,
        mode=snap.mode, latched=snap.latched, trip_reason=snap.trip_reason,
        incident_id=snap.incident_id, heartbeat=snap.heartbeat,
        bypasses=tuple((d, datetime.datetime.fromtimestamp(e, datetime.UTC))
                       for d, e in snap.bypasses),
        bypass_left_s=min(expiries) - snap.wall_s if expiries else None,
        counters=snap.counters,
        detector_names=tuple(name for name, _, _ in snap.detectors),
        detector_values=tuple(value for _, value, _ in snap.detectors),
        detector_limits=tuple(limit for _, _, limit in snap.detectors))
