"""The gateway between a real Modbus test PLC and real Modbus clients, on loopback.

The PLC is a pymodbus server that records every write it receives (simulators/plc_modbus.py); the
gateway runs its real southbound client, supervisor and northbound server. Two clients connect
from different loopback source addresses: 127.0.0.1 is an operator (SCADA), 127.0.0.2 the
external AI controller, as the site says.
"""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import replace

from pymodbus.client import AsyncModbusTcpClient

import gateway
from gateway.adapters.base import ClientInfo, Role
from gateway.config.schema import ModbusServerSpec, Table
from gateway.runtime.gateway import Gateway
from gateway.supervisor.modes import Mode
from simulators.plc_modbus import TestPLC
from simulators.ports import free_port

AI_IP = "127.0.0.2"


def site_for(plc_port: int, server_port: int, separate: bool = False) -> gateway.config.Site:
    site = gateway.load_config("configs/water_tank.yaml")
    devices = tuple(replace(d, port=plc_port, poll_ms=20.0, separate_write_connection=separate)
                    for d in site.devices)
    nb = replace(site.northbound, modbus=ModbusServerSpec(
        host="127.0.0.1", port=server_port, unit=1, allow=("127.0.0.1", AI_IP),
        ai_clients=(AI_IP,)), opcua=None)
    operation = replace(site.operation, clean_shadow_s=1.0)
    # The test PLC's level is set by the test and holds still: no frozen-sensor check here.
    detection = replace(site.detection, frozen_after_s=())
    return replace(site, devices=devices, northbound=nb, operation=operation,
                   detection=detection)


def f32(registers: list[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *registers))[0]
    return value


