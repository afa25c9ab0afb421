"""Tests for gateway.adapters.modbus.server over real sockets on 127.0.0.1.

A pymodbus client plays SCADA for the well-formed cases; raw sockets send the hostile frames.
Every wait is bounded: each test runs under ``run`` (20 s cap) and every read has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from gateway.adapters.base import (
    ACCEPTED,
    ClientInfo,
    DeviceUnavailable,
    NorthboundHandler,
    Role,
    WriteOutcome,
)
from gateway.adapters.modbus.map import ModeCode, NorthboundMap, RejectionCode
from gateway.adapters.modbus.server import ModbusServer
from gateway.config.schema import ModbusServerSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence

SENSORS = ("level", "inflow_rate")
ACTUATORS = ("inflow_valve", "outflow_pump", "drain_valve")
FRAME_S = 0.3  # the server's read timeout for the rest of a frame, in these tests
F32 = AsyncModbusTcpClient.DATATYPE.FLOAT32


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


class Handler(NorthboundHandler):
    """Records every write; answers with ``outcome`` (or raises ``fail``) after ``delay_s``."""

    def __init__(self, outcome: WriteOutcome = ACCEPTED, fail: BaseException | None = None,
                 delay_s: float = 0.0) -> None:
        self.outcome = outcome
        self.fail = fail
        self.delay_s = delay_s
        self.gate: asyncio.Event | None = None
        self.calls: list[tuple[ClientInfo, dict[str, float], bool]] = []

    async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                    ) -> dict[str, WriteOutcome]:
        self.calls.append((client, dict(values), atomic))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        return {tag: self.outcome for tag in values}

    async def request(self, client: ClientInfo, kind: str, detector: str | None,
                      duration_s: float | None) -> WriteOutcome:
        return ACCEPTED


def make(handler: NorthboundHandler | None = None, **kw: Any) -> ModbusServer:
    spec_kw = {k: kw.pop(k) for k in ("allow", "ai_clients", "unit") if k in kw}
    spec = ModbusServerSpec(host="127.0.0.1", **spec_kw)
    nmap = NorthboundMap(SENSORS, ACTUATORS, unit=spec.unit)
    kw.setdefault("frame_timeout_s", FRAME_S)
    kw.setdefault("port", 0)
    return ModbusServer(nmap, spec, handler or Handler(), **kw)


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert await c.connect()
        yield c
    finally:
        c.close()


def floats(registers: Sequence[int]) -> list[float]:
    out = []
    for i in range(0, len(registers), 2):
        value = AsyncModbusTcpClient.convert_from_registers(registers[i:i + 2], F32)
        assert isinstance(value, float)
        out.append(value)
    return out


def regs(*values: float) -> list[int]:
    out: list[int] = []
    for v in values:
        out += AsyncModbusTcpClient.convert_to_registers(v, F32)
    return out


# --------------------------------------------------------------------------- raw frames


def mbap(tid: int, pdu: bytes, unit: int = 1, pid: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1 if length is None else length,
                       unit) + pdu


def read_req(tid: int, fc: int, address: int, quantity: int, unit: int = 1) -> bytes:
    return mbap(tid, struct.pack(">BHH", fc, address, quantity), unit)


def write_req(tid: int, address: int, values: list[float], unit: int = 1) -> bytes:
    data = b"".join(struct.pack(">f", v) for v in values)
    return mbap(tid, struct.pack(">BHHB", 16, address, 2 * len(values), len(data)) + data, unit)


async def recv(reader: asyncio.StreamReader, limit_s: float = 2.0) -> tuple[int, int, bytes]:
    """One answer: (transaction id, unit, PDU)."""
    async with asyncio.timeout(limit_s):
        head = await reader.readexactly(7)
        tid, pid, length, unit = struct.unpack(">HHHB", head)
        assert pid == 0
        assert 2 <= length <= 254
        return tid, unit, await reader.readexactly(length - 1)


async def until_closed(reader: asyncio.StreamReader, limit_s: float = 2.0) -> bytes:
    """Everything the server still sends before it closes (fails if it does not close)."""
    data = b""
    async with asyncio.timeout(limit_s):
        while True:
            try:
                chunk = await reader.read(4096)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def exchange(port: int, frame: bytes) -> bytes:
    """Send one frame on a fresh connection, return the answer's PDU."""
    async with raw(port) as (reader, writer):
        writer.write(frame)
        tid, _, pdu = await recv(reader)
        assert tid == struct.unpack_from(">H", frame)[0]
        return pdu


