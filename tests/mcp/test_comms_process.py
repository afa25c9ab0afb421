"""The MCP server where it belongs: in the real communications process (``CommsLink``), in
front of the real safety core (stepped, stand-in device). An agent reads the core's view from
the mirror and its proposal crosses the request channel and waits for the core's cycle."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from gateway.adapters.base import ClientInfo, Role
from gateway.audit import read_records
from gateway.comms.link import CommsLink
from gateway.config.loader import load_config
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.comms.conftest import until
from tests.incident.test_via_gateway import Clock, Device

from .harness import TOKENS, agent, call

ADMIN = ClientInfo("opcua", "127.0.0.1:5", "chief", Role.ADMIN)


def test_an_agent_through_the_communications_process(tmp_path: Path) -> None:
    data = yaml.safe_load(Path("configs/water_tank.yaml").read_text(encoding="utf-8"))
    (tmp_path / "planner.token").write_text(TOKENS["planner"])
    data["northbound"] = {"mcp": {"port": free_port(), "agents": [
        {"name": "planner", "role": "ai", "token_file": "planner.token"}]}}
    data["audit"]["path"] = str(tmp_path / "audit.db")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    site = load_config(path)

    async def main() -> None:
        link = CommsLink(site, path, ping_interval_s=0.1)
        clock = Clock()
        gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                     startup_wait_s=0.0, servers=False, northbound=link,
                     audit_path=tmp_path / "audit.db")
        link.handler = gw

        def sense() -> None:
            level = 2.5 + 0.001 * (round(clock.now * 10) % 3)
            for name, value in (("level", level), ("inflow_rate", 0.01), ("demand", 0.005),
                                ("uptime_s", clock.now)):
                gw.store.update(name, value, True, clock.now)

        sense()
        await gw.open()
        stepping = True
        go = asyncio.Event()  # cleared: the core's clock stands still (no cycle)
        go.set()

        async def cycles() -> None:
            while stepping:
                await go.wait()
                clock.now += 0.1
                sense()
                await gw.cycle(clock.now)
                await asyncio.sleep(0.02)

        stepper = asyncio.create_task(cycles())
        try:
            async def up() -> bool:
                try:
                    async with agent(gw, TOKENS["planner"]) as ai:
                        return bool((await call(ai, "read_plant"))["available"])
                except Exception:  # not listening yet (the SDK wraps it in a group)
                    return False

            await until(up, 60, "the child's MCP server answers with the core's view")
            async with agent(gw, TOKENS["planner"]) as ai:
                plant = await call(ai, "read_plant")
                valve = next(a for a in plant["actuators"] if a["name"] == "inflow_valve")
                # No cycle between SHADOW and the proposal (the AI would be silent in SHADOW
                # for as long as the wall takes, and trip): the clock stands still until the
                # proposal waits in the core, then the cycle that judges it runs.
                go.clear()
                assert (await gw.request(ADMIN, "to_shadow", None, None)).accepted
                task = asyncio.create_task(call(ai, "propose", {"values": {
                    "inflow_valve": valve["applied"]}}))
                await until(lambda: len(gw.requests.proposals) == 1 or task.done(), 30,
                            "the proposal waits in the core")
                go.set()
                out = await task
                assert out["outcome"]["result"] == "shadow", out
                assert out["outcome"]["mode"] == "shadow"
                out = await call(ai, "propose", {"values": {"inflow_valve": 150.0}})
                assert "inflow_valve.max" in out["refusal"]["violations"]
        finally:
            stepping = False
            go.set()
            await stepper
            await gw.close()

    asyncio.run(asyncio.wait_for(main(), 120))
    calls: list[dict[str, Any]] = [r.data() for r in read_records(tmp_path / "audit.db",
                                                                  kinds=("agent_call",))]
    assert {(c["agent"], c["tool"], c["outcome"]) for c in calls} >= {
        ("planner", "propose", "shadow"), ("planner", "propose", "refused: refused_by_gateway")}