def regs(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def actuator_writes(plc: TestPLC) -> list[tuple[int, float]]:
    """(register, engineering value) of every holding-register write the PLC received to the
    two analog actuators (uint16, scale 0.01)."""
    found = []
    for w in plc.writes:
        if w.table is Table.HOLDING_REGISTER and w.address in (0, 1):
            for k, raw in enumerate(w.values):
                if w.address + k in (0, 1):
                    found.append((w.address + k, raw * 0.01))
    return found


async def wait_for_registers(plc: TestPLC, expected: list[int], timeout_s: float
                             ) -> list[int]:
    """The PLC's first holding registers once they equal ``expected`` (or at the timeout)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    held = await plc.get_registers(Table.HOLDING_REGISTER, 0, len(expected))
    while held != expected and loop.time() < end:
        await asyncio.sleep(0.1)
        held = await plc.get_registers(Table.HOLDING_REGISTER, 0, len(expected))
    return held


async def scenario(engine: str, separate: bool = False) -> None:
    async with TestPLC(holding=128) as plc:
        await plc.set_float32(Table.INPUT_REGISTER, 0, 2.5)  # level, m
        await plc.set_registers(Table.INPUT_REGISTER, 2, [10])  # inflow rate 0.010 m3/s
        await plc.set_registers(Table.HOLDING_REGISTER, 0, [3000, 3000])  # 30 %, 30 %
        site = site_for(plc.port, free_port(), separate)
        gw = Gateway(site, engine=engine)
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        assert site.northbound.modbus is not None
        op = AsyncModbusTcpClient("127.0.0.1", port=site.northbound.modbus.port)
        ai = AsyncModbusTcpClient("127.0.0.1", port=site.northbound.modbus.port,
                                  source_address=(AI_IP, 0))
        try:
            await asyncio.wait_for(gw.ready.wait(), 10)
            await asyncio.sleep(0.5)
            await op.connect()
            await ai.connect()

            # Reads through the gateway match the PLC (served from the gateway's mirror).
            rr = await op.read_input_registers(0, count=4, device_id=1)
            assert not rr.isError()
            assert f32(rr.registers[0:2]) == 2.5
            assert abs(f32(rr.registers[2:4]) - 0.010) < 1e-9
            status = await op.read_input_registers(1000, count=4, device_id=1)
            assert status.registers[0] == 2  # MANUAL
            beat1 = (await plc.get_registers(Table.HOLDING_REGISTER, 100, 1))[0]
            await asyncio.sleep(0.3)
            beat2 = (await plc.get_registers(Table.HOLDING_REGISTER, 100, 1))[0]
            assert beat2 > beat1  # the heartbeat the PLC's watchdog watches

            # Report by exception: a steady actuator is not rewritten every cycle, but a
            # value changed at the PLC (a local panel) is put right by the periodic refresh.
            n_before = len(plc.writes)
            await asyncio.sleep(0.5)
            to_inflow = [w for w in plc.writes[n_before:]
                         if w.table is Table.HOLDING_REGISTER and w.address == 0]
            assert len(to_inflow) <= 1
            await plc.set_registers(Table.HOLDING_REGISTER, 0, [5000])
            assert await wait_for_registers(plc, [3000], 2.0) == [3000]

            # An out-of-envelope AI write is refused with exception 3 and reaches nothing.
            rr = await ai.write_registers(0, regs(180.0), device_id=1)
            assert rr.isError()
            assert rr.exception_code == 3
            # An operator setpoint in MANUAL is validated, and its first step (within the
            # pump's 25 %/s rate limit) reaches the PLC before the answer; the cycles ramp on.
            n_before = len(plc.writes)
            rr = await op.write_registers(2, regs(45.0), device_id=1)  # outflow pump
            assert not rr.isError(), rr
            first = [w for w in plc.writes[n_before:] if w.table is Table.HOLDING_REGISTER
                     and w.address == 1]
            assert first
            assert 3000 < first[0].values[0] <= 3250
            await asyncio.sleep(1.0)
            assert (await plc.get_registers(Table.HOLDING_REGISTER, 1, 1)) == [4500]
            # A setpoint outside the envelope is refused with exception 3 and changes nothing.
            n_before = len(plc.writes)
            rr = await op.write_registers(2, regs(150.0), device_id=1)
            assert rr.isError()
            assert rr.exception_code == 3
            status = await op.read_input_registers(1004, count=2, device_id=1)
            assert status.registers == [1, 2]  # outside the envelope; actuator index 1, +1
            assert plc.writes[n_before:] == [] or all(
                w.address != 1 for w in plc.writes[n_before:])

            # Move to AUTO through shadow with a well-behaved external AI, then let it fall silent.
            operator = ClientInfo("test", "127.0.0.1", "op", Role.OPERATOR)
            await gw.request(operator, "to_shadow", None, None)
            for _ in range(15):
                await ai.write_registers(0, regs(30.0) + regs(45.0), device_id=1)
                await asyncio.sleep(0.1)
            await gw.request(operator, "to_auto", None, None)
            for _ in range(5):
                await ai.write_registers(0, regs(30.0) + regs(45.0), device_id=1)
                await asyncio.sleep(0.1)
            assert gw.supervisor is not None
            assert gw.supervisor.mode is Mode.AUTO
            await asyncio.sleep(1.6)  # silence beyond the 1 s timeout
            assert gw.supervisor.mode is Mode.MANUAL
            assert any(e.name == "ai_silent" for d in gw.decisions for e in d.events)

            # The PLC disappears: its sensors go stale, the gateway falls to SAFE_STOP, and
            # after the PLC comes back nothing is replayed: it gets the safe values.
            await plc.stop()
            await asyncio.sleep(1.5)
            assert gw.supervisor.mode is Mode.SAFE_STOP
            n_before = len(plc.writes)
            await plc.start()
            held = await wait_for_registers(plc, [0, 0], 8.0)
            assert held == [0, 0]  # the safe state: inflow closed (level above 0.8 m), pump off
            # ... written by the gateway (the PLC kept the pump at 45 % across its restart).
            assert any(w.table is Table.HOLDING_REGISTER and w.address <= 1 < w.address
                       + len(w.values) for w in plc.writes[n_before:])
            # Nothing stale was replayed: every write after the restart is a safe value.
            for w in plc.writes[n_before:]:
                if w.table is Table.HOLDING_REGISTER and w.address == 0:
                    assert w.values[:2] in ([0], [0, 0]), w
        finally:
            for client in (op, ai):
                client.close()
            stop.set()
            await asyncio.wait_for(runner, 10)

        # The invariant, from the PLC's own record: every value written to the analog
        # actuators lies within their limits.
        for register, value in actuator_writes(plc):
            assert 0.0 <= value <= 100.0, (register, value)
        assert not any(math.isnan(v) for _, v in actuator_writes(plc))
        # Shutdown left the inflow valve at its safe value (on_shutdown: safe).
        assert (await plc.get_registers(Table.HOLDING_REGISTER, 0, 1)) == [0]


def test_gateway_between_modbus_plc_and_clients(engine):
    asyncio.run(scenario(engine))


def test_the_same_with_writes_on_a_connection_of_their_own():
    """The whole scenario with the device's writes on the lean write connection
    (gateway/adapters/modbus/writer.py) instead of pymodbus on the polling connection."""
    asyncio.run(scenario("cython", separate=True))


