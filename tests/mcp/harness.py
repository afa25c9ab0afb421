"""A stepped gateway serving MCP on loopback, and a real SDK client for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gateway
from gateway.config.schema import McpAgent, McpServerSpec, Northbound
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.incident.test_via_gateway import Device

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"planner": "ai-token-0123456789", "watcher": "viewer-token-0123456789",
          "shift": "operator-token-0123456789"}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mcp_site(tmp_path: Path, *, clean_shadow_s: float = 1.0,
             calls_per_s: float = 1000.0, burst: int = 1000) -> gateway.Site:
    """The water tank with an external AI and three agents (ai and viewer tokens in files,
    the operator's in SHIFT_TOKEN), on a free port; no other northbound server."""
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    for name in ("planner", "watcher"):
        (tmp_path / f"{name}.token").write_text(TOKENS[name] + "\n")
    agents = (McpAgent("planner", "ai", token_file=tmp_path / "planner.token",
                       calls_per_s=calls_per_s, burst=burst),
              McpAgent("watcher", "viewer", token_file=tmp_path / "watcher.token"),
              McpAgent("shift", "operator", token_env="SHIFT_TOKEN"))
    spec = McpServerSpec(agents=agents, port=free_port())
    return replace(site, northbound=Northbound(mcp=spec),
                   operation=replace(site.operation, clean_shadow_s=clean_shadow_s))


def make(site: gateway.Site, db: Path, clock: Clock) -> Gateway:
    gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0, audit_path=db, wall_clock=clock)
    feed(gw, clock())
    return gw


def feed(gw: Gateway, now: float) -> None:
    gw.store.update("level", 2.5, True, now)
    gw.store.update("inflow_rate", 0.01, True, now)
    gw.store.update("demand", 0.01, True, now)
    gw.store.update("uptime_s", float(int(now)), True, now)


async def cycles(gw: Gateway, clock: Clock, n: int = 1) -> None:
    for _ in range(n):
        clock.now += gw.period_s
        feed(gw, clock.now)
        await gw.cycle(clock.now)


@contextlib.asynccontextmanager
async def agent(gw: Gateway, token: str) -> AsyncIterator[Any]:
    """A real MCP client (the SDK's) on the gateway's MCP endpoint with ``token``."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    spec = gw.site.northbound.mcp
    assert spec is not None
    url = f"http://127.0.0.1:{spec.port}{spec.path}"
    async with (create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
                Client(streamable_http_client(url, http_client=http)) as client):
        yield client


async def call(client: Any, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A tool's answer: the JSON text of its one content block."""
    result = await client.call_tool(tool, args or {})
    (block,) = result.content
    data: dict[str, Any] = json.loads(block.text)
    assert result.is_error == (data["status"] == "refused")
    return data


async def propose(gw: Gateway, clock: Clock, client: Any, values: dict[str, float],
                  deadline_s: float = 20.0) -> dict[str, Any]:
    """``propose`` while the stepped gateway runs its next cycle: the call is sent, the
    core holds it for the cycle (or answers at once), the cycle runs, the answer comes."""
    task = asyncio.create_task(call(client, "propose", {"values": values}))
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not task.done() and len(gw.requests.proposals) == 0:
        assert loop.time() < end, "the proposal never reached the core"
        await asyncio.sleep(0.002)
    if not task.done():
        await cycles(gw, clock, 1)
    return await asyncio.wait_for(task, deadline_s)
