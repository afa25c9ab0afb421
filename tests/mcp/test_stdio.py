"""``safety-gateway mcp-stdio``: a local agent over stdio (the SDK's stdio client launching the
relay), relayed to a running gateway's MCP endpoint as the configured agent; its proposal gets
the cycle's real outcome. A wrong token or no gateway: exit 3; an unknown agent: exit 2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.audit import read_records
from gateway.config.loader import load_config
from simulators.ports import free_port

from .harness import TOKENS, Clock, call, cycles, make, propose

ROOT = Path(__file__).resolve().parents[2]


def site_file(tmp_path: Path, port: int) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "water_tank.yaml").read_text(encoding="utf-8"))
    (tmp_path / "planner.token").write_text(TOKENS["planner"])
    data["northbound"] = {"mcp": {"port": port, "agents": [
        {"name": "planner", "role": "ai", "token_file": "planner.token"},
        {"name": "stranger", "role": "viewer", "token_env": "SG_TEST_STRANGER"}]}}
    data["audit"]["path"] = str(tmp_path / "audit.db")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def relay(path: Path, agent: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "mcp-stdio", str(path),
                           "--agent", agent], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False, cwd=ROOT,
                          env={**_env(), **(env or {})})


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_a_local_agent_over_stdio(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    path = site_file(tmp_path, free_port())
    site = load_config(path)

    async def body() -> None:
        clock = Clock()
        gw = make(site, tmp_path / "audit.db", clock)
        await gw.open()
        try:
            await cycles(gw, clock, 2)
            params = StdioServerParameters(
                command=sys.executable, cwd=ROOT,
                args=["-m", "gateway.cli", "mcp-stdio", str(path), "--agent", "planner"])
            async with Client(params) as ai:
                names = {t.name for t in (await ai.list_tools()).tools}
                assert "propose" in names
                plant = await call(ai, "read_plant")
                assert plant["mode"] == "manual"
                out = await propose(gw, clock, ai, {"inflow_valve": 130.0})
                assert "inflow_valve.max" in out["refusal"]["violations"]
                valve = next(a for a in plant["actuators"] if a["name"] == "inflow_valve")
                out = await propose(gw, clock, ai, {"inflow_valve": valve["applied"]})
                assert out["outcome"]["result"] == "not_in_control"
            # A token the running gateway does not know: refused (401), exit 3.
            wrong = await asyncio.to_thread(relay, path, "stranger",
                                            {"SG_TEST_STRANGER": "not-the-token"})
            assert wrong.returncode == 3, wrong.stderr
            assert "as agent 'stranger'" in wrong.stderr and "Traceback" not in wrong.stderr
        finally:
            await gw.close()

    asyncio.run(asyncio.wait_for(body(), 120))
    refused = [r.data() for r in read_records(tmp_path / "audit.db", kinds=("security",))]
    assert any(p["reason"] == "unknown or wrong bearer token" for p in refused)
    # No gateway at all.
    gone = relay(path, "planner")
    assert gone.returncode == 3, gone.stderr
    assert "cannot use the gateway's MCP endpoint" in gone.stderr
    assert "Traceback" not in gone.stderr
    unknown = relay(path, "nobody")
    assert unknown.returncode == 2
    assert "no agent 'nobody' (agents: planner, stranger)" in unknown.stderr
