"""The real safety core (``Gateway``, stepped, with a stand-in device) with its northbound side in
a real communications process (``CommsLink``): a SCADA Modbus client reads what the core's
cycles publish and writes through the child into the core's own checks."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.comms.link import CommsLink
from gateway.comms.supervisor import CommsEvent, CommsEventKind
from gateway.config.loader import load_config
from gateway.runtime.gateway import Gateway
from tests.comms.conftest import close_to, f32, regs, site_file, until
from tests.incident.test_via_gateway import Clock, Device

if TYPE_CHECKING:
    from collections.abc import Coroutine

SHM = Path("/dev/shm")


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


def test_the_core_serves_scada_through_the_communications_process(tmp_path: Path) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    async def main() -> None:
        path, port = site_file(tmp_path)
        site = load_config(path)
        events: list[CommsEvent] = []
        link = CommsLink(site, path, on_event=events.append, ping_interval_s=0.1)
        clock = Clock()
        gw = Gateway(site, clock=clock, clients={"plc": Device()}, stepped=True,
                     startup_wait_s=0.0, servers=False, northbound=link)
        link.handler = gw

        def sense() -> None:
            # the level moves a little, as a live transmitter's does (no frozen-sensor trip)
            level = 2.5 + 0.001 * (round(clock.now * 10) % 3)
            for name, value in (("level", level), ("inflow_rate", 0.01), ("demand", 0.005),
                                ("uptime_s", clock.now)):
                gw.store.update(name, value, True, clock.now)

        sense()
        await gw.open()
        assert link.mirror is not None
        mirror = link.mirror.name
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
        stepping = True

        async def cycles() -> None:
            while stepping:
                clock.now += 0.1
                sense()
                await gw.cycle(clock.now)
                await asyncio.sleep(0.02)

        stepper = asyncio.create_task(cycles())
        try:
            async def up() -> bool:
                return bool(await client.connect())

            await until(up, 60, "the child's Modbus server accepts")

            async def status() -> list[int]:
                rr = await client.read_input_registers(1000, count=8, device_id=1)
                return list(rr.registers)

            await until(lambda: _manual(status()), 30, "the core's mode reaches SCADA")
            rr = await client.read_input_registers(0, count=2, device_id=1)
            assert abs(f32(rr.registers) - 2.501) < 0.0015
            beat = (await status())[3]
            await until(lambda: _moved(status(), beat), 10, "the heartbeat moves")
            # an operator setpoint in MANUAL, checked and written through by the core
            wr = await client.write_registers(0, regs(40.0), device_id=1)
            assert not wr.isError(), wr

            async def valve() -> float:
                rr = await client.read_holding_registers(0, count=2, device_id=1)
                return f32(rr.registers)

            await until(lambda: _near(valve(), 40.0), 10, "the applied value is mirrored")
            # outside the envelope (0..100 %): the core refuses it, the child shows why
            wr = await client.write_registers(0, regs(150.0), device_id=1)
            assert wr.isError() and wr.exception_code == 3
            assert (await status())[4:6] == [1, 1]
            assert close_to(await valve(), 40.0)
        finally:
            stepping = False
            client.close()
            await asyncio.wait({stepper})
            await gw.close()
        assert [e.kind for e in events] == [CommsEventKind.STARTED, CommsEventKind.STOPPED]
        assert not (SHM / mirror).exists()
    run(main())


async def _manual(value: Any) -> bool:
    with contextlib.suppress(Exception):
        return bool((await value)[0] == 2)
    return False


async def _moved(value: Any, before: int) -> bool:
    return bool((await value)[3] != before)


async def _near(value: Any, expected: float) -> bool:
    return close_to(await value, expected)
