"""A real `safety-gateway run` tripped, killed (SIGKILL: no shutdown at all), and started
again on the same audit database: it comes back latched in SAFE_STOP with the same incident
open, its status says so over Modbus, and the chain records the unclean end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from gateway.adapters.modbus.map import StatusRegister
from gateway.audit import read_records, verify
from gateway.config.schema import Table
from gateway.incident.store import load_incident
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

from .test_signals import heartbeat, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Plant:
    """Healthy readings that move a little, as a live transmitter's do (a level that stays
    bit-for-bit the same for 5 s is judged frozen)."""

    def __init__(self, plc: TestPLC) -> None:
        self.plc = plc
        self.level: float | None = 2.5  # None: leave the level as the test set it
        self.rng = random.Random(7)

    async def run(self) -> None:
        await self.plc.set_registers(Table.INPUT_REGISTER, 2, [10, 100, 0, 0])
        while True:
            if self.level is not None:
                await self.plc.set_float32(Table.INPUT_REGISTER, 0,
                                           self.level + self.rng.uniform(-0.002, 0.002))
            await asyncio.sleep(0.05)


async def status(port: int) -> tuple[int, int]:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    try:
        rr = await client.read_input_registers(StatusRegister.MODE, count=2, device_id=1)
        if rr.isError():
            return -1, -1
        return rr.registers[0], rr.registers[1]
    finally:
        client.close()


async def scenario(tmp_path: Path) -> None:
    north = free_port()
    async with TestPLC(holding=128) as plc:
        plant = Plant(plc)
        feeding = asyncio.create_task(plant.run())
        text = (ROOT / "configs" / "water_tank.yaml").read_text()
        text = text.replace("port: 5020", f"port: {plc.port}")
        text = text.replace("port: 1502", f"port: {north}")
        text = text.replace("opc.tcp://127.0.0.1:4841/gateway/",
                            f"opc.tcp://127.0.0.1:{free_port()}/gateway/")
        text = text.replace("path: ../reports/water_tank_audit.db", "path: audit.db")
        site = tmp_path / "site.yaml"
        site.write_text(text)
        db = tmp_path / "audit.db"

        async def start(log: Path) -> asyncio.subprocess.Process:
            before = await heartbeat(plc)
            with log.open("wb") as stderr:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "run", str(site), cwd=ROOT,
                    stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})

            async def beating() -> bool:
                assert proc.returncode is None, "the gateway ended at start"
                return (await heartbeat(plc) - before) % 65536 > 3

            await wait_for(beating, 30, "the gateway's heartbeat")
            return proc

        first = await start(tmp_path / "first.log")
        try:
            # The level reads outside its range: a trip into SAFE_STOP, latched, an incident.
            plant.level = None
            await plc.set_float32(Table.INPUT_REGISTER, 0, 7.0)

            async def tripped() -> bool:
                return await status(north) == (3, 1)

            await wait_for(tripped, 20, "the trip in the status registers")

            def recorded() -> bool:
                states = [r.data()["state"] for r in read_records(db, kinds=("state",))]
                return any(s["latched"] and s["open_incidents"] for s in states)

            await wait_for(lambda: asyncio.to_thread(recorded), 20, "the state record")
        finally:
            first.kill()  # SIGKILL: no shutdown policy, no shutdown record
            await first.wait()
        plant.level = 2.5  # healthy again: nothing in the next run trips by itself
        log = tmp_path / "second.log"
        second = await start(log)
        try:
            # Latched in SAFE_STOP, as a SCADA reads it, well after the first cycles.
            beat = await heartbeat(plc)

            async def settled() -> bool:
                return (await heartbeat(plc) - beat) % 65536 > 10

            await wait_for(settled, 20, "ten cycles of the restarted gateway")
            assert await status(north) == (3, 1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                second.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(second.wait(), 30)
            except TimeoutError:
                second.kill()
                pytest.fail(f"no exit after SIGTERM:\n{log.read_text()}")
            feeding.cancel()
            await asyncio.wait([feeding])
    err = log.read_text()
    assert second.returncode == 0, err
    assert "ended uncleanly" in err and "restart: restored mode=safe_stop latched=True" in err
    assert verify(db).ok
    records = list(read_records(db))
    (unclean,) = [r for r in records if r.kind == "unclean_end"]
    window = unclean.data()
    assert window["after_seq"] == unclean.seq - 1
    runs = [r for r in records if r.kind == "config_load"]
    assert len(runs) == 2 and runs[1].seq > unclean.seq
    second_run = [r for r in records if r.seq > runs[1].seq]
    # Restored, not tripped again: no trip in the second run's records.
    assert not [r for r in second_run if r.kind == "event" and r.data()["kind"] == "trip"]
    (start_record,) = [r for r in second_run if r.kind == "start"]
    restored = start_record.data()["restored"]
    assert restored["mode"] == "safe_stop" and restored["latched"] is True
    (ident,) = restored["open_incidents"]
    assert start_record.data()["previous"]["clean"] is False
    assert load_incident(db, ident).is_open
    assert records[-1].kind == "shutdown"


def test_a_killed_gateway_comes_back_latched_with_its_incident_open(tmp_path):
    asyncio.run(scenario(tmp_path))
