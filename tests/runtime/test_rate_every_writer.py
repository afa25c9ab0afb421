"""Rate and step limits hold for what the device receives, whoever writes: the PLC's own record
of an actuator that an operator drives by write-throughs every 10 ms while the control cycle
ramps it too (the two used to add up to about twice the rate limit)."""

from __future__ import annotations

import asyncio
import itertools
import struct

from pymodbus.client import AsyncModbusTcpClient

from gateway.config.schema import Table
from gateway.runtime.gateway import Gateway
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port
from tests.runtime.test_gateway_modbus import site_for

RATE_PER_S = 20.0  # inflow_valve's max_rate_per_s in configs/water_tank.yaml
STEP = 10.0        # its max_step
RESOLUTION = 0.01  # uint16 with scale 0.01


def regs(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


async def _received(engine: str) -> tuple[list[tuple[float, float]], float]:
    """(PLC arrival time, inflow %) of every inflow write, and the cycle period."""
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10])
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])
        site = site_for(plc.port, free_port())
        gw = Gateway(site, engine=engine)  # the PLC's clock and the gateway's: time.monotonic
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        assert site.northbound.modbus is not None
        op = AsyncModbusTcpClient("127.0.0.1", port=site.northbound.modbus.port)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(gw.ready.wait(), 30)
            for _ in range(3000):  # until the first cycle ran (30 s at most)
                if gw.decisions:
                    break
                await asyncio.sleep(0.01)
            await op.connect()
            # Repeat the same in-envelope setpoint every 10 ms for 1.5 s: 30 % -> 60 % takes
            # 1.5 s at 20 %/s, so the whole ramp happens under the write-throughs.
            end = loop.time() + 1.5
            for _ in range(1000):
                if loop.time() >= end:
                    break
                rr = await op.write_registers(0, regs(60.0), device_id=1)
                assert not rr.isError(), rr
                await asyncio.sleep(0.01)
            deadline = loop.time() + 30
            while (await plc.get_registers(Table.HOLDING_REGISTER, 0, 1)) != [6000]:
                assert loop.time() < deadline, "the inflow never reached its setpoint"
                await asyncio.sleep(0.05)
        finally:
            op.close()
            stop.set()
            await asyncio.wait_for(runner, 30)
        got = []
        for w in plc.writes:
            if w.table is Table.HOLDING_REGISTER and w.address == 0 and w.result == 0:
                got.append((w.at_s, w.values[0] * 0.01))
        return got, site.site.cycle_ms / 1000.0


def test_rate_and_step_hold_at_the_device_for_cycle_and_write_through_together(engine):
    received, cycle_s = asyncio.run(_received(engine))
    rising = [(t, x) for t, x in received if x > 30.0 - RESOLUTION]
    assert len(rising) >= 10, received  # the ramp is in the record
    # Between any two values the device received at t1 < t2 (the ramp moves away from the safe
    # state, 0 %, so no move here is protective): |x2 - x1| <= rate * (t2 - t1 + one cycle),
    # and no single write moves it more than max_step.
    worst = 0.0
    for (t1, x1), (t2, x2) in itertools.combinations(rising, 2):
        allowed = RATE_PER_S * (t2 - t1 + cycle_s) + RESOLUTION
        worst = max(worst, abs(x2 - x1) / allowed)
        assert abs(x2 - x1) <= allowed, (t1, x1, t2, x2, allowed)
    for (_, x1), (_, x2) in itertools.pairwise(rising):
        assert abs(x2 - x1) <= STEP + RESOLUTION
    assert worst > 0.3  # the test did drive the valve at its limit
