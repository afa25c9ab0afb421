"""Refused connections are evidence too (issue 16: every refusal in the audit chain), and a
flood of them stays bounded: aggregated per client, event and reason like refused writes."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from pathlib import Path

import gateway
from gateway.audit.store import read_records, verify
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.incident.test_via_gateway import Clock, Device

ROOT = Path(__file__).resolve().parents[2]


def test_a_flood_of_refused_modbus_connections_is_counted_in_few_records(tmp_path: Path) -> None:
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    north = site.northbound
    assert north.modbus is not None
    port = free_port()
    site = replace(site, northbound=replace(
        north, modbus=replace(north.modbus, port=port, allow=("127.0.0.1",)), opcua=None))
    db = tmp_path / "audit.db"
    clock = Clock()
    gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0, audit_path=db)
    sent = 200

    async def main() -> float:
        await gw.open()
        start = clock.now
        try:
            for k in range(sent):
                # From an address the allowlist does not name: refused at once.
                _, writer = await asyncio.open_connection("127.0.0.1", port,
                                                          local_addr=("127.0.0.9", 0))
                writer.transport.abort()
                if k % 20 == 19:  # the runtime's cycles close a window every second
                    clock.now += 0.5
                    await gw.cycle(clock.now)
            for _ in range(500):  # until the server has seen every attempt (5 s at most)
                if gw.modbus_server.stats.refused_not_allowed >= sent:
                    break
                await asyncio.sleep(0.01)
        finally:
            await gw.close()
        return clock.now - start

    elapsed = asyncio.run(main())
    assert verify(db).ok
    windows = [r.data() for r in read_records(db, kinds=("security",))]
    refused = [w for w in windows if w["event"] == "connection_refused"]
    assert sum(w["count"] for w in refused) == sent
    assert all(w["reason"] == "not in northbound.modbus.allow" for w in refused)
    assert all(a.startswith("127.0.0.9:") for w in refused for a in w["addresses"])
    assert len(refused) <= math.ceil(elapsed) + 1  # one per second at most, plus the last
