"""``safety-gateway ctl reload`` against a real ``safety-gateway run``: the safety core and its
communications process (northbound Modbus, OPC UA and the dashboard) on loopback, a test PLC
below. A Modbus client, an OPC UA session and a dashboard event stream stay connected across
the reloads (``ctl reload``, then SIGHUP) and still answer on the same connections; the
dashboard shows each new limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from gateway.config.schema import Table
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port
from tests.runtime.test_reload import edit_file, tighten_inflow_max, write_site

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "SAFETY_GATEWAY_ADMIN_PASSWORD": "admin-pw",
       "SAFETY_GATEWAY_OPERATOR_PASSWORD": "operator-pw"}


async def cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *argv, cwd=ROOT, env=ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def next_state(events: aiohttp.StreamReader) -> dict[str, object]:
    """The next ``state`` event's document from a dashboard event stream."""
    while True:
        line = (await asyncio.wait_for(events.readline(), 30)).decode()
        assert line, "the event stream ended"
        if line.startswith("data: "):
            doc: dict[str, object] = json.loads(line[len("data: "):])
            return doc


def inflow_max(doc: dict[str, object]) -> float:
    site = doc["site"]
    assert isinstance(site, dict)
    (inflow,) = [a for a in site["actuators"] if a["name"] == "inflow_valve"]
    return float(inflow["limits"]["max"])


async def scenario(tmp_path: Path) -> None:
    http_port = free_port()
    log = tmp_path / "stderr.log"
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])
        modbus_port, opcua_port = free_port(), free_port()
        path = write_site(tmp_path, plc.port, modbus_port, opcua_port, lambda t: t.replace(
            "northbound:\n", f"northbound:\n  http: {{host: 127.0.0.1, port: {http_port}}}\n"))
        url = f"opc.tcp://127.0.0.1:{opcua_port}/gateway/"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "run", str(path), cwd=ROOT, env=ENV,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        modbus = AsyncModbusTcpClient("127.0.0.1", port=modbus_port)
        ua_client = Client(url)
        session = aiohttp.ClientSession()
        try:
            async def heartbeat() -> int:
                return (await plc.get_registers(Table.HOLDING_REGISTER, 100, 1))[0]

            loop = asyncio.get_running_loop()
            end = loop.time() + 60
            while await heartbeat() < 5:
                assert proc.returncode is None, log.read_text()
                assert loop.time() < end, "the gateway never cycled:\n" + log.read_text()
                await asyncio.sleep(0.05)
            # The northbound side starts in its own process: connect when it listens.
            end = loop.time() + 60
            while not await modbus.connect():
                assert loop.time() < end, "no northbound Modbus:\n" + log.read_text()
                await asyncio.sleep(0.1)
            for _ in range(600):
                try:
                    await ua_client.connect()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            stream = await session.get(f"http://127.0.0.1:{http_port}/api/events")
            assert stream.status == 200
            assert inflow_max(await next_state(stream.content)) == 100.0
            beat = ua_client.get_node("ns=2;s=Gateway.Status.Heartbeat")
            first = await beat.read_value()
            rr = await modbus.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError(), rr
            # The client's own end of its TCP connection: a reconnect would change it.
            local = modbus.ctx.transport.get_extra_info("sockname")

            # A dry run shows the difference and changes nothing.
            edit_file(path, tighten_inflow_max(80.0))
            admin = ("--via", url, "--user", "admin", "--password-env",
                     "SAFETY_GATEWAY_ADMIN_PASSWORD")
            code, out, err = await cli("ctl", "reload", "--dry-run", *admin)
            assert code == 0, err
            assert out.startswith("dry_run: 1 tightened")
            assert "limit inflow_valve.max tightened: 100 -> 80" in out
            # A file that fails check: check's errors, check's exit code, nothing changes.
            good = path.read_text()
            path.write_text(good.replace("max: 80.0,", "max: -1.0,"))
            code, out, err = await cli("ctl", "reload", *admin)
            checked = await cli("check", str(path))
            assert code == checked[0] == 2, (out, err)
            assert checked[2].strip() in err
            path.write_text(good)
            # Applied.
            code, out, err = await cli("ctl", "reload", *admin)
            assert code == 0, err
            assert out.startswith("applied: 1 tightened; applied at cycle"), out
            # The dashboard shows the new limit on the same stream; the same Modbus
            # connection and OPC UA session still answer.
            for _ in range(100):
                if inflow_max(await next_state(stream.content)) == 80.0:
                    break
            else:
                raise AssertionError("the dashboard never showed the new max")
            rr = await modbus.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError(), rr
            assert modbus.ctx.transport.get_extra_info("sockname") == local
            second = await beat.read_value()
            assert second != first
            # SIGHUP does the same; the core tells the communications process, whose
            # dashboard shows the new limit on the same stream.
            edit_file(path, lambda t: t.replace("max: 80.0,", "max: 70.0,"))
            proc.send_signal(signal.SIGHUP)
            for _ in range(200):
                if inflow_max(await next_state(stream.content)) == 70.0:
                    break
            else:
                raise AssertionError("the dashboard never showed the SIGHUP's max")
            assert modbus.ctx.transport.get_extra_info("sockname") == local
            assert await beat.read_value() != second
            stream.close()
        finally:
            modbus.close()
            with contextlib.suppress(Exception):
                await ua_client.disconnect()
            await session.close()
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 60)
        err = log.read_text()
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def test_ctl_reload_against_a_running_gateway_keeps_every_session(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
