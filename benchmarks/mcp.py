"""``safety-gateway bench mcp``: the MCP server's cost, measured where it runs.

The real safety core (the example water tank, its own 100 ms cycle, a stand-in device, no
audit log) runs live with its northbound side in the real communications process
(``CommsLink``): a Modbus server with the external AI's address and the MCP server with one
``ai`` agent. A real MCP client from the SDK, on loopback:

- calls ``read_plant`` and ``check_command`` back to back (answered in the communications
  process from the mirror): p50 and p99 of the round trip (target: p50 at most 5 ms);
- proposes, one proposal at a time: each answer names the cycle that judged it, so the bench
  counts the cycles from the call to that cycle (1: the next cycle);
- then an external AI writes over Modbus (one FC16 per value) in the same run, and the bench
  counts the cycles from the write's answer to the first cycle whose proposal holds the value.

``propose`` is on the AI path when it adds cycles between the agent's command and the cycle
that takes it: the target is at most one cycle more than the Modbus path (median and max).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Mapping

SITE = Path(__file__).resolve().parent.parent / "configs" / "water_tank.yaml"
TARGETS = {"round_trip_ms_p50_max": 5.0, "propose_extra_cycles_max": 1.0}
TOKEN = "bench-agent-token-0123456789abcdef"


class _Device:
    """A stand-in southbound device: takes writes, has nothing to read."""

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def refresh(self) -> None:
        return None

    async def write(self, values: Mapping[str, float]) -> None:
        return None

    async def write_heartbeat(self, counter: int) -> None:
        return None

    async def close(self) -> None:
        return None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _site_file(folder: Path) -> tuple[Path, int, int]:
    from simulators.ports import free_port

    data = yaml.safe_load(SITE.read_text(encoding="utf-8"))
    (folder / "agent.token").write_text(TOKEN)
    modbus_port, mcp_port = free_port(), free_port()
    data["northbound"] = {
        "modbus": {"host": "127.0.0.1", "port": modbus_port, "unit": 1,
                   "allow": ["127.0.0.1"], "ai_clients": ["127.0.0.1"]},
        "mcp": {"port": mcp_port, "agents": [{"name": "bench", "role": "ai",
                                              "token_file": "agent.token",
                                              "calls_per_s": 100000, "burst": 100000}]}}
    data["audit"]["path"] = str(folder / "audit.db")
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, modbus_port, mcp_port


async def _measure(quick: bool) -> dict[str, Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from pymodbus.client import AsyncModbusTcpClient

    from gateway.comms.link import CommsLink
    from gateway.config.loader import load_config
    from gateway.runtime.gateway import Gateway
    from simulators.plant_server import encode_registers

    n_calls = 100 if quick else 3000
    n_proposals = 5 if quick else 100
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        path, modbus_port, mcp_port = _site_file(Path(tmp))
        site = load_config(path)
        link = CommsLink(site, path)
        gw = Gateway(site, clients={"plc": _Device()}, servers=False, northbound=link,
                     startup_wait_s=0.0)
        link.handler = gw
        names = tuple(t.name for t in site.actuators)
        valve = names.index("inflow_valve")
        # Each cycle's index (1-based) and the AI proposal's valve value it judged.
        seen: list[tuple[int, float]] = []

        def feed() -> None:
            now = gw.clock()
            level = 2.5 + 0.001 * (int(now * 10) % 3)
            for name, value in (("level", level), ("inflow_rate", 0.01), ("demand", 0.005),
                                ("uptime_s", now)):
                gw.store.update(name, value, True, now)

        async def feeder(stop: asyncio.Event) -> None:
            while not stop.is_set():
                feed()
                await asyncio.sleep(0.01)

        feed()
        stop = asyncio.Event()
        feeding = asyncio.create_task(feeder(stop))
        running = asyncio.create_task(gw.run(stop))
        try:
            await asyncio.wait_for(gw.ready.wait(), 30)
            assert gw.control is not None
            control = gw.control
            judged = control.on_decision

            def on_decision(decision: Any) -> None:
                if judged is not None:
                    judged(decision)
                last = gw.last_proposal
                seen.append((control.count + 1, math.nan if last is None or last.values is None
                             else float(last.values[valve])))

            control.on_decision = on_decision
            url = f"http://127.0.0.1:{mcp_port}/mcp"
            async with create_mcp_http_client(
                    headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                deadline = time.monotonic() + 60
                while True:  # the communications process starts its servers
                    try:
                        async with Client(streamable_http_client(url, http_client=http)) as c:
                            if _data(await c.call_tool("read_plant", {})).get("available"):
                                break
                    except Exception:  # not listening yet (the SDK wraps it in a group)
                        if time.monotonic() > deadline:
                            raise
                    await asyncio.sleep(0.2)
                async with Client(streamable_http_client(url, http_client=http)) as c:
                    trips: dict[str, list[float]] = {"read_plant": [], "check_command": []}
                    for tool, args in (("read_plant", {}),
                                       ("check_command", {"values": {"inflow_valve": 30.0}})):
                        for _ in range(n_calls // 10):  # warm up
                            await c.call_tool(tool, args)
                        for _ in range(n_calls):
                            t0 = time.perf_counter()
                            await c.call_tool(tool, args)
                            trips[tool].append(1000.0 * (time.perf_counter() - t0))
                    mcp_cycles: list[int] = []
                    mcp_ms: list[float] = []
                    for k in range(n_proposals):
                        before = control.count
                        t0 = time.perf_counter()
                        result = await c.call_tool("propose", {"values": {
                            "inflow_valve": 20.0 + 0.01 * k}})
                        mcp_ms.append(1000.0 * (time.perf_counter() - t0))
                        data = _data(result)
                        # The cycle that judged it, by its time (the answer names it).
                        at = data["outcome"]["cycle_at_s"]
                        mcp_cycles.append(_index_of(control, at) - before)
            client = AsyncModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5, retries=0)
            await client.connect()
            modbus_cycles: list[int] = []
            try:
                for k in range(n_proposals):
                    value = round(40.0 + 0.25 * k, 2)
                    answer = await client.write_registers(
                        2 * valve, encode_registers("float32", 1.0, value), device_id=1)
                    assert not answer.isError(), answer
                    before = control.count
                    end = time.monotonic() + 10
                    while not any(i > before and abs(v - value) < 1e-3 for i, v in seen):
                        assert time.monotonic() < end, "the Modbus write never reached a cycle"
                        await asyncio.sleep(0.002)
                    first = next(i for i, v in seen if i > before and abs(v - value) < 1e-3)
                    modbus_cycles.append(first - before)
            finally:
                client.close()
        finally:
            stop.set()
            await asyncio.gather(running, feeding, return_exceptions=True)
    return {"read_plant": trips["read_plant"], "check_command": trips["check_command"],
            "propose_ms": mcp_ms, "propose_cycles": mcp_cycles,
            "modbus_cycles": modbus_cycles, "period_ms": site.site.cycle_ms}


def _data(result: Any) -> dict[str, Any]:
    """A tool's answer: the JSON object of its text content."""
    import mcp_types

    block = result.content[0]
    assert isinstance(block, mcp_types.TextContent)
    data: dict[str, Any] = json.loads(block.text)
    return data


