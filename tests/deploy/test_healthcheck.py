"""deploy/healthcheck.py against a real gateway serving OPC UA on loopback (the in-process
servers, the same mapping as the communications process): healthy while cycles run, "stuck"
when they stop although the server still answers, unhealthy when nothing listens."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import gateway
from gateway.runtime.gateway import Gateway
from simulators.ports import free_port
from tests.incident.test_via_gateway import Clock, Device

ROOT = Path(__file__).resolve().parents[2]


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" /
                                                  "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["healthcheck"] = module
    spec.loader.exec_module(module)
    return module


async def scenario() -> None:
    health = load_healthcheck()
    site = gateway.load_config(ROOT / "configs" / "water_tank.yaml")
    url = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
    north = site.northbound
    assert north.opcua is not None
    site = replace(site, northbound=replace(
        north, modbus=None, opcua=replace(north.opcua, endpoint=url, allow_anonymous=True)))
    clock = Clock()
    gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                 startup_wait_s=0.0)
    await gw.open()
    cycling = asyncio.Event()

    async def cycles() -> None:
        while True:
            await cycling.wait()
            clock.now += 0.1
            await gw.cycle(clock.now)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(cycles())
    try:
        cycling.set()
        assert await health.stuck(url, 0.5, 10.0) is None
        cycling.clear()
        await asyncio.sleep(0.1)  # let a cycle under way finish
        problem = await health.stuck(url, 0.5, 10.0)
        assert problem is not None and "not cycling" in problem
    finally:
        task.cancel()
        await asyncio.wait([task])
        await gw.close()


def test_healthy_while_cycling_and_stuck_when_not():
    asyncio.run(scenario())


def test_unreachable_is_unhealthy_in_one_line(capsys):
    health = load_healthcheck()
    url = f"opc.tcp://127.0.0.1:{free_port()}/gateway/"
    assert health.main(["--via", url, "--timeout", "2", "--interval", "0.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unhealthy: cannot read the gateway's status") and err.count(
        "\n") == 1, err
