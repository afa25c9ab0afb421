"""The dashboard served by the real communications process (``python -m gateway.comms``, via
``CommsLink``) from the mirror the real safety core writes: a site whose only northbound
section is ``http``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml

from gateway.comms.link import CommsLink
from gateway.comms.supervisor import CommsEvent, CommsEventKind
from gateway.config.loader import load_config
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.comms.conftest import until
from tests.incident.test_via_gateway import Clock, Device

if TYPE_CHECKING:
    from pathlib import Path


def test_the_communications_process_serves_the_core_s_view(tmp_path: Path) -> None:
    with open("configs/water_tank.yaml", encoding="utf-8") as f:
        data = yaml.safe_load(f)
    port = free_port()
    data["northbound"] = {"http": {"host": "127.0.0.1", "port": port}}
    data["audit"]["path"] = str(tmp_path / "audit.db")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    async def main() -> None:
        site = load_config(path)
        events: list[CommsEvent] = []
        link = CommsLink(site, path, on_event=events.append, ping_interval_s=0.1)
        clock = Clock()
        gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                     startup_wait_s=0.0, servers=False, northbound=link,
                     audit_path=site.audit.path)  # the database the child's dashboard reads
        link.handler = gw

        def sense() -> None:
            level = 2.5 + 0.001 * (round(clock.now * 10) % 3)  # a live transmitter moves
            for name, value in (("level", level), ("inflow_rate", 0.01), ("demand", 0.005),
                                ("uptime_s", clock.now)):
                gw.store.update(name, value, True, clock.now)

        sense()
        await gw.open()
        stepping = True

        async def cycles() -> None:
            while stepping:
                clock.now += 0.1
                sense()
                await gw.cycle(clock.now)
                await asyncio.sleep(0.02)

        stepper = asyncio.create_task(cycles())
        seen: list[dict[str, Any]] = []
        seen_docs: list[dict[str, Any]] = []
        try:
            async with aiohttp.ClientSession() as http:
                async def state() -> bool:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/api/state") as resp:
                            body = await resp.json()
                    except aiohttp.ClientError:
                        return False
                    if body["view"] is not None:
                        seen.append(body["view"])
                        seen_docs.append(body)
                    return (len({v["cycle"] for v in seen}) >= 2
                            and body["incidents"]["read_at_wall_s"] is not None)

                await until(state, 60, "the child's dashboard shows the core's cycles and "
                            "has read the audit database")
            view = seen[-1]
            assert view["mode"] == "manual"
            assert [a["source"] for a in view["actuators"]] == ["fallback"] * 3
            level = view["sensors"][0]
            assert level["name"] == "level" and 2.5 <= level["value"] <= 2.5021  # 2.500..2.502
            assert {m["name"] for m in view["margins"]} >= {"total_flow", "pump_dry_run"}
            # The detectors' statistics crossed the mirror with their thresholds, by name.
            gauges = {d["name"]: d for d in view["detectors"]}
            assert list(gauges)[:4] == ["violation_rate", "deadline", "ai_silent",
                                        "divergence.inflow_valve"]
            assert gauges["input.range.level"]["limit"] == 0.0
            assert -2.51 < gauges["input.range.level"]["value"] < -2.49  # 2.5 m inside
            assert gauges["input.range.level"]["level"] == "ok"
            assert gauges["violation_rate"]["limit"] == site.detection.violation_max
            # The core's counters: the audit is healthy; this fake device says no link state.
            health = view["health"]
            assert health["counted"] and health["audit"]["level"] == "ok"
            assert [(d["name"], d["level"]) for d in health["devices"]] == [("plc", "unknown")]
            # The communications process reads the core's audit database (no incident yet).
            board = seen_docs[-1]["incidents"]
            assert (board["error"], board["incidents"]) == (None, [])
        finally:
            stepping = False
            await asyncio.wait({stepper})
            await gw.close()
        assert [e.kind for e in events] == [CommsEventKind.STARTED, CommsEventKind.STOPPED]

    asyncio.run(asyncio.wait_for(main(), 120))