def _index_of(control: Any, at_s: float) -> int:
    """The 1-based index of the cycle whose decision was at ``at_s`` (among the last 1000)."""
    decisions = list(control.decisions)
    for back, decision in enumerate(reversed(decisions)):
        if decision.at_s == at_s:
            return int(control.count - back)
    raise LookupError(at_s)


def run(quick: bool) -> dict[str, Any]:
    raw = asyncio.run(_measure(quick))

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(values), 3), "p99": round(_pct(values, 0.99), 3),
                "max": round(max(values), 3), "n": len(values)}

    mcp_cycles, modbus_cycles = raw["propose_cycles"], raw["modbus_cycles"]
    extra_p50 = statistics.median(mcp_cycles) - statistics.median(modbus_cycles)
    extra_max = max(mcp_cycles) - max(modbus_cycles)
    passed = {
        "read_plant": statistics.median(raw["read_plant"]) <= TARGETS["round_trip_ms_p50_max"],
        "check_command": statistics.median(raw["check_command"])
        <= TARGETS["round_trip_ms_p50_max"],
        "propose": max(extra_p50, extra_max) <= TARGETS["propose_extra_cycles_max"]}
    return {
        "bench": "mcp", "quick": quick, "cpus": os.cpu_count(),
        "python": platform.python_version(), "load_avg": list(os.getloadavg()),
        "period_ms": raw["period_ms"],
        "round_trip_ms": {"read_plant": stats(raw["read_plant"]),
                          "check_command": stats(raw["check_command"])},
        "propose_ms": stats(raw["propose_ms"]),
        "propose_cycles": {"p50": statistics.median(mcp_cycles), "max": max(mcp_cycles),
                           "n": len(mcp_cycles)},
        "modbus_cycles": {"p50": statistics.median(modbus_cycles), "max": max(modbus_cycles),
                          "n": len(modbus_cycles)},
        "propose_extra_cycles": {"p50": extra_p50, "max": extra_max},
        "targets": TARGETS, "pass": passed, "all_pass": all(passed.values())}


def format_text(result: dict[str, Any]) -> str:
    t = result["targets"]

    def mark(key: str) -> str:
        return "pass" if result["pass"][key] else "FAIL"

    out = [f"bench mcp (the MCP server in the communications process, real core, "
           f"{result['period_ms']:g} ms cycle; {result['cpus']} CPUs, load average "
           f"{result['load_avg'][0]:.2f})"]
    for tool, fig in result["round_trip_ms"].items():
        out.append(f"  {tool + ' round trip':<28} p50 {fig['p50']:7.3f} ms  p99 "
                   f"{fig['p99']:7.3f} ms  (n={fig['n']})  target p50 <= "
                   f"{t['round_trip_ms_p50_max']:g} ms: {mark(tool)}")
    p, m, x = result["propose_cycles"], result["modbus_cycles"], result["propose_extra_cycles"]
    out.append(f"  {'propose answer':<28} p50 {result['propose_ms']['p50']:7.3f} ms  p99 "
               f"{result['propose_ms']['p99']:7.3f} ms")
    out.append(f"  cycles to the judging cycle: propose p50 {p['p50']:g} max {p['max']:g}; "
               f"Modbus write p50 {m['p50']:g} max {m['max']:g}; propose adds p50 "
               f"{x['p50']:g} max {x['max']:g} (target <= "
               f"{t['propose_extra_cycles_max']:g}): {mark('propose')}")
    out.append("all targets met" if result["all_pass"] else "some targets missed")
    return "\n".join(out)