def exc(fc: int, code: int) -> bytes:
    return bytes([fc | 0x80, code])


def with_server(body: Callable[[ModbusServer], Awaitable[None]],
                handler: NorthboundHandler | None = None, **kw: Any) -> None:
    async def main() -> None:
        async with make(handler, **kw) as server:
            await body(server)
    run(main())


async def eventually(condition: Callable[[], bool], limit_s: float = 2.0) -> None:
    """Wait (bounded) until ``condition()`` holds; fail if it never does."""
    for _ in range(int(limit_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- reads


def test_reads_decode_to_what_the_runtime_mirrored() -> None:
    async def body(server: ModbusServer) -> None:
        server.set_sensor("level", 2.75)
        server.set_sensor("inflow_rate", 0.0125)
        server.set_actuator("inflow_valve", 40.0)
        server.set_actuator("outflow_pump", 30.5)
        server.set_actuator("drain_valve", 1.0)
        server.set_status(ModeCode.SHADOW, True, False, 70000)
        server.set_rejection(RejectionCode.OUTSIDE_ENVELOPE, 1)
        async with client(server.port) as c:
            r = await c.read_input_registers(0, count=4, device_id=1)
            assert not r.isError()
            assert floats(r.registers) == [2.75, pytest.approx(0.0125, rel=1e-7)]
            r = await c.read_holding_registers(0, count=6, device_id=1)
            assert floats(r.registers) == [40.0, 30.5, 1.0]
            r = await c.read_input_registers(1000, count=6, device_id=1)
            assert r.registers == [1, 1, 0, 70000 % 65536, 1, 2]
            r = await c.read_holding_registers(3, count=1, device_id=1)  # half a float: fine
            assert r.registers == regs(30.5)[1:]
            server.set_sensor("level", 3.0)
            r = await c.read_input_registers(0, count=2, device_id=1)
            assert floats(r.registers) == [3.0]
    with_server(body)


def test_unit_255_is_this_gateway_others_get_0x0b() -> None:
    async def body(server: ModbusServer) -> None:
        async with client(server.port) as c:
            assert not (await c.read_input_registers(0, count=2, device_id=255)).isError()
            for unit in (0, 2, 254):
                r = await c.read_input_registers(0, count=2, device_id=unit)
                assert r.isError()
                assert r.exception_code == 0x0B
        assert await exchange(server.port, read_req(9, 4, 0, 2, unit=3)) == exc(4, 0x0B)
    with_server(body)


def test_configured_unit() -> None:
    async def body(server: ModbusServer) -> None:
        async with client(server.port) as c:
            assert not (await c.read_input_registers(0, count=2, device_id=7)).isError()
            assert (await c.read_input_registers(0, count=2, device_id=1)).exception_code == 11
    with_server(body, unit=7)


@pytest.mark.parametrize(("fc", "address", "quantity", "code"), [
    (4, 0, 0, 3),
    (4, 0, 126, 3),
    (3, 0, 0, 3),
    (3, 0, 126, 3),
    (4, 0, 5, 2),  # past the sensors
    (4, 3, 2, 2),
    (4, 999, 2, 2),  # into the gap before the status block
    (4, 1000, 9, 2),  # past the status block
    (4, 0, 125, 2),  # sensors, gap and status in one read
    (4, 65535, 2, 2),  # wraps past 65535
    (3, 65535, 125, 2),
    (3, 65534, 2, 2),
    (3, 6, 1, 2),  # past the actuators
    (3, 1000, 1, 2),  # status is not a holding register
])
def test_read_exceptions(fc: int, address: int, quantity: int, code: int) -> None:
    async def body(server: ModbusServer) -> None:
        assert await exchange(server.port, read_req(1, fc, address, quantity)) == exc(fc, code)
    with_server(body)


@pytest.mark.parametrize("fc", [1, 2, 5, 7, 8, 15, 17, 20, 22, 23, 24, 43, 0, 0x7F, 0x83, 0xFF])
def test_unknown_functions_get_exception_1(fc: int) -> None:
    async def body(server: ModbusServer) -> None:
        pdu = bytes([fc]) + b"\x00\x00\x00\x01"
        assert await exchange(server.port, mbap(5, pdu)) == exc(fc, 1)
        assert await exchange(server.port, mbap(6, bytes([fc]))) == exc(fc, 1)
    with_server(body)


@pytest.mark.parametrize("pdu", [
    b"\x04",  # no data at all
    b"\x04\x00\x00\x00",  # one byte short
    b"\x04\x00\x00\x00\x02\x00",  # one byte extra
    b"\x03\x00\x00\x00\x02\x00\x00",
    b"\x06\x00\x00\x00",
    b"\x06\x00\x00\x00\x00\x00",
    b"\x10\x00\x00\x00\x02",  # FC16 header cut short
    b"\x10\x00\x00\x00\x02\x04\x00\x00\x00",  # fewer value bytes than the byte count
    b"\x10\x00\x00\x00\x02\x04\x00\x00\x00\x00\x00",  # more
    b"\x10\x00\x00\x00\x02\x03\x00\x00\x00",  # byte count != 2 * quantity
    b"\x10\x00\x00\x00\x02\x02\x00\x00",
    b"\x10\x00\x00\x00\x00\x00",  # quantity 0
])
def test_pdu_length_and_counts_are_exact(pdu: bytes) -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        assert await exchange(server.port, mbap(3, pdu)) == exc(pdu[0], 3)
        assert not handler.calls
    with_server(body, handler)


def test_fc16_quantity_limits() -> None:
    async def body(server: ModbusServer) -> None:
        for quantity in (0, 124, 125, 0xFFFF):
            pdu = struct.pack(">BHHB", 16, 0, quantity, 2) + bytes(2)
            assert await exchange(server.port, mbap(1, pdu)) == exc(16, 3)
        # 124 registers with their 248 bytes do not fit in a Modbus frame (length 255): closed.
        async with raw(server.port) as (reader, writer):
            writer.write(mbap(1, struct.pack(">BHHB", 16, 0, 124, 248) + bytes(248)))
            assert await until_closed(reader) == b""
        # 123 registers is legal, but not a mapped range here.
        pdu = struct.pack(">BHHB", 16, 0, 123, 246) + bytes(246)
        assert await exchange(server.port, mbap(1, pdu)) == exc(16, 2)
    with_server(body)


# --------------------------------------------------------------------------- writes


def test_accepted_write_reaches_the_handler_and_is_echoed() -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        server.set_actuator("outflow_pump", 30.0)
        async with client(server.port) as c:
            r = await c.write_registers(2, regs(42.5), device_id=1)
            assert not r.isError()
            assert (r.address, r.count) == (2, 2)
            r = await c.write_registers(0, regs(12.25, 33.5, 1.0), device_id=255)
            assert not r.isError()
            # The server does not store the write: the runtime mirrors what it applied.
            r = await c.read_holding_registers(2, count=2, device_id=1)
            assert floats(r.registers) == [30.0]
            server.set_actuator("outflow_pump", 42.5)
            r = await c.read_holding_registers(2, count=2, device_id=1)
            assert floats(r.registers) == [42.5]
        assert len(handler.calls) == 2
        info, values, atomic = handler.calls[0]
        assert values == {"outflow_pump": 42.5}
        assert atomic is True
        assert info.protocol == "modbus"
        assert info.role is Role.OPERATOR
        assert info.user is None
        assert info.address.startswith("127.0.0.1:")
        assert list(handler.calls[1][1].items()) == [
            ("inflow_valve", 12.25), ("outflow_pump", 33.5), ("drain_valve", 1.0)]
    with_server(body, handler)


def test_ai_clients_write_as_ai() -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        async with client(server.port) as c:
            assert not (await c.write_registers(0, regs(5.0), device_id=1)).isError()
        assert handler.calls[0][0].role is Role.AI
    with_server(body, handler, ai_clients=("127.0.0.0/8",))


def test_refused_write_gets_its_code_and_changes_nothing() -> None:
    handler = Handler(WriteOutcome(False, 3, "outside the envelope: inflow_valve <= 100"))

    async def body(server: ModbusServer) -> None:
        server.set_actuator("inflow_valve", 40.0)
        server.set_actuator("outflow_pump", 30.0)
        async with client(server.port) as c:
            r = await c.write_registers(0, regs(400.0, 20.0), device_id=1)
            assert r.isError()
            assert r.exception_code == 3
            r = await c.read_holding_registers(0, count=4, device_id=1)
            assert floats(r.registers) == [40.0, 30.0]
            handler.outcome = WriteOutcome(False, 2, "read-only")
            assert (await c.write_registers(4, regs(1.0), device_id=1)).exception_code == 2
            handler.outcome = WriteOutcome(False, 4, "device unreachable")
            assert (await c.write_registers(4, regs(1.0), device_id=1)).exception_code == 4
            handler.outcome = WriteOutcome(False, 0, "a buggy refusal without a code")
            assert (await c.write_registers(4, regs(1.0), device_id=1)).exception_code == 4
            r = await c.read_holding_registers(0, count=6, device_id=1)
            assert floats(r.registers)[:2] == [40.0, 30.0]
            assert math.isnan(floats(r.registers)[2])
        assert len(handler.calls) == 4
    with_server(body, handler)


def test_partly_refused_write_answers_the_first_refusal() -> None:
    class Partial(Handler):
        async def write(self, client: ClientInfo, values: dict[str, float], atomic: bool
                        ) -> dict[str, WriteOutcome]:
            await super().write(client, values, atomic)
            return {"inflow_valve": ACCEPTED, "outflow_pump": WriteOutcome(False, 3, "x")}

    async def body(server: ModbusServer) -> None:
        assert await exchange(server.port, write_req(1, 0, [1.0, 2.0])) == exc(16, 3)
        # An outcome missing for a written tag is a handler bug: device failure.
        assert await exchange(server.port, write_req(2, 0, [1.0, 2.0, 3.0])) == exc(16, 4)
    with_server(body, Partial())


@pytest.mark.parametrize(("address", "values"), [
    (1, [1.0]),  # the second half of one setpoint and the first of the next
    (4, [1.0, 2.0]),  # runs past the last actuator
    (6, [1.0]),  # beyond the map
    (1000, [1.0]),  # the status block is input registers: not writable
    (1002, [1.0]),
    (65534, [1.0, 2.0]),  # wraps past 65535
])
def test_writes_outside_the_setpoints_get_exception_2(address: int, values: list[float]
                                                      ) -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        assert await exchange(server.port, write_req(1, address, values)) == exc(16, 2)
        assert not handler.calls
    with_server(body, handler)


def test_fc16_half_a_float_and_fc6_get_exception_2() -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        async with client(server.port) as c:
            for address in (0, 1, 2, 5, 6, 1000):
                r = await c.write_register(address, 7, device_id=1)
                assert r.exception_code == 2
            r = await c.write_registers(0, [0x4120], device_id=1)  # one register of a float32
            assert r.exception_code == 2
            r = await c.write_registers(0, [*regs(1.0), 0], device_id=1)  # 1.5 setpoints
            assert r.exception_code == 2
        assert not handler.calls
    with_server(body, handler)


def test_nonfinite_values_are_passed_to_the_handler_to_judge() -> None:
    handler = Handler(WriteOutcome(False, 3, "not finite"))

    async def body(server: ModbusServer) -> None:
        frame = write_req(1, 0, [math.nan, math.inf])
        assert await exchange(server.port, frame) == exc(16, 3)
        values = handler.calls[0][1]
        assert math.isnan(values["inflow_valve"])
        assert values["outflow_pump"] == math.inf
    with_server(body, handler)


@pytest.mark.parametrize("fail", [RuntimeError("bug"), KeyError("x"), DeviceUnavailable("down")])
def test_a_failing_handler_gets_exception_4_and_the_server_lives_on(
        fail: Exception, caplog: pytest.LogCaptureFixture) -> None:
    handler = Handler(fail=fail)

    async def body(server: ModbusServer) -> None:
        async with client(server.port) as c:
            for _ in range(3):
                assert (await c.write_registers(0, regs(1.0), device_id=1)).exception_code == 4
            assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()
            handler.fail = None
            assert not (await c.write_registers(0, regs(1.0), device_id=1)).isError()
        assert server.stats.handler_failures == 3
    with caplog.at_level(logging.WARNING, logger="gateway.adapters.modbus.server"):
        with_server(body, handler)
    assert any(r.levelno >= logging.WARNING for r in caplog.records)


def test_viewer_role_cannot_write() -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        loop_client = ClientInfo("modbus", "127.0.0.1:1", None, Role.VIEWER)
        pending = server._answer(1, 1, write_req(1, 0, [1.0])[7:])
        assert not isinstance(pending, bytes)
        answer = await server._write(1, 1, loop_client, pending)
        assert answer[7:] == exc(16, 2)
        assert not handler.calls
    with_server(body, handler)


# --------------------------------------------------------------------------- framing


def test_two_frames_in_one_send_are_answered_in_order() -> None:
    async def body(server: ModbusServer) -> None:
        server.set_sensor("level", 1.5)
        server.set_actuator("inflow_valve", 9.0)
        async with raw(server.port) as (reader, writer):
            writer.write(read_req(0x1111, 4, 0, 2) + read_req(0x2222, 3, 0, 2))
            assert await recv(reader) == (0x1111, 1, b"\x04\x04" + struct.pack(">f", 1.5))
            assert await recv(reader) == (0x2222, 1, b"\x03\x04" + struct.pack(">f", 9.0))
    with_server(body)


def test_pipelined_reads_and_slow_writes_stay_in_order() -> None:
    handler = Handler(delay_s=0.02)

    async def body(server: ModbusServer) -> None:
        frames = []
        for tid in range(60):
            frames.append(write_req(tid, 0, [float(tid)]) if tid % 10 == 5
                          else read_req(tid, 4, 0, 2))
        async with raw(server.port) as (reader, writer):
            writer.write(b"".join(frames))
            for tid in range(60):
                got_tid, _, pdu = await recv(reader)
                assert got_tid == tid
                assert pdu[0] == (16 if tid % 10 == 5 else 4)
        assert [c[1]["inflow_valve"] for c in handler.calls] == [5.0, 15.0, 25.0, 35.0, 45.0,
                                                                 55.0]
    with_server(body, handler)


def test_a_burst_of_pipelined_reads_does_not_hold_up_the_loop() -> None:
    """500 reads in one segment are answered a few frames per callback, with the loop's other
    work (the control cycle, in the gateway) run in between: not all 500 in one go."""
    async def body(server: ModbusServer) -> None:
        loop = asyncio.get_running_loop()
        seen: list[int] = []

        def tick() -> None:  # runs once per loop iteration
            seen.append(server.stats.frames)
            if server.stats.frames < 500:
                loop.call_soon(tick)

        async with raw(server.port) as (reader, writer):
            writer.write(b"".join(read_req(tid, 4, 0, 2) for tid in range(500)))
            loop.call_soon(tick)
            for tid in range(500):
                assert (await recv(reader))[0] == tid
        steps = [b - a for a, b in itertools.pairwise(seen)]
        assert seen[-1] == 500
        assert max(steps) <= 32, steps  # 16 per callback; a read and a resumed burst at most
    with_server(body)


def test_a_frame_sent_byte_by_byte_is_answered() -> None:
    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            for b in read_req(77, 4, 1000, 6):
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(0.005)
            tid, _, pdu = await recv(reader)
            assert tid == 77
            assert pdu[:2] == b"\x04\x0c"
    with_server(body)


def test_concurrent_connections_are_independent() -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        handler.gate = asyncio.Event()
        async with raw(server.port) as (r1, w1), client(server.port) as c:
            w1.write(write_req(1, 0, [1.0]))
            await eventually(lambda: bool(handler.calls))
            # Connection 1 waits on the handler; connection 2 is served meanwhile.
            for _ in range(20):
                assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()
            handler.gate.set()
            assert (await recv(r1))[2] == struct.pack(">BHH", 16, 0, 2)
    with_server(body, handler)


@pytest.mark.parametrize("length", [0, 1, 255, 256, 65535])
def test_bad_length_field_closes(length: int) -> None:
    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(mbap(1, b"\x04\x00\x00\x00\x02", length=length) + bytes(300))
            assert await until_closed(reader) == b""
        assert server.stats.protocol_violations == 1
    with_server(body)


@pytest.mark.parametrize("pid", [1, 2, 0x8000, 0xFFFF])
def test_protocol_id_other_than_0_closes(pid: int) -> None:
    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(mbap(1, b"\x04\x00\x00\x00\x02", pid=pid))
            assert await until_closed(reader) == b""
    with_server(body)


def test_garbage_closes() -> None:
    async def body(server: ModbusServer) -> None:
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00",
                     bytes(range(256)), b"\xff" * 64):
            async with raw(server.port) as (reader, writer):
                writer.write(junk)
                assert await until_closed(reader) == b""
        assert not (await exchange(server.port, read_req(1, 4, 0, 2)))[0] & 0x80
    with_server(body)


def test_valid_frame_then_garbage_answers_then_closes() -> None:
    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(read_req(42, 4, 1000, 1) + b"\xde\xad\xbe\xef garbage")
            tid, _, pdu = await recv(reader)
            assert (tid, pdu) == (42, b"\x04\x02\x00\x04")  # status.mode: STARTING
            assert await until_closed(reader) == b""
    with_server(body)


@pytest.mark.parametrize("sent", [
    read_req(1, 4, 0, 2)[:3],  # part of a header
    read_req(1, 4, 0, 2)[:7],  # a header
    read_req(1, 4, 0, 2)[:-1],  # all but the last byte
    write_req(1, 0, [1.0, 2.0])[:-3],
])
def test_truncated_frame_then_silence_closes_within_the_read_timeout(sent: bytes) -> None:
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(sent)
            start = time.monotonic()
            # Other clients are served while this one stalls.
            async with client(server.port) as c:
                assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()
            assert await until_closed(reader, limit_s=FRAME_S + 1.5) == b""
            elapsed = time.monotonic() - start
            assert FRAME_S * 0.8 <= elapsed < FRAME_S + 1.0
        assert not handler.calls
    with_server(body, handler)


def test_idle_connection_is_closed() -> None:
    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(read_req(1, 4, 0, 2))
            await recv(reader)
            start = time.monotonic()
            assert await until_closed(reader, limit_s=2.0) == b""
            assert 0.3 <= time.monotonic() - start < 1.5
    with_server(body, idle_timeout_s=0.4)


def test_eof_mid_frame_closes_quietly() -> None:
    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(read_req(1, 4, 0, 2)[:9])
            writer.write_eof()
            assert await until_closed(reader) == b""
        assert not (await exchange(server.port, read_req(2, 4, 0, 2)))[0] & 0x80
    with_server(body)


def test_a_peer_that_does_not_read_its_answers_is_closed() -> None:
    async def body(server: ModbusServer) -> None:
        loop = asyncio.get_running_loop()
        assert server._server is not None  # small kernel buffers, so the backlog shows fast
        server._server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            burst = read_req(1, 4, 1000, 6) * 1000
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(3):
                    for _ in range(200):  # the server stops reading, then gives up on us
                        await loop.sock_sendall(sock, burst)
            await eventually(lambda: server.stats.timeouts == 1 and not server.connections)
        finally:
            sock.close()
        assert not (await exchange(server.port, read_req(1, 4, 0, 2)))[0] & 0x80
    with_server(body)


# --------------------------------------------------------------------------- connections


def test_clients_not_allowed_are_closed_without_an_answer(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    async def body(server: ModbusServer) -> None:
        for _ in range(5):
            async with raw(server.port) as (reader, writer):
                writer.write(read_req(1, 4, 0, 2))
                assert await until_closed(reader) == b""
        assert server.stats.refused_not_allowed == 5
        assert server.stats.frames == 0
    with caplog.at_level(logging.DEBUG, logger="gateway.adapters.modbus.server"):
        with_server(body, allow=("10.1.2.3",))
    refusals = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(refusals) == 5
    assert [r.levelno for r in refusals].count(logging.WARNING) == 1  # once per address


def test_empty_allowlist_refuses_everyone_and_networks_work() -> None:
    async def refused(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(read_req(1, 4, 0, 2))
            assert await until_closed(reader) == b""

    async def served(server: ModbusServer) -> None:
        assert not (await exchange(server.port, read_req(1, 4, 0, 2)))[0] & 0x80

    with_server(refused, allow=())
    with_server(served, allow=("10.0.0.0/8", "127.0.0.0/8"))
    with pytest.raises(ValueError, match="allow"):
        make(allow=("not-an-ip",))
    with pytest.raises(ValueError, match="ai_clients"):
        make(ai_clients=("300.1.1.1",))


@contextlib.asynccontextmanager
async def raw_from(port: int, source: str
                   ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection from another loopback address (127.0.0.0/8 is all this host's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


def test_sixteen_idle_sockets_from_one_address_never_lock_scada_out() -> None:
    # Seen: 16 idle sockets from one address kept a fresh client out for 60 s (and for good,
    # with one read every 20 s), status and heartbeat registers unreadable meanwhile.
    async def body(server: ModbusServer) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for i in range(16):
                reader, writer = await stack.enter_async_context(raw(server.port))
                writer.write(read_req(i, 4, 0, 2))
                await recv(reader)
            # One source never holds more than its share; its oldest idle ones made room.
            assert server.connections == 4
            assert server.stats.evicted == 12
            for source in ("127.0.0.2", "127.0.0.3"):
                reader, writer = await stack.enter_async_context(raw_from(server.port, source))
                writer.write(read_req(7, 4, 1000, 6))  # the status registers
                _, _, pdu = await recv(reader)
                assert not pdu[0] & 0x80
    with_server(body, allow=("127.0.0.0/8",))


def test_when_every_slot_is_taken_the_biggest_holders_oldest_idle_connection_gives_way() -> None:
    async def body(server: ModbusServer) -> None:
        async with contextlib.AsyncExitStack() as stack:
            conns = {}
            for k, source in enumerate(["127.0.0.2"] * 3 + ["127.0.0.3"]):
                reader, writer = await stack.enter_async_context(raw_from(server.port, source))
                writer.write(read_req(k, 4, 0, 2))
                await recv(reader)
                conns[k] = (reader, writer)
            assert server.connections == 4
            # 127.0.0.2 holds the most: its oldest idle connection (the first) is closed.
            reader, writer = await stack.enter_async_context(raw_from(server.port, "127.0.0.4"))
            writer.write(read_req(9, 4, 0, 2))
            assert not (await recv(reader))[2][0] & 0x80
            assert await until_closed(conns[0][0]) == b""
            for k in (1, 2, 3):  # the others are untouched
                conns[k][1].write(read_req(20 + k, 4, 0, 2))
                assert (await recv(conns[k][0]))[0] == 20 + k
    with_server(body, allow=("127.0.0.0/8",), max_connections=4, max_per_source=3)


def test_a_newcomer_is_refused_only_when_no_connection_is_idle() -> None:
    async def body(server: ModbusServer) -> None:
        handler.gate = asyncio.Event()  # every write waits for its outcome
        async with contextlib.AsyncExitStack() as stack:
            for k in range(4):
                _, writer = await stack.enter_async_context(
                    raw_from(server.port, f"127.0.0.{2 + k}"))
                writer.write(write_req(k, 0, [1.0]))
            await eventually(lambda: len(handler.calls) == 4)
            async with raw_from(server.port, "127.0.0.9") as (reader, writer):
                writer.write(read_req(9, 4, 0, 2))
                assert await until_closed(reader) == b""
            assert server.stats.refused_too_many == 1
            handler.gate.set()
    handler = Handler()
    with_server(body, handler, allow=("127.0.0.0/8",), max_connections=4)


def test_connection_flood_leaks_no_fds() -> None:
    async def body(server: ModbusServer) -> None:
        baseline = fd_count()

        async def one(i: int) -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            if i % 3 == 0:
                writer.write(read_req(i, 4, 0, 2))  # and leave without reading the answer
            elif i % 3 == 1:
                writer.write(read_req(i, 4, 0, 2)[:5])  # and leave mid-frame
            writer.transport.abort()

        for start in range(0, 500, 25):
            await asyncio.gather(*(one(i) for i in range(start, start + 25)))
        await eventually(lambda: fd_count() <= baseline + 2 and not server.connections, 5.0)
        assert not (await exchange(server.port, read_req(1, 4, 0, 2)))[0] & 0x80
        assert server.stats.accepted + server.stats.refused_too_many >= 500
    with_server(body)


def test_stop_closes_every_connection_and_releases_fds() -> None:
    handler = Handler()

    async def main() -> None:
        baseline = fd_count()
        handler.gate = asyncio.Event()  # a write that never completes
        server = make(handler)
        await server.start()
        readers = []
        async with contextlib.AsyncExitStack() as stack:
            for i in range(5):
                reader, writer = await stack.enter_async_context(raw(server.port))
                writer.write(write_req(i, 0, [1.0]) if i == 0 else read_req(i, 4, 0, 2))
                if i:
                    await recv(reader)
                readers.append(reader)
            await eventually(lambda: bool(handler.calls))
            await asyncio.wait_for(server.stop(), 2)
            await server.stop()  # idempotent
            for reader in readers:
                assert await until_closed(reader) == b""
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", server.port)
        await eventually(lambda: fd_count() <= baseline + 1)
    run(main())


def test_port_before_start_and_bind_failure() -> None:
    async def main() -> None:
        server = make()
        with pytest.raises(RuntimeError):
            _ = server.port
        async with server:
            other = ModbusServer(server.map, server.spec, Handler(), port=server.port)
            from gateway.adapters.base import AdapterError
            with pytest.raises(AdapterError, match="cannot listen"):
                await other.start()
            with pytest.raises(RuntimeError, match="already started"):
                await server.start()
    run(main())


def test_constructor_checks() -> None:
    for kw in ({"idle_timeout_s": 0}, {"frame_timeout_s": -1.0},
               {"frame_timeout_s": math.nan}, {"max_connections": 0}, {"port": 70000},
               {"max_per_source": 0}, {"max_per_source": 3, "max_connections": 2}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            make(**kw)


# --------------------------------------------------------------------------- fuzz


_valid_header_frames = st.builds(
    lambda tid, unit, fc, body: mbap(tid, bytes([fc]) + body, unit),
    st.integers(0, 0xFFFF), st.sampled_from([0, 1, 255, 2]),
    st.sampled_from([3, 4, 6, 16, 1, 8, 43, 0x90]),
    st.binary(max_size=40) | st.builds(
        lambda a, q, extra: struct.pack(">HH", a, q) + extra,
        st.integers(0, 0xFFFF), st.integers(0, 130), st.binary(max_size=12)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_valid_header_frames, min_size=1, max_size=6),
       st.binary(max_size=64))
def test_fuzz_every_frame_gets_one_well_formed_answer(frames: list[bytes], tail: bytes
                                                      ) -> None:
    """Well-framed requests with random contents each get exactly one answer (normal or
    exception 1/2/3/4/0x0B), in order; a random tail then ends the connection."""
    handler = Handler()

    async def body(server: ModbusServer) -> None:
        async with raw(server.port) as (reader, writer):
            writer.write(b"".join(frames) + tail)
            writer.write_eof()
            for frame in frames:
                tid, unit, pdu = await recv(reader)
                assert tid == struct.unpack_from(">H", frame)[0]
                assert unit == frame[6]
                fc = frame[7]
                if pdu[0] & 0x80:
                    assert pdu[0] == fc | 0x80
                    assert len(pdu) == 2
                    assert pdu[1] in (1, 2, 3, 0x0B)
                else:
                    assert pdu[0] == fc
                    assert fc in (3, 4, 16)
            await until_closed(reader)  # the tail may hold whole frames: their answers too
        for _, values, _ in handler.calls:
            assert set(values) <= set(ACTUATORS)
        assert not (await exchange(server.port, read_req(1, 4, 0, 2)))[0] & 0x80
    with_server(body, handler)
